"""The many-leaf path: an optimizer run over a few contiguous buffers instead of many leaves.

A model with hundreds or thousands of leaves gives an optimizer hundreds or thousands of small
elementwise kernels to trace, compile and launch per step, each with its own fixed cost.
:func:`flat` packs the leaves of each dtype into a few 1-D buffers, keeps the inner optimizer's
state in that packed layout (its moments are a few long vectors), and runs the inner optimizer
once per buffer: a step concatenates the gradients (and the params, when the rule reads them)
and slices the updates back into the params' shapes. The params themselves stay the user's
pytree.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import hashlib
import inspect
import threading
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._optimizers.scaling import FLAT_ACTIVE
from gradx._protocol.trees import (
    TreeMismatchError,
    as_arrays,
    check_arrays,
    params_like,
    unwrap_variables,
)

__all__ = ["FlatState", "flat"]


class FlatState(NamedTuple):
    """State of :func:`flat`: the inner optimizer's state over the packed buffers.

    ``inner_state`` is what ``optimizer.init`` returns for a tuple of buffers: the small leaves
    of each dtype in 1-D buffers of at most 256 leaves each (``LEAVES_PER_BUFFER``; dtypes in
    the order they first occur in the params' leaves), then each big leaf as it is (see
    :func:`flat`'s ``max_leaf_size``), so its moments are a few long vectors.
    ``gradx.hyperparams`` and ``gradx.set_hyperparams`` find the inner optimizer's
    hyperparameters under it by the same names.

    ``init`` returns an instance of a subclass (named ``FlatState[n leaves, digest]``, the
    digest that of its signature) whose class
    attribute ``signature`` records the params it packed: per leaf, in ``jax.tree.leaves``
    order, ``(key path as jax.tree_util.keystr writes it, shape, dtype name)``. ``update``
    compares the gradients with it in Python (under ``jit``, once per trace; no device
    work), so a gradient of another structure, shape or dtype is an error rather than a step
    with the moments of other coordinates. Being in the class, it is part of the state's
    treedef (as a NamedTuple's class is), so ``jit``, ``vmap``, ``tree.map``, ``_replace``,
    flax's msgpack and orbax restores into a target state keep it, and pickle keeps it (a
    state by ``__reduce__``, the class, in a pickled treedef, by its signature). A state of
    the plain class (pickled by gradx before the signature, or built by hand) has
    ``signature`` None: its gradients are checked only by the number of runs, as they were
    then; restored into ``init``'s state as a target (orbax, msgpack, ``jax.tree.unflatten``
    of its leaves), or given to ``gradx.fit`` as ``opt_state``, it is signed again. A tree
    built to match a state (a prefix of shardings for ``jax.device_put`` or
    ``jax.jit(in_shardings=...)``) is built with ``state._replace(...)`` or
    ``type(state)(...)``: ``gradx.FlatState(...)`` is the unsigned class, another node.
    """

    inner_state: Any
    # int32 scalars, one per run of leaves sliced out of a shared buffer: where the run
    # starts (see _runs). Constant, but runtime values to XLA: the kernels that slice leaves
    # of one shape are then a few kernels, compiled once each, as the per-leaf path's are (a
    # constant offset per leaf would make each a kernel of its own).
    offsets: tuple[jax.Array, ...] = ()

    signature = None  # a class attribute (not a field): see above and state_class

    def __reduce__(self) -> tuple[Any, ...]:
        return _unpickled, (type(self).signature, tuple(self))


#: The FlatState subclass of each params signature: one class while a state of it lives, so
#: that the states of one signature (init's, fit's packed ones, restored ones) share a treedef.
_SIGNED: weakref.WeakValueDictionary[tuple, type[FlatState]] = weakref.WeakValueDictionary()


class _Signed(type):
    """The metaclass of the signed FlatState classes, so that one pickles by its signature
    (pickle could not find it by its name in the module): a state's treedef pickles as
    before."""


copyreg.pickle(_Signed, lambda cls: (_signed, (cls.signature,)))


_SIGNING = threading.Lock()  # one class per signature, also when threads init at once


def _signed(signature: tuple | None) -> type[FlatState]:
    """The FlatState class of ``signature`` (None: FlatState itself)."""
    if signature is None:
        return FlatState
    with _SIGNING:
        cls = _SIGNED.get(signature)
        if cls is None:
            # a name of its own, so that errors about two treedefs tell the classes apart
            digest = hashlib.sha256(repr(signature).encode()).hexdigest()[:8]
            count = f"{len(signature)} leaf" + ("" if len(signature) == 1 else "s")
            name = f"FlatState[{count}, {digest}]"
            namespace = {
                "__slots__": (),
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": FlatState.__doc__,
                "signature": signature,
                # (shape, dtype) per leaf: what update compares, in one comparison of tuples
                "_leaves": tuple((shape, np.dtype(dtype)) for _, shape, dtype in signature),
                # the treedefs known to have the signature's key paths (checked once each)
                "_structures": set(),
            }
            cls = _SIGNED[signature] = _Signed(name, (FlatState,), namespace)
    return cls


def sign_like(state: Any, like: Any) -> Any:
    """``state`` in the structure of ``like`` (a state or its shapes), or None: where every
    FlatState in ``state`` is unsigned (pickled by gradx before the signature, or built by
    hand) and ``state`` is ``like`` but for those classes, its leaves in ``like``'s signed
    classes. A state signed for other params is never re-signed."""
    is_flat = lambda node: isinstance(node, FlatState)
    nodes = [n for n in jax.tree.leaves(state, is_leaf=is_flat) if is_flat(n)]
    if not nodes or any(type(n).signature is not None for n in nodes):
        return None
    unsigned = jax.tree.map(lambda n: FlatState(*n) if is_flat(n) else n, like, is_leaf=is_flat)
    if jax.tree.structure(unsigned) != jax.tree.structure(state):
        return None
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(state))


def _unpickled(signature: tuple | None, fields: tuple[Any, ...]) -> FlatState:
    return _signed(signature)(*fields)


def _paths(tree: Any) -> list[Any]:
    """``(key path, leaf)`` of each leaf of ``tree``, a flax ``nnx.Variable`` around an array
    (what ``nnx.Optimizer`` gives ``init``, not ``update``) taken as the array."""
    return jax.tree_util.tree_leaves_with_path(unwrap_variables(tree))


def state_class(params: Any) -> type[FlatState]:
    """The FlatState class whose ``signature`` is that of ``params`` (arrays)."""
    with_path = _paths(params)
    cls = _signed(
        tuple(
            (jax.tree_util.keystr(path), tuple(x.shape), np.dtype(x.dtype).name)
            for path, x in with_path
        )
    )
    cls._structures.add(jax.tree.structure(params))  # type: ignore[attr-defined]
    return cls


def check_signature(state: FlatState, updates: Any) -> None:
    """Raises unless ``updates`` (arrays) has the structure, shapes and dtypes of the params
    ``state`` was built for (see FlatState); nothing for a state without a signature."""
    cls = type(state)
    want = cls.signature
    if want is None:
        return
    leaves, treedef = jax.tree.flatten(updates)
    if treedef not in cls._structures:  # type: ignore[attr-defined]
        paths = [jax.tree_util.keystr(path) for path, _ in _paths(updates)]
        if len(paths) != len(want):
            raise TreeMismatchError(
                f"flat: the gradients have {len(paths)} leaves, but the state was built for "
                f"params with {len(want)}; call init with params of the gradients' structure"
            )
        for i, (path, (at, _, _)) in enumerate(zip(paths, want, strict=True)):
            if path != at:
                raise TreeMismatchError(
                    f"flat: the gradient tree does not match the params the state was built "
                    f"for: its leaf {i} is at {path or '(the root)'}, the params' at "
                    f"{at or '(the root)'}; call init with params of the gradients' structure"
                )
        cls._structures.add(treedef)  # type: ignore[attr-defined]
    if tuple((x.shape, x.dtype) for x in leaves) == cls._leaves:  # type: ignore[attr-defined]
        return
    for x, (at, shape, dtype) in zip(leaves, want, strict=True):
        if tuple(x.shape) != shape:
            raise TreeMismatchError(
                f"flat: the gradient at {at or '(the root)'} has shape {tuple(x.shape)}, but "
                f"the state was built for shape {shape} there; each gradient must have the "
                "shape of its param: call init with params of the gradients' shapes"
            )
        if np.dtype(x.dtype).name != dtype:
            raise TypeError(
                f"flat: the gradient at {at or '(the root)'} has dtype {x.dtype}, but the state "
                f"was built for a {dtype} param there; each gradient must have its param's "
                "dtype (leaves are packed by dtype): cast the gradients to their params' dtypes"
            )


class Layout(NamedTuple):
    """Where each leaf lives: static (shapes and dtypes), computed from a tree's leaves."""

    treedef: Any
    # per leaf: (buffer index, offset, size, shape); offset None: the leaf is its own buffer
    slots: tuple[tuple[int, int | None, int, tuple[int, ...]], ...]
    members: tuple[tuple[int, ...], ...]  # per buffer: the leaf indices, in order


#: The most leaves concatenated into one buffer. XLA's CPU code for a concatenation costs
#: about 0.2 ms to compile per operand up to a few hundred and more beyond (1,000 operands:
#: 0.26 s, 3,000: 1.4 s), so the small leaves of a dtype are split evenly into buffers of at
#: most this many (1,000 leaves: 4 buffers of 250); the optimizer's few extra kernels over
#: them cost nothing next to that.
LEAVES_PER_BUFFER = 256


def leaf_layout(tree: Any, max_leaf_size: int | None) -> Layout:
    """Small leaves packed by dtype (in order of first occurrence), at most
    ``LEAVES_PER_BUFFER`` to a buffer; then the big ones alone."""
    leaves, treedef = jax.tree.flatten(tree)
    sizes = [int(np.prod(leaf.shape, dtype=np.int64)) for leaf in leaves]
    by_dtype: dict[np.dtype, list[int]] = {}  # insertion order: first occurrence
    solo: list[int] = []
    for i, leaf in enumerate(leaves):
        if max_leaf_size is not None and sizes[i] > max_leaf_size:
            solo.append(i)
        else:
            by_dtype.setdefault(np.dtype(leaf.dtype), []).append(i)
    packed = [  # each dtype's leaves in the fewest buffers, as even as can be
        part.tolist()
        for indices in by_dtype.values()
        for part in np.array_split(indices, -(-len(indices) // LEAVES_PER_BUFFER))
    ]
    place: dict[int, tuple[int, int | None]] = {}
    for b, indices in enumerate(packed):
        offset = 0
        for i in indices:
            place[i] = (b, offset)
            offset += sizes[i]
    for j, i in enumerate(solo):
        place[i] = (len(packed) + j, None)
    slots = tuple((*place[i], sizes[i], tuple(leaf.shape)) for i, leaf in enumerate(leaves))
    members = tuple(tuple(m) for m in packed) + tuple((i,) for i in solo)
    return Layout(treedef, slots, members)


def pack_leaves(tree: Any, layout: Layout) -> tuple[jax.Array, ...]:
    """The 1-D buffers of the small leaves (see :func:`leaf_layout`), raveled and concatenated;
    then each big leaf as it is."""
    leaves = jax.tree.leaves(tree)
    buffers = []
    for indices in layout.members:
        if layout.slots[indices[0]][1] is None:  # a big leaf: its own buffer, no copy
            buffers.append(leaves[indices[0]])
            continue
        small = [leaves[i] for i in indices]
        concrete, device = placement(small)
        if concrete:  # init, fit: on the host, no program to compile
            buffers.append(host_buffer(small, device))
            continue
        # lax, not jnp: a thousand leaves make the wrappers' overhead a visible part of a trace
        parts = [x if x.ndim == 1 else jax.lax.reshape(x, (x.size,)) for x in small]
        buffers.append(parts[0] if len(parts) == 1 else jax.lax.concatenate(parts, 0))
    return tuple(buffers)


def host_buffer(leaves: list[Any], device: Any = None) -> jax.Array:
    """Concrete ``leaves`` raveled and concatenated on the host, then put on ``device``
    (None: the default device, uncommitted)."""
    return jax.device_put(np.concatenate([np.asarray(x).reshape(-1) for x in leaves]), device)


def placement(leaves: list[Any]) -> tuple[bool, Any]:
    """``(True, device)`` when these arrays are concrete and on one device, where their
    buffer goes (None: the default device, uncommitted, as eager jnp ops would leave it),
    else ``(False, None)``. Packing on the host then costs a copy, where the same eager jnp
    ops would compile a program per leaf shape (about 10 ms each on CPU)."""
    devices, committed = set(), False
    for x in leaves:
        if isinstance(x, jax.core.Tracer):
            return False, None
        if isinstance(x, jax.Array):
            if len(x.devices()) != 1 or not x.is_fully_addressable:
                return False, None
            devices |= x.devices()
            committed = committed or x.committed
    if len(devices) > 1:
        return False, None
    return True, (devices.pop() if committed else None)


def _runs(layout: Layout, share_kernels: bool) -> list[tuple[int, ...]]:
    """The leaves sliced at a runtime offset, as runs: each a few leaves of one shape in one
    buffer, in leaf order, that share one runtime start (the run's first leaf's offset).

    A run is sliced out of its buffer at ``start`` as one segment, and each of its leaves
    out of the segment at ``delta``, its distance from the run's first leaf, a constant of
    its kernel: runs with the same spacing (leaves of one shape side by side, or repeated
    blocks of a model) share their kernels. A class of m leaves of one shape is cut into runs
    of ⌈∛m⌉ leaves (:func:`_run_length`), so about ∛m kernels and m/∛m runtime starts: a
    start per leaf would cost an input and an output of the step per leaf (about 3 µs each
    on CPU), one start per class a kernel per leaf. A leaf of a shape of its own is not in a
    run: it gets a kernel of its own anyway, and a constant offset costs nothing.
    Empty without ``share_kernels``."""
    if not share_kernels:
        return []
    classes: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for indices in layout.members:
        if len(indices) > 1:
            for i in indices:
                b, _, _, shape = layout.slots[i]
                classes.setdefault((b, shape), []).append(i)
    runs = []
    for members in classes.values():
        if len(members) > 1:
            length = _run_length(len(members))
            runs += [tuple(members[k : k + length]) for k in range(0, len(members), length)]
    return sorted(runs)


def _run_length(m: int) -> int:
    """⌈∛m⌉: a kernel costs about 10-20 ms to compile on CPU, a runtime start about 3 µs a
    step, so runs stay short (1,000 leaves: 10 kernels, 100 starts)."""
    r = round(m ** (1 / 3))
    return r if r**3 >= m else r + 1


def buffer_offsets(layout: Layout, share_kernels: bool) -> tuple[jax.Array, ...]:
    """The start of each run (see :func:`_runs`), as int32 scalars (see FlatState)."""
    out = []
    for run in _runs(layout, share_kernels):
        _, last, size, _ = layout.slots[run[-1]]
        if last + size > np.iinfo(np.int32).max:
            raise ValueError(
                f"flat: the leaves of one dtype must total fewer than 2**31 elements, got "
                f"{last + size}; lower max_leaf_size so that big leaves stay unpacked"
            )
        out.append(jnp.asarray(layout.slots[run[0]][1], jnp.int32))
    return tuple(out)


# Offsets are never negative: without JAX's wrap-around of a negative start (a compare and a
# select traced per leaf, 0.3 s of the trace at 1,000 leaves) where JAX has the option.
_NONNEGATIVE = (
    {"allow_negative_indices": False}
    if "allow_negative_indices" in inspect.signature(jax.lax.dynamic_slice).parameters
    else {}
)


def _unpack(buffers: Any, layout: Layout, offsets: tuple[Any, ...]) -> Any:
    """The inverse of :func:`pack_leaves`: each leaf sliced out of its buffer and reshaped."""
    buffers = tuple(buffers)
    where = {}  # leaf -> (its run's segment, its distance from the run's start)
    for run, start in zip(_runs(layout, bool(offsets)), offsets, strict=True):
        b, first, _, _ = layout.slots[run[0]]
        _, last, size, _ = layout.slots[run[-1]]
        segment = jax.lax.dynamic_slice(
            buffers[b], (start,), (last + size - first,), **_NONNEGATIVE
        )
        where.update((i, (segment, layout.slots[i][1] - first)) for i in run)
    leaves = []
    for i, (b, offset, size, shape) in enumerate(layout.slots):
        buf = buffers[b]
        if offset is None or size == buf.shape[0]:
            leaves.append(buf if offset is None else jax.lax.reshape(buf, shape))
            continue
        if i in where:
            segment, delta = where[i]
            part = jax.lax.slice(segment, (delta,), (delta + size,))
        else:
            part = jax.lax.slice(buf, (offset,), (offset + size,))
        leaves.append(part if len(shape) == 1 else jax.lax.reshape(part, shape))
    return jax.tree.unflatten(layout.treedef, leaves)


@contextlib.contextmanager
def inside_flat() -> Iterator[None]:
    """Marks the inner optimizer's init and update as running on packed buffers, so that a
    per-leaf setting (a weight-decay mask) refuses instead of applying to the wrong leaves."""
    token = FLAT_ACTIVE.set(True)
    try:
        yield
    finally:
        FLAT_ACTIVE.reset(token)


@functools.lru_cache(maxsize=256)
def _flat_update(inner_update: Any, max_leaf_size: int | None, share_kernels: bool) -> Any:
    """The update of ``flat`` over one inner update function (shared, so that ``fit`` compiles
    once for ``flat(gradx.sgd(0.1))`` and ``flat(gradx.sgd(0.3))``)."""

    def update(
        updates: Any, state: FlatState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, FlatState]:
        if not isinstance(state, FlatState):
            raise TypeError(
                f"flat: state must be the FlatState this optimizer's init returned, got a "
                f"{type(state).__name__}; call the flat optimizer's init"
            )
        updates = as_arrays(updates)
        layout = leaf_layout(updates, max_leaf_size)
        packed_params = None
        if params is not None:
            try:
                params = params_like("flat", updates, params)
            except TreeMismatchError as e:
                raise TreeMismatchError(f"flat: {e}") from None
            for path, g, p in zip(
                *zip(*jax.tree_util.tree_leaves_with_path(updates), strict=True),
                jax.tree.leaves(params),
                strict=True,
            ):
                if g.dtype != p.dtype:
                    raise TypeError(
                        f"flat: each gradient must have its param's dtype (leaves are packed "
                        f"by dtype), got {g.dtype} for a {p.dtype} param at "
                        f"{jax.tree_util.keystr(path) or '(the root)'}; cast the gradients to "
                        "their params' dtypes"
                    )
            packed_params = pack_leaves(params, layout)
        check_signature(state, updates)
        want = len(_runs(layout, share_kernels))
        if len(state.offsets) != want:
            raise TreeMismatchError(
                f"flat: the state was built for params with {len(state.offsets)} runs of leaves "
                f"sliced at a runtime offset, but the gradients have {want}; call init with "
                "params of the gradients' structure and the same flat settings"
            )
        with inside_flat():
            out, inner_state = inner_update(
                pack_leaves(updates, layout), state.inner_state, packed_params, **extra_args
            )
        return _unpack(out, layout, state.offsets), state._replace(inner_state=inner_state)

    update.gradx_flat = True  # type: ignore[attr-defined]
    return update


def is_flat(optimizer: Any) -> bool:
    """Whether ``optimizer`` is a :func:`flat` one."""
    return getattr(getattr(optimizer, "update", None), "gradx_flat", False) is True


#: Leaves with more elements than this keep their own buffer by default: a kernel per leaf
#: costs little next to their memory traffic, and packing would copy them every step.
MAX_LEAF_SIZE = 1 << 14


#: The leaves ``fit``, ``sweep`` and ``search`` pack by themselves (:func:`packing`): at most
#: this many elements. Inside their scanned epoch a kernel costs well under a microsecond on
#: CPU, while a packed step makes four more passes over the packed elements (the gradients'
#: copy, the update buffer): 200 leaves, Adam, per step packed / leaf by leaf: 0.77× at 512
#: elements, 1.02× at 1,024, 1.28× at 2,048, 1.69× at 8,192; the first epoch compiles in
#: about half the time at every size.
FIT_MAX_LEAF_SIZE = 1 << 10


def flat(
    optimizer: optax.GradientTransformation,
    *,
    max_leaf_size: int | None = MAX_LEAF_SIZE,
    share_kernels: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``optimizer`` over a few contiguous buffers per dtype instead of leaf by leaf.

    For every dtype among the params, the leaves of that dtype with at most ``max_leaf_size``
    elements are raveled and concatenated (in ``jax.tree.leaves`` order) into 1-D buffers
    b_1, ..., b_D of at most 256 consecutive leaves each (split evenly: 1,000 leaves make
    4 buffers of 250, since XLA compiles one concatenation of n operands in time that grows
    faster than n); bigger leaves are buffers of their own, uncopied. The inner optimizer's
    state is ``optimizer.init((b_1, ..., b_D, big_1, ...))``, and a step is::

        (u_1, ..., u_D, ...), s ← optimizer.update(pack(g), s, pack(θ))
        u ← unpack(u_1, ..., u_D, ...)        # each small leaf sliced out and reshaped

    Every gradx optimizer and block treats each coordinate alike (``normalize``'s norm is one
    norm over the whole tree either way), so the numbers are those of the per-leaf path: the
    same operations on the same numbers, equal bit for bit in 22 of the 23 rows of the
    optimizer table after 6 jitted steps on CPU and within 3 ulps in the other (XLA fuses a
    long buffer and a short leaf differently, e.g. where it contracts a multiply-add). Two
    exceptions, by design: int8 moments (``state_dtype="int8"``) are quantised in blocks of
    the buffers, and bfloat16 moments rounded stochastically draw by the buffers' indices
    (the same distribution, other draws). With D
    buffers instead of L small leaves the optimizer's arithmetic is O(D) kernels instead of
    O(L); what remains per leaf is one slice of the update (fused with the apply) and the
    copy of each gradient into its buffer. XLA compiles one kernel per distinct fused
    computation and shares identical ones; a slice at a constant offset would be a kernel of
    its own for every leaf, so by default (``share_kernels``) the m leaves that share a shape
    in a buffer are cut into runs of ⌈∛m⌉ side by side, each run starts at an offset the
    program reads at run time (an int32 scalar per run in the state), the run is sliced out
    there and each leaf out of the run at a constant: runs spaced alike share their kernels,
    so about ∛m kernels are compiled and m/∛m offsets are read per step (1,000 leaves of one
    shape, 4 buffers of 250: runs of 7, 144 offsets), where a runtime offset per leaf
    would be an input and an output of the step per leaf (about 3 µs each per step on CPU).

    ``gradx.hyperparams``, ``gradx.set_hyperparams`` (also under ``vmap``, so ``gradx.sweep``
    works), ``check_hyperparams``, pickling and orbax checkpoints see the inner optimizer's
    state under :class:`FlatState`. ``gradx.fit``, ``sweep`` and ``search`` pack gradx's own
    optimizers by themselves (their ``flat`` argument), over leaves of at most
    ``FIT_MAX_LEAF_SIZE`` (1,024) elements, since inside their scanned epoch a kernel per leaf
    costs less than in a step called on its own, and give the state back in the optimizer's
    own layout; given a flat
    optimizer, it runs it as any other and returns the packed layout (continue with the same
    flat optimizer).

    Args:
      optimizer: any gradx optimizer or block (or an optax transformation that treats every
        coordinate alike).
      max_leaf_size: leaves with more elements than this (default 16,384) are not packed: a
        kernel of their own costs little next to their memory traffic, and packing would
        copy them every step. None packs every leaf.
      share_kernels: slice leaves that share a shape at runtime offsets, by runs (see
        above): compile time then grows with ∛ of the number of leaves of each shape. False:
        constant offsets, a kernel per leaf to compile.

    Returns:
      An optax transformation with the params' pytree for params, gradients and updates;
      its state is a :class:`FlatState`.

    Raises:
      TypeError: an ``optimizer`` that is not an optax ``GradientTransformation``; a
        ``share_kernels`` that is not a bool.
      ValueError: a bad ``max_leaf_size``; a gradx weight-decay ``mask`` inside (it names
        leaves, which the packed buffers no longer have): build the optimizer without the
        mask, or leave it per-leaf; a gradx block that works per leaf (``lamb``'s trust
        ratio, ``adafactor``'s factored moment and block RMS), at ``init``.
      TypeError: at ``update``, a gradient whose dtype differs from its param's (the
        param's dtype is the one ``init`` packed, so this holds without ``params`` too).
      TreeMismatchError: at ``update``, gradients whose structure or shapes differ from those
        of the params ``init`` packed (see :class:`FlatState`).

    Note:
      ``optax.flatten`` packs everything into one buffer (casting to a common dtype) and
      copies params, gradients and updates through it every step; here each dtype keeps its
      own buffers and only the gradients (and the params, for rules that read them) are
      copied in. Transforms that treat leaves differently (optax's ``masked``,
      ``multi_transform``, per-leaf clipping like ``clip_by_block_rms``) would see one leaf
      per buffer: keep those outside ``flat``. The buffers of a dtype live on one
      device: for params sharded over a mesh (``fsdp``) use the per-leaf optimizer.

    Examples:
      >>> import jax, jax.numpy as jnp, gradx
      >>> opt = gradx.flat(gradx.adam(0.1))
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> updates["w"].shape, [round(u, 4) for u in updates["b"].tolist()]
      ((3, 2), [-0.1, -0.1])
    """
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "flat: optimizer must be an optax GradientTransformation (e.g. gradx.adam(1e-3)), "
            f"got {type(optimizer).__name__} {optimizer!r}"
        )
    if max_leaf_size is not None and (
        isinstance(max_leaf_size, bool)
        or not isinstance(max_leaf_size, (int, np.integer))
        or max_leaf_size < 0
    ):
        raise ValueError(
            f"flat: max_leaf_size must be None or an integer >= 0, got {max_leaf_size!r}"
        )
    if not isinstance(share_kernels, (bool, np.bool_)):
        raise TypeError(f"flat: share_kernels must be a bool, got {share_kernels!r}")
    limit = None if max_leaf_size is None else int(max_leaf_size)
    share = bool(share_kernels)
    inner = optax.with_extra_args_support(optimizer)

    def init(params: Any) -> FlatState:
        check_arrays("flat", params, "params")
        params = as_arrays(params)
        with inside_flat():
            layout = leaf_layout(params, limit)
            return state_class(params)(
                inner_state=inner.init(pack_leaves(params, layout)),
                offsets=buffer_offsets(layout, share),
            )

    return optax.GradientTransformationExtraArgs(init, _flat_update(inner.update, limit, share))
