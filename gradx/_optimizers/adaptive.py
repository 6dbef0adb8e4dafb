"""RMSProp, Adagrad and Adadelta: per-coordinate steps from running squares of the gradient.

=========  ===================================================================
rmsprop    precondition(identity, rms(decay), eps)
adagrad    precondition(identity, rss(), eps)
adadelta   scale_by_adadelta(rho, eps)  (its numerator is a running RMS of past *updates*)
=========  ===================================================================
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.adam import moment_dtypes
from gradx._optimizers.momentum import trace
from gradx._optimizers.preconditioners import ema_of, precondition, rms, rss
from gradx._optimizers.scaling import check_numbers, scale_by_learning_rate
from gradx._protocol.constants import positive_by_construction
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import abs_sq, coef, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    needs_incoming,
    scaled,
)
from gradx._protocol.storage import decode_moments, moment_codec, state_dtype_args
from gradx._protocol.trees import check_tree


class AdadeltaState(NamedTuple):
    e_d: Any  # like params, real (accumulator_dtype): EMA of squared updates |d|²
    e_g: Any  # like params, real (accumulator_dtype): EMA of |g|²


def scale_by_adadelta(
    rho: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike,
    *,
    accumulator_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: Zeiler's Adadelta direction (the learning rate is applied after it).

    E_g ← ρ·E_g + (1−ρ)·``|g|²``;  d = √(E_d + ε)/√(E_g + ε)·g;  E_d ← ρ·E_d + (1−ρ)·``|d|²``.

    For complex params ``|·|²`` is the squared modulus, so both accumulators are real and d has
    g's phase. ``accumulator_dtype`` is the (real) dtype E_g and E_d are stored in; None
    follows the params (float32 for float16 params, as every never-negative moment: see
    :doc:`/guides/state-dtype`), or ``state_dtype`` and ``stochastic_rounding`` as in
    :func:`trace`. d is emitted in the computed dtype, which may be wider than g's. With
    ε = 0 (allowed, though then E_d stays 0 and nothing moves) a coordinate whose E_g is 0
    steps 0, not 0/0.
    """
    check_numbers("scale_by_adadelta", rho=rho, eps=eps)
    store = ("scale_by_adadelta", "accumulator_dtype", accumulator_dtype, state_dtype)
    codec = moment_codec(*store, stochastic_rounding, nonnegative=True)
    # ε > 0 for good (given so): √(E_g + ε) is never 0, no guard compiled (as precondition)
    guarded = not positive_by_construction(eps)

    def init(params: Any) -> AdadeltaState:
        return AdadeltaState(e_d=codec.init(params, "e_d"), e_g=codec.init(params, "e_g"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old_g, old_d = codec.decode(state.e_g), codec.decode(state.e_d)
        check_tree(updates, old_g, "accumulators in the state")
        r, e = jnp.asarray(rho), jnp.asarray(eps)

        e_g = jax.tree.map(lambda g, eg: ema_of(r, abs_sq(wide(g, r, eg)), eg), updates, old_g)
        e_g, stored_e_g = codec.store(e_g, state.e_g, (r, 1 - r, updates, True))

        def step_of(g, eg, ed):
            egw, edw = wide(eg, r, e, ed), wide(ed, r, e, eg)
            num, den = jnp.sqrt(edw + coef(e, edw)), jnp.sqrt(egw + coef(e, egw))
            if guarded:
                ratio = jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)
            else:
                ratio = num / den
            gw = wide(g, r, e, ratio)
            return ratio.astype(gw.dtype) * gw

        d = jax.tree.map(step_of, updates, e_g, old_d)
        e_d = jax.tree.map(lambda d, ed: ema_of(r, abs_sq(wide(d, r, ed)), ed), d, old_d)
        return d, AdadeltaState(
            e_d=codec.encode(e_d, state.e_d, (r, 1 - r, d, True)), e_g=stored_e_g
        )

    return optax.GradientTransformationExtraArgs(init, update)


@optimizer(
    learning_rate=">= 0",
    decay="[0, 1)",
    eps=">= 0",
    momentum="[0, 1)",
    initial_scale=">= 0",
)
def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    *,
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    initial_scale: float = 0.0,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """RMSProp (seeds 000–003): the gradient divided by a running RMS of itself.

    For t = 1, 2, ..., with v₀ = ``initial_scale``::

        v ← ρ·v + (1−ρ)·g²
        θ ← θ − γ·g / (√v + ε)             (default: seeds 002, 003)
        θ ← θ − γ·g / √(v + ε)             (eps_in_sqrt=True: seeds 000, 001)
        θ ← θ − γ·g / (√(v/(1−ρᵗ)) + ε)    (bias_correction=True: seed 001)

    ``centered`` divides by √(v − a² ...) with a ← ρ·a + (1−ρ)·g; ``momentum`` μ adds a
    velocity after the learning rate, b ← μ·b + γ·g/den (optax and Keras; torch keeps γ
    outside, equal for a constant γ), with ``nesterov`` its look-ahead form.

    Blocks: ``precondition(identity, rms(ρ, ...), ε) → scale_by_learning_rate(γ)
    [→ trace(μ)]``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      decay: ρ in [0, 1).
      eps: ε ≥ 0.
      eps_in_sqrt: put ε inside the root.
      bias_correction: divide v (and a) by 1 − ρᵗ.
      centered: subtract the squared mean.
      momentum: μ in [0, 1), or None for none.
      nesterov: look-ahead momentum.
      initial_scale: v₀ ≥ 0.
      mu_dtype: the dtype the momentum buffer b is stored in; None follows the params.
      nu_dtype: the dtype v (and, with ``centered``, the mean a, which only serves the
        denominator) is stored in; None follows the params (v of float16 params in float32,
        whose range g² underflows; a, which may be negative, stays float16).
      state_dtype, stochastic_rounding: how b, v (and a) are stored where ``mu_dtype`` or
        ``nu_dtype`` is None: a float dtype, ``"bfloat16"`` rounded stochastically, or
        ``"int8"`` (blockwise); see :func:`gradx.adam`.

    Reference:
      Tieleman and Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012.

    Note:
      torch puts ε outside (the default here) with ρ = 0.99; optax's default and Keras put it
      inside (``eps_in_sqrt=True``). ``bias_correction=True`` equals torch's
      ``Adam(betas=(0, ρ))``. The arguments up to ``eps`` are positional as in
      ``optax.rmsprop``; the rest are keyword-only (optax's fourth is ``initial_scale``).

      optax's default differs: ε inside the root there (``eps_in_sqrt=True``);
      ``gradx.compat.optax.rmsprop(...)`` reproduces optax's numbers.
    """
    moment_dtypes("rmsprop", mu_dtype, nu_dtype)
    store = state_dtype_args("rmsprop", state_dtype, stochastic_rounding)
    den = rms(
        decay,
        eps_root=eps if eps_in_sqrt else 0.0,
        debias=bias_correction,
        centered=centered,
        initial_scale=initial_scale,
        accumulator_dtype=nu_dtype,
        **store,
    )
    blocks = [
        precondition(optax.identity(), den, 0.0 if eps_in_sqrt else eps),
        scale_by_learning_rate(learning_rate),
    ]
    if momentum is not None:
        blocks.append(trace(momentum, nesterov=nesterov, accumulator_dtype=mu_dtype, **store))
    elif nesterov:
        raise ValueError("rmsprop: nesterov=True needs a momentum, got momentum=None")
    elif mu_dtype is not None:
        raise ValueError(
            f"rmsprop: mu_dtype={mu_dtype!r} sets the momentum buffer's dtype, but "
            "momentum=None keeps no buffer"
        )
    return optax.chain(*blocks)


@optimizer(learning_rate=">= 0", eps=">= 0", initial_accumulator_value=">= 0")
def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    *,
    eps: float = 1e-8,
    initial_accumulator_value: float = 0.0,
    eps_in_sqrt: bool = False,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adagrad (seeds 001, 003): each coordinate's step shrinks with its gradients' history.

    For t = 1, 2, ..., with G₀ = ``initial_accumulator_value``::

        G ← G + g²
        θ ← θ − γ·g / (√G + ε)         (default, seeds)
        θ ← θ − γ·g / √(G + ε)         (eps_in_sqrt=True: optax and Keras)

    Blocks: ``precondition(identity, rss(G₀), ε) → scale_by_learning_rate(γ)``.

    ``nu_dtype`` is the (real) dtype G is stored in; None follows the params (float32 for
    float16 params, whose range g² underflows), or
    ``state_dtype`` and ``stochastic_rounding`` as in :func:`gradx.adam`. For complex params
    G sums ``|g|²``.

    Reference:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online Learning and
      Stochastic Optimization", JMLR 2011.

    Note:
      torch: ε = 1e-10 outside, G₀ = 0, plus ``lr_decay`` (a schedule here). optax and Keras:
      ε = 1e-7 inside, G₀ = 0.1. Only ``learning_rate`` is positional: optax's
      ``adagrad(lr, initial_accumulator_value, eps)`` orders the other two the other way.

      optax's default differs: ε = 1e-7 inside the root and G₀ = 0.1 there;
      ``gradx.compat.optax.adagrad(...)`` reproduces optax's numbers.
    """
    moment_dtypes("adagrad", nu_dtype=nu_dtype)
    den = rss(
        initial_accumulator_value,
        eps_root=eps if eps_in_sqrt else 0.0,
        accumulator_dtype=nu_dtype,
        **state_dtype_args("adagrad", state_dtype, stochastic_rounding),
    )
    return optax.chain(
        precondition(optax.identity(), den, 0.0 if eps_in_sqrt else eps),
        scale_by_learning_rate(learning_rate),
    )


@optimizer(learning_rate=">= 0", rho="[0, 1)", eps=">= 0")
def adadelta(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    *,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adadelta (seed 001): step sizes from the ratio of two running RMS, no learning rate.

    For t = 1, 2, ..., with E_g = E_d = 0::

        E_g ← ρ·E_g + (1−ρ)·g²
        d   = √(E_d + ε) / √(E_g + ε) · g
        E_d ← ρ·E_d + (1−ρ)·d²
        θ ← θ − α·d

    α = 1 is Zeiler's rule, as in seed 001 (α₀ = 1). Seed 001's second line,
    Δ_t = β₂·Δ_{t−1} + (1−β₂)·θ_t², is a typo: Δ accumulates the squared *updates*
    (Δθ_t)² = d², not θ², as here and in Zeiler's paper.

    Blocks: ``scale_by_adadelta(ρ, ε) → scale_by_learning_rate(α)``.

    ``nu_dtype`` is the (real) dtype both accumulators E_g and E_d are stored in (both are
    second moments); None follows the params (float32 for float16 params), or
    ``state_dtype`` and ``stochastic_rounding``
    as in :func:`gradx.adam`. Complex params: both accumulate ``|·|²``, so d
    keeps g's phase (optax's adadelta squares g; its tests skip complex params).

    Reference:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.

    Note:
      Equals ``optax.adadelta`` and ``torch.optim.Adadelta``. Keras defaults to α = 1e-3,
      ρ = 0.95, ε = 1e-7. The arguments up to ``eps`` are positional as in
      ``optax.adadelta``; the rest are keyword-only.
    """
    moment_dtypes("adadelta", nu_dtype=nu_dtype)
    store = state_dtype_args("adadelta", state_dtype, stochastic_rounding)
    return optax.chain(
        scale_by_adadelta(rho, eps, accumulator_dtype=nu_dtype, **store),
        scale_by_learning_rate(learning_rate),
    )


@gain_rule(scale_by_adadelta)
def _adadelta_gain(ctx, cells, state, incoming):
    # α_ef = √(Δ_{t−1} + ε)/√(s_t + ε). The state after the step holds s_t and Δ_t; with
    # q = |g|²/(s_t + ε), Δ_t = ρΔ_{t−1} + (1−ρ)(Δ_{t−1} + ε)q gives Δ_{t−1} back. The
    # subtraction loses at most a rounding of (1−ρ)εq ≤ ε, small beside Δ_{t−1} + ε.
    needs_incoming("scale_by_adadelta", incoming)
    rho = in_gain_dtype(ctx, closure_value(cells, "rho", "scale_by_adadelta"))
    eps = in_gain_dtype(ctx, closure_value(cells, "eps", "scale_by_adadelta"))

    def ratio(g, s, d):
        s, d = in_gain_dtype(ctx, s), in_gain_dtype(ctx, d)
        safe = jnp.where(s + eps > 0, s + eps, 1)  # ε = 0 and s = 0: the step was 0 (guarded)
        q = in_gain_dtype(ctx, abs_sq(g)) / safe
        before = jnp.maximum((d - (1 - rho) * eps * q) / (rho + (1 - rho) * q), 0)
        return jnp.where(s + eps > 0, jnp.sqrt(before + eps) / jnp.sqrt(safe), 0)

    factors = jax.tree.map(ratio, incoming, decode_moments(state.e_g), decode_moments(state.e_d))
    return Gain(jnp.ones([], ctx.dtype), factors), scaled(ctx, incoming, factors)


# G₀ and v₀ fill the accumulators at init and are never read again: set_hyperparams refuses
# them (a value set after init would be silently ignored), see gradx.set_hyperparams.
adagrad.state_class.read_at_init = ("initial_accumulator_value",)
rmsprop.state_class.read_at_init = ("initial_scale",)
