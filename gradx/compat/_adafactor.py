"""Adafactor as torch and Keras write it: their blocks, and ``gradx.compat.torch.Adafactor``.

Both factor the last two axes of every tensor of two or more dimensions, and both take the
step ρ_t = min(γ, 1/√t) relative to the params' RMS (:func:`relative_step`). torch applies
ε₁ as a floor instead of adding it to g² (:func:`torch_factored_rms`); Keras takes the
params' RMS after its decoupled weight decay (:func:`keras_param_scale`). Keras's factory
lives in ``keras.py`` with the others; torch's here, as ``torch.py`` is near the modules'
size limit. The differences from optax's rule are listed in ``docs/conventions.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._optimizers.factored import (
    STATS,
    ScaleByFactoredRmsState,
    ScaleByParamBlockRmsState,
    clip_by_block_rms,
    factored_dims,
    refuse_inside_flat,
    scale_by_param_block_rms,
    scaled_by,
    shapes_template,
)
from gradx._optimizers.preconditioners import ema_of
from gradx._optimizers.scaling import decoupled_weight_decay
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import abs_sq, coef, wide
from gradx._protocol.gain import (
    GAIN_FN,
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    steps_taken,
)
from gradx._protocol.storage import decode_moments, moment_codec, state_dtype_args
from gradx._protocol.trees import needs_params, params_like
from gradx.compat._torch_blocks import (
    check_like_torch,
    check_switches,
    no_params,
    torch_off_if_zero,
    with_maximize,
)


def _last_two(shape: tuple[int, ...]) -> tuple[int, int] | None:
    return factored_dims(tuple(shape), True, 1, "last")


def torch_factored_rms(
    beta2_decay: jax.typing.ArrayLike,
    eps1: jax.typing.ArrayLike | None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: torch's factored second moment, u = g·rsqrt(max(V̂, ε₁²)).

    With β̂_t = 1 − t^τ (τ = ``beta2_decay`` ≤ 0), for a tensor of two or more dimensions
    (the last two factored)::

        R ← β̂·R + (1−β̂)·mean_{-1}(g²)       C ← β̂·C + (1−β̂)·mean_{-2}(g²)
        V̂ = R·C / max(mean(R), ε₁)

    and v ← β̂·v + (1−β̂)·g², V̂ = v for the others. ε₁ None is the machine epsilon of the
    gradient's dtype (torch's default). Complex params are refused, as in torch. v, R and C
    are stored as ``state_dtype`` says (see :func:`gradx.scale_by_factored_rms`).
    """
    codec = moment_codec(
        "Adafactor", "state_dtype", None, state_dtype, stochastic_rounding, nonnegative=True
    )

    def init(params: Any) -> ScaleByFactoredRmsState:
        refuse_inside_flat("torch_factored_rms")
        if any(jnp.iscomplexobj(p) for p in jax.tree.leaves(params)):
            raise TypeError("Adafactor: params must be real (torch's Adafactor refuses complex)")

        def leaf(p):
            p = jnp.asarray(p)
            dims = _last_two(p.shape)
            shapes = [p.shape, (1,), (1,)] if dims is None else [(1,), *_without(p.shape)]
            return tuple(jnp.zeros(s, p.dtype) for s in shapes)

        outer = jax.tree.structure(params)
        parts = outer.flatten_up_to(jax.tree.map(leaf, params))
        v, v_col, v_row = (outer.unflatten([r[i] for r in parts]) for i in range(3))
        v, v_col, v_row = (codec.init(x, f) for x, f in zip((v, v_col, v_row), STATS, strict=True))
        return ScaleByFactoredRmsState(jnp.zeros([], jnp.int32), v=v, v_col=v_col, v_row=v_row)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        refuse_inside_flat("torch_factored_rms")
        stored_stats = state
        state = state._replace(**{f: codec.decode(getattr(state, f)) for f in STATS})
        tau = jnp.asarray(beta2_decay)
        t = optax.safe_increment(state.count).astype(tau.dtype)
        rate = 1 - t**tau

        def leaf(g, v, v_col, v_row):
            gw = wide(g, rate, v)
            e = coef(jnp.finfo(g.dtype).eps if eps1 is None else eps1, gw)
            sq = abs_sq(gw)
            if _last_two(g.shape) is None:
                v = ema_of(rate, sq, v)
                return gw * jax.lax.rsqrt(jnp.maximum(v, e * e)), v, v_col, v_row
            v_row = ema_of(rate, jnp.mean(sq, axis=-1), v_row)
            v_col = ema_of(rate, jnp.mean(sq, axis=-2), v_col)
            return gw * torch_inverse_root(v_row, v_col, e), v, v_col, v_row

        outer = jax.tree.structure(updates)
        leaves = (outer.flatten_up_to(x) for x in (updates, state.v, state.v_col, state.v_row))
        rows = [leaf(*args) for args in zip(*leaves, strict=True)]
        u, v, v_col, v_row = (outer.unflatten([r[i] for r in rows]) for i in range(4))
        return u, ScaleByFactoredRmsState(
            count=optax.safe_increment(state.count),
            v=codec.encode(v, stored_stats.v),
            v_col=codec.encode(v_col, stored_stats.v_col),
            v_row=codec.encode(v_row, stored_stats.v_row),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def _without(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(C's shape, R's shape) of a tensor factored over its last two axes."""
    return (*shape[:-2], shape[-1]), tuple(shape[:-1])


def torch_inverse_root(v_row: jax.Array, v_col: jax.Array, e: jax.Array) -> jax.Array:
    """rsqrt(max(R·C/max(mean(R), ε₁), ε₁²)), torch's factor on g (last two axes)."""
    mean = jnp.maximum(jnp.mean(v_row, axis=-1), e)[..., None, None]
    v_hat = v_row[..., :, None] * v_col[..., None, :] / mean
    return jax.lax.rsqrt(jnp.maximum(v_hat, e * e))


class RelativeStepState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t


def relative_step(learning_rate: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Block: u ← −min(γ, 1/√t)·u (t = 1, 2, ...), torch's and Keras's ρ_t."""

    def init(params: Any) -> RelativeStepState:
        del params
        return RelativeStepState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        lr = jnp.asarray(learning_rate)
        t = optax.safe_increment(state.count)
        rho = jnp.minimum(lr, 1 / jnp.sqrt(t.astype(lr.dtype)))

        def leaf(u):
            uw = wide(u, lr)
            return uw * coef(-rho, uw)

        return jax.tree.map(leaf, updates), RelativeStepState(count=t)

    return optax.GradientTransformationExtraArgs(init, update)


def keras_param_scale(
    min_scale: jax.typing.ArrayLike,
    learning_rate: jax.typing.ArrayLike,
    weight_decay: jax.typing.ArrayLike | None,
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← u·max(ε₂, RMS(θ')), θ' = θ − θ·λ·γ: Keras's params after its weight decay
    (which it applies before the step); θ' = θ without decay."""

    def init(params: Any) -> ScaleByParamBlockRmsState:
        del params
        refuse_inside_flat("keras_param_scale")
        return ScaleByParamBlockRmsState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        refuse_inside_flat("keras_param_scale")
        needs_params("Adafactor", params, "the step is scaled by each leaf's RMS(θ)")
        params = params_like("Adafactor", updates, params)
        lo = jnp.asarray(min_scale)
        shrink = None if weight_decay is None else jnp.asarray(weight_decay) * learning_rate

        def leaf(u, p):
            uw = wide(u, lo, p)
            return uw * coef(keras_scale(wide(p, lo, u), lo, shrink), uw)

        return jax.tree.map(leaf, updates, params), state

    return optax.GradientTransformationExtraArgs(init, update)


def keras_scale(p: jax.Array, lo: jax.Array, shrink: jax.Array | None) -> jax.Array:
    """max(ε₂, RMS(θ − θ·λγ)) of one leaf."""
    if shrink is not None:
        p = p - p * coef(shrink, p)
    rms = jnp.sqrt(jnp.mean(abs_sq(p)))
    return jnp.maximum(coef(lo, rms), rms)


_TORCH_RULES = dict(beta2_decay="<= 0", eps1=">= 0", eps2=">= 0", d=">= 1", weight_decay=">= 0")


@optimizer(learning_rate=">= 0", **_TORCH_RULES)
def torch_adafactor(
    learning_rate, beta2_decay, eps1, eps2, d, weight_decay, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    after = [] if weight_decay is None else [decoupled_weight_decay(weight_decay, learning_rate)]
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    return optax.chain(
        torch_factored_rms(beta2_decay, eps1, **store),
        clip_by_block_rms(d),
        scale_by_param_block_rms(eps2),
        relative_step(learning_rate),
        *after,
    )


def _checked_eps(cls: str, eps: Any) -> tuple[Any, Any]:
    try:
        eps1, eps2 = eps
        ok = all(
            isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool)
            for x in ((0.0 if eps1 is None else eps1), eps2)
        )
        ok = ok and (eps1 is None or (np.isfinite(eps1) and eps1 >= 0))
        ok = ok and np.isfinite(eps2) and eps2 >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{cls}: eps must be (eps1, eps2) with eps1 None or >= 0 and eps2 >= 0, got {eps!r}"
        )
    return eps1, eps2


@no_params
def Adafactor(
    lr: optax.ScalarOrSchedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adafactor``: the last two axes factored, ε₁ as a floor, ρ_t = min(γ, 1/√t).

    torch 2.13's update, for t = 1, 2, ..., with β̂_t = 1 − t^τ (τ = ``beta2_decay``),
    per tensor θ (factored if it has two or more dimensions, over the last two)::

        R ← β̂·R + (1−β̂)·mean_{-1}(g²)   C ← β̂·C + (1−β̂)·mean_{-2}(g²)   (v for vectors)
        V̂ = R·C / max(mean(R), ε₁)
        u = g / max(√V̂, ε₁)
        û = u / max(1, RMS(u)/d)
        θ ← θ·(1 − γλ) − min(γ, 1/√t)·max(ε₂, RMS(θ))·û

    with RMS(θ) of θ before the decay. ε₁ None (the default) is the machine epsilon of the
    params' dtype. This is ``torch_factored_rms(τ, ε₁) → clip_by_block_rms(d) →
    scale_by_param_block_rms(ε₂) → relative_step(γ) → decoupled_weight_decay(λ, γ)``; its
    state holds ``learning_rate, beta2_decay, eps1, eps2, d, weight_decay``.

    Args:
      lr: γ ≥ 0: the largest relative step, and the weight decay's multiplier.
      beta2_decay: τ ≤ 0.
      eps: (ε₁, ε₂): ε₁ None or ≥ 0, the floor of the variance estimate; ε₂ ≥ 0, the floor
        of RMS(θ).
      d: the clipping threshold, ≥ 1 (torch's rule).
      weight_decay: λ ≥ 0, decoupled and multiplied by γ.
      foreach: accepted and ignored (a kernel choice in torch).
      maximize: ascend: the gradient's sign is flipped before everything else.
      state_dtype, stochastic_rounding: gradx's: how v, R and C are stored (a float dtype,
        ``"bfloat16"`` rounded stochastically, or ``"int8"``; see :func:`gradx.adam`).

    Note:
      ``gradx.adafactor`` is optax's rule: ε₁ added to g², no 1/√t in the step, weight
      decay not multiplied by γ, and only matrices with two large axes factored
      (``docs/conventions.md``).
    """
    cls = "Adafactor"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(
        cls, torch_adafactor, lr=lr, beta2_decay=beta2_decay, d=d, weight_decay=weight_decay
    )
    eps1, eps2 = _checked_eps(cls, eps)
    check_switches(cls, foreach=foreach, maximize=maximize)
    wd = torch_off_if_zero(weight_decay)
    opt = torch_adafactor(lr, beta2_decay, eps1, eps2, d, wd, **store)
    return with_maximize(opt, maximize)


# ----------------------------------------------------------------------------- gain rules


@gain_rule(torch_factored_rms)
def _torch_factored_gain(ctx, cells, state, incoming):
    eps1 = closure_value(cells, "eps1", "torch_factored_rms")
    template = shapes_template(ctx, incoming, "torch_factored_rms")

    def factor(x, v, v_col, v_row):
        e = in_gain_dtype(ctx, jnp.finfo(jnp.asarray(x).dtype).eps if eps1 is None else eps1)
        if _last_two(np.shape(x)) is None:
            return jax.lax.rsqrt(jnp.maximum(in_gain_dtype(ctx, v), e * e))
        return torch_inverse_root(in_gain_dtype(ctx, v_row), in_gain_dtype(ctx, v_col), e)

    v, v_col, v_row = (decode_moments(getattr(state, f)) for f in STATS)
    tree = jax.tree.map(factor, template, v, v_col, v_row)
    out = None if incoming is None else scaled_by(incoming, tree)
    return Gain(jnp.ones([], ctx.dtype), tree), out


@gain_rule(relative_step)
def _relative_step_gain(ctx, cells, state, incoming):
    lr = in_gain_dtype(ctx, closure_value(cells, "learning_rate", "relative_step"))
    rho = jnp.minimum(lr, 1 / jnp.sqrt(steps_taken(ctx, state.count)))
    out = None if incoming is None else jax.tree.map(lambda g: g * -rho.astype(g.dtype), incoming)
    return Gain(-rho), out


@gain_rule(keras_param_scale)
def _keras_param_scale_gain(ctx, cells, state, incoming):
    if ctx.params is None:
        raise ValueError(
            f"{GAIN_FN}: Keras's Adafactor scales each leaf by its params' RMS: pass params= "
            "(the params the last step was taken at)"
        )
    lo = in_gain_dtype(ctx, closure_value(cells, "min_scale", "keras_param_scale"))
    shrink = None
    decay = closure_value(cells, "weight_decay", "keras_param_scale")
    if decay is not None:
        lr = closure_value(cells, "learning_rate", "keras_param_scale")
        shrink = in_gain_dtype(ctx, decay) * in_gain_dtype(ctx, lr)
    tree = jax.tree.map(lambda p: keras_scale(in_gain_dtype(ctx, p), lo, shrink), ctx.params)
    out = None if incoming is None else scaled_by(incoming, tree)
    return Gain(jnp.ones([], ctx.dtype), tree), out
