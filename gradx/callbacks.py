"""Callbacks for :func:`gradx.fit`: called once per epoch, after the compiled epoch returns.

The protocol is small. A callback is either a plain function
``callback(epoch, logs, params, opt_state)``, or an object with any of the methods of
:class:`Callback`; fit calls ``on_train_begin()`` once, ``on_epoch_end(epoch, logs, params,
opt_state)`` after every epoch and ``on_train_end(params, opt_state)`` once at the end. A
hook returns ``None`` (change nothing) or an :class:`Action`: new params, a new optimizer
state, and/or ``stop=True`` to end training after this epoch. ``logs`` is the epoch's
history row: ``{"loss": ..., **metrics}`` as Python floats.

``params`` and ``opt_state`` hold the live buffers, donated to the next epoch's program: a
callback that keeps them past its return must copy them (e.g. ``jnp.array(x, copy=True)``,
or one ``jax.device_put(tree, may_alias=False)`` as :class:`EarlyStopping` does). Their
containers are fresh copies, with the packed optimizer (``fit(flat=None)``) as without it
(``flat=False``): a change made in place (``opt_state.hyperparams["learning_rate"] = ...``)
is ignored; return it in an ``Action`` (``Action(opt_state=opt_state)``). The params and
state of an ``Action`` must have the structure, shapes and dtypes of those they replace, or
fit raises a ``ValueError``; fit copies them before the next epoch's program donates them,
so an ``Action`` may hold arrays that the callback or its caller keeps (the initial
params), or one array in two places.
With ``fit(ema=...)``, an :class:`EarlyStopping` restoring the best weights (and only it)
receives ``opt_state`` as ``gradx._training.averaging.WithAverage(average,
opt_state)``, fit's average beside the optimizer state, which :func:`gradx.hyperparams` and
:func:`gradx.set_hyperparams` read through; a subclass overriding ``on_epoch_end`` sees that
(see its ``restore_best_weights``).

For exact resume, a callback with internal counters implements ``get_state() -> dict`` (a
dict of numbers and arrays) and ``set_state(dict)``; fit stores it in every checkpoint,
keyed by the callback's ``name`` attribute if it has one, else its class and ``monitor``
(``#1``, ``#2`` for repeats), so the callbacks may come in another order on resume. Its
settings (its public attributes of plain types that are not counters) are part of the
run's identity: two callbacks of one class and monitor in swapped order are refused, not
swapped.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx._protocol.access import hyperparam_keys, hyperparams, locate_hyperparams, set_hyperparams
from gradx._tools.schedule_free_eval import find_schedule_free
from gradx._training.averaging import WithAverage
from gradx._training.inputs import fresh_copy

__all__ = ["Action", "Callback", "EarlyStopping", "ReduceLROnPlateau", "metric_mode"]


class Action(NamedTuple):
    """What a callback asks of fit; ``None`` fields are left unchanged."""

    params: Any = None
    opt_state: Any = None
    stop: bool = False


class Callback:
    """Base class with the hooks fit calls; every method is optional."""

    def on_train_begin(self) -> None:
        """Called once before the first epoch (before a resumed state is loaded)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float], params: Any, opt_state: Any):
        """Called after each epoch; returns None or an :class:`Action`."""
        del epoch, logs, params, opt_state

    def on_train_end(self, params: Any, opt_state: Any):
        """Called once after the last epoch; returns None or an :class:`Action`."""
        del params, opt_state

    def get_state(self) -> dict[str, Any]:
        """The counters to checkpoint (numbers and arrays)."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`'s dict from a checkpoint."""
        del state


# Names whose direction is known: a substring of the lower-cased name, or a whole word of it
# (split at anything but letters and digits), so "mae" in "val_mae" counts and in "maes" not.
_UP_PARTS = ("acc", "fmeasure", "precision", "recall")
_UP_WORDS = ("auc", "f1", "iou", "r2")
_DOWN_PARTS = ("loss", "error", "crossentropy")
_DOWN_WORDS = ("mse", "mae", "rmse", "mape", "msle", "nll", "err", "perplexity")


def metric_mode(fn: str, metric: str, mode: str = "auto", arg: str = "metric") -> str:
    """``"min"`` or ``"max"``: the direction in which ``metric`` improves.

    ``mode`` ``"min"`` or ``"max"`` is returned as given. ``"auto"`` reads the name, as
    Keras 2 did (Keras 3 asks the metric object, which a history of numbers does not have):
    ``"max"`` for accuracy-like names (containing ``acc``, ``precision``, ``recall``,
    ``fmeasure``, or the word ``auc``, ``f1``, ``iou``, ``r2``), ``"min"`` for loss-like
    names (containing ``loss``, ``error``, ``crossentropy``, or the word ``mse``, ``mae``,
    ``rmse``, ``mape``, ``msle``, ``nll``, ``err``, ``perplexity``). Any other name (fit's
    ``"eval"`` for a scalar ``eval_fn``, ``"val"``, a name of both kinds) is refused: a
    guessed direction would silently pick the worst run. ``arg`` names the argument in the
    error (``"monitor"`` for the callbacks).

    The one rule of :class:`EarlyStopping`, :class:`ReduceLROnPlateau`,
    :meth:`gradx.SweepResult.best`, :meth:`gradx.SearchResult.best` and :func:`gradx.search`.
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{fn}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    name = str(metric).lower()
    words = set(re.split(r"[^a-z0-9]+", name))
    compact = re.sub(r"[^a-z0-9]+", "", name)
    up = any(p in compact for p in _UP_PARTS) or bool(words & set(_UP_WORDS))
    down = any(p in compact for p in _DOWN_PARTS) or bool(words & set(_DOWN_WORDS))
    if up != down:
        return "max" if up else "min"
    raise ValueError(
        f"{fn}: {arg} must have a name from which mode='auto' can tell its direction "
        "(accuracy-like names such as 'val_acc', 'auc', 'f1' go up; loss-like names such as "
        f"'loss', 'val_mse', 'error' go down), got {metric!r}, a name of "
        f"{'both kinds' if up else 'neither kind'}; pass mode='min' or mode='max'"
    )


def _monitored(fn: str, monitor: str, logs: dict[str, float]) -> float:
    if monitor not in logs:
        raise ValueError(
            f"{fn}: monitor must be one of the logged names {sorted(logs)}, got {monitor!r}"
        )
    return float(logs[monitor])


def _check(fn: str, name: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{fn}: {name} must be {rule}, got {value!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# What EarlyStopping(restore_best_weights=True) keeps of its best epoch (EarlyStopping._kind),
# by its index in a checkpoint.
_KEPT = ("params", "average", "state")


class EarlyStopping(Callback):
    """Stops training when a monitored quantity has stopped improving (Keras's rule).

    At each epoch, with ``current = logs[monitor]``: an improvement is
    ``current < best − min_delta`` (mode ``"min"``) or ``current > best + min_delta``
    (``"max"``); the first monitored epoch always improves. ``wait`` counts epochs since the
    last improvement; training stops at the end of the epoch where ``wait >= patience``
    (never at epoch 0). A NaN never improves, not even at the first monitored epoch.

    Args:
      monitor: a key of the history: ``"loss"``, a metric of ``eval_fn`` or an aux output.
      min_delta: the smallest change that counts as an improvement, >= 0.
      patience: epochs without improvement before stopping, an integer >= 0.
      mode: ``"min"``, ``"max"``, or ``"auto"``: read from the name by
        :func:`metric_mode` (``"max"`` for accuracy-like names such as ``"val_acc"``,
        ``"min"`` for loss-like ones such as ``"loss"``; any other name is refused).
      baseline: if set, ``wait`` restarts only for an improvement that also beats it.
      restore_best_weights: at the end of training, hand back the model of the best epoch,
        the one the monitor scored: its params, the optimizer state staying the last one
        (as in Keras, which restores weights only), except as follows. With
        ``fit(ema=d)`` (whatever ``eval_on``), that epoch's average too
        (``FitResult.ema_params``), so that params and average come from one epoch; fit
        gives it to this callback beside the state. With a Schedule-Free optimizer, the best epoch's
        state too (its hyperparameters included): ``FitResult.params``, the x ``eval_fn``
        saw, is computed from the params y and the state's z. If no epoch improves (a NaN
        every epoch), the first monitored epoch's model.
      start_from_epoch: epochs before monitoring starts (a warm-up), an integer >= 0.

    Reference: ``keras.callbacks.EarlyStopping`` (Keras 3).

    Note: as Keras 3, ``restore_best_weights`` restores at the end of training whether or
    not it stopped early. Differences: ``monitor`` defaults to ``"loss"`` (fit has no
    ``val_loss`` of its own); ``mode="auto"`` reads the name (Keras 3 asks the metric for its
    direction, and also refuses one it cannot tell); a ``monitor`` missing from the logs is an
    error, not a warning; a NaN at the first monitored epoch is no best (Keras takes it as
    one, which nothing can then improve on); no verbose.
    """

    def __init__(
        self,
        monitor: str = "loss",
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        fn = "EarlyStopping"
        _check(fn, "min_delta", min_delta, min_delta >= 0, ">= 0")
        _check(fn, "patience", patience, _is_int(patience) and patience >= 0, "an integer >= 0")
        _check(
            fn,
            "start_from_epoch",
            start_from_epoch,
            _is_int(start_from_epoch) and start_from_epoch >= 0,
            "an integer >= 0",
        )
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.patience = patience
        self.mode = metric_mode(fn, monitor, mode, "monitor")
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.on_train_begin()

    def on_train_begin(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: Any = None
        self.best_kind: str | None = "params"  # what best_weights holds: see _kind

    def _improves(self, current: float, reference: float | None) -> bool:
        if math.isnan(current):
            return False
        if reference is None:
            return True
        if self.mode == "min":
            return current - (-self.min_delta) < reference
        return current - self.min_delta > reference

    def keeps_state(self, opt_state: Any) -> bool:
        """Whether :meth:`on_epoch_end` keeps a copy of ``opt_state`` along with the params:
        with ``restore_best_weights``, a Schedule-Free state (the x that fit evaluates is
        computed from the params y and the state's z). fit then gives this callback the
        state in the optimizer's own layout, which checkpoints hold, not a packed one."""
        return self.restore_best_weights and bool(find_schedule_free(opt_state))

    def _kind(self, opt_state: Any) -> str:
        """What ``restore_best_weights`` keeps of an epoch, the model its metrics scored (see
        the class docstring): ``"params"``; ``"average"``, the params and fit's average
        (``fit(ema=...)`` gives it beside the state,
        :class:`gradx._training.averaging.WithAverage`); ``"state"``, the params and a
        Schedule-Free state."""
        if isinstance(opt_state, WithAverage):
            return "average"
        return "state" if self.keeps_state(opt_state) else "params"

    def _kept(self, kind: str, params: Any, opt_state: Any) -> Any:
        if kind == "average":
            return params, opt_state.average
        return (params, opt_state) if kind == "state" else params

    def on_epoch_end(self, epoch, logs, params, opt_state):
        current = _monitored("EarlyStopping", self.monitor, logs)
        if epoch < self.start_from_epoch:
            return None
        improves = self._improves(current, self.best)
        if self.restore_best_weights and (improves or self.best_weights is None):
            # (the first monitored epoch's model is kept even if it is no best: a NaN) a
            # copy, since fit's next epoch donates these buffers
            kind = self._kind(opt_state)
            self.best_weights = fresh_copy(self._kept(kind, params, opt_state))
            self.best_kind, self.best_epoch = kind, epoch
        self.wait += 1
        if improves:
            self.best, self.best_epoch = current, epoch
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return None
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return Action(stop=True)
        return None

    def on_train_end(self, params, opt_state):
        if not (self.restore_best_weights and self.best_weights is not None):
            return None
        if isinstance(self.best_weights, list):  # a checkpoint's leaves: the kept tree
            if self.best_kind is None:  # a checkpoint that did not say: params alone, or
                # (as this callback keeps it now) with the average or Schedule-Free state
                alone = len(self.best_weights) == len(jax.tree.leaves(params))
                self.best_kind = "params" if alone else self._kind(opt_state)
            structure = jax.tree.structure(self._kept(self.best_kind, params, opt_state))
            leaves = jax.tree.leaves(self.best_weights)
            if len(leaves) != structure.num_leaves:
                raise ValueError(
                    f"EarlyStopping: the best weights restored from a checkpoint have "
                    f"{len(leaves)} arrays, but this run's {self.best_kind!r} (see "
                    f"restore_best_weights) has {structure.num_leaves}; resume with the "
                    "same model, optimizer and fit arguments as the checkpointed run"
                )
            self.best_weights = jax.tree.unflatten(structure, leaves)
        if self.best_kind == "average":  # the best average, the last optimizer state
            best, average = self.best_weights
            return Action(params=best, opt_state=opt_state._replace(average=average))
        if self.best_kind == "state":  # Schedule-Free: y and the state of the best epoch
            best, state = self.best_weights
            return Action(params=best, opt_state=state)
        return Action(params=self.best_weights)

    def get_state(self) -> dict[str, Any]:
        state = {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": math.nan if self.best is None else self.best,
            "has_best": int(self.best is not None),
            "best_epoch": self.best_epoch,
        }
        if self.best_weights is not None:
            # their leaves: a checkpoint restores a list, not a tuple, NamedTuple or module
            state["best_weights"] = jax.tree.leaves(self.best_weights)
            if self.best_kind is not None:  # (None: restored from a checkpoint that did not say)
                state["best_kind"] = _KEPT.index(self.best_kind)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`'s dict; the best weights stay a list of leaves until
        :meth:`on_train_end` gives them the structure of the params."""
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best = float(state["best"]) if int(state["has_best"]) else None
        self.best_epoch = int(state["best_epoch"])
        self.best_weights = state.get("best_weights")
        # (a checkpoint of an earlier gradx does not say: on_train_end tells by the count)
        self.best_kind = _KEPT[int(state["best_kind"])] if "best_kind" in state else None


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when a quantity stops improving (Keras's rule).

    At each epoch, with ``current = logs[monitor]``: in cooldown, the cooldown counter
    decreases and ``wait`` restarts. An improvement is ``current < best − min_delta``
    (``"max"``: ``current > best + min_delta``), starting from best = ±∞; it resets ``wait``.
    Otherwise, out of cooldown, ``wait`` grows, and when it reaches ``patience`` and
    γ > min_lr: γ ← max(γ·factor, min_lr), the cooldown starts and ``wait`` restarts.

    The learning rate is a number in the optimizer's state (any gradx optimizer), written
    with :func:`gradx.set_hyperparams`: a new value is new data, not a new program, so
    nothing recompiles.

    Args:
      monitor: a key of the history (``"loss"``, a metric of ``eval_fn``, an aux output).
      factor: γ ← γ·factor, in (0, 1).
      patience: epochs without improvement before a reduction, an integer >= 0.
      mode: ``"min"``, ``"max"``, or ``"auto"`` (read from the name by
        :func:`metric_mode`; a name of unknown direction is refused).
      min_delta: the smallest change that counts as an improvement, >= 0.
      cooldown: epochs after a reduction during which ``wait`` stays 0, an integer >= 0.
      min_lr: the lower bound of the learning rate, >= 0.
      hyperparameter: the name in ``gradx.hyperparams(state)`` to reduce.

    Reference: ``keras.callbacks.ReduceLROnPlateau`` (Keras 3), same defaults except
    ``monitor`` (``"loss"`` here, as fit has no ``val_loss`` of its own).

    Note: Keras compares γ > float32(min_lr); here γ is compared in the state's dtype. Keras
    also writes ``learning_rate`` into the logs; read it here with ``gradx.hyperparams``. An
    optimizer without the hyperparameter in its state (optax's), or with one that follows a
    schedule, is an error, raised by fit before the first epoch (:meth:`check_state`).
    """

    def __init__(
        self,
        monitor: str = "loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        hyperparameter: str = "learning_rate",
    ):
        fn = "ReduceLROnPlateau"
        _check(fn, "factor", factor, 0 < factor < 1, "in (0, 1)")
        _check(fn, "patience", patience, _is_int(patience) and patience >= 0, "an integer >= 0")
        _check(fn, "cooldown", cooldown, _is_int(cooldown) and cooldown >= 0, "an integer >= 0")
        _check(fn, "min_delta", min_delta, min_delta >= 0, ">= 0")
        _check(fn, "min_lr", min_lr, min_lr >= 0, ">= 0")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = patience
        self.mode = metric_mode(fn, monitor, mode, "monitor")
        self.min_delta = float(min_delta)
        self.cooldown = cooldown
        self.min_lr = float(min_lr)
        self.hyperparameter = hyperparameter
        self.on_train_begin()

    def on_train_begin(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _values(self, fn: str, opt_state: Any) -> dict[str, Any]:
        values = hyperparams(opt_state)
        if self.hyperparameter not in values:
            raise ValueError(
                f"{fn}: hyperparameter must be one of the optimizer state's "
                f"{sorted(values)} (gradx.hyperparams), got {self.hyperparameter!r}"
            )
        return values

    def check_state(self, fn: str, opt_state: Any) -> None:
        """Raises unless ``opt_state`` holds the hyperparameter as a number this callback can
        set: fit calls it before the first epoch, so a schedule fails now, not at the first
        plateau, ``patience`` epochs in."""
        name = self.hyperparameter
        self._values(f"{fn}: ReduceLROnPlateau", opt_state)
        if hyperparam_keys(locate_hyperparams(opt_state))[name][2]:  # (path, name, scheduled)
            raise ValueError(
                f"{fn}: ReduceLROnPlateau(hyperparameter={name!r}) must find a constant {name} "
                "in the optimizer's state, got one that follows a schedule (the optimizer was "
                f"built with a callable or a JAX array for it), which it cannot change; build "
                f"the optimizer with a number for {name} (e.g. gradx.adam(1e-3)), or keep the "
                "schedule and chain optax.contrib.reduce_on_plateau() after the optimizer "
                "(it scales the updates when the loss stalls)"
            )

    def _improves(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs, params, opt_state):
        del epoch, params
        current = _monitored("ReduceLROnPlateau", self.monitor, logs)
        values = self._values("ReduceLROnPlateau", opt_state)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current):
            self.best, self.wait = current, 0
            return None
        if self.cooldown_counter > 0:
            return None
        self.wait += 1
        if self.wait < self.patience:
            return None
        old = values[self.hyperparameter]
        if not old > jnp.asarray(self.min_lr, old.dtype):
            return None
        new = max(float(old) * self.factor, self.min_lr)
        self.cooldown_counter, self.wait = self.cooldown, 0
        return Action(opt_state=set_hyperparams(opt_state, **{self.hyperparameter: new}))

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def set_state(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])
