"""Mesh plans of fit and sweep: where params, state and batches live on many devices.

The epoch program is one ``jax.jit`` and the SPMD partitioner inserts the collectives (the
all-reduce of a data-parallel gradient, the all-gathers of FSDP). Meshes of either axis type
work: ``Auto`` (``jax.make_mesh(..., axis_types=(Auto,))``) and ``Explicit`` (the default of
``jax.make_mesh``). ``fit``/``sweep`` run their program on the ``Auto`` view of the mesh (the
same devices) and hand results back on the mesh they were given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradx._protocol.placement import state_shardings

SpecRule = Callable[[tuple, tuple], "P | None"]


def fsdp(mesh: Mesh, axis: str | None = None) -> SpecRule:
    """A sharding rule for ``fit(shard_params=...)``: every matrix split along its largest axis.

    For each leaf of two or more dimensions, the largest dimension whose size the mesh axis
    divides is split over ``axis`` (ties: the first); vectors, scalars and leaves with no
    divisible dimension stay replicated. With the data also split over ``axis`` this is fully
    sharded data parallelism (FSDP, ZeRO-3): each device keeps 1/D of every matrix and of its
    optimizer state, and the partitioner all-gathers a matrix where a step needs it whole.

    Args:
      mesh: the mesh the params will live on.
      axis: the mesh axis to split over; by default the mesh's first axis.

    Returns:
      ``rule(path, shape) -> PartitionSpec``.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"fsdp: mesh must be a jax.sharding.Mesh, got {mesh!r}")
    axis = mesh.axis_names[0] if axis is None else axis
    if axis not in mesh.shape:
        raise ValueError(f"fsdp: axis must be one of {mesh.axis_names}, got {axis!r}")
    size = mesh.shape[axis]

    def rule(path: tuple, shape: tuple) -> P:
        del path
        if len(shape) < 2:
            return P()
        order = sorted(range(len(shape)), key=lambda i: (-shape[i], i))
        for i in order:
            if shape[i] % size == 0:
                return P(*[axis if j == i else None for j in range(len(shape))])
        return P()

    return rule


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where fit's/sweep's arrays live; hashable, part of the compiled program's key.

    ``mesh`` is the ``Auto`` view of the user's mesh, ``user_mesh`` the mesh as given.
    ``batch`` is the sharding of a minibatch (None: batches are not split, as in sweep);
    ``carry`` the treedef and shardings of (params, opt_state) (None: not constrained).
    """

    mesh: Mesh
    user_mesh: Mesh
    batch: NamedSharding | None
    carry: tuple | None


def _check_mesh(fn: str, mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{fn}: mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((8,), ('data',))), "
            f"got {mesh!r}"
        )
    return mesh


def _auto(mesh: Mesh) -> Mesh:
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def _axis_size(mesh: Mesh, entry: Any) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def _param_specs(fn: str, mesh: Mesh, shard_params: Any, params: Any) -> list:
    """One PartitionSpec per params leaf, checked against the mesh and the leaf's shape."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if shard_params is None:
        specs = [P()] * len(leaves)
    elif callable(shard_params):
        specs = [shard_params(tuple(path), tuple(np.shape(x))) for path, x in leaves]
    else:
        is_spec = lambda x: x is None or isinstance(x, P)
        try:
            specs = jax.tree.structure(params).flatten_up_to(shard_params)
        except (ValueError, TypeError):
            raise ValueError(
                f"{fn}: shard_params must be None, a function (path, shape) -> PartitionSpec, "
                f"or a pytree of PartitionSpecs with the structure of params "
                f"{jax.tree.structure(params)}, got {shard_params!r}"
            ) from None
        bad = [s for s in specs if not is_spec(s)]
        if bad:
            raise ValueError(
                f"{fn}: shard_params leaves must be PartitionSpecs or None, got {bad[0]!r}"
            )
    out = []
    for (path, leaf), spec in zip(leaves, specs, strict=True):
        name = "params" + jax.tree_util.keystr(tuple(path))
        spec = P() if spec is None else spec
        shape = tuple(np.shape(leaf))
        if not isinstance(spec, P):
            raise ValueError(
                f"{fn}: shard_params must give a PartitionSpec for {name}, got {spec!r}"
            )
        if len(spec) > len(shape):
            raise ValueError(
                f"{fn}: shard_params gives {spec} to {name} of shape {shape}: more entries "
                "than dimensions"
            )
        for i, entry in enumerate(spec):
            if entry is None:
                continue
            names = entry if isinstance(entry, tuple) else (entry,)
            unknown = [n for n in names if n not in mesh.shape]
            if unknown:
                raise ValueError(
                    f"{fn}: shard_params gives {spec} to {name}, but the mesh has no axis "
                    f"{unknown[0]!r} (its axes: {mesh.axis_names})"
                )
            size = _axis_size(mesh, entry)
            if shape[i] % size:
                raise ValueError(
                    f"{fn}: shard_params gives {spec} to {name} of shape {shape}: its "
                    f"dimension {i} ({shape[i]}) must be divisible by the {size} devices of "
                    f"mesh axis {entry!r}"
                )
        out.append(spec)
    return out


def fit_plan(fn: str, mesh: Any, shard_params: Any, params: Any) -> Plan | None:
    """The placement of a data-parallel fit, or None without a mesh (one device)."""
    if mesh is None:
        if shard_params is not None:
            raise ValueError(f"{fn}: shard_params needs a mesh, got mesh=None")
        return None
    user_mesh = _check_mesh(fn, mesh)
    mesh = _auto(user_mesh)
    specs = _param_specs(fn, mesh, shard_params, params)
    shardings = tuple(NamedSharding(mesh, s) for s in specs)
    batch = NamedSharding(mesh, P(mesh.axis_names[0]))
    return Plan(mesh, user_mesh, batch, (jax.tree.structure(params), shardings))


def sweep_plan(fn: str, mesh: Any, chunk: int, chunk_size: int | None, k: int) -> tuple:
    """(plan, chunk) of a population-parallel sweep: the grid axis split over every device."""
    if mesh is None:
        return None, chunk
    user_mesh = _check_mesh(fn, mesh)
    if jax.process_count() > 1:
        raise ValueError(
            f"{fn}: mesh must span the devices of one process, got one over "
            f"{jax.process_count()} processes (multi-host sweeps are not supported; run fit "
            "per host, or one sweep per host)"
        )
    mesh = _auto(user_mesh)
    d = mesh.size
    if chunk_size is None:
        chunk = -(-k // d) * d  # all points at once, padded to a multiple of the devices
    elif chunk_size % d:
        raise ValueError(
            f"{fn}: chunk_size must be a multiple of the mesh's {d} devices (each chunk is "
            f"split evenly over them), got {chunk_size}"
        )
    else:
        chunk = min(chunk_size, -(-k // d) * d)
    grid = NamedSharding(mesh, P(mesh.axis_names))
    return Plan(mesh, user_mesh, None, (None, (grid,))), chunk


def _put(tree: Any, shardings: Any) -> Any:
    """device_put, or a jitted reshard for arrays that span other processes."""

    def one(x: Any, s: NamedSharding) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda a: a, out_shardings=s)(x)
        return jax.device_put(x, s)

    return jax.tree.map(one, tree, shardings)


def place_data(plan: Plan | None, data: Any) -> tuple[Any, int]:
    """The data replicated on the plan's mesh, and its number of examples.

    With several processes each passes its own examples (numpy or local arrays); the data
    is their concatenation in process order, gathered once. Arrays already spanning the
    processes (``jax.make_array_from_process_local_data``) are used as they are.
    """
    if plan is None:
        return data, jax.tree.leaves(data)[0].shape[0]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        def gather(x: Any) -> Any:
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return x
            return multihost_utils.process_allgather(np.asarray(x), tiled=True)

        data = jax.tree.map(gather, data)
    replicated = NamedSharding(plan.mesh, P())
    data = _put(data, jax.tree.map(lambda _: replicated, data))
    return data, jax.tree.leaves(data)[0].shape[0]


def _carry_shardings(plan: Plan, state: Any, params: Any) -> Any:
    """(params shardings, state shardings) of a fit plan, for this params and state."""
    treedef, shardings = plan.carry
    params_shardings = jax.tree.unflatten(treedef, shardings)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
        params,
        params_shardings,
    )
    return params_shardings, state_shardings(state, abstract, plan.mesh)


def place_fit(plan: Plan | None, params: Any, opt_state: Any) -> tuple[Any, Any, Plan | None]:
    """(params, opt_state) placed by a fit plan, and the plan completed with the state's part."""
    if plan is None:
        return params, opt_state, None
    param_s, state_s = _carry_shardings(plan, opt_state, params)
    params, opt_state = _put((params, opt_state), (param_s, state_s))
    leaves, treedef = jax.tree.flatten((param_s, state_s))
    return params, opt_state, dataclasses.replace(plan, carry=(treedef, tuple(leaves)))


def place_grid(plan: Plan | None, tree: Any) -> Any:
    """Batched (params, state) of a sweep chunk, their leading grid axis split over the mesh."""
    if plan is None:
        return tree
    grid = plan.carry[1][0]
    return _put(tree, jax.tree.map(lambda _: grid, tree))


def constrain_batch(plan: Plan | None, batch: Any) -> Any:
    """Inside the program: a minibatch split over the data axis (no-op without a plan)."""
    if plan is None or plan.batch is None:
        return batch
    return jax.lax.with_sharding_constraint(batch, jax.tree.map(lambda _: plan.batch, batch))


def constrain_carry(plan: Plan | None, carry: Any) -> Any:
    """Inside the program: (params, opt_state) kept on their shardings after each step."""
    if plan is None or plan.batch is None:
        return carry
    treedef, leaves = plan.carry
    return jax.lax.with_sharding_constraint(carry, jax.tree.unflatten(treedef, leaves))


def to_user_mesh(plan: Plan | None, tree: Any) -> Any:
    """Results moved from the Auto view back onto the mesh the caller gave (no data moves)."""
    if plan is None or plan.mesh is plan.user_mesh:
        return tree

    def back(x: Any) -> Any:
        s = getattr(x, "sharding", None)
        if not isinstance(s, NamedSharding) or s.mesh != plan.mesh:
            return x
        return jax.device_put(x, NamedSharding(plan.user_mesh, s.spec))

    return jax.tree.map(back, tree)


def plan_data(
    fn: str, mesh: Any, shard_params: Any, params: Any, data: Any, batch_size: Any
) -> tuple[Plan | None, Any, int]:
    """fit's plan, and the data on its mesh with its (global) number of examples."""
    plan = fit_plan(fn, mesh, shard_params, params)
    data, n = place_data(plan, data)
    if plan is not None:
        axis = plan.mesh.axis_names[0]
        d = plan.mesh.shape[axis]
        if batch_size is None and n % d:
            raise ValueError(
                f"{fn}: the number of examples must be divisible by the {d} devices of the "
                f"mesh's data axis {axis!r} for a full-batch fit (batch_size=None), got {n}"
            )
        if isinstance(batch_size, (int, np.integer)) and batch_size % d:
            raise ValueError(
                f"{fn}: batch_size must be divisible by the {d} devices of the mesh's data "
                f"axis {axis!r}, got {batch_size}"
            )
    return plan, data, n


def put_group(fn: str, plan: Plan, stacked: np.ndarray) -> jax.Array:
    """A group of S stacked host batches, (S, B, ...), split over the data axis on axis 1.

    With several processes each passes its own batches of B examples; the global batch is
    their concatenation in process order (B × processes examples a step).
    """
    axis = plan.mesh.axis_names[0]
    d = plan.mesh.shape[axis]
    b = stacked.shape[1] * jax.process_count()
    if b % d:
        raise ValueError(
            f"{fn}: the batch size must be divisible by the {d} devices of the mesh's data "
            f"axis {axis!r}, got batches of {b} examples"
            + (f" ({stacked.shape[1]} per process)" if jax.process_count() > 1 else "")
        )
    sharding = NamedSharding(plan.mesh, P(None, axis))
    return jax.make_array_from_process_local_data(sharding, stacked)


def place_eval(plan: Plan | None, eval_data: Any) -> Any:
    """eval_data replicated on the plan's mesh (each process passing its own examples)."""
    if plan is None or eval_data is None:
        return eval_data
    return place_data(plan, eval_data)[0]


def constrain_step(plan: Plan | None, step: Callable) -> Callable:
    """``step(carry, batch)`` with its batch split over the data axis and its carry kept put."""
    if plan is None or plan.batch is None:
        return step

    def sharded(carry: Any, batch: Any) -> Any:
        carry, out = step(carry, constrain_batch(plan, batch))
        return constrain_carry(plan, carry), out

    return sharded
