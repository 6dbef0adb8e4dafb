"""Schedules of the step count, whose numbers live in the optimizer's state.

gradx's own schedules (:func:`constant_schedule`, :func:`linear_schedule`,
:func:`cosine_decay_schedule`, :func:`warmup_constant_schedule`,
:func:`warmup_cosine_decay_schedule`, :func:`exponential_decay`,
:func:`piecewise_constant_schedule`, :func:`join_schedules`) have optax's signatures and
defaults and equal optax's values at every step. Each returns an :class:`ArraySchedule`: a
formula shared by every schedule of its kind, and its numbers as data. Given to a gradx
optimizer for hyperparameter ``h``, the numbers live in the state as ``h/<number>``::

    opt = gradx.adam(gradx.schedules.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000))
    gradx.hyperparams(opt.init(params))["learning_rate/peak_value"]   # 0.001

so :func:`gradx.set_hyperparams`, :func:`gradx.sweep` and :func:`gradx.search` change them
(peak, warmup length, ...) without retracing, and :func:`gradx.fit` given a new schedule of
the same kind reuses its compiled program. Every other name of :mod:`optax.schedules`
(``polynomial_schedule``, ``sgdr_schedule``, ``inject_hyperparams``, ...) is optax's own,
re-exported: a closure, static to ``jit``, which an optimizer evaluates at the step count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax
from optax.schedules import InjectHyperparamsState as InjectHyperparamsState
from optax.schedules import InjectStatefulHyperparamsState as InjectStatefulHyperparamsState
from optax.schedules import Schedule as Schedule
from optax.schedules import StatefulSchedule as StatefulSchedule
from optax.schedules import WrappedSchedule as WrappedSchedule
from optax.schedules import cosine_onecycle_schedule as cosine_onecycle_schedule
from optax.schedules import inject_hyperparams as inject_hyperparams
from optax.schedules import inject_stateful_hyperparams as inject_stateful_hyperparams
from optax.schedules import linear_onecycle_schedule as linear_onecycle_schedule
from optax.schedules import piecewise_interpolate_schedule as piecewise_interpolate_schedule
from optax.schedules import polynomial_schedule as polynomial_schedule
from optax.schedules import sgdr_schedule as sgdr_schedule
from optax.schedules import warmup_exponential_decay_schedule as warmup_exponential_decay_schedule

from gradx._protocol.schedule import ArraySchedule, ScheduleSpec, check_numbers
from gradx._protocol.schedule_formulas import (
    constant_formula,
    constant_formula_peak,
    cosine_formula,
    cosine_peak,
    exponential_formula,
    exponential_peak,
    join_formula,
    join_peak,
    linear_formula,
    linear_peak,
    piecewise_formula,
    piecewise_peak,
    warmup_constant_formula,
    warmup_cosine_formula,
    warmup_peak,
)

__all__ = [
    "ArraySchedule",
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "Schedule",
    "StatefulSchedule",
    "WrappedSchedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]


def _build(kind: str, formula: Callable, peak: Callable, numbers: dict, static=()) -> ArraySchedule:
    check_numbers(kind, numbers)
    spec = ScheduleSpec(kind, formula, peak, tuple(static), tuple(sorted(numbers)))
    return ArraySchedule(spec, numbers)


def constant_schedule(value: jax.typing.ArrayLike) -> ArraySchedule:
    """A constant: ``value`` at every step (optax's ``constant_schedule``).

    Args:
      value: the value, stored as ``h/value``.

    Returns:
      An :class:`ArraySchedule`.
    """
    return _build("constant_schedule", constant_formula, constant_formula_peak, {"value": value})


def linear_schedule(
    init_value: jax.typing.ArrayLike,
    end_value: jax.typing.ArrayLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> ArraySchedule:
    """Linear from I = ``init_value`` to E = ``end_value`` (optax's ``linear_schedule``)::

        v(t) = I                          t < B
               I + (E − I)·(t − B)/T      B ≤ t < B + T
               E                          t ≥ B + T

    Args:
      init_value: I.
      end_value: E.
      transition_steps: T, an integer ≥ 0; 0 holds I throughout (as optax).
      transition_begin: B, an integer ≥ 0.

    Returns:
      An :class:`ArraySchedule` with numbers ``init_value``, ``end_value``,
      ``transition_steps``, ``transition_begin``.

    Note:
      optax takes a negative B as 0 (with a log line); gradx refuses it.
    """
    numbers = dict(
        init_value=init_value,
        end_value=end_value,
        transition_steps=transition_steps,
        transition_begin=transition_begin,
    )
    return _build("linear_schedule", linear_formula, linear_peak, numbers)


def warmup_constant_schedule(
    init_value: jax.typing.ArrayLike, peak_value: jax.typing.ArrayLike, warmup_steps: int
) -> ArraySchedule:
    """Linear warmup from ``init_value`` to ``peak_value`` in ``warmup_steps`` steps, then
    constant (optax's ``warmup_constant_schedule``).

    Returns:
      An :class:`ArraySchedule` with numbers ``init_value``, ``peak_value``, ``warmup_steps``.
    """
    numbers = dict(init_value=init_value, peak_value=peak_value, warmup_steps=warmup_steps)
    return _build("warmup_constant_schedule", warmup_constant_formula, warmup_peak, numbers)


def cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    decay_steps: int,
    alpha: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> ArraySchedule:
    """Cosine decay (optax's ``cosine_decay_schedule``)::

        v(t) = I·((1 − α)·(½(1 + cos(π·min(t, T)/T)))^p + α)

    Args:
      init_value: I.
      decay_steps: T, an integer > 0.
      alpha: α, the final multiplier (v = α·I from step T on).
      exponent: p > 0.

    Returns:
      An :class:`ArraySchedule` with numbers ``init_value``, ``decay_steps``, ``alpha``,
      ``exponent``.

    Reference:
      Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """
    numbers = dict(init_value=init_value, decay_steps=decay_steps, alpha=alpha, exponent=exponent)
    return _build("cosine_decay_schedule", cosine_formula, cosine_peak, numbers)


def warmup_cosine_decay_schedule(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> ArraySchedule:
    """Linear warmup, then cosine decay (optax's ``warmup_cosine_decay_schedule``).

    From ``init_value`` linearly to ``peak_value`` over W = ``warmup_steps`` steps, then
    :func:`cosine_decay_schedule` from the peak over ``decay_steps − W`` steps down to
    ``end_value`` (α = end/peak, 0 for a zero peak), held from step ``decay_steps`` on.

    Args:
      init_value: the value at step 0.
      peak_value: the value at step W.
      warmup_steps: W, an integer ≥ 0 (0: no warmup).
      decay_steps: the total length, warmup included: an integer > W.
      end_value: the value from step ``decay_steps`` on.
      exponent: p > 0, as in :func:`cosine_decay_schedule`.

    Returns:
      An :class:`ArraySchedule` with numbers ``init_value``, ``peak_value``,
      ``warmup_steps``, ``decay_steps``, ``end_value``, ``exponent``.
    """
    numbers = dict(
        init_value=init_value,
        peak_value=peak_value,
        warmup_steps=warmup_steps,
        decay_steps=decay_steps,
        end_value=end_value,
        exponent=exponent,
    )
    return _build("warmup_cosine_decay_schedule", warmup_cosine_formula, warmup_peak, numbers)


def exponential_decay(
    init_value: jax.typing.ArrayLike,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: jax.typing.ArrayLike | None = None,
) -> ArraySchedule:
    """Exponential decay (optax's ``exponential_decay``)::

        v(t) = I                      t ≤ B
               I·r^((t − B)/T)        t > B     (⌊(t − B)/T⌋ with staircase)

    clipped at ``end_value`` (a lower bound for r < 1, an upper bound for r ≥ 1).

    Args:
      init_value: I.
      transition_steps: T, an integer ≥ 0; 0 holds I throughout (as optax).
      decay_rate: r > 0.
      transition_begin: B, an integer ≥ 0.
      staircase: decay in steps of T (static: a flag, not a number).
      end_value: the clip, or None for none (static: whether there is one).

    Returns:
      An :class:`ArraySchedule` with numbers ``init_value``, ``transition_steps``,
      ``decay_rate``, ``transition_begin`` (and ``end_value`` when given).

    Note:
      optax holds I for r = 0 and takes a negative B as 0 (with a log line); gradx refuses
      both.
    """
    if not isinstance(staircase, bool):
        raise TypeError(f"exponential_decay: staircase must be a bool, got {staircase!r}")
    numbers = dict(
        init_value=init_value,
        transition_steps=transition_steps,
        decay_rate=decay_rate,
        transition_begin=transition_begin,
    )
    if end_value is not None:
        numbers["end_value"] = end_value
    static = (staircase, end_value is not None)
    return _build("exponential_decay", exponential_formula, exponential_peak, numbers, static)


def piecewise_constant_schedule(
    init_value: jax.typing.ArrayLike, boundaries_and_scales: dict[int, float] | None = None
) -> ArraySchedule:
    """Piecewise constant (optax's ``piecewise_constant_schedule``): ``init_value`` times
    every scale whose boundary the step has reached.

    Args:
      init_value: the value before the first boundary.
      boundaries_and_scales: ``{step: scale}``: each step an integer ≥ 0, each scale ≥ 0.
        Their number is static; the values are stored as ``boundaries/i`` and ``scales/i``,
        in the order of the steps.

    Returns:
      An :class:`ArraySchedule`.
    """
    items = sorted((boundaries_and_scales or {}).items())
    numbers: dict[str, Any] = {"init_value": init_value}
    for i, (boundary, scale) in enumerate(items):
        numbers[f"boundaries/{i}"], numbers[f"scales/{i}"] = boundary, scale
    size = (len(items),)
    return _build("piecewise_constant_schedule", piecewise_formula, piecewise_peak, numbers, size)


def join_schedules(schedules: Sequence[Any], boundaries: Sequence[int]) -> Any:
    """Schedules one after another (optax's ``join_schedules``): schedule i + 1 takes over at
    ``boundaries[i]``, counting its steps from there.

    Given gradx schedules only, the result is an :class:`ArraySchedule` whose numbers are
    theirs under ``i/<number>`` (``0/init_value``) and the boundaries under ``boundaries/i``
    (integers ≥ 0). Given any other callable, it is optax's ``join_schedules`` (a closure).

    Args:
      schedules: the schedules, in order.
      boundaries: ``len(schedules) − 1`` steps.

    Returns:
      An :class:`ArraySchedule`, or optax's schedule.
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(boundaries) != len(schedules) - 1 or not schedules:
        raise ValueError(
            "join_schedules: boundaries must hold one step fewer than schedules, got "
            f"{len(schedules)} schedules and {len(boundaries)} boundaries"
        )
    if not all(isinstance(s, ArraySchedule) for s in schedules):
        return optax.schedules.join_schedules(schedules, boundaries)
    numbers: dict[str, Any] = {}
    for i, schedule in enumerate(schedules):
        numbers.update({f"{i}/{k}": v for k, v in schedule.numbers.items()})
    numbers.update({f"boundaries/{j}": b for j, b in enumerate(boundaries)})
    specs = (tuple(s.spec for s in schedules),)
    return _build("join_schedules", join_formula, join_peak, numbers, specs)
