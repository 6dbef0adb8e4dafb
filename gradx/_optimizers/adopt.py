"""ADOPT: normalise the gradient by the previous second moment, then take its momentum.

=========  ===================================================================
adopt      scale_by_adopt(b1, b2, eps, clipping)
=========  ===================================================================

Not a :func:`~gradx.precondition`: the denominator is the second moment *before* this
step's gradient enters it, and the momentum is taken of the normalised gradient, so the
numerator sees the denominator's output. (Kept out of ``adam.py``, which is near the
modules' size limit.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.adam import moment_dtypes
from gradx._optimizers.preconditioners import ema_of
from gradx._optimizers.scaling import check_numbers, scale_by_learning_rate
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import abs_sq, coef, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    needs_incoming,
    nonzero_divisor,
)
from gradx._protocol.storage import decode_moments, moment_codec, state_dtype_args
from gradx._protocol.trees import check_tree


def quarter_power(count: jax.Array) -> jax.Array:
    """ADOPT's default clip value at step index ``count`` (0, 1, ...): count^¼ (optax's).

    Computed in JAX's default float dtype (float64 with x64 on), as optax's ``x**0.25``."""
    return jnp.asarray(count, dtype=float) ** 0.25


class ScaleByAdoptState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    mu: Any  # like params (mu_dtype): the EMA m of the normalised gradient
    nu: Any  # like params, real (nu_dtype): v, the EMA of |g|², v₀ = |g₀|²


def scale_by_adopt(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.9999,
    eps: jax.typing.ArrayLike = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = quarter_power,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: ADOPT's "normalise, then momentum", u ← m.

    The first step (s = 0) only sets v₀ = ``|g₀|²`` and emits 0. Then, for s = 1, 2, ...::

        x ← clip(g / max(√v, ε), ±c(s))     (v before this step: v_{s−1})
        m ← β₁·m + (1−β₁)·x
        v ← β₂·v + (1−β₂)·|g|²

    c = ``clip_value_fn(s)`` with s the int32 count of steps taken before this one
    (default s^¼); ``use_clipping=False`` drops the clip. With ``nesterov`` the block emits
    β₁·m + (1−β₁)·x (m the new momentum). m is not bias-corrected.

    ``mu_dtype`` and ``nu_dtype`` are the dtypes m and v are stored in; None follows the
    params, or ``state_dtype`` and ``stochastic_rounding`` as in :func:`trace`. The update
    is in the computed dtype, which may be wider than the gradient's. Complex params are
    refused with clipping (clip of a complex number is not defined); without it, v
    accumulates ``|g|²``.
    """
    check_numbers("scale_by_adopt", b1=b1, b2=b2, eps=eps)
    store = (state_dtype, stochastic_rounding)
    mu_codec = moment_codec("scale_by_adopt", "mu_dtype", mu_dtype, *store)
    nu_codec = moment_codec("scale_by_adopt", "nu_dtype", nu_dtype, *store, nonnegative=True)
    if not callable(clip_value_fn):
        raise TypeError(
            "scale_by_adopt: clip_value_fn must be a function of the step count, "
            f"got {clip_value_fn!r}"
        )

    def init(params: Any) -> ScaleByAdoptState:
        if use_clipping and any(
            jnp.iscomplexobj(p) for p in jax.tree.leaves(params)
        ):  # clip's order of complex numbers is not a magnitude
            raise TypeError(
                "scale_by_adopt: use_clipping=True needs real params, got a complex leaf"
            )
        mu, nu = mu_codec.init(params, "mu"), nu_codec.init(params, "nu")
        return ScaleByAdoptState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old_mu, old_nu = mu_codec.decode(state.mu), nu_codec.decode(state.nu)
        check_tree(updates, old_nu, "second moment in the state")
        beta1, beta2, e = jnp.asarray(b1), jnp.asarray(b2), jnp.asarray(eps)
        started = state.count > 0
        # The first step: v₀ = |g₀|² and m stays 0 (β₁ → 1, β₂ → 0 there, as in optax).
        beta1 = jnp.where(started, beta1, jnp.ones_like(beta1))
        beta2 = jnp.where(started, beta2, jnp.zeros_like(beta2))
        clip = clip_value_fn(state.count) if use_clipping else None

        def normalised(g, v):
            gw = wide(g, beta1, e, v)
            x = gw / jnp.maximum(jnp.sqrt(wide(v, e, g)), coef(e, jnp.real(gw))).astype(gw.dtype)
            if clip is None:
                return x
            c = coef(clip, x)
            return jnp.clip(x, -c, c)

        xs = jax.tree.map(normalised, updates, old_nu)
        nu = jax.tree.map(lambda g, v: ema_of(beta2, abs_sq(wide(g, beta2, v)), v), updates, old_nu)
        mu = jax.tree.map(lambda x, m: ema_of(beta1, x, m), xs, old_mu)
        mu, stored_mu = mu_codec.store(mu, state.mu, (beta1, 1 - beta1, xs, False))
        out = jax.tree.map(lambda x, m: ema_of(beta1, x, m), xs, mu) if nesterov else mu
        return out, ScaleByAdoptState(
            count=optax.safe_increment(state.count),
            mu=stored_mu,
            nu=nu_codec.encode(nu, state.nu, (beta2, 1 - beta2, updates, True)),
        )

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(scale_by_adopt)
def _adopt_gain(ctx, cells, state, incoming):
    # The factor on g at step t (count t after it): (1−β₁)·(1 + β₁ with nesterov) ·
    # clip factor / max(√v_{t−1}, ε), and 0 at the first step. v_{t−1} is recovered from
    # v_t = β₂·v_{t−1} + (1−β₂)·g², which needs the step's gradient.
    needs_incoming("scale_by_adopt", incoming)
    b1 = in_gain_dtype(ctx, closure_value(cells, "b1", "scale_by_adopt"))
    b2 = in_gain_dtype(ctx, closure_value(cells, "b2", "scale_by_adopt"))
    eps = in_gain_dtype(ctx, closure_value(cells, "eps", "scale_by_adopt"))
    started = state.count > 1  # the last step was not the first
    scale = (1 - b1) * ((1 + b1) if closure_value(cells, "nesterov", "scale_by_adopt") else 1)
    scale = jnp.where(started, scale, jnp.zeros_like(scale))
    clip = None
    if closure_value(cells, "use_clipping", "scale_by_adopt"):
        clip_value_fn = closure_value(cells, "clip_value_fn", "scale_by_adopt")
        clip = in_gain_dtype(ctx, clip_value_fn(jnp.maximum(state.count, 1) - 1))

    def factor(g, v):
        g2 = in_gain_dtype(ctx, abs_sq(g))
        previous = jnp.maximum((in_gain_dtype(ctx, v) - (1 - b2) * g2) / nonzero_divisor(b2), 0)
        inverse = 1 / jnp.maximum(jnp.sqrt(previous), eps)
        if clip is None:
            return inverse
        x = jnp.sqrt(g2) * inverse  # |g|/max(√v_{t−1}, ε); clipped: c·sign(g) = (c/|x|)·x
        return inverse * jnp.where(x > clip, clip / nonzero_divisor(x), jnp.ones_like(x))

    tree = jax.tree.map(factor, incoming, decode_moments(state.nu))
    return Gain(scale, tree), None


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps="> 0")
def adopt(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.9999,
    eps: float = 1e-6,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = quarter_power,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """ADOPT: Adam's normalisation by the *previous* second moment, before the momentum.

    With v₀ = ``|g₀|²`` and m₀ = 0, the first step (s = 0) moves nothing; then, for
    s = 1, 2, ...::

        x ← clip(g / max(√v, ε), ±s^¼)      (v = v_{s−1}, without this step's g)
        m ← β₁·m + (1−β₁)·x
        v ← β₂·v + (1−β₂)·g²
        θ ← θ − γ·m

    Blocks: ``scale_by_adopt(β₁, β₂, ε, clipping) → scale_by_learning_rate(γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1): any value converges (the paper's point); 0.9999 by default.
      eps: ε > 0, the floor of √v (ε = 0 divides 0 by 0 for a gradient that is 0 from the
        start).
      mu_dtype: the dtype m is stored in (optax's ``mu_dtype``); None follows the params.
      nesterov: emit β₁·m + (1−β₁)·x (optax's Nesterov form).
      use_clipping: clip x at ±c(s) (the paper's stabiliser for the first steps).
      clip_value_fn: c(s) as a function of the int32 count s of steps taken before the
        step (s^¼ by default, optax's); any jax-traceable function.
      nu_dtype: the (real) dtype v is stored in; None follows the params (float32 for
        float16 params, whose range g² underflows).
      state_dtype, stochastic_rounding: how m and v are stored where ``mu_dtype`` or
        ``nu_dtype`` is None: a float dtype, ``"bfloat16"`` rounded stochastically, or
        ``"int8"`` (blockwise); see :func:`gradx.adam`.

    Returns:
      An optax transformation whose state holds learning_rate, b1, b2, eps.

    Reference:
      Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β₂ with the Optimal
      Rate", NeurIPS 2024.

    Note:
      Equals ``optax.contrib.adopt`` with the same arguments. optax accepts ε = 0, where a
      gradient that is 0 from the start gives NaN; gradx refuses it. The arguments up to
      ``mu_dtype`` are positional as in ``optax.contrib.adopt``; the rest are keyword-only.
    """
    moment_dtypes("adopt", mu_dtype, nu_dtype)
    store = state_dtype_args("adopt", state_dtype, stochastic_rounding)
    block = scale_by_adopt(
        b1,
        b2,
        eps,
        mu_dtype,
        nesterov=nesterov,
        use_clipping=use_clipping,
        clip_value_fn=clip_value_fn,
        nu_dtype=nu_dtype,
        **store,
    )
    return optax.chain(block, scale_by_learning_rate(learning_rate))
