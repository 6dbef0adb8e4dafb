"""``gradx.search``: random search, successive halving and population-based training.

Every gradx hyperparameter lives in the optimizer state, so a population of K differently
tuned models is one ``vmap``-ped program (the program of :func:`gradx.sweep`), and the
population is reshaped between epochs by array indexing: successive halving keeps the rows of
its survivors (``x[alive]``), population-based training copies a good member onto a bad one
(``x[source]``) and perturbs the copy's hyperparameters with :func:`gradx.set_hyperparams`.

Randomness: the shuffles use ``key`` exactly as :func:`gradx.fit` does (epoch e shuffles with
``fold_in(key, e)``), so every member sees the minibatches ``fit(..., key=key)`` would, and a
member's run can be replayed with ``fit`` (:meth:`SearchResult.replay`). The samples, PBT's
draws and the members' init keys come from keys derived from ``key``
(``split(fold_in(key, 2**31 - 1), 3)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.access import hyperparams, set_hyperparams
from gradx._training import mesh as _mesh
from gradx._training import stream as _stream
from gradx._training.fit import progress_bar
from gradx._training.inputs import (
    check_eval,
    check_function,
    check_int,
    check_key,
    check_opt_state,
    check_optimizer,
    prepare_data,
)
from gradx._training.inputs import steps_and_dropped as _batches
from gradx._training.packing import start_optimizer
from gradx._training.population import Population, check_values, pbt_step, set_rows, take_rows
from gradx._training.program import EvalFn, LossFn, Program
from gradx._training.results import Copy, Rung, ranking
from gradx._training.search_result import SearchResult
from gradx.callbacks import metric_mode
from gradx.search_space import Distribution

METHODS = ("random", "halving", "pbt")


_DERIVED = 2**31 - 1  # fold_in(key, this) seeds the samples, PBT's draws and init keys


def _method_options(method: str, given: dict[str, Any], epochs: int) -> dict[str, Any]:
    defaults = {
        "halving": {"eta": 3, "min_epochs": 1},
        "pbt": {"ready": 2, "fraction": 0.25, "perturb": (0.8, 1.25), "resample_probability": 0.25},
        "random": {},
    }
    owner = {name: m for m, names in defaults.items() for name in names}
    for name, value in given.items():
        if value is not None and owner[name] != method:
            raise ValueError(
                f"search: {name} is an option of method={owner[name]!r}, got {name}={value!r} "
                f"with method={method!r}"
            )
    opts = {n: (given[n] if given[n] is not None else d) for n, d in defaults[method].items()}
    if method == "halving":
        opts["eta"] = check_int("search", "eta", opts["eta"], 2)
        opts["min_epochs"] = check_int("search", "min_epochs", opts["min_epochs"], 1)
        if opts["min_epochs"] > epochs:
            raise ValueError(
                f"search: min_epochs must be <= epochs ({epochs}), got {opts['min_epochs']}"
            )
    if method == "pbt":
        opts["ready"] = check_int("search", "ready", opts["ready"], 1)
        f = opts["fraction"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 0.5:
            raise ValueError(f"search: fraction must be in (0, 0.5], got {f!r}")
        p = opts["resample_probability"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"search: resample_probability must be in [0, 1], got {p!r}")
        factors = opts["perturb"]
        ok = (
            isinstance(factors, (tuple, list))
            and len(factors) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in factors)
            and 0 < factors[0] < 1 < factors[1]
            and all(math.isfinite(x) for x in factors)
        )
        if not ok:
            raise ValueError(
                f"search: perturb must be two factors (down, up) with 0 < down < 1 < up, "
                f"got {factors!r}"
            )
        opts["perturb"] = (float(factors[0]), float(factors[1]))
    return opts


def search(
    loss_fn: LossFn,
    params: Any,
    optimizer: optax.GradientTransformation,
    data: Any,
    space: Mapping[str, Any],
    *,
    method: str = "random",
    num_samples: int,
    batch_size: int | None,
    epochs: int,
    key: jax.Array,
    eval_fn: EvalFn | None = None,
    eval_data: Any = None,
    metric: str = "loss",
    mode: str = "auto",
    init_fn: Callable[[jax.Array], Any] | None = None,
    opt_state: Any = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    flat: bool | None = None,
    eta: int | None = None,
    min_epochs: int | None = None,
    ready: int | None = None,
    fraction: float | None = None,
    perturb: tuple[float, float] | None = None,
    resample_probability: float | None = None,
) -> SearchResult:
    """Searches hyperparameters with a population of ``num_samples`` models in one program.

    K = ``num_samples`` members draw their hyperparameters from ``space`` and train as one
    vmapped population (the program of :func:`gradx.sweep`), all on the same shuffles.

    * ``"random"`` (Bergstra & Bengio 2012): all K train for ``epochs`` epochs.
    * ``"halving"``, successive halving (Jamieson & Talwalkar 2016; the synchronous rung of
      Hyperband and ASHA): rungs end after r, r·η, r·η², ... epochs (r = ``min_epochs``);
      at the end of each rung only the best ⌊K_i/η⌋ (at least 1) by ``metric`` train on,
      from their own params and state, until ``epochs``. The population shrinks, and so
      does the compute: ``model_epochs`` = Σᵢ K_i·(epochs of rung i).
    * ``"pbt"``, population-based training (Jaderberg et al. 2017): every ``ready`` epochs
      the members are ranked by ``metric``; each of the worst ⌊fraction·K⌋ (at least 1)
      copies the params **and optimizer state** of a member drawn uniformly from the best
      ⌊fraction·K⌋ (truncation selection), then each searched hyperparameter of the copy
      is resampled from ``space`` with probability ``resample_probability``, else
      multiplied by ``perturb[0]`` or ``perturb[1]`` (×0.8 or ×1.25, equally likely;
      clipped to the distribution's range; a ``choice`` moves to a neighbouring value).
      :attr:`SearchResult.lineage` records the copies; :meth:`SearchResult.schedule` reads
      a member's discovered schedule and :meth:`SearchResult.replay` replays it with
      :func:`gradx.fit`.

    Every sampled or perturbed value is checked against the optimizer's rule for it (and
    its relations) with :func:`gradx.set_hyperparams` before it trains.

    Args:
      loss_fn, optimizer, data, batch_size, eval_fn, eval_data, progress: as in
        :func:`gradx.fit`, except that ``data`` must be arrays in memory: a stream of
        batches (an iterable, or a function of the epoch) is fit's alone, refused here with
        a ``TypeError``. The optimizer must keep the searched hyperparameters in its state
        (any gradx optimizer).
      params: the initial params of every member; None with ``init_fn``.
      space: ``{name: distribution or number}`` (:mod:`gradx.search_space`), names as in
        :func:`gradx.hyperparams`; a number is the same for every member.
      method: ``"random"``, ``"halving"`` or ``"pbt"``.
      num_samples: K >= 1 (PBT: >= 2).
      epochs: the epochs of a full run, >= 1.
      key: JAX PRNG key. Epoch e shuffles with ``fold_in(key, e)``, as in ``fit``; the
        samples, PBT's draws and ``init_fn``'s keys are derived from it.
      metric, mode: what halving and PBT select by: a key of the history (``"loss"``, the
        training loss, or a metric of ``eval_fn`` such as a validation accuracy), at the
        last epoch before the cut; ``mode`` ``"min"``, ``"max"``, or ``"auto"`` (read from
        the name by :func:`gradx.callbacks.metric_mode`: ``"val_acc"`` is maximised,
        ``"loss"`` minimised, a name of unknown direction is refused for halving and PBT).
        NaN ranks last.
      init_fn: ``init_fn(key) -> params``: each member starts from its own params, drawn
        from its own key (:attr:`SearchResult.member_keys`), so a search also averages over
        initialisation noise; the states are ``optimizer.init`` of each member's params.
      opt_state: a state to start every member from (its searched values replaced).
      chunk_size: members trained together, as in :func:`gradx.sweep`; None for all.
      mesh: a ``jax.sharding.Mesh``: the population axis is split over its devices, as in
        :func:`gradx.sweep` (``chunk_size`` a multiple of the device count; a population
        that does not fill the devices is padded by repeating its last member).
      flat: run the optimizer packed, as :func:`gradx.fit` and :func:`gradx.sweep` do (same
        rule, same default; off with ``mesh``); the returned ``opt_state`` is in the
        optimizer's own layout.
      eta, min_epochs: halving's η >= 2 (default 3) and first rung r >= 1 (default 1).
      ready, fraction, perturb, resample_probability: PBT's epochs between exploit steps
        (default 2), truncation fraction in (0, 0.5] (default 0.25), factors (default
        (0.8, 1.25)) and resampling probability (default 0.25).

    Returns:
      A :class:`SearchResult` with ``best(metric, mode)``, the histories, the samples,
      each member's hyperparameter trajectory, the model-epochs spent, halving's rungs and
      PBT's lineage.

    Note:
      Peers (Ray Tune, Keras Tuner, Optuna) run one process or one trial per member and
      exchange checkpoints; here a copy is ``x[source]`` on the population's arrays in one
      program. Member k's run equals ``fit`` with its values up to float32 rounding (vmapped
      and unbatched programs round differently; see :func:`gradx.sweep`).
    """
    fn = "search"
    check_function(fn, "loss_fn", loss_fn)
    check_optimizer(fn, optimizer)
    mode = _check_method(fn, method, metric, mode, eval_fn)
    k = check_int(fn, "num_samples", num_samples, 2 if method == "pbt" else 1)
    epochs = check_int(fn, "epochs", epochs, 1)
    opts = _method_options(
        method,
        dict(eta=eta, min_epochs=min_epochs, ready=ready, fraction=fraction, perturb=perturb,
             resample_probability=resample_probability),
        epochs,
    )  # fmt: skip
    if key is None:
        raise ValueError(f"{fn}: key must be a JAX PRNG key (e.g. jax.random.key(0)), got None")
    key = check_key(fn, key, batch_size)
    _stream.refuse(fn, data)
    data, n = prepare_data(fn, "data", data)
    steps, dropped = _batches(fn, n, batch_size)
    eval_data = check_eval(fn, eval_fn, eval_data, data)
    if not isinstance(space, Mapping) or not space:
        raise ValueError(
            f"{fn}: space must be a non-empty dict of hyperparameter name -> distribution "
            f"(gradx.search_space) or number, got {space!r}"
        )
    sample_key, pbt_key, init_key = jax.random.split(jax.random.fold_in(key, _DERIVED), 3)
    pop_params, template, member_keys = _members(fn, init_fn, params, opt_state, k, init_key)
    opt_state = check_opt_state(fn, optimizer, template, opt_state)
    # Packed when fit would pack (gradx.flat): state0, and every member's state, in the packed
    # layout; the result's opt_state is unpacked back into the optimizer's own.
    packing, optimizer, state0 = start_optimizer(
        fn, flat, optimizer, template, opt_state, mesh, False
    )
    if method != "random" and metric != "loss":  # known before any training
        _check_metric(fn, metric, eval_fn, template, eval_data)
    known = hyperparams(state0)
    samples, dists = _sample(fn, space, known, sample_key, k)
    check_values(state0, samples, range(k), "sampled")
    dtypes = {name: np.dtype(known[name].dtype) for name in samples}
    values = {name: v.astype(dtypes[name]) for name, v in samples.items()}

    def with_values(params_k, v):
        state = state0 if opt_state is not None else optimizer.init(params_k)
        return set_hyperparams(state, **v)

    pop_states = jax.vmap(with_values)(pop_params, {n: jnp.asarray(v) for n, v in values.items()})
    if chunk_size is not None:
        chunk_size = check_int(fn, "chunk_size", chunk_size, 1)
    plan, _ = _mesh.sweep_plan(fn, mesh, k, chunk_size, k)
    update = optax.with_extra_args_support(optimizer).update
    run = _Run(
        pop=Population(
            program=Program(
                loss_fn, update, eval_fn, batch_size, steps, vmapped=True, caller=fn
            ),
            data=_mesh.place_eval(plan, data),
            eval_data=_mesh.place_eval(plan, eval_data),
            key=key, mesh=mesh, chunk_size=chunk_size,
            history={"loss": np.full((k, epochs), np.nan, np.float64)}, seconds=[],
            bar=progress_bar(progress, None, f"search ({method})"),
        ),
        params=pop_params, states=pop_states, values=values, alive=np.arange(k),
        trajectory={name: np.full((k, epochs), np.nan, np.float64) for name in values},
        population=np.zeros(epochs, np.int64), epochs_trained=np.zeros(k, np.int64),
    )  # fmt: skip
    try:
        for start, stop in _rungs(method, opts, epochs):
            run.train(start, stop)
            if stop == epochs:
                break
            if method == "halving" and len(run.alive) > 1:
                _halve(run, fn, metric, mode, stop, opts["eta"])
            if method == "pbt":
                step_key = jax.random.fold_in(pbt_key, stop)
                _exploit_and_explore(run, fn, metric, mode, stop, step_key, opts, dists, state0)
    finally:
        if run.pop.bar is not None:
            run.pop.bar.close()

    pop_states = run.states if packing is None else packing.unpack(run.states, batch_dims=1)
    pop_params, pop_states = _mesh.to_user_mesh(plan, (run.params, pop_states))
    return SearchResult(
        method=method,
        params=pop_params,
        opt_state=pop_states,
        history=run.pop.history,
        samples={n: v.astype(dtypes[n]) for n, v in samples.items()},
        trajectory=run.trajectory,
        epochs_trained=run.epochs_trained,
        population=run.population,
        model_epochs=int(run.population.sum()),
        rungs=tuple(run.rungs),
        lineage=tuple(run.lineage),
        member_keys=member_keys,
        epoch_seconds=np.asarray(run.pop.seconds),
        steps_per_epoch=steps,
        dropped_per_epoch=dropped,
    )


# ----------------------------------------------------------------------------- its parts


def _check_method(fn: str, method: str, metric: str, mode: str, eval_fn: Any) -> str:
    """The direction ``metric`` improves in (halving and PBT rank by it; random never does)."""
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
    if method != "random":
        mode = metric_mode(fn, metric, mode)
    elif mode not in ("auto", "min", "max"):
        raise ValueError(f"{fn}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if metric != "loss" and eval_fn is None:
        raise ValueError(
            f"{fn}: metric must be 'loss' without an eval_fn (the other metrics come from "
            f"eval_fn), got {metric!r}"
        )
    return mode


def _check_metric(fn: str, metric: str, eval_fn: Any, template: Any, eval_data: Any) -> None:
    shapes = jax.eval_shape(eval_fn, template, eval_data)
    names = sorted(shapes) if isinstance(shapes, Mapping) else ["eval"]
    if metric not in names:
        raise ValueError(
            f"{fn}: metric must be 'loss' or a metric of eval_fn {names}, got {metric!r}"
        )


def _members(fn: str, init_fn: Any, params: Any, opt_state: Any, k: int, init_key: jax.Array):
    """The members' params (leading axis K), one member's as a template, and their init keys
    (None without ``init_fn``: every member starts from ``params``)."""
    if init_fn is None:
        if params is None:
            raise ValueError(f"{fn}: params must be a pytree of arrays (or pass init_fn), got None")
        pop_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *jnp.shape(x))), params)
        return pop_params, params, None
    if params is not None:
        raise ValueError(f"{fn}: params must be None with init_fn (each member draws its own)")
    if opt_state is not None:
        raise ValueError(
            f"{fn}: opt_state must be None with init_fn (each member's state "
            "is optimizer.init of its own params)"
        )
    member_keys = jax.random.split(init_key, k)
    pop_params = jax.vmap(init_fn)(member_keys)
    return pop_params, jax.tree.map(lambda x: x[0], pop_params), member_keys


def _sample(fn: str, space: Mapping[str, Any], known: Mapping[str, Any], key: jax.Array, k: int):
    """``(samples, distributions)``: K values of each name of ``space`` (a number repeated)."""
    samples: dict[str, np.ndarray] = {}
    dists: dict[str, Distribution] = {}
    for i, (name, dist) in enumerate(space.items()):
        if name not in known:
            raise ValueError(
                f"{fn}: space keys must be hyperparameters of the optimizer's state "
                f"{sorted(known)} (gradx.hyperparams), got {name!r}"
            )
        if isinstance(dist, Distribution):
            dists[name] = dist
            samples[name] = dist.sample(jax.random.fold_in(key, i), k)
        elif isinstance(dist, (int, float, np.integer, np.floating)) and not isinstance(dist, bool):
            samples[name] = np.full(k, dist, np.float64)
        else:
            raise ValueError(
                f"{fn}: space[{name!r}] must be a distribution of gradx.search_space or a "
                f"number, got {dist!r}"
            )
    return samples, dists


def _rungs(method: str, opts: dict[str, Any], epochs: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` epochs trained between two decisions: PBT's every ``ready``
    epochs, halving's rungs at min_epochs·ηⁱ, random search's one segment."""
    if method == "pbt":
        bounds = [*range(opts["ready"], epochs, opts["ready"]), epochs]
    elif method == "halving":
        bounds, b = [], opts["min_epochs"]
        while b < epochs:
            bounds.append(b)
            b *= opts["eta"]
        bounds.append(epochs)
    else:
        bounds = [epochs]
    return list(zip([0, *bounds[:-1]], bounds, strict=True))


@dataclasses.dataclass
class _Run:
    """A search in progress: the population, its live rows, and the records of the result."""

    pop: Population
    params: Any  # every member's params, leading axis K
    states: Any  # every member's optimizer state, leading axis K
    values: dict[str, np.ndarray]  # each member's current hyperparameters, shape (K,)
    alive: np.ndarray  # the rows still training (halving drops rows)
    trajectory: dict[str, np.ndarray]  # each member's hyperparameters per epoch, (K, epochs)
    population: np.ndarray  # members trained in each epoch, (epochs,)
    epochs_trained: np.ndarray  # (K,)
    rungs: list[Rung] = dataclasses.field(default_factory=list)
    lineage: list[Copy] = dataclasses.field(default_factory=list)

    def train(self, start: int, stop: int) -> None:
        """Trains the live rows from epoch ``start`` to ``stop`` and records it."""
        alive, everyone = self.alive, len(self.alive) == len(self.epochs_trained)
        tree = (self.params, self.states)
        p, s = self.pop.train(*(tree if everyone else take_rows(tree, alive)), alive, start, stop)
        self.params, self.states = (p, s) if everyone else set_rows(tree, alive, (p, s))
        for name, v in self.values.items():
            self.trajectory[name][alive, start:stop] = v[alive, None]
        self.population[start:stop] = len(alive)
        self.epochs_trained[alive] = stop

    def scores(self, fn: str, metric: str, epoch: int) -> np.ndarray:
        """The live rows' ``metric`` after ``epoch`` epochs."""
        history = self.pop.history
        if metric not in history:
            raise ValueError(
                f"{fn}: metric must be one of {sorted(history)} (the history's keys), got "
                f"{metric!r}"
            )
        return history[metric][self.alive, epoch - 1]


def _halve(run: _Run, fn: str, metric: str, mode: str, stop: int, eta: int) -> None:
    """Successive halving's rung: the best 1/η of the live rows go on."""
    scores = run.scores(fn, metric, stop)
    keep = max(1, len(run.alive) // eta)
    kept = np.sort(run.alive[ranking(scores, mode)[:keep]])
    run.rungs.append(Rung(stop, run.alive, scores, kept))
    run.alive = kept


def _exploit_and_explore(run, fn, metric, mode, stop, key, opts, dists, state0) -> None:
    """PBT's step: bad members copy good ones and perturb their hyperparameters."""
    dtypes = {name: v.dtype for name, v in run.values.items()}
    run.params, run.states, copies = pbt_step(
        key, stop, run.scores(fn, metric, stop), mode, opts, run.values, dists, dtypes, state0,
        run.params, run.states,
    )  # fmt: skip
    run.lineage.extend(copies)
