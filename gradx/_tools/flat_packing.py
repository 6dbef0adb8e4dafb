"""Packing inside fit: the correspondence between an optimizer's own state and its packed one."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.quantized import is_quantized
from gradx._protocol.trees import TreeMismatchError, as_arrays
from gradx._tools.flat import (
    FIT_MAX_LEAF_SIZE,
    FlatState,
    Layout,
    buffer_offsets,
    flat,
    host_buffer,
    inside_flat,
    leaf_layout,
    pack_leaves,
    placement,
    state_class,
)


class _Correspondence(NamedTuple):
    """How an optimizer's state over the params and its state over the packed buffers match:
    the same containers, where each subtree mirroring the params (a moment) is, packed, a
    tuple of buffers. Static; computed from shapes only."""

    prefix: Any  # the treedef both states share once the mirrors are taken as leaves
    mirrors: tuple[bool, ...]  # per leaf of the prefix: a mirror of the params?
    params_treedef: Any
    params_shapes: tuple[tuple[int, ...], ...]
    buffer_shapes: tuple[tuple[int, ...], ...]

    def is_mirror(self, node: Any, lead: tuple[int, ...] = ()) -> bool:
        leaves, treedef = jax.tree.flatten(node)
        return treedef == self.params_treedef and all(
            hasattr(x, "shape") and tuple(x.shape) == lead + s
            for x, s in zip(leaves, self.params_shapes, strict=True)
        )

    def is_packed(self, node: Any, lead: tuple[int, ...] = ()) -> bool:
        return (
            type(node) is tuple
            and len(node) == len(self.buffer_shapes)
            and all(
                hasattr(x, "shape") and tuple(x.shape) == lead + s
                for x, s in zip(node, self.buffer_shapes, strict=True)
            )
        )


def _correspondence(inner: Any, params: Any, layout: Layout) -> _Correspondence | None:
    """The correspondence of the two layouts of ``inner``'s state, or None if there is none
    (a state that is not made of mirrors of the params and of leaves the layout keeps)."""
    per_leaf = jax.eval_shape(inner.init, params)
    with inside_flat():
        packed = jax.eval_shape(lambda p: inner.init(pack_leaves(p, layout)), params)
    leaves, params_treedef = jax.tree.flatten(params)
    buffers = jax.eval_shape(lambda p: pack_leaves(p, layout), params)
    c = _Correspondence(
        None,
        (),
        params_treedef,
        tuple(tuple(x.shape) for x in leaves),
        tuple(tuple(b.shape) for b in buffers),
    )
    a, a_def = jax.tree.flatten(per_leaf, is_leaf=c.is_mirror)
    b, b_def = jax.tree.flatten(packed, is_leaf=c.is_packed)
    if a_def != b_def:
        return None
    mirrors = tuple(c.is_mirror(x) for x in a)
    for x, y, m in zip(a, b, mirrors, strict=True):
        if m != c.is_packed(y):
            return None
        if not m and (x.shape, x.dtype) != (y.shape, y.dtype):
            return None
        if m and any(  # each buffer holds one dtype: the mirror's leaves in it have it
            {np.dtype(jax.tree.leaves(x)[i].dtype) for i in members} != {np.dtype(buf.dtype)}
            for members, buf in zip(layout.members, y, strict=True)
        ):
            return None
    return c._replace(prefix=a_def, mirrors=mirrors)


class Packing(NamedTuple):
    """``gradx.fit`` running an optimizer packed: ``optimizer`` is ``flat(the user's)``, and
    :meth:`pack` / :meth:`unpack` move its state between the user's layout (the params'
    pytree) and the packed one, on the host (a handful of copies, once per fit, per
    checkpoint and per epoch for a callback that reads the state)."""

    optimizer: optax.GradientTransformationExtraArgs
    layout: Layout
    correspondence: _Correspondence
    state_class: type[FlatState]  # that of optimizer.init(params): the params' signature

    def pack(self, state: Any, fn: str = "fit") -> FlatState:
        """The user's state (the optimizer's own init layout) as ``optimizer``'s state."""
        c = self.correspondence
        nodes, treedef = jax.tree.flatten(state, is_leaf=c.is_mirror)
        if treedef != c.prefix:
            raise TreeMismatchError(
                f"{fn}: opt_state does not have the structure of optimizer.init(params)"
            )

        def pack(node: Any) -> tuple[jax.Array, ...]:
            leaves = jax.tree.leaves(node)
            out = []
            for indices in self.layout.members:
                if self.layout.slots[indices[0]][1] is None:  # a big leaf: as it is
                    out.append(jnp.asarray(leaves[indices[0]]))
                else:  # uncommitted, as fit's own init would be: no second compile
                    out.append(host_buffer([leaves[i] for i in indices]))
            return tuple(out)

        inner = [pack(n) if m else n for n, m in zip(nodes, c.mirrors, strict=True)]
        return self.state_class(
            inner_state=jax.tree.unflatten(treedef, inner),
            offsets=buffer_offsets(self.layout, share_kernels=True),
        )

    def unpack(self, state: FlatState, batch_dims: int = 0) -> Any:
        """``optimizer``'s state in the user's layout (that of the optimizer's own init);
        ``batch_dims``: leading axes every leaf has (sweep's grid axis)."""
        c = self.correspondence
        leaves = jax.tree.leaves(state)
        lead = tuple(leaves[0].shape[:batch_dims]) if leaves else ()
        nodes, treedef = jax.tree.flatten(
            state.inner_state, is_leaf=lambda node: c.is_packed(node, lead)
        )

        def unpack(buffers: tuple[Any, ...]) -> Any:
            host: dict[int, np.ndarray] = {}
            leaves = []
            for b, offset, size, shape in self.layout.slots:
                if offset is None:
                    leaves.append(buffers[b])  # a big leaf: its own buffer, no copy
                    continue
                if b not in host:
                    host[b] = np.asarray(buffers[b])
                part = host[b][..., offset : offset + size].reshape(lead + shape)
                leaves.append(jax.device_put(part))
            return jax.tree.unflatten(self.layout.treedef, leaves)

        if treedef != c.prefix:
            raise TreeMismatchError("flat: the state does not have the packed layout")
        user = [unpack(n) if m else n for n, m in zip(nodes, c.mirrors, strict=True)]
        return jax.tree.unflatten(treedef, user)


_ONLY_OWN = (
    "it runs only gradx's own optimizers packed (built from numbers and flags, without a "
    "weight-decay mask)"
)


def packing(optimizer: optax.GradientTransformation, params: Any) -> tuple[Packing | None, str]:
    """``(Packing, "")`` when ``fit`` can run ``optimizer`` packed and it pays off, else
    ``(None, why not)``: a gradx optimizer built from numbers and flags (one of the library's
    own, with no mask and no user block: those treat every coordinate alike), over params
    with at least two leaves of at most ``FIT_MAX_LEAF_SIZE`` elements and one dtype (else
    there is nothing to pack; bigger leaves keep their own buffers), whose state runs packed
    (Keras's per-variable ``clipnorm`` does not) and maps leaf for leaf onto the packed one."""
    from gradx._protocol.declare import ELEMENTWISE

    params = as_arrays(params)
    if optimizer.update not in ELEMENTWISE:
        return None, f"{_ONLY_OWN}: pass gradx.flat(optimizer) to pack another"
    if not placement(jax.tree.leaves(params))[0]:
        return None, "the params are spread over several devices: each keeps its sharding"
    layout = leaf_layout(params, FIT_MAX_LEAF_SIZE)
    if not any(len(m) > 1 for m in layout.members):
        return None, (
            f"no two params leaves of one dtype have at most {FIT_MAX_LEAF_SIZE} elements: "
            "there is nothing to pack"
        )
    inner = optax.with_extra_args_support(optimizer)
    try:
        c = _correspondence(inner, params, layout)
    except ValueError as e:  # a block that refuses to run packed
        return None, str(e)
    if c is None:
        why = "its state does not map leaf for leaf onto a packed state"
        state = jax.eval_shape(inner.init, params)
        if any(is_quantized(x) for x in jax.tree.leaves(state, is_leaf=is_quantized)):
            why += (
                " (its int8 moments are quantised in blocks of each leaf; packed, the blocks "
                "would be the buffers': other numbers)"
            )
        return None, why
    packed = flat(optimizer, max_leaf_size=FIT_MAX_LEAF_SIZE)
    return Packing(packed, layout, c, state_class(params)), ""


def why_not_elementwise(optimizer: optax.GradientTransformation, params: Any) -> str | None:
    """Why :func:`packing` does not take a gradx optimizer it does not know to treat every
    coordinate alike: a block that refuses to run packed says why (Muon's matrices, a mask),
    else the arguments that are neither numbers nor flags (a function). None for an optimizer
    no gradx constructor built, or one packing takes. For ``fit(flat=True)``'s error: it
    traces the packed ``init``."""
    from gradx._protocol.declare import BUILT, ELEMENTWISE, plain_argument

    built = BUILT.get(optimizer.init)
    if built is None or optimizer.update in ELEMENTWISE:
        return None
    constructor, bound = built
    try:
        jax.eval_shape(flat(optimizer, max_leaf_size=FIT_MAX_LEAF_SIZE).init, params)
    except ValueError as e:  # a block that refuses to run packed, in its words
        return str(e)
    except Exception:  # any other failure: its arguments say why
        pass

    def what(value: Any) -> str | None:
        if plain_argument(value):
            return None
        if isinstance(value, optax.GradientTransformation):
            return "an optimizer fit does not pack"
        if callable(value):
            return f"a function ({getattr(value, '__qualname__', type(value).__name__)})"
        return repr(value)

    rules = constructor.hyperparameter_rules
    given = [(n, what(v)) for n, v in bound.arguments.items() if n not in rules]
    named = ", ".join(f"its {n} is {w}" for n, w in given if w is not None)
    if not named:  # an optimizer of the user's (@gradx.optimizer)
        return None
    return (
        f"{_ONLY_OWN}; {constructor.__name__} is gradx's own, but {named}, neither a number nor a "
        "flag, so fit cannot tell that it treats every coordinate alike: pass "
        "gradx.flat(optimizer) to pack it where it does"
    )
