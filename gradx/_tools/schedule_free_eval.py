"""The point to evaluate a Schedule-Free run at: x, recovered from the params y and the state.

The state of a Schedule-Free optimizer may sit anywhere in an optimizer state: inside the
``HyperparamsState`` of ``gradx.schedule_free_adamw``, a chain, a lookahead, or
:func:`gradx.flat`'s packed layout (where z is a few buffers). This finds it, and gives x.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

from gradx._optimizers.schedule_free import ScheduleFreeState
from gradx._protocol.dtypes import coef, wide
from gradx._protocol.trees import TreeMismatchError, as_arrays
from gradx._tools.flat import FlatState, Layout, leaf_layout, pack_leaves

_FN = "schedule_free_eval_params"

#: The states whose ``b1`` and ``z`` give x: gradx's and optax.contrib's.
STATES = (ScheduleFreeState, optax.contrib.ScheduleFreeState)


def _found(state: Any, packed: Any = None) -> list[tuple[Any, Any]]:
    """Every Schedule-Free state in ``state``, each with the FlatState it is packed in (or
    None); a base optimizer's own Schedule-Free state included (that is ambiguous)."""
    out = []
    nodes = jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, (*STATES, FlatState)))
    for node in nodes:
        if isinstance(node, FlatState):
            out += _found(node.inner_state, node)
        elif isinstance(node, STATES):
            out.append((node, packed))
            out += _found(node.base_optimizer_state, packed)
    return out


def _ambiguous(count: int) -> ValueError:
    return ValueError(
        f"{_FN}: state must hold one Schedule-Free state per param, got {count} over the same "
        "params (nested or chained schedule_free blocks): which average to evaluate at is "
        "ambiguous"
    )


def find_schedule_free(state: Any) -> list[tuple[Any, Any]]:
    """Every ``(Schedule-Free state, the FlatState around it or None)`` in ``state``: empty
    when it holds none. Several are allowed unpacked only (``optax.partition`` of
    Schedule-Free optimizers over disjoint params: each z masked elsewhere); which of them
    owns each param is checked by :func:`schedule_free_eval_params`."""
    found = _found(state)
    if len(found) > 1 and any(packed is not None for _, packed in found):
        raise _ambiguous(len(found))
    return found


def _x(b1: Any, y: jax.Array, z: jax.Array) -> jax.Array:
    """x = (y − (1 − β)·z)/β, in the wider dtype of y, z and β, returned in y's."""
    b1 = jnp.asarray(b1)
    yw = wide(y, b1, z)
    x = (yw - coef(1 - b1, yw) * z.astype(yw.dtype)) / coef(b1, yw)
    return x.astype(y.dtype)


def _buffer_shapes(layout: Layout) -> tuple[tuple[int, ...], ...]:
    shapes = []
    for members in layout.members:
        _, offset, _, shape = layout.slots[members[0]]
        total = sum(layout.slots[i][2] for i in members)
        shapes.append(shape if offset is None else (total,))
    return tuple(shapes)


def _packed_layout(params: Any, buffers: Any) -> Layout:
    """The layout ``gradx.flat`` packed ``params`` into, read off the buffers' shapes.

    flat's ``max_leaf_size`` is not in its state, but only the set of leaves kept whole
    changes the layout, and each candidate set (the leaves above each size) gives its own
    buffer shapes. Layouts whose buffers have the same shapes and place every leaf alike
    are one; two that place leaves differently are refused."""
    leaves = jax.tree.leaves(params)
    sizes = sorted({int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves} - {0})
    want = tuple(tuple(np.shape(b)) for b in buffers) if isinstance(buffers, tuple) else None
    matches = {}
    for limit in [None, *(s - 1 for s in sizes)]:
        layout = leaf_layout(params, limit)
        if _buffer_shapes(layout) == want:
            matches[tuple((b, offset or 0) for b, offset, _, _ in layout.slots)] = layout
    if len(matches) != 1:
        why = "no layout of these params" if not matches else "several layouts of these params"
        raise TreeMismatchError(
            f"{_FN}: the Schedule-Free state is inside gradx.flat, and {why} packs into its "
            f"buffers of shapes {want}: pass the params the flat optimizer was built for"
        )
    return next(iter(matches.values()))


def _unpacked(buffers: tuple[jax.Array, ...], layout: Layout) -> Any:
    leaves = []
    for b, offset, size, shape in layout.slots:
        buf = buffers[b]
        part = buf if offset is None else jax.lax.slice(buf, (offset,), (offset + size,))
        leaves.append(part.reshape(shape))
    return jax.tree.unflatten(layout.treedef, leaves)


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The point x to evaluate a Schedule-Free run at, from its state and its params y.

    The params a Schedule-Free optimizer updates are y = β·x + (1 − β)·z, where the
    gradients are taken; the average x, where the loss is lowest and which training should
    return, is recovered from y and the z kept in the state::

        x = (y − (1 − β)·z) / β

    with β the ``b1`` that built y (kept in the state).

    Args:
      state: an optimizer state that holds one Schedule-Free state anywhere: that of
        :func:`gradx.schedule_free_adamw`, :func:`gradx.schedule_free_sgd` or the block
        :func:`gradx.schedule_free` (inside a ``HyperparamsState``, a chain, a lookahead,
        ``gradx.flat``'s packed layout, under ``vmap``), or ``optax.contrib``'s; or several
        over disjoint params (``optax.partition``: x where each runs, y for the other params).
      params: the params y (any pytree of arrays) the optimizer updated.

    Returns:
      x, a pytree like ``params``, each leaf in its param's dtype.

    Raises:
      ValueError: ``state`` holds no Schedule-Free state, or several over the same params.
      TreeMismatchError: ``params`` do not have z's structure and shapes.

    Note:
      Equals ``optax.contrib.schedule_free_eval_params`` on optax's state, which must be the
      Schedule-Free state itself there; gradx finds it anywhere in the state. gradx returns
      x in the params' dtype (optax: the dtype of the arithmetic, which may be wider).

    Examples:
      >>> import jax.numpy as jnp, optax, gradx
      >>> opt = gradx.schedule_free_sgd(0.5)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> state = opt.init(params)
      >>> for _ in range(3):
      ...     updates, state = opt.update(params, state, params)  # f = |w|²/2
      ...     params = optax.apply_updates(params, updates)
      >>> x = gradx.schedule_free_eval_params(state, params)
      >>> [round(v, 4) for v in x["w"].tolist()]
      [0.2729, -0.5458]
    """
    found = find_schedule_free(state)
    if not found:
        raise ValueError(
            f"{_FN}: state must hold a Schedule-Free state (of gradx.schedule_free_adamw, "
            "schedule_free_sgd, schedule_free or optax.contrib's), got a "
            f"{type(state).__name__} with none"
        )
    params = as_arrays(params)
    sf, packed = found[0]
    if packed is None:
        return _unpacked_x(params, [sf for sf, _ in found])
    layout = _packed_layout(params, sf.z)
    ys = pack_leaves(params, layout)
    return _unpacked(tuple(_x(sf.b1, y, z) for y, z in zip(ys, sf.z, strict=True)), layout)


def _unpacked_x(params: Any, states: list[Any]) -> Any:
    """x where a state's z holds the param, y where every z is masked (``optax.partition``'s
    ``MaskedNode``: that param is not Schedule-Free's)."""
    treedef = jax.tree.structure(params)
    ys = treedef.flatten_up_to(params)
    xs, owner = list(ys), [0] * len(ys)
    for sf in states:
        zs = jax.tree.leaves(sf.z, is_leaf=_masked)
        if jax.tree.structure(sf.z, is_leaf=_masked) != treedef or any(
            not _masked(z) and np.shape(y) != np.shape(z) for y, z in zip(ys, zs, strict=True)
        ):
            raise TreeMismatchError(
                f"{_FN}: params must have the structure and shapes of the z in the state, got "
                f"{treedef} for z's {jax.tree.structure(sf.z, is_leaf=_masked)} (shapes "
                f"{[np.shape(y) for y in ys]} for {[np.shape(z) for z in zs]})"
            )
        for i, z in enumerate(zs):
            if not _masked(z):
                owner[i] += 1
                xs[i] = _x(sf.b1, ys[i], z)
    if max(owner, default=0) > 1:
        raise _ambiguous(max(owner))
    return treedef.unflatten(xs)


def _masked(node: Any) -> bool:
    return isinstance(node, optax.MaskedNode)


@jax.jit
def _eval_point(state: Any, params: Any) -> Any:
    return schedule_free_eval_params(state, params)


def evaluation_point(state: Any, params: Any) -> Any:
    """Where to evaluate: :func:`schedule_free_eval_params` when ``state`` holds a
    Schedule-Free state, else ``params`` as they are (what ``gradx.fit`` evaluates and
    returns). Under a trace it is traced inline; on concrete arrays, one compiled call."""
    if not find_schedule_free(state):
        return params
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((state, params))):
        return schedule_free_eval_params(state, params)
    return _eval_point(state, params)
