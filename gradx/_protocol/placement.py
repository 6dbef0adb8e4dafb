"""Placement of optimizer states on a mesh: every state leaf that mirrors a param follows it.

gradx builds no communication of its own. Params are ``jax.Array``s placed on a
``jax.sharding.Mesh`` with ``NamedSharding``s; the optimizer's state is placed like them:

* a state leaf that mirrors a param (same key path suffix, same shape: moments, traces,
  Rprop's step sizes, lookahead's slow weights) gets that param's ``NamedSharding``;
* every other leaf (step counts, hyperparameters, lookahead's phase and fitted alpha) is
  replicated: ``NamedSharding(mesh, P())``;
* an int8 moment (``state_dtype="int8"``) of a param: its codes as the param, its absmax
  with their blocks where the blocks do not straddle shards (see ``quantized.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradx._protocol.quantized import absmax_sharding, is_quantized


def _named_mesh(params: Any) -> Mesh | None:
    """The mesh of the concrete params placed with a NamedSharding, or None."""
    mesh = None
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.core.Tracer) or not isinstance(leaf, jax.Array):
            continue
        sharding = leaf.sharding
        if isinstance(sharding, NamedSharding):
            if mesh is not None and sharding.mesh != mesh:
                return None  # several meshes: not ours to resolve; jit will say
            mesh = sharding.mesh
    return mesh


def _param_index(params: Any) -> list[tuple[tuple, tuple, Any]]:
    """[(key path, shape, sharding or None)] of the params, longest path first."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        sharding = getattr(leaf, "sharding", None)
        if isinstance(leaf, jax.core.Tracer) or not isinstance(sharding, NamedSharding):
            sharding = None
        out.append((tuple(path), tuple(np.shape(leaf)), sharding))
    return sorted(out, key=lambda item: -len(item[0]))


def _mirrored(index: list, path: tuple, shape: tuple) -> Any:
    """The sharding of the param a state leaf at ``path`` of ``shape`` mirrors, or None."""
    for param_path, param_shape, sharding in index:
        n = len(param_path)
        if param_shape == shape and (n == 0 or path[-n:] == param_path):
            return sharding
    return None


def state_shardings(state: Any, params: Any, mesh: Mesh | None = None) -> Any:
    """The ``NamedSharding`` each leaf of an optimizer state should have, for sharded params.

    A state leaf mirrors a param when the param's key path ends its own key path and the
    shapes are equal (``state.inner_state[0].mean['w']`` mirrors ``params['w']``): it gets
    that param's sharding. Every other leaf (counts, hyperparameters) is replicated,
    ``NamedSharding(mesh, P())``.

    Use it to place a state, ``jax.device_put(state, state_shardings(state, params))``, or
    as ``out_shardings`` of a jitted init on an ``Auto``-axis mesh, where the partitioner
    cannot see that ``zeros_like(p)`` should be sharded like ``p``::

        shapes = jax.eval_shape(opt.init, params)
        state = jax.jit(opt.init, out_shardings=state_shardings(shapes, params))(params)

    Args:
      state: an optimizer state, concrete or abstract (``jax.eval_shape``).
      params: the params, concrete ``jax.Array`` leaves placed with ``NamedSharding``.
      mesh: the mesh for the replicated leaves; by default the params' mesh.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``state``.
    """
    mesh = _named_mesh(params) if mesh is None else mesh
    if mesh is None:
        raise ValueError(
            "state_shardings: params must be jax.Arrays placed on one mesh with NamedShardings "
            "(jax.device_put(x, NamedSharding(mesh, spec))), got none"
        )
    replicated = NamedSharding(mesh, P())
    index = _param_index(params)

    def pick(path: tuple, leaf: Any) -> Any:
        if is_quantized(leaf):  # codes like the param they mirror, absmax with their blocks
            shape = tuple(np.shape(leaf.codes))
            codes = _mirrored(index, tuple(path), shape)
            absmax = absmax_sharding(codes, shape)
            return type(leaf)(
                codes=replicated if codes is None else codes,
                absmax=replicated if absmax is None else absmax,
            )
        shape = tuple(np.shape(leaf))
        sharding = _mirrored(index, tuple(path), shape) if shape else None
        return replicated if sharding is None else sharding

    return jax.tree_util.tree_map_with_path(pick, state, is_leaf=is_quantized)


def _equivalent(a: Any, b: NamedSharding, ndim: int) -> bool:
    return isinstance(a, jax.sharding.Sharding) and a.is_equivalent_to(b, ndim)


def shard_like_params(state: Any, params: Any) -> Any:
    """``state`` with every leaf placed as :func:`state_shardings` says (eagerly).

    Leaves already placed so are kept (no copy). A no-op when the params are not placed on a
    mesh, and under ``jit`` (tracers carry no placement to move; see :func:`state_shardings`
    for jitted inits). Every gradx optimizer's ``init`` calls it, so ``opt.init(params)`` on
    sharded params returns a state sharded like them with replicated scalars; call it on the
    state of your own blocks or of an optax transform.
    """
    mesh = _named_mesh(params)
    if mesh is None or mesh.size == 1:
        return state
    shardings = state_shardings(state, params, mesh)

    def put(leaf: Any, sharding: NamedSharding) -> Any:
        if isinstance(leaf, jax.core.Tracer) or not isinstance(leaf, jax.Array):
            return leaf
        if _equivalent(leaf.sharding, sharding, leaf.ndim):
            return leaf
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, state, shardings)
