"""RAdam: Adam whose step is rectified while the variance of its adaptive rate is large.

Block: ``rectified(direction, by, decay, threshold, eps)``, a fan-out like ``precondition``
that takes the numerator alone while ρ_t < threshold and r_t·numerator/(denominator + ε) once
the variance is tractable. Optimizer: ``radam``.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.adam import ADAM_RULES, moment_dtypes, nesterov_ema
from gradx._optimizers.momentum import ema
from gradx._optimizers.preconditioners import plus, rms
from gradx._optimizers.scaling import check_numbers, scale_by_learning_rate
from gradx._protocol.constants import positive_by_construction
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import coef, wide
from gradx._protocol.gain import (
    DENOMINATORS,
    GAIN_FN,
    Gain,
    block_name,
    closure_cells,
    closure_value,
    gain_product,
    gain_rule,
    in_gain_dtype,
    walk_gain,
)
from gradx._protocol.storage import state_dtype_args


@optimizer(**ADAM_RULES, eps_root=">= 0", threshold=">= 4")
def radam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """RAdam: Adam whose adaptive step is rectified, and skipped while its variance diverges.

    With m̂, v̂ as in :func:`adam` (t = 1, 2, ...)::

        ρ_∞ = 2/(1−β₂) − 1          ρ_t = ρ_∞ − 2t·β₂ᵗ/(1−β₂ᵗ)
        r_t = √((ρ_t−4)(ρ_t−2)ρ_∞ / ((ρ_∞−4)(ρ_∞−2)ρ_t))
        θ ← θ − γ·r_t·m̂/(√(v̂ + ε_root) + ε)   if ρ_t ≥ threshold
        θ ← θ − γ·m̂                             otherwise (SGD with momentum)

    With ``nesterov=True`` m̂ is optax's Nesterov form,
    β₁·m_t/(1−β₁ᵗ⁺¹) + (1−β₁)·g/(1−β₁ᵗ).

    Blocks: ``rectified(ema(β₁, debias), rms(β₂, ε_root, debias), β₂, threshold, ε) →
    scale_by_learning_rate(γ)`` (``nesterov_ema(β₁, None)`` for the numerator with
    ``nesterov``).

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1, b2, eps, eps_root: as in :func:`adam`.
      threshold: ρ_t at and above which the rectified adaptive step is taken; ≥ 4 (the
        paper's), since r_t is the root of a negative number for 2 < ρ_t < 4. optax's
        default 5 (the paper's code) is kept.
      nesterov: optax's Nesterov momentum for m̂.
      mu_dtype, nu_dtype: the dtypes m and v are stored in, as in :func:`adam`.
      state_dtype, stochastic_rounding: how m and v are stored otherwise, as in :func:`adam`.

    Returns:
      An optax transformation whose state holds learning_rate, b1, b2, eps, eps_root and
      threshold.

    Reference:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.

    Note:
      Equals ``optax.radam`` with the same arguments (its step switches at ρ_t ≥ threshold,
      as here). In float32, optax computes ρ_∞ from its Python β₂ in float64 but β₂ᵗ in
      float32; ρ_t, their small difference, then differs from gradx's (both from the stored
      float32 β₂) by 0.03 near t = 6 for β₂ = 0.999, and r_t by about 1%. gradx's is the
      closer to ρ_t in float64; optax given float32 β₂ (``jnp.float32(0.999)``) gives
      gradx's numbers. optax accepts a threshold below 4, where its step can be NaN; gradx
      refuses it. torch's ``RAdam`` switches at ρ_t > 5 and has no ε_root. The arguments up to
      ``threshold`` are positional as in ``optax.radam``; the rest are keyword-only.
    """
    moment_dtypes("radam", mu_dtype, nu_dtype)
    store = state_dtype_args("radam", state_dtype, stochastic_rounding)
    if nesterov:
        num = nesterov_ema(b1, None, accumulator_dtype=mu_dtype, **store)
    else:
        num = ema(b1, debias=True, accumulator_dtype=mu_dtype, **store)
    den = rms(b2, eps_root=eps_root, debias=True, accumulator_dtype=nu_dtype, **store)
    return optax.chain(
        rectified(num, den, b2, threshold, eps), scale_by_learning_rate(learning_rate)
    )


class RectifiedState(NamedTuple):
    by: Any  # the state of the denominator's transform
    count: jax.Array  # shape=(), int32: steps taken, t
    direction: Any  # the state of the numerator's transform


def rectification(decay: jax.Array, count: jax.Array, threshold: jax.Array):
    """RAdam's (ρ_t ≥ threshold, r_t), in ``decay``'s dtype; r_t = 1 where unused.

    ``count`` is t as an int32: β₂ᵗ is an integer power, as in optax (ρ_t is a difference of
    two numbers near 2/(1−β₂), so the way β₂ᵗ rounds shows in r_t)."""
    rho_inf = 2 / (1 - decay) - 1
    try:  # a concrete count: jnp's power is repeated products; traced: lax.pow (as jnp's)
        b2t = jax.lax.integer_pow(decay, operator.index(count))
    except TypeError:
        b2t = jax.lax.pow(decay, count)
    rho = rho_inf - 2 * count.astype(decay.dtype) * b2t / (1 - b2t)
    tractable = rho >= threshold
    # The ratio is computed only where it is used: below 4 it may be negative (a NaN root).
    num = jnp.where(tractable, (rho - 4) * (rho - 2) * rho_inf, 1)
    den = jnp.where(tractable, (rho_inf - 4) * (rho_inf - 2) * rho, 1)
    return tractable, jnp.sqrt(num / den)


def rectified(
    direction: optax.GradientTransformation,
    by: optax.GradientTransformation,
    decay: jax.typing.ArrayLike,
    threshold: jax.typing.ArrayLike = 5.0,
    eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Block (fan-out) for RAdam: the rectified ratio, or the numerator alone.

    With ``direction`` m̂ and ``by`` d (√v̂, from :func:`rms` with ``debias``), both fed the
    same gradient g, β₂ = ``decay`` (the denominator's), t = 1, 2, ...::

        ρ_∞ = 2/(1−β₂) − 1          ρ_t = ρ_∞ − 2t·β₂ᵗ/(1−β₂ᵗ)
        r_t = √((ρ_t−4)(ρ_t−2)ρ_∞ / ((ρ_∞−4)(ρ_∞−2)ρ_t))
        u ← r_t·m̂/(d + ε)   if ρ_t ≥ threshold,   else   u ← m̂

    :func:`precondition` with a variance rectification: while ρ_t is below the threshold
    (the first steps) the adaptive learning rate's variance is intractable and the step is
    the un-preconditioned numerator. The denominator is still updated at every step. As in
    :func:`precondition`, the update is 0 where d + ε is exactly 0.

    Returns:
      An optax transformation whose update is computed in the wider dtype of numerator,
      denominator and ε; r_t is computed in β₂'s dtype.
    """
    check_numbers("rectified", decay=decay, threshold=threshold, eps=eps)
    direction = optax.with_extra_args_support(direction)
    by = optax.with_extra_args_support(by)
    guarded = not positive_by_construction(eps)  # ε > 0 for good: no zero guard

    def init(params: Any) -> RectifiedState:
        return RectifiedState(
            by=by.init(params), count=jnp.zeros([], jnp.int32), direction=direction.init(params)
        )

    def update(updates, state, params=None, **extra_args):
        num, direction_state = direction.update(updates, state.direction, params, **extra_args)
        den, by_state = by.update(updates, state.by, params, **extra_args)
        b2, e = jnp.asarray(decay), jnp.asarray(eps)
        count = optax.safe_increment(state.count)
        tractable, r = rectification(b2, count, jnp.asarray(threshold, b2.dtype))

        def leaf(n, d):
            nw, dw = wide(n, e, d), wide(d, e, n)
            total = plus(dw, e, eps)
            safe = (
                jax.lax.select(total > 0, total, jax.lax.full_like(total, 1)) if guarded else total
            )
            ratio = coef(r, nw) * nw / (safe if safe.dtype == nw.dtype else safe.astype(nw.dtype))
            return jnp.where(tractable, ratio, nw)

        out = jax.tree.map(leaf, num, den)
        return out, RectifiedState(by=by_state, count=count, direction=direction_state)

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(rectified)
def _rectified_gain(ctx, cells, state, incoming):
    # The numerator's gain times r_t/(d + ε) where ρ_t ≥ threshold, else times 1.
    direction = closure_value(cells, "direction", "rectified")
    by = closure_value(cells, "by", "rectified")
    b2 = in_gain_dtype(ctx, closure_value(cells, "decay", "rectified"))
    eps = in_gain_dtype(ctx, closure_value(cells, "eps", "rectified"))
    threshold = in_gain_dtype(ctx, closure_value(cells, "threshold", "rectified"))
    gain, _ = walk_gain(ctx, direction.update, state.direction, incoming)
    rule = DENOMINATORS.get(getattr(by.update, "__code__", None))
    if rule is None:
        raise TypeError(
            f"{GAIN_FN}: the denominator {block_name(by.update)} of rectified has no gain rule; "
            "gradx's rms, max_rms, rss and inf_norm have one"
        )
    den = rule(ctx, closure_cells(by.update), state.by)
    tractable, r = rectification(b2, jnp.maximum(state.count, 1), threshold)

    def factor(d):
        total = d + eps
        inverse = 1 / jnp.where(total > 0, total, jnp.ones_like(total))
        return jnp.where(tractable, r * inverse, jnp.ones_like(inverse))

    return gain_product(gain, Gain(jnp.ones([], ctx.dtype), jax.tree.map(factor, den))), None
