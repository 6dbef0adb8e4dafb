"""Search spaces for :func:`gradx.search`: distributions of hyperparameter values.

``space = {"learning_rate": loguniform(1e-4, 1e-1), "b1": uniform(0.8, 0.99)}``. Each
distribution draws K values from a JAX PRNG key (:meth:`Distribution.sample`) and knows how
population-based training perturbs a value (:meth:`Distribution.perturb`). A plain number in a
space is a constant: every member gets it, and it is never perturbed.

Peer note: Ray Tune's ``tune.uniform``, ``tune.loguniform``, ``tune.choice`` and
``tune.randint`` have the same meanings (``randint``'s upper bound is exclusive in both).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Distribution", "choice", "loguniform", "randint", "uniform"]


def _number(fn: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{fn}: {name} must be a finite number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{fn}: {name} must be a finite number, got {value!r}")
    return float(value)


def _uniforms(key: jax.Array, n: int) -> np.ndarray:
    # float64 draws when x64 is on, float32 otherwise; the values are cast to the state's
    # dtype (and checked against the optimizer's rule) by gradx.search.
    dtype = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    return np.asarray(jax.random.uniform(key, (n,), dtype), np.float64)


class Distribution:
    """A distribution of one hyperparameter's values (built by :func:`uniform`,
    :func:`loguniform`, :func:`choice` or :func:`randint`).

    Subclasses define ``sample(key, n) -> np.ndarray`` (n values) and ``perturb(values, up,
    factors) -> np.ndarray`` (each value moved up where ``up`` is True, else down, by
    ``factors = (down, up)`` or to a neighbouring value, staying in the distribution's range).
    """

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """``n`` values drawn with the PRNG ``key``, an array of shape ``(n,)``."""
        raise NotImplementedError

    def perturb(
        self, values: np.ndarray, up: np.ndarray, factors: tuple[float, float]
    ) -> np.ndarray:
        """``values`` moved up where ``up`` is True, else down, by ``factors = (down, up)``."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Uniform(Distribution):
    low: float
    high: float
    log: bool = False

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        u = _uniforms(key, n)
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return np.exp(lo + (hi - lo) * u)
        return self.low + (self.high - self.low) * u

    def perturb(
        self, values: np.ndarray, up: np.ndarray, factors: tuple[float, float]
    ) -> np.ndarray:
        # x·1.25 or x·0.8 (the factors), clipped to [low, high].
        moved = np.asarray(values, np.float64) * np.where(up, factors[1], factors[0])
        return np.clip(moved, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class _Choice(Distribution):
    values: tuple[float, ...]

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        index = np.asarray(jax.random.randint(key, (n,), 0, len(self.values)))
        return np.asarray(self.values, np.float64)[index]

    def perturb(
        self, values: np.ndarray, up: np.ndarray, factors: tuple[float, float]
    ) -> np.ndarray:
        # The neighbouring value in the list (as Ray Tune's PBT does), clipped at the ends.
        del factors
        table = np.asarray(self.values, np.float64)
        index = np.array([int(np.argmin(np.abs(table - v))) for v in np.asarray(values)], int)
        index = np.clip(index + np.where(up, 1, -1), 0, len(table) - 1)
        return table[index]


@dataclasses.dataclass(frozen=True)
class _RandInt(Distribution):
    low: int
    high: int  # exclusive

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        return np.asarray(jax.random.randint(key, (n,), self.low, self.high), np.float64)

    def perturb(
        self, values: np.ndarray, up: np.ndarray, factors: tuple[float, float]
    ) -> np.ndarray:
        # round(x·factor), moved by at least 1, clipped to [low, high − 1].
        values = np.asarray(values, np.float64)
        moved = np.round(values * np.where(up, factors[1], factors[0]))
        moved = np.where(up, np.maximum(moved, values + 1), np.minimum(moved, values - 1))
        return np.clip(moved, self.low, self.high - 1)


def uniform(low: float, high: float) -> Distribution:
    """Values drawn uniformly from [low, high).

    Args:
      low, high: finite numbers, low < high.

    Returns:
      A :class:`Distribution`. Population-based training multiplies a value by 0.8 or 1.25
      and clips it to [low, high].
    """
    lo, hi = _number("uniform", "low", low), _number("uniform", "high", high)
    if not lo < hi:
        raise ValueError(f"uniform: high must be > low ({lo}), got {hi}")
    return _Uniform(lo, hi)


def loguniform(low: float, high: float) -> Distribution:
    """Values whose logarithm is uniform on [log low, log high): x = exp(u), the usual prior
    for scale parameters such as a learning rate or eps.

    Args:
      low, high: finite numbers, 0 < low < high.

    Returns:
      A :class:`Distribution`. Perturbation multiplies by 0.8 or 1.25, clipped to [low, high].
    """
    lo, hi = _number("loguniform", "low", low), _number("loguniform", "high", high)
    if not lo > 0:
        raise ValueError(f"loguniform: low must be > 0, got {lo}")
    if not lo < hi:
        raise ValueError(f"loguniform: high must be > low ({lo}), got {hi}")
    return _Uniform(lo, hi, log=True)


def choice(values: Sequence[float]) -> Distribution:
    """One of ``values``, each with probability 1/len(values).

    Args:
      values: a non-empty sequence of finite numbers, distinct, in the order perturbation
        walks them (population-based training moves a value to its neighbour in the list).

    Returns:
      A :class:`Distribution`.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray):
        raise ValueError(f"choice: values must be a non-empty sequence of numbers, got {values!r}")
    numbers = tuple(_number("choice", f"values[{i}]", v) for i, v in enumerate(values))
    if not numbers:
        raise ValueError("choice: values must be a non-empty sequence of numbers, got none")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"choice: values must be distinct, got {list(values)!r}")
    return _Choice(numbers)


def randint(low: int, high: int) -> Distribution:
    """An integer drawn uniformly from {low, ..., high − 1} (``high`` exclusive, as in
    ``jax.random.randint`` and Ray Tune's ``tune.randint``).

    Args:
      low, high: integers, low < high.

    Returns:
      A :class:`Distribution`. Perturbation multiplies by 0.8 or 1.25, rounds, moves by at
      least 1 and clips to [low, high − 1].
    """
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"randint: {name} must be an integer, got {v!r}")
    if not low < high:
        raise ValueError(f"randint: high must be > low ({low}), got {high}")
    return _RandInt(int(low), int(high))
