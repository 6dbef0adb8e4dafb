"""The formulas of :mod:`gradx.schedules`, and their peaks.

Each formula takes the step count and the numbers as arrays (floats in one dtype, the step
numbers as integers), follows the operations of optax's schedule of the same name in order,
and computes in the numbers' float dtype: float32, or float64 in a float64 state. Each peak
is the schedule's largest value (for ``weight_decay_scaling="schedule"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


def as_steps(count: jax.Array, steps: jax.Array) -> jax.Array:
    return steps.astype(count.dtype)


def ramp(count, init, end, steps, begin):
    """optax's polynomial_schedule at power 1: init until ``begin``, then linear to ``end`` in
    ``steps`` steps, then ``end``; ``steps`` <= 0: init throughout."""
    steps, begin = as_steps(count, steps), as_steps(count, begin)
    done = jnp.clip(count - begin, min=jnp.zeros_like(steps), max=steps)
    frac = 1 - done.astype(init.dtype) / jnp.maximum(steps, 1).astype(init.dtype)
    return jnp.where(steps <= 0, init, (init - end) * frac + end)


def cosine(count, init, decay_steps, alpha, exponent):
    steps = decay_steps.astype(init.dtype)
    done = jnp.minimum(count.astype(init.dtype), steps)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * done / steps))
    return init * ((1 - alpha) * cosine**exponent + alpha)


def constant_formula(count, n):
    del count
    return n["value"]


def linear_formula(count, n):
    return ramp(
        count, n["init_value"], n["end_value"], n["transition_steps"], n["transition_begin"]
    )


def warmup_constant_formula(count, n):
    zero = jnp.zeros_like(n["warmup_steps"])
    return ramp(count, n["init_value"], n["peak_value"], n["warmup_steps"], zero)


def cosine_formula(count, n):
    return cosine(count, n["init_value"], n["decay_steps"], n["alpha"], n["exponent"])


def end_over_peak(n):
    """optax's α = end/peak (0 where the peak is 0)."""
    peak = n["peak_value"]
    nonzero = peak != 0
    return jnp.where(nonzero, n["end_value"] / jnp.where(nonzero, peak, 1), jnp.zeros_like(peak))


def warmup_cosine_formula(count, n):
    """optax's join of linear warmup (to ``peak_value`` in ``warmup_steps``) and cosine decay
    (from the peak, over ``decay_steps - warmup_steps``, α = end/peak)."""
    warmup, peak = n["warmup_steps"], n["peak_value"]
    warm = ramp(count, n["init_value"], peak, warmup, jnp.zeros_like(warmup))
    start = as_steps(count, warmup)
    decay = n["decay_steps"] - warmup
    cool = cosine(count - start, peak, decay, end_over_peak(n), n["exponent"])
    return jnp.where(count < start, warm, cool)


def exponential_formula(count, n, staircase, has_end):
    init, rate = n["init_value"], n["decay_rate"]
    steps = as_steps(count, n["transition_steps"])
    decreased = count - as_steps(count, n["transition_begin"])
    p = decreased.astype(init.dtype) / jnp.maximum(steps, 1).astype(init.dtype)
    if staircase:
        p = jnp.floor(p)
    value = jnp.where(decreased <= 0, init, init * jnp.power(rate, p))
    if has_end:
        end = n["end_value"]
        value = jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))
    return jnp.where(steps <= 0, init, value)


def piecewise_formula(count, n, size):
    value = n["init_value"]
    for i in range(size):
        threshold = as_steps(count, n[f"boundaries/{i}"])
        below = jnp.maximum(0, jnp.sign(threshold - count)).astype(value.dtype)
        value = value * below + (1 - below) * n[f"scales/{i}"] * value
    return value


def child(n: Mapping[str, Any], i: int) -> dict[str, Any]:
    prefix = f"{i}/"
    return {k[len(prefix) :]: v for k, v in n.items() if k.startswith(prefix)}


def join_formula(count, n, specs):
    out = specs[0].evaluate(count, child(n, 0))
    for j, spec in enumerate(specs[1:]):
        boundary = as_steps(count, n[f"boundaries/{j}"])
        out = jnp.where(count < boundary, out, spec.evaluate(count - boundary, child(n, j + 1)))
    return out


# The peaks: the largest value of each schedule (for weight_decay_scaling="schedule").


def most(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = jnp.maximum(out, x)
    return out


def constant_formula_peak(n):
    return n["value"]


def linear_peak(n):
    return most(n["init_value"], n["end_value"])


def warmup_peak(n):
    """Warmup to the peak, then constant or a decay to ``end_value`` (cosine: α·peak with
    α = end/peak, which is ``end_value`` up to rounding)."""
    return most(n["init_value"], n["peak_value"], *([n["end_value"]] if "end_value" in n else []))


def cosine_peak(n):
    return most(n["init_value"], n["init_value"] * n["alpha"])


def exponential_peak(n, staircase, has_end):
    del staircase
    init, rate = n["init_value"], n["decay_rate"]
    if has_end:
        end = n["end_value"]
        peak = jnp.where(
            rate < 1, most(init, end), jnp.where(rate > 1, end, jnp.minimum(init, end))
        )
    else:  # growing without bound: no peak (NaN, refused at construction)
        peak = jnp.where(rate <= 1, init, jnp.full_like(init, jnp.nan))
    return jnp.where(n["transition_steps"] <= 0, init, peak)


def piecewise_peak(n, size):
    init = n["init_value"]
    values = [init]
    for j in range(size):  # the value right after boundary j: every scale at or before it
        value = init
        for i in range(size):
            applied = n[f"boundaries/{i}"] <= n[f"boundaries/{j}"]
            value = value * jnp.where(applied, n[f"scales/{i}"], jnp.ones_like(init))
        values.append(value)
    return most(*values)


def join_peak(n, specs):
    return most(*(spec.peak(child(n, i)) for i, spec in enumerate(specs)))
