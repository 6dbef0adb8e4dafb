"""Schedules whose numbers are data: :class:`ArraySchedule`, and how the state holds them.

An optax schedule is a closure: its numbers are Python constants, static to ``jit``. An
:class:`ArraySchedule` is a pure formula ``(count, numbers) -> value`` (static, shared by every
schedule of its kind) and its numbers (data). ``@gradx.optimizer`` stores the numbers of a
schedule given for hyperparameter ``h`` in the state's ``hyperparams`` under ``h/<number>``
(``learning_rate/peak_value``) and evaluates the formula on them at every step, so
``set_hyperparams``, ``sweep`` and ``search`` change them without retracing, and two schedules
of one kind share one compiled program.

The rule of a stored number follows from its key alone (so it survives pickle and
checkpoints): a value number (``init_value``, ``peak_value``, ``end_value``, ``value``) obeys
the rule of the hyperparameter it schedules; the others obey :data:`NUMBER_RULES`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx._protocol.rules import Relation, Rule

#: Numbers that are values of the hyperparameter: they obey its rule.
VALUE_NUMBERS = frozenset({"value", "init_value", "peak_value", "end_value"})

#: The rule of every other number a gradx schedule has, by its name.
NUMBER_RULES = {
    name: Rule.parse(text)
    for name, text in {
        "alpha": "any",
        "boundaries": "int >= 0",
        "decay_rate": "> 0",
        "decay_steps": "int > 0",
        "exponent": "> 0",
        "scales": ">= 0",
        "transition_begin": "int >= 0",
        "transition_steps": "int >= 0",
        "warmup_steps": "int >= 0",
    }.items()
}

#: Relations between two numbers of one schedule (the same key prefix).
NUMBER_RELATIONS = (Relation.parse("warmup_steps < decay_steps"),)

_ANY = Rule.parse("any")


def base_name(local: str) -> str:
    """The name that fixes a number's rule: ``0/peak_value`` -> ``peak_value``,
    ``boundaries/1`` -> ``boundaries``."""
    parts = [p for p in local.split("/") if not p.isdigit()]
    return parts[-1] if parts else local


def number_rule(local: str, value_rule: Rule | None = None) -> Rule:
    """The rule of a schedule's number by its local name; value numbers take ``value_rule``
    (the scheduled hyperparameter's rule; any finite number when None)."""
    base = base_name(local)
    if base in VALUE_NUMBERS:
        return value_rule or _ANY
    return NUMBER_RULES[base]


def stored_rule(rules: Mapping[str, Rule], key: str) -> Rule | None:
    """The rule of a key of a state's ``hyperparams``: the optimizer's own rule for a
    hyperparameter, or, for ``h/<number>``, the rule of that number of h's schedule."""
    if "/" not in key:
        return rules.get(key)
    head, local = key.split("/", 1)
    base = base_name(local)
    if base not in VALUE_NUMBERS and base not in NUMBER_RULES:
        return None
    return number_rule(local, rules.get(head))


def stored_relations(keys: Any, local: bool = False) -> list[tuple[str, str, Relation]]:
    """``(left key, right key, relation)`` for every pair of schedule numbers that
    :data:`NUMBER_RELATIONS` ties (one schedule: the same prefix). Keys of a state's
    ``hyperparams`` (``h/<number>``), or with ``local`` the names of one schedule's numbers."""
    keys = set(keys)
    out = []
    for key in sorted(keys):
        prefix, sep, last = key.rpartition("/")
        if not (prefix or local):
            continue  # an optimizer's own hyperparameter, not a schedule's number
        for link in NUMBER_RELATIONS:
            right = f"{prefix}{sep}{link.right}"
            if last == link.left and right in keys:
                out.append((key, right, link))
    return out


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """The static half of an :class:`ArraySchedule`: its formula, its static settings and the
    names of its numbers. Hashable: equal specs share one ``update`` and one program."""

    kind: str
    formula: Callable[..., Any]  # (count, numbers, *static) -> value
    peak_formula: Callable[..., Any]  # (numbers, *static) -> the schedule's largest value
    static: tuple
    names: tuple[str, ...]

    def evaluate(self, count: Any, numbers: Mapping[str, Any]) -> jax.Array:
        return self.formula(jnp.asarray(count), numbers, *self.static)

    def peak(self, numbers: Mapping[str, Any]) -> jax.Array:
        return self.peak_formula(numbers, *self.static)


def number_is_integer(key: str) -> bool:
    """Whether a schedule's number (``key``: local, or ``h/<number>``) is stored as int32:
    the step numbers are; the value numbers never are (a schedule computes in floats)."""
    base = base_name(key)
    return base not in VALUE_NUMBERS and NUMBER_RULES[base].integer


def _as_number_array(local: str, value: Any) -> jax.Array:
    """A number as :meth:`ArraySchedule.__call__` computes with it: int32 for an integer
    rule, else JAX's default float (float32, float64 with x64), as optax's Python numbers."""
    if number_is_integer(local):
        return jnp.asarray(value, jnp.int32)
    return jnp.asarray(value, jax.dtypes.canonicalize_dtype(jnp.float64))


class ArraySchedule:
    """A schedule whose numbers are data: ``gradx.schedules``' own schedules.

    Called with a step count it returns its value, as the optax schedule of the same name
    does (so it works anywhere a schedule does, optax's optimizers included). Given to a gradx
    optimizer for hyperparameter ``h``, its numbers live in the optimizer's state as
    ``h/<number>`` (``gradx.hyperparams(state)["learning_rate/peak_value"]``), so
    :func:`gradx.set_hyperparams`, :func:`gradx.sweep` and :func:`gradx.search` change them
    without retracing, and :func:`gradx.fit` compiles once for every schedule of one kind.

    Attributes:
      spec: the static half (kind, formula, static settings, number names).
      numbers: ``{name: number}``, as given (Python or NumPy numbers, or scalar arrays).
    """

    __slots__ = ("numbers", "spec")

    def __init__(self, spec: ScheduleSpec, numbers: Mapping[str, Any]) -> None:
        if tuple(sorted(numbers)) != spec.names:
            raise ValueError(
                f"ArraySchedule: numbers must be {list(spec.names)}, got {sorted(numbers)}"
            )
        self.spec = spec
        self.numbers = dict(sorted(numbers.items()))

    def __call__(self, count: Any) -> jax.Array:
        return self.spec.evaluate(count, self.arrays())

    def arrays(self) -> dict[str, jax.Array]:
        """The numbers as arrays: int32 for step counts, JAX's default float for the others
        (float32; float64 with x64), as optax computes with Python numbers."""
        return {k: _as_number_array(k, v) for k, v in self.numbers.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_plain(v)!r}" for k, v in self.numbers.items())
        return f"gradx.schedules.{self.spec.kind}({args})"


def _plain(value: Any) -> Any:
    return np.asarray(value).item() if np.ndim(value) == 0 and not _traced(value) else value


def _traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_numbers(fn: str, numbers: Mapping[str, Any]) -> None:
    """Checks the concrete numbers of a schedule being built by ``fn``: each against its
    rule (value numbers: finite), each a scalar, and the relations between them."""
    for local, value in numbers.items():
        if np.ndim(value) != 0:
            raise ValueError(f"{fn}: {local} must be a scalar, got shape {np.shape(value)}")
        number_rule(local).check(fn, local, value)
    for left, right, link in stored_relations(numbers, local=True):
        lv, rv = numbers[left], numbers[right]
        if not (_traced(lv) or _traced(rv)) and not link.holds(lv, rv):
            raise ValueError(f"{fn}: {left} must be {link.op} {right} ({rv}), got {lv}")


# The peak of each ArraySchedule hyperparameter while an @optimizer builds its chain, by the
# identity of the value it passes to the factory: see schedule_multiplier.
_FIXED, _OPAQUE = "fixed", "opaque"
_PEAKS: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "gradx_schedule_peaks", default=None
)


@contextlib.contextmanager
def schedule_peaks(entries: Mapping[int, Any]) -> Iterator[None]:
    """While an @optimizer calls its factory: ``{id(value): thunk of the peak | "fixed" |
    "opaque"}`` for every hyperparameter value it passes."""
    token = _PEAKS.set(dict(entries))
    try:
        yield
    finally:
        _PEAKS.reset(token)


def peak_entry(value: Any, schedule: Any) -> Any:
    """The :func:`schedule_peaks` entry of one hyperparameter: a number -> "fixed"; a gradx
    schedule -> a thunk of its peak (``(spec, numbers)``); any other schedule or injected
    value -> "opaque"."""
    if schedule is None:
        return _FIXED
    if isinstance(schedule, tuple):
        spec, numbers = schedule
        return lambda: spec.peak(numbers)
    return _OPAQUE


def schedule_multiplier(fn: str, name: str, value: Any) -> Any:
    """η_t = γ_t/γ_peak for the learning rate ``value`` an @optimizer passed to its factory:
    1 for a number (and outside an optimizer, where a block's numbers are fixed); a gradx
    schedule's value over its peak (0 where the peak is 0: the schedule is 0 throughout)."""
    entries = _PEAKS.get()
    if entries is None:
        return 1.0
    entry = entries.get(id(value))
    if entry is None and isinstance(value, (int, float, np.number)):
        return 1.0  # a number written in the chain: fixed
    if entry is None:
        raise ValueError(
            f"{fn}: {name} must be the learning rate the optimizer passes to its chain, "
            "unchanged, with weight_decay_scaling='schedule' (the multiplier is read from "
            "its schedule), got a value computed from it"
        )
    if entry == _FIXED:
        return 1.0
    if entry == _OPAQUE:
        raise TypeError(
            f"{fn}: {name} must be a number or a gradx schedule (gradx.schedules) with "
            "weight_decay_scaling='schedule', got a schedule whose peak is unknown (an optax "
            "schedule or a value given from outside); build it with gradx.schedules"
        )
    peak = jnp.asarray(entry(), jnp.asarray(value).dtype)
    if not _traced(peak) and not np.isfinite(np.asarray(peak)):
        raise ValueError(
            f"{fn}: {name}'s schedule must have a finite peak with "
            f"weight_decay_scaling='schedule', got {peak}"
        )
    positive = peak > 0
    return jnp.where(positive, value / jnp.where(positive, peak, 1), jnp.zeros_like(peak))
