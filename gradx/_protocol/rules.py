"""Hyperparameter rules: what a value may be (``">= 0"``, ``"[0, 1)"``, ...) and how it is checked.

A :class:`Rule` is parsed from its text once, when an optimizer is declared; it checks concrete
values at construction and in :func:`gradx.set_hyperparams`, and traced ones at run time
under :func:`gradx.check_hyperparams`. A relation (``"min_step <= max_step"``) ties two
hyperparameters of one optimizer.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
    """The set a hyperparameter must lie in, written as in the error messages.

    ``"[0, 1)"``, ``"(0, 1]"``, ``">= 0"``, ``"> 0"``, ``"int >= 1"``, ``"any"``.
    Every value must also be finite, both as given and as stored (see :meth:`check`).
    """

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = True
    high_closed: bool = True
    integer: bool = False

    @classmethod
    def parse(cls, text: str) -> Rule:
        interval = re.fullmatch(r"\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*", text)
        if interval:
            lo_b, lo, hi, hi_b = interval.groups()
            return cls(f"in {text.strip()}", float(lo), float(hi), lo_b == "[", hi_b == "]")
        bound = re.fullmatch(r"\s*(int\s+)?(>=|>|<=|<)\s*(\S+)\s*", text)
        if bound:
            integer, op, value = bound.groups()
            value = float(value)
            prefix = "an integer " if integer else ""
            rule_text = f"{prefix}{op} {bound.group(3)}"
            if op.startswith(">"):
                return cls(rule_text, low=value, low_closed=op == ">=", integer=bool(integer))
            return cls(rule_text, high=value, high_closed=op == "<=", integer=bool(integer))
        if text.strip() == "any":
            return cls("finite")
        raise ValueError(
            f"Rule.parse: text must look like '[0, 1)', '>= 0' or 'int >= 1', got {text!r}"
        )

    def holds(self, x: np.ndarray) -> bool:
        """Whether every element of ``x`` is finite and lies in the set."""
        if not np.all(np.isfinite(x)):
            return False
        if self.integer and not np.all(np.equal(np.round(x), x)):
            return False
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return bool(np.all(above & below))

    def holds_traced(self, x: jax.Array) -> jax.Array:
        """:meth:`holds` for an array that may be traced: a boolean array, all over ``x``."""
        ok = jnp.isfinite(x) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.ones_like(x, bool)
        if self.integer and jnp.issubdtype(x.dtype, jnp.inexact):
            ok &= jnp.round(x) == x
        if self.low > -math.inf:
            low = jnp.asarray(self.low).astype(x.dtype)
            ok &= x >= low if self.low_closed else x > low
        if self.high < math.inf:
            high = jnp.asarray(self.high).astype(x.dtype)
            ok &= x <= high if self.high_closed else x < high
        return jnp.all(ok)

    def storage_dtype(self, dtype: Any = None) -> np.dtype:
        """The dtype a value is stored in: int32 for an integer rule, else ``dtype``
        (default float32, the narrowest dtype :func:`hyperparam_dtype` returns)."""
        if self.integer:
            return np.dtype(np.int32)
        return np.dtype(jnp.float32 if dtype is None else dtype)

    def check(self, fn: str, name: str, value: Any, dtype: Any = None) -> None:
        """Raises if a concrete ``value`` breaks the rule; tracers pass unchecked.

        The value is checked as given and as it will be stored, in ``dtype`` (see
        :meth:`storage_dtype`): ``b1 = 1 − 1e−10`` is 1.0 in float32 and breaks
        ``[0, 1)``; ``1e39`` is inf in float32 and breaks every rule.
        """
        if isinstance(value, jax.core.Tracer):
            return
        if _is_complex(value):
            raise TypeError(
                f"{fn}: {name} must be a real number {self.text}, got the complex {value!r}"
            )
        if isinstance(value, bool) or not is_number(value):
            raise TypeError(f"{fn}: {name} must be a number {self.text}, got {value!r}")
        try:  # a Python int past float64's range (10**400) is an object array to NumPy
            x = np.asarray(value, np.float64) if isinstance(value, int) else np.asarray(value)
        except OverflowError:
            raise ValueError(
                f"{fn}: {name} must be {self.text}, got an integer of {len(str(abs(value)))} "
                "digits, which overflows float64"
            ) from None
        if not self.holds(x):
            raise ValueError(f"{fn}: {name} must be {self.text}, got {value!r}")
        stored_dtype = self.storage_dtype(dtype)
        if self.integer:
            info = np.iinfo(stored_dtype)
            if not info.min <= x <= info.max:
                raise ValueError(
                    f"{fn}: {name} must be {self.text}, got {value!r}, which does not fit in "
                    f"{stored_dtype.name}, the dtype it is stored in"
                )
            return
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            stored = x.astype(stored_dtype)
        if not self.holds(stored):
            raise ValueError(
                f"{fn}: {name} must be {self.text}, got {value!r}, which rounds to "
                f"{stored.item()!r} in {stored_dtype.name}, the dtype it is stored in"
            )
        tiny = np.finfo(stored_dtype).tiny if np.issubdtype(stored_dtype, np.floating) else 0
        if self.low == 0 and not self.low_closed and np.any(np.abs(stored) < tiny):
            raise ValueError(  # > 0 as stored, but XLA flushes a subnormal to 0
                f"{fn}: {name} must be {self.text}, got {value!r}, which is subnormal in "
                f"{stored_dtype.name}, the dtype it is stored in (below {tiny}), and "
                "computes as 0"
            )

    def check_hyperparameter(self, fn: str, name: str, value: Any, dtype: Any = None) -> bool:
        """Checks a number, or a schedule's value at step 0; returns whether it is a schedule."""
        if callable(value) and not hasattr(value, "dtype"):
            try:
                first = value(0)
            except TypeError as e:
                if "positional argument" not in str(e):
                    raise
                raise TypeError(  # Keras takes a function of no argument; schedules take t
                    f"{fn}: {name} must be a number {self.text} or a schedule, a function of "
                    f"the step count, got {value!r}, which cannot be called with one ({e})"
                ) from None
            self.check(fn, f"{name} (its schedule's value at step 0)", first, dtype)
            check_schedule_shape(fn, name, first)
            return True
        self.check(fn, name, value, dtype)
        return False


def is_number(value: Any) -> bool:
    """A real number: a Python int or float, or a real NumPy/JAX number or array."""
    if _is_complex(value):
        return False
    if isinstance(value, (int, float, np.number)):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    )


def _is_complex(value: Any) -> bool:
    """A complex number or array (np.complex64(1e-3) is an np.number, and not a real one)."""
    if isinstance(value, complex):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)


def check_schedule_shape(fn: str, name: str, value: Any) -> None:
    """Refuses a schedule's value that is not a scalar (one number per step, not one per
    coordinate): it would be broadcast over every leaf silently. Shapes are static, so this
    works on tracers, when ``update`` is traced."""
    if np.ndim(value) != 0:
        raise ValueError(
            f"{fn}: {name}'s schedule must return a scalar, got shape {np.shape(value)}"
        )


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclasses.dataclass(frozen=True)
class Relation:
    """A rule between two hyperparameters of one optimizer, e.g. ``"min_step <= max_step"``."""

    left: str
    op: str
    right: str

    @classmethod
    def parse(cls, text: str) -> Relation:
        match = re.fullmatch(r"\s*(\w+)\s*(<=|<|>=|>)\s*(\w+)\s*", text)
        if not match:
            raise ValueError(
                f"optimizer: a relation must look like 'min_step <= max_step', got {text!r}"
            )
        return cls(*match.groups())

    def holds(self, left: Any, right: Any) -> Any:
        return _COMPARISONS[self.op](left, right)

    def message(self, fn: str, left: np.generic, right: np.generic) -> str:
        # str, not repr: a float32 0.005 reads 0.005, not 0.004999999888241291.
        return f"{fn}: {self.left} must be {self.op} {self.right} ({right!s}), got {left!s}"


def concrete_value(value: Any) -> np.generic | None:
    """``value`` as a NumPy scalar, or None for a tracer (or a container of one)."""
    leaves = jax.tree.leaves(value)
    if len(leaves) != 1 or isinstance(leaves[0], jax.core.Tracer):
        return None
    return np.asarray(leaves[0])[()]


def flag_kind(annotation: Any) -> str | None:
    """'bool' or 'optional' for a parameter annotated ``bool`` or ``bool | None``, else None."""
    if annotation is bool:
        return "bool"
    text = str(annotation).replace(" ", "").replace("typing.", "")
    if text == "bool":
        return "bool"
    if text in ("bool|None", "None|bool", "Optional[bool]", "Union[bool,None]"):
        return "optional"
    return None


def check_flag(fn: str, name: str, value: Any, kind: str) -> None:
    if isinstance(value, (bool, np.bool_)) or (kind == "optional" and value is None):
        return
    allowed = "a bool or None" if kind == "optional" else "a bool"
    raise TypeError(f"{fn}: {name} must be {allowed}, got {value!r}")
