"""What training returns: :class:`FitResult`, :class:`SweepResult` and search's records."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from gradx.callbacks import metric_mode


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      params: the trained params: where the model is evaluated. With a Schedule-Free
        optimizer (its state anywhere in ``opt_state``), the average x,
        ``gradx.schedule_free_eval_params(opt_state, train_params)``. With
        ``EarlyStopping(restore_best_weights=True)``, the best epoch's.
      opt_state: the optimizer state after the last step (with a Schedule-Free optimizer
        and ``EarlyStopping(restore_best_weights=True)``, after the best epoch).
      history: name → array of one entry per epoch run, ``epochs − initial_epoch`` of
        them (fewer after an early stop; a run resumed from a checkpoint has the
        checkpointed epochs too). ``"loss"``: the mean of the minibatch losses of each
        epoch (each at the params before its step, as Keras reports it); one more array per
        metric of ``eval_fn``, evaluated at the end of each epoch, and per aux output,
        ``"skipped"`` count or diagnostic recorded.
      epoch_seconds: wall time of each epoch of ``history`` (the first includes the
        compilation, unless the program was already compiled).
      steps_per_epoch: optimizer steps per epoch: ⌊N/B⌋ (1 for full batch; ⌊N/(A·B)⌋ with
        ``accumulate=A``).
      dropped_per_epoch: N mod B examples left out of each epoch's permutation (N mod A·B
        with ``accumulate=A``).
      ema_params: with ``fit(..., ema=d)``, the exponential moving average of the params
        after the last step (the params' structure, shapes, dtypes and sharding; with
        ``EarlyStopping(restore_best_weights=True)``, after the best epoch); None without
        ``ema``.
      train_params: the params training continues from (with ``opt_state``): the point the
        last gradients were taken at (restored: the best epoch's). They are ``params``,
        except with a Schedule-Free optimizer, whose y they are (None given: ``params``).
    """

    params: Any
    opt_state: Any
    history: dict[str, np.ndarray]
    epoch_seconds: np.ndarray
    steps_per_epoch: int
    dropped_per_epoch: int
    ema_params: Any = None
    train_params: Any = None

    def __post_init__(self) -> None:
        if self.train_params is None:
            object.__setattr__(self, "train_params", self.params)


class BestPoint(NamedTuple):
    """The best grid point of a sweep: its index, its hyperparameters and its score."""

    index: int
    values: dict[str, float]
    score: float


def best_point(
    fn: str,
    history: Mapping[str, np.ndarray],
    metric: str,
    mode: str,
    values: Mapping[str, np.ndarray],
    none_finite: str,
) -> BestPoint:
    """The row of ``history[metric]`` (shape ``(K, epochs)``) with the best final value.

    NaN and infinite values never win; ties go to the first row. ``values``: ``{name:
    (K,)}``, the hyperparameters reported for each row. ``none_finite`` ends the error when
    no row has a finite final value.
    """
    if metric not in history:
        raise ValueError(f"{fn}: metric must be one of {sorted(history)}, got {metric!r}")
    mode = metric_mode(fn, metric, mode)
    final = np.asarray(history[metric][:, -1], np.float64)
    finite = np.isfinite(final)
    if not finite.any():
        raise ValueError(f"{fn}: history[{metric!r}] must have a finite final value {none_finite}")
    scores = np.where(finite, final if mode == "min" else -final, np.inf)
    index = int(np.argmin(scores))
    return BestPoint(
        index, {name: float(v[index]) for name, v in values.items()}, float(final[index])
    )


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` returns: K trained models, one per grid point, stacked.

    Attributes:
      params: the trained params, every leaf with a leading axis of length K: the point
        training continues from (with a Schedule-Free optimizer y, fit's ``train_params``;
        :meth:`point` gives fit's ``params``, the average x).
      opt_state: the optimizer states, leading axis K.
      history: like :attr:`FitResult.history`, every entry of shape ``(K, epochs)``.
      grid: each swept hyperparameter's value at each point, shape ``(K,)``. Points are the
        Cartesian product of the grid's arrays, the first name varying slowest.
      epoch_seconds: shape ``(chunks, epochs)``, wall time of each chunk's epochs.
      steps_per_epoch, dropped_per_epoch: as in :class:`FitResult`.
    """

    params: Any
    opt_state: Any
    history: dict[str, np.ndarray]
    grid: dict[str, np.ndarray]
    epoch_seconds: np.ndarray
    steps_per_epoch: int
    dropped_per_epoch: int

    def __len__(self) -> int:
        return len(next(iter(self.grid.values())))

    def best(self, metric: str = "loss", mode: str = "auto") -> BestPoint:
        """The point with the best final-epoch value of ``history[metric]``.

        Args:
          metric: a key of :attr:`history` (``"loss"``, or a metric of ``eval_fn``).
          mode: ``"min"``, ``"max"``, or ``"auto"``: read from the name by
            :func:`gradx.callbacks.metric_mode` (``"max"`` for accuracy-like names such as
            ``"val_acc"``, ``"min"`` for loss-like ones such as ``"loss"``; any other name,
            such as fit's ``"eval"``, is refused).

        Returns:
          ``BestPoint(index, values, score)``. Points whose value is NaN or infinite (a
          diverged run) never win; ties go to the first point.
        """
        return best_point(
            "SweepResult.best",
            self.history,
            metric,
            mode,
            self.grid,
            "at some point, got none (every run diverged)",
        )

    def point(self, index: int) -> FitResult:
        """Grid point ``index`` as a :class:`FitResult` (the run ``fit`` would have made: with
        a Schedule-Free optimizer its ``params`` are the average x, its ``train_params`` the
        y that :attr:`params` holds)."""
        from gradx._tools.schedule_free_eval import evaluation_point

        if not -len(self) <= index < len(self):
            raise ValueError(f"SweepResult.point: index must be in [0, {len(self)}), got {index}")
        take = functools.partial(jax.tree.map, lambda x: x[index])
        params, opt_state = take(self.params), take(self.opt_state)
        return FitResult(
            params=evaluation_point(opt_state, params),
            train_params=params,
            opt_state=opt_state,
            history={k: v[index] for k, v in self.history.items()},
            epoch_seconds=self.epoch_seconds.sum(axis=0) / self.epoch_seconds.shape[0],
            steps_per_epoch=self.steps_per_epoch,
            dropped_per_epoch=self.dropped_per_epoch,
        )


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


def ranking(scores: np.ndarray, mode: str) -> np.ndarray:
    """Indices best first; NaN and infinities last; ties keep index order."""
    scores = np.asarray(scores, np.float64)
    keyed = np.where(np.isfinite(scores), scores if mode == "min" else -scores, np.inf)
    return np.argsort(keyed, kind="stable")
