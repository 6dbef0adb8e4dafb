"""``gradx.sweep``: one model per point of a hyperparameter grid, in one vmapped program."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.access import hyperparams, set_hyperparams
from gradx._training import mesh as _mesh
from gradx._training import stream as _stream
from gradx._training.fit import progress_bar, progress_postfix
from gradx._training.inputs import (
    check_eval,
    check_flag,
    check_function,
    check_int,
    check_key,
    check_opt_state,
    check_optimizer,
    fresh_copy,
    prepare_data,
    rule_error,
    steps_and_dropped,
)
from gradx._training.packing import start_optimizer
from gradx._training.program import EvalFn, LossFn, Program, minibatch_indices, run_epoch_program
from gradx._training.results import SweepResult


def _grid_points(fn: str, grid: Mapping[str, Any], state: Any) -> dict[str, np.ndarray]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(
            f"{fn}: grid must be a non-empty dict of hyperparameter name -> 1-D array, got {grid!r}"
        )
    known = hyperparams(state)
    axes = {}
    for name, values in grid.items():
        if name not in known:
            raise ValueError(
                f"{fn}: grid keys must be hyperparameters of the optimizer's state "
                f"{sorted(known)} (gradx.hyperparams), got {name!r}; sweep needs an optimizer "
                "that keeps its hyperparameters in its state, such as any gradx optimizer"
            )
        array = np.asarray(values)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"{fn}: grid[{name!r}] must be a non-empty 1-D array, got shape {array.shape}"
            )
        for i, value in enumerate(array):  # the optimizer's own rule for each concrete value
            try:
                set_hyperparams(state, **{name: value.item()})
            except (ValueError, TypeError) as e:
                error = rule_error(fn, e, {name: f"grid[{name!r}]"}, f" (at index {i})")
                if error is None:
                    error = ValueError(
                        f"{fn}: grid[{name!r}] must hold values the optimizer's state can take, "
                        f"got {value.item()!r} at index {i}: {e}"
                    )
                raise error from None
        axes[name] = array
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    return {name: m.reshape(-1) for name, m in zip(axes, mesh, strict=True)}


def sweep(
    loss_fn: LossFn,
    params: Any,
    optimizer: optax.GradientTransformation,
    data: Any,
    grid: Mapping[str, Any],
    *,
    batch_size: int | None,
    epochs: int,
    key: jax.Array | None,
    chunk_size: int | None = None,
    eval_fn: EvalFn | None = None,
    eval_data: Any = None,
    opt_state: Any = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    diagnostics: bool = False,
    flat: bool | None = None,
) -> SweepResult:
    """Trains one model per point of a hyperparameter grid, many at once, under ``vmap``.

    ``grid`` maps hyperparameter names (as in ``gradx.hyperparams(state)``) to 1-D arrays;
    their Cartesian product, K points, is swept. Every point starts from the same params
    and state; only its hyperparameters differ, written into the state with
    ``gradx.set_hyperparams`` under ``jax.vmap``, so the optimizer's ``update`` runs batched
    over the K states in one program. All points see the same shuffles (the same ``key``),
    so their histories are comparable, and point k equals ``fit`` with that point's values
    up to float32 rounding: a batched program rounds differently from an unbatched one. In a
    stable run the two agree to about 1e-5 relative (tested at small learning rates over a few
    epochs); at a learning rate where training is chaotic the difference grows until the two
    runs are unrelated (Adam at 0.1 on the digits network: final losses 0.156 and 0.060), as
    any float change, such as another CPU, would make them.

    The progress bar shows the point with the lowest training loss in the last epoch, its
    index and its eval metrics.

    The K points are trained ``chunk_size`` at a time (all at once by default): memory
    grows with the chunk, not with K. The last chunk is padded by repeating its last point,
    so every chunk runs the same compiled program; padded results are discarded.

    ``loss_fn``, ``params``, ``optimizer``, ``data``, ``batch_size``, ``epochs``, ``key``,
    ``eval_fn``, ``eval_data``, ``opt_state`` and ``progress`` are as in :func:`fit`, except
    that ``data`` must be arrays in memory: a stream of batches (an iterable, or a function
    of the epoch) is fit's alone, refused here with a ``TypeError``.

    Args:
      grid: ``{name: 1-D array}``; each value must satisfy the optimizer's rule for it.
      chunk_size: grid points trained together, >= 1, or None for all K.
      mesh: a ``jax.sharding.Mesh``: each chunk's grid axis is split over all its devices
        (population parallel; data replicated). ``chunk_size`` must then be a multiple of
        the device count D; by default one chunk of K rounded up to a multiple of D,
        padded as the last chunk is. One process only.
      diagnostics: record per epoch and per point the norms and α_ef quantiles, as in
        :func:`fit` (each history entry of shape ``(K, epochs)``).
      flat: run the optimizer packed, as :func:`fit` does (same rule, same default; off
        with ``mesh``); the returned ``opt_state`` is in the optimizer's own layout.

    Returns:
      A :class:`SweepResult`: params, states and histories with a leading axis of length K,
      the grid values per point, and ``best(metric, mode)`` to pick a point.

    Examples:
      Three learning rates of SGD, trained in one program:

      >>> import jax, jax.numpy as jnp, gradx
      >>> x = jnp.linspace(-1.0, 1.0, 32)[:, None]
      >>> y = 3.0 * x
      >>> def loss_fn(params, batch):
      ...     xb, yb = batch
      ...     return gradx.losses.mse(xb @ params["w"], yb)
      >>> result = gradx.sweep(
      ...     loss_fn, {"w": jnp.zeros((1, 1))}, gradx.sgd(0.1), (x, y),
      ...     {"learning_rate": jnp.array([0.01, 0.1, 1.0])},
      ...     batch_size=8, epochs=5, key=jax.random.key(0), progress=False,
      ... )
      >>> result.history["loss"].shape  # (K, epochs)
      (3, 5)
      >>> best = result.best("loss")
      >>> best.index, best.values
      (2, {'learning_rate': 1.0})
    """
    fn = "sweep"
    check_function(fn, "loss_fn", loss_fn)
    check_optimizer(fn, optimizer)
    _stream.refuse(fn, data)
    data, n = prepare_data(fn, "data", data)
    epochs = check_int(fn, "epochs", epochs, 1)
    steps, dropped = steps_and_dropped(fn, n, batch_size)
    key = check_key(fn, key, batch_size)
    eval_data = check_eval(fn, eval_fn, eval_data, data)
    diagnostics = check_flag(fn, "diagnostics", diagnostics)
    opt_state = check_opt_state(fn, optimizer, params, opt_state)
    packing, optimizer, state0 = start_optimizer(
        fn, flat, optimizer, params, opt_state, mesh, diagnostics
    )
    points = _grid_points(fn, grid, state0)
    k = len(next(iter(points.values())))
    chunk = k if chunk_size is None else min(check_int(fn, "chunk_size", chunk_size, 1), k)
    plan, chunk = _mesh.sweep_plan(fn, mesh, chunk, chunk_size, k)
    data, eval_data = _mesh.place_eval(plan, data), _mesh.place_eval(plan, eval_data)
    chunks = math.ceil(k / chunk)
    update = optax.with_extra_args_support(optimizer).update
    program = Program(
        loss_fn, update, eval_fn, batch_size, steps, vmapped=True, diagnostics=diagnostics,
        caller=fn,
    )  # fmt: skip
    dtypes = {name: hyperparams(state0)[name].dtype for name in points}

    def start(values):
        # Fresh buffers for every chunk: the epoch program donates them.
        batched_state = jax.vmap(lambda v: set_hyperparams(state0, **v))(values)
        batched_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (chunk, *jnp.shape(x))), params)
        return fresh_copy((batched_params, batched_state))

    results, seconds = [], []
    history: dict[str, list[np.ndarray]] = {}
    bar = progress_bar(progress, chunks * epochs, "sweep")
    try:
        for c in range(chunks):
            index = np.minimum(np.arange(c * chunk, (c + 1) * chunk), k - 1)  # pad: repeat
            values = {name: jnp.asarray(v[index], dtypes[name]) for name, v in points.items()}
            p, s = _mesh.place_grid(plan, start(values))
            chunk_history: dict[str, list[np.ndarray]] = {"loss": []}
            chunk_seconds = []
            for epoch in range(epochs):
                t0 = time.perf_counter()
                batches = minibatch_indices(program, key, epoch, data)
                p, s, loss, metrics = run_epoch_program(program, p, s, data, eval_data, batches)
                loss = np.asarray(loss, np.float64)  # as fit's history
                metrics = {name: np.asarray(v, np.float64) for name, v in metrics.items()}
                chunk_seconds.append(time.perf_counter() - t0)
                chunk_history["loss"].append(loss)
                for name, v in metrics.items():
                    chunk_history.setdefault(name, []).append(v)
                if bar is not None:
                    # One point, the lowest finite training loss, with its own metrics (each
                    # metric's min over the grid could be another point's, e.g. the worst
                    # accuracy); ties and padding go to the first point.
                    i = int(np.argmin(np.where(np.isfinite(loss), loss, np.inf)))
                    shown = progress_postfix(
                        float(loss[i]), {n: float(v[i]) for n, v in metrics.items()}
                    )
                    bar.set_postfix({"point": str(int(index[i])), **shown}, refresh=False)
                    bar.update()
            used = min(chunk, k - c * chunk)
            results.append(jax.tree.map(lambda x, used=used: x[:used], (p, s)))
            for name, rows in chunk_history.items():
                history.setdefault(name, []).append(np.stack(rows, axis=1)[:used])
            seconds.append(chunk_seconds)
    finally:
        if bar is not None:
            bar.close()
    params_out, state_out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *results)
    if packing is not None:
        state_out = packing.unpack(state_out, batch_dims=1)
    params_out, state_out = _mesh.to_user_mesh(plan, (params_out, state_out))
    return SweepResult(
        params=params_out,
        opt_state=state_out,
        history={name: np.concatenate(parts) for name, parts in history.items()},
        grid=points,
        epoch_seconds=np.asarray(seconds),
        steps_per_epoch=steps,
        dropped_per_epoch=dropped,
    )
