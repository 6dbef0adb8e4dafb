"""What :func:`gradx.search` returns: the population, its history, and each member's run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from gradx._protocol.access import set_hyperparams
from gradx._training.fit import fit
from gradx._training.program import EvalFn, LossFn
from gradx._training.results import BestPoint, Copy, FitResult, Rung, Segment, best_point


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What :func:`search` returns: K members, stacked.

    Attributes:
      method: ``"random"``, ``"halving"`` or ``"pbt"``.
      params, opt_state: each member's params and state when it stopped training, leading
        axis K (halving: an eliminated member's are those of its last rung). The params are
        the point training continues from: with a Schedule-Free optimizer y, and
        ``gradx.schedule_free_eval_params(opt_state, params)`` (under :func:`jax.vmap`) the
        average x that fit returns and :meth:`replay` gives as ``params``.
      history: ``{name: (K, epochs)}`` like :attr:`gradx.SweepResult.history`; NaN in the
        epochs a member did not train (halving). PBT: the row of member k is the run that
        ended as member k only up to its last copy; before it, see :meth:`schedule`.
      samples: ``{name: (K,)}``, the hyperparameters drawn for each member at the start.
      trajectory: ``{name: (K, epochs)}``, the value member k used in each epoch (NaN where
        it did not train).
      epochs_trained: ``(K,)``, the epochs each member trained.
      population: ``(epochs,)``, the members training in each epoch.
      model_epochs: Σ over epochs of the population, the compute spent.
      rungs: halving's cuts, in order, each a named tuple
        ``Rung(epoch, members, scores, kept)``.
      lineage: PBT's copies, in order, each a named tuple
        ``Copy(epoch, member, source, values)``.
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
        return best_point(
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
            params, state = run.train_params, run.opt_state  # Schedule-Free: y, not x
            parts.append(run)
        return FitResult(
            params=parts[-1].params,
            train_params=params,
            opt_state=state,
            history={n: np.concatenate([p.history[n] for p in parts]) for n in parts[0].history},
            epoch_seconds=np.concatenate([p.epoch_seconds for p in parts]),
            steps_per_epoch=parts[-1].steps_per_epoch,
            dropped_per_epoch=parts[-1].dropped_per_epoch,
        )
