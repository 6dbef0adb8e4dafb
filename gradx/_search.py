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
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx import _sharding
from gradx._core import hyperparams, set_hyperparams
from gradx.callbacks import metric_mode
from gradx.search_space import Distribution
from gradx.train import (
    BestPoint,
    EvalFn,
    FitResult,
    LossFn,
    _best_point,
    _check_int,
    _check_key,
    _check_optimizer,
    _minibatches,
    _postfix,
    _prepare_data,
    _Program,
    _progress,
    _rule_error,
    _run_epoch,
    _start,
    fit,
)
from gradx.train import _plan as _batches

__all__ = ["Copy", "Rung", "SearchResult", "Segment", "search"]

METHODS = ("random", "halving", "pbt")
_DERIVED = 2**31 - 1  # fold_in(key, this) seeds the samples, PBT's draws and init keys


# ----------------------------------------------------------------------------- results


class Copy(NamedTuple):
    """One exploit step of PBT: after ``epoch`` epochs, ``member`` took the params and the
    optimizer state of ``source`` and continued with the hyperparameters ``values``."""

    epoch: int
    member: int
    source: int
    values: dict[str, float]


class Rung(NamedTuple):
    """One cut of successive halving: after ``epoch`` epochs, of ``members`` (scored
    ``scores`` by the metric) only ``kept`` trained on."""

    epoch: int
    members: np.ndarray
    scores: np.ndarray
    kept: np.ndarray


class Segment(NamedTuple):
    """Epochs ``start`` to ``stop − 1`` of a member's run: trained as member ``member`` (its
    own or an ancestor), with constant hyperparameters ``values``."""

    start: int
    stop: int
    member: int
    values: dict[str, float]


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What :func:`search` returns: K members, stacked.

    Attributes:
      method: ``"random"``, ``"halving"`` or ``"pbt"``.
      params, opt_state: each member's params and state when it stopped training, leading
        axis K (halving: an eliminated member's are those of its last rung).
      history: ``{name: (K, epochs)}`` like :attr:`gradx.SweepResult.history`; NaN in the
        epochs a member did not train (halving). PBT: the row of member k is the run that
        ended as member k only up to its last copy; before it, see :meth:`schedule`.
      samples: ``{name: (K,)}``, the hyperparameters drawn for each member at the start.
      trajectory: ``{name: (K, epochs)}``, the value member k used in each epoch (NaN where
        it did not train).
      epochs_trained: ``(K,)``, the epochs each member trained.
      population: ``(epochs,)``, the members training in each epoch.
      model_epochs: Σ over epochs of the population, the compute spent.
      rungs: halving's cuts (:class:`Rung`), in order.
      lineage: PBT's copies (:class:`Copy`), in order.
      member_keys: with ``init_fn``, the key each member's params were drawn from.
      epoch_seconds: wall time of each population epoch (of each chunk), in order.
      steps_per_epoch, dropped_per_epoch: as in :class:`gradx.FitResult`.
    """

    method: str
    params: Any
    opt_state: Any
    history: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    trajectory: dict[str, np.ndarray]
    epochs_trained: np.ndarray
    population: np.ndarray
    model_epochs: int
    rungs: tuple[Rung, ...]
    lineage: tuple[Copy, ...]
    member_keys: Any
    epoch_seconds: np.ndarray
    steps_per_epoch: int
    dropped_per_epoch: int

    def __len__(self) -> int:
        return len(self.epochs_trained)

    def best(self, metric: str = "loss", mode: str = "auto") -> BestPoint:
        """The member with the best final-epoch value of ``history[metric]``.

        Only members that trained to the last epoch compete (halving's survivors). NaN or
        infinite values never win; ties go to the first member. ``mode``: ``"min"``,
        ``"max"``, or ``"auto"``, read from the name by :func:`gradx.callbacks.metric_mode`
        (``"val_acc"`` is maximised, ``"loss"`` minimised, a name of unknown direction is
        refused).

        Returns:
          ``BestPoint(index, values, score)``; ``values`` are the member's hyperparameters
          in the last epoch (for PBT, the end of its discovered schedule).
        """
        return _best_point(
            "SearchResult.best",
            self.history,
            metric,
            mode,
            {name: v[:, -1] for name, v in self.trajectory.items()},
            "for some member, got none",
        )

    def schedule(self, member: int) -> list[Segment]:
        """The run that ended as ``member``, as segments of constant hyperparameters.

        Follows the lineage back: after each copy onto the member, its past is its source's.
        Random search and halving: one segment.
        """
        k = len(self)
        if isinstance(member, bool) or not isinstance(member, (int, np.integer)):
            raise ValueError(f"SearchResult.schedule: member must be an integer, got {member!r}")
        if not 0 <= member < k:
            raise ValueError(f"SearchResult.schedule: member must be in [0, {k}), got {member}")
        current, stop, segments = int(member), int(self.epochs_trained[member]), []
        for copy in reversed(self.lineage):
            if copy.member == current and copy.epoch < stop:
                segments.append(
                    Segment(copy.epoch, stop, current, self._values(current, copy.epoch))
                )
                current, stop = copy.source, copy.epoch
        segments.append(Segment(0, stop, current, self._values(current, 0)))
        return segments[::-1]

    def _values(self, member: int, epoch: int) -> dict[str, float]:
        return {name: v[member, epoch].item() for name, v in self.trajectory.items()}

    def replay(
        self,
        member: int,
        loss_fn: LossFn,
        params: Any,
        optimizer: optax.GradientTransformation,
        data: Any,
        *,
        batch_size: int | None,
        key: jax.Array,
        init_fn: Callable[[jax.Array], Any] | None = None,
        eval_fn: EvalFn | None = None,
        eval_data: Any = None,
        opt_state: Any = None,
        progress: bool = False,
    ) -> FitResult:
        """``member``'s run, replayed on one model with :func:`gradx.fit`.

        One ``fit`` per segment of :meth:`schedule`: the hyperparameters are written into
        the state with :func:`gradx.set_hyperparams` and the next ``fit`` continues with
        ``initial_epoch=`` the segment's start, so the shuffles continue. Pass the arguments
        the search had (``params`` is ignored with ``init_fn``; ``opt_state`` is the state
        the search started from, if it was given one). The result equals the member's run
        up to float32 rounding (a vmapped program rounds differently from an unbatched one;
        see :func:`gradx.sweep`).

        Returns:
          A :class:`gradx.FitResult` over all epochs of the run.
        """
        segments = self.schedule(member)
        if init_fn is not None:
            if self.member_keys is None:
                raise ValueError(
                    "SearchResult.replay: init_fn needs a search run with init_fn, got a "
                    "search without one"
                )
            params = init_fn(self.member_keys[segments[0].member])
        state = optimizer.init(params) if opt_state is None else opt_state
        parts: list[FitResult] = []
        for seg in segments:
            state = set_hyperparams(state, **seg.values)
            run = fit(
                loss_fn, params, optimizer, data, batch_size=batch_size, epochs=seg.stop,
                key=key, eval_fn=eval_fn, eval_data=eval_data, opt_state=state,
                initial_epoch=seg.start, progress=progress,
            )  # fmt: skip
            params, state = run.params, run.opt_state
            parts.append(run)
        return FitResult(
            params=params,
            opt_state=state,
            history={n: np.concatenate([p.history[n] for p in parts]) for n in parts[0].history},
            epoch_seconds=np.concatenate([p.epoch_seconds for p in parts]),
            steps_per_epoch=parts[-1].steps_per_epoch,
            dropped_per_epoch=parts[-1].dropped_per_epoch,
        )


def _ranking(scores: np.ndarray, mode: str) -> np.ndarray:
    """Indices best first; NaN and infinities last; ties keep index order."""
    scores = np.asarray(scores, np.float64)
    keyed = np.where(np.isfinite(scores), scores if mode == "min" else -scores, np.inf)
    return np.argsort(keyed, kind="stable")


# ----------------------------------------------------------------------------- the population


@dataclasses.dataclass
class _Population:
    """The fixed context of a search: program, data, placement, bookkeeping."""

    program: _Program
    data: Any
    eval_data: Any
    key: Any
    mesh: Any
    chunk_size: int | None
    history: dict[str, np.ndarray]
    seconds: list[float]
    bar: Any

    def train(self, params: Any, states: Any, members: np.ndarray, e0: int, e1: int):
        """Epochs e0..e1−1 of a population whose rows are ``members``; records history."""
        fn = "search"
        k = len(members)
        chunk = k if self.chunk_size is None else min(self.chunk_size, k)
        plan, chunk = _sharding.sweep_plan(fn, self.mesh, chunk, self.chunk_size, k)
        outs = []
        for c in range(math.ceil(k / chunk)):
            index = np.minimum(np.arange(c * chunk, (c + 1) * chunk), k - 1)  # pad: repeat
            # Fresh buffers (the epoch program donates them), placed on the mesh.
            p, s = _sharding.place_grid(plan, _rows((params, states), index))
            used = min(chunk, k - c * chunk)
            rows = members[c * chunk : c * chunk + used]
            for epoch in range(e0, e1):
                t0 = time.perf_counter()
                batches = _minibatches(self.program, self.key, epoch, self.data)
                p, s, loss, metrics = _run_epoch(
                    self.program, p, s, self.data, self.eval_data, batches
                )
                out = {"loss": np.asarray(loss), **{n: np.asarray(v) for n, v in metrics.items()}}
                self.seconds.append(time.perf_counter() - t0)
                for name, v in out.items():
                    if name not in self.history:
                        self.history[name] = np.full_like(self.history["loss"], np.nan)
                    self.history[name][rows, epoch] = v[:used]
                if self.bar is not None:
                    i = int(np.argmin(np.where(np.isfinite(out["loss"]), out["loss"], np.inf)))
                    shown = _postfix(
                        float(out["loss"][i]),
                        {n: float(v[i]) for n, v in out.items() if n != "loss"},
                    )
                    self.bar.set_postfix(
                        {"member": str(int(rows[min(i, used - 1)])), **shown}, refresh=False
                    )
                    self.bar.update()
            outs.append(jax.tree.map(lambda x, used=used: x[:used], (p, s)))
        if len(outs) == 1:
            return outs[0]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)


def _rows(tree: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of every leaf: new buffers."""
    return jax.tree.map(lambda x: x[index], tree)


def _set_rows(tree: Any, index: np.ndarray, rows: Any) -> Any:
    """``tree`` with rows ``index`` of every leaf replaced by ``rows``."""
    return jax.tree.map(lambda x, y: x.at[index].set(y), tree, rows)


@jax.jit
def _exploit(params: Any, states: Any, source: jax.Array, values: dict[str, jax.Array]):
    """Row k of the population becomes row ``source[k]``, then takes hyperparameters
    ``values[name][k]``: a copy is exact (a gather), and only the hyperparameters change."""
    params, states = jax.tree.map(lambda x: x[source], (params, states))
    states = jax.vmap(lambda s, v: set_hyperparams(s, **v))(states, values)
    return params, states


def _check_values(state0: Any, values: dict[str, np.ndarray], rows: Any, what: str) -> None:
    """Each member's values against the optimizer's rules and relations (set_hyperparams)."""
    for k in rows:
        point = {name: v[k].item() for name, v in values.items()}
        try:
            set_hyperparams(state0, **point)
        except (ValueError, TypeError) as e:
            where = {name: f"space[{name!r}]" for name in point}
            error = _rule_error("search", e, where, f" (the {what} value of member {k})")
            if error is not None:  # one value breaks its rule: name the space's key
                raise error from None
            raise ValueError(
                f"search: the {what} hyperparameters of member {k}, {point}, cannot be set "
                f"in the optimizer's state: {e}"
            ) from None


# ----------------------------------------------------------------------------- search


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
        opts["eta"] = _check_int("search", "eta", opts["eta"], 2)
        opts["min_epochs"] = _check_int("search", "min_epochs", opts["min_epochs"], 1)
        if opts["min_epochs"] > epochs:
            raise ValueError(
                f"search: min_epochs must be <= epochs ({epochs}), got {opts['min_epochs']}"
            )
    if method == "pbt":
        opts["ready"] = _check_int("search", "ready", opts["ready"], 1)
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
        :func:`gradx.fit`. The optimizer must keep the searched hyperparameters in its state
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
    _check_optimizer(fn, optimizer)
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
    if method != "random":  # halving and PBT rank by metric; random search never does
        mode = metric_mode(fn, metric, mode)
    elif mode not in ("auto", "min", "max"):
        raise ValueError(f"{fn}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if metric != "loss" and eval_fn is None:
        raise ValueError(
            f"{fn}: metric must be 'loss' without an eval_fn (the other metrics come from "
            f"eval_fn), got {metric!r}"
        )
    k = _check_int(fn, "num_samples", num_samples, 2 if method == "pbt" else 1)
    epochs = _check_int(fn, "epochs", epochs, 1)
    opts = _method_options(
        method,
        dict(eta=eta, min_epochs=min_epochs, ready=ready, fraction=fraction, perturb=perturb,
             resample_probability=resample_probability),
        epochs,
    )  # fmt: skip
    if key is None:
        raise ValueError(f"{fn}: key must be a JAX PRNG key (e.g. jax.random.key(0)), got None")
    key = _check_key(fn, key, batch_size)
    data, n = _prepare_data(fn, "data", data)
    steps, dropped = _batches(fn, n, batch_size)
    if eval_fn is not None:
        eval_data = data if eval_data is None else jax.tree.map(jnp.asarray, eval_data)
    if not isinstance(space, Mapping) or not space:
        raise ValueError(
            f"{fn}: space must be a non-empty dict of hyperparameter name -> distribution "
            f"(gradx.search_space) or number, got {space!r}"
        )
    sample_key, pbt_key, init_key = jax.random.split(jax.random.fold_in(key, _DERIVED), 3)

    # The members' params and a template state.
    member_keys = None
    if init_fn is not None:
        if params is not None:
            raise ValueError(f"{fn}: params must be None with init_fn (each member draws its own)")
        if opt_state is not None:
            raise ValueError(
                f"{fn}: opt_state must be None with init_fn (each member's state "
                "is optimizer.init of its own params)"
            )
        member_keys = jax.random.split(init_key, k)
        pop_params = jax.vmap(init_fn)(member_keys)
        template = jax.tree.map(lambda x: x[0], pop_params)
    else:
        if params is None:
            raise ValueError(f"{fn}: params must be a pytree of arrays (or pass init_fn), got None")
        template = params
        pop_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *jnp.shape(x))), params)
    # Packed when fit would pack (gradx.flat): state0, and every member's state, in the packed
    # layout; the result's opt_state is unpacked back into the optimizer's own.
    packing, optimizer, state0 = _start(fn, flat, optimizer, template, opt_state, mesh, False)
    if method != "random" and metric != "loss":  # known before any training
        shapes = jax.eval_shape(eval_fn, template, eval_data)
        names = sorted(shapes) if isinstance(shapes, Mapping) else ["eval"]
        if metric not in names:
            raise ValueError(
                f"{fn}: metric must be 'loss' or a metric of eval_fn {names}, got {metric!r}"
            )

    # The space: names, distributions, samples.
    known = hyperparams(state0)
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
            samples[name] = dist.sample(jax.random.fold_in(sample_key, i), k)
        elif isinstance(dist, (int, float, np.integer, np.floating)) and not isinstance(dist, bool):
            samples[name] = np.full(k, dist, np.float64)
        else:
            raise ValueError(
                f"{fn}: space[{name!r}] must be a distribution of gradx.search_space or a "
                f"number, got {dist!r}"
            )
    _check_values(state0, samples, range(k), "sampled")
    dtypes = {name: np.dtype(known[name].dtype) for name in samples}
    values = {name: v.astype(dtypes[name]) for name, v in samples.items()}

    def with_values(params_k, v):
        state = state0 if opt_state is not None else optimizer.init(params_k)
        return set_hyperparams(state, **v)

    pop_states = jax.vmap(with_values)(pop_params, {n: jnp.asarray(v) for n, v in values.items()})

    if chunk_size is not None:
        chunk_size = _check_int(fn, "chunk_size", chunk_size, 1)
    plan, _ = _sharding.sweep_plan(fn, mesh, k, chunk_size, k)
    update = optax.with_extra_args_support(optimizer).update
    program = _Program(loss_fn, update, eval_fn, batch_size, steps, vmapped=True)
    history = {"loss": np.full((k, epochs), np.nan, np.float64)}
    trajectory = {name: np.full((k, epochs), np.nan, np.float64) for name in values}
    population = np.zeros(epochs, np.int64)
    epochs_trained = np.zeros(k, np.int64)
    pop = _Population(
        program=program,
        data=_sharding.place_eval(plan, data),
        eval_data=_sharding.place_eval(plan, eval_data),
        key=key, mesh=mesh, chunk_size=chunk_size, history=history, seconds=[],
        bar=_progress(progress, None, f"search ({method})"),
    )  # fmt: skip

    def scores_at(epoch: int, rows: np.ndarray) -> np.ndarray:
        if metric not in history:
            raise ValueError(
                f"{fn}: metric must be one of {sorted(history)} (the history's keys), got "
                f"{metric!r}"
            )
        return history[metric][rows, epoch - 1]

    rungs: list[Rung] = []
    lineage: list[Copy] = []
    try:
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
        alive = np.arange(k)
        start = 0
        for stop in bounds:
            p, s = (
                (pop_params, pop_states)
                if len(alive) == k
                else _rows((pop_params, pop_states), alive)
            )
            p, s = pop.train(p, s, alive, start, stop)
            if len(alive) < k:
                pop_params, pop_states = _set_rows((pop_params, pop_states), alive, (p, s))
            else:
                pop_params, pop_states = p, s
            for name, v in values.items():
                trajectory[name][alive, start:stop] = v[alive, None]
            population[start:stop] = len(alive)
            epochs_trained[alive] = stop
            if stop == epochs:
                break
            if method == "halving" and len(alive) > 1:
                scores = scores_at(stop, alive)
                keep = max(1, len(alive) // opts["eta"])
                kept = np.sort(alive[_ranking(scores, mode)[:keep]])
                rungs.append(Rung(stop, alive, scores, kept))
                alive = kept
            if method == "pbt":
                pop_params, pop_states, copies = _pbt_step(
                    jax.random.fold_in(pbt_key, stop), stop, scores_at(stop, alive), mode,
                    opts, values, dists, dtypes, state0, pop_params, pop_states,
                )  # fmt: skip
                lineage.extend(copies)
            start = stop
    finally:
        if pop.bar is not None:
            pop.bar.close()

    if packing is not None:
        pop_states = packing.unpack(pop_states, batch_dims=1)
    pop_params, pop_states = _sharding.to_user_mesh(plan, (pop_params, pop_states))
    return SearchResult(
        method=method,
        params=pop_params,
        opt_state=pop_states,
        history=history,
        samples={n: v.astype(dtypes[n]) for n, v in samples.items()},
        trajectory=trajectory,
        epochs_trained=epochs_trained,
        population=population,
        model_epochs=int(population.sum()),
        rungs=tuple(rungs),
        lineage=tuple(lineage),
        member_keys=member_keys,
        epoch_seconds=np.asarray(pop.seconds),
        steps_per_epoch=steps,
        dropped_per_epoch=dropped,
    )


def _pbt_step(key, epoch, scores, mode, opts, values, dists, dtypes, state0, params, states):
    """One exploit-and-explore step of PBT; updates ``values`` in place, returns the copies."""
    k = len(scores)
    n = max(1, int(k * opts["fraction"]))
    order = _ranking(scores, mode)
    top, bottom = order[:n], order[k - n :]
    pick, coin, direction, fresh = jax.random.split(key, 4)
    sources = top[np.asarray(jax.random.randint(pick, (n,), 0, n))]
    resample = (
        np.asarray(jax.random.uniform(coin, (n, max(len(dists), 1)))) < opts["resample_probability"]
    )
    up = np.asarray(jax.random.bernoulli(direction, 0.5, (n, max(len(dists), 1))))
    new = {name: v.copy() for name, v in values.items()}
    for name in values:
        new[name][bottom] = values[name][sources]
    for j, (name, dist) in enumerate(dists.items()):
        moved = dist.perturb(values[name][sources].astype(np.float64), up[:, j], opts["perturb"])
        drawn = dist.sample(jax.random.fold_in(fresh, j), n)
        new[name][bottom] = np.where(resample[:, j], drawn, moved).astype(dtypes[name])
    _check_values(state0, new, bottom, "perturbed")
    source_index = np.arange(k)
    source_index[bottom] = sources
    params, states = _exploit(
        params, states, jnp.asarray(source_index), {n: jnp.asarray(v) for n, v in new.items()}
    )
    copies = [
        Copy(epoch, int(m), int(s), {name: new[name][m].item() for name in new})
        for m, s in zip(bottom, sources, strict=True)
    ]
    for name in values:
        values[name][...] = new[name]
    return params, states, copies
