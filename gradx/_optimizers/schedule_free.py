"""Schedule-Free (Defazio et al. 2024): interpolation and averaging in place of momentum.

=====================  ==================================================================
schedule_free_sgd      schedule_free(add_decayed_weights(λ) → scale_by_learning_rate(γ))
schedule_free_adamw    schedule_free(precondition(identity, rms(β₂, debias), ε)
                       → add_decayed_weights(λ) → scale_by_learning_rate(γ))
=====================  ==================================================================

The block :func:`schedule_free` wraps any base optimizer (which should have no momentum of
its own): the base steps z, the params the user holds are y, and the point to evaluate at,
x, is recovered from y and z (:func:`gradx.schedule_free_eval_params`). With ``warmup_steps``
the base's learning rate is ``warmup_learning_rate``'s (a private block: γ·min(t/W, 1)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.preconditioners import precondition, rms
from gradx._optimizers.scaling import add_decayed_weights, scale_by_learning_rate
from gradx._protocol.declare import optimizer, schedule_of
from gradx._protocol.dtypes import coef, dtype_arg, hyperparam_dtype, moment_dtype, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    nonzero_divisor,
    walk_gain,
)
from gradx._protocol.rules import Rule, check_schedule_shape
from gradx._protocol.trees import check_tree, needs_params

_RULES = {"learning_rate": Rule.parse(">= 0"), "b1": Rule.parse("(0, 1]")}
_RULES["weight_lr_power"] = _RULES["learning_rate"]


class ScheduleFreeState(NamedTuple):
    b1: jax.Array  # shape=(), hyperparameter dtype: the β that built the params y of the last step
    base_optimizer_state: Any  # the base optimizer's state
    count: jax.Array  # shape=(), int32: steps taken, t
    max_lr: jax.Array  # shape=(), hyperparameter dtype: the largest learning rate so far
    weight_sum: jax.Array  # shape=(), hyperparameter dtype: Σ of the averaging weights
    z: Any  # like params (state_dtype): the base optimizer's iterate z


def schedule_free(
    base_optimizer: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    weight_lr_power: jax.typing.ArrayLike = 2.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Block: Schedule-Free's interpolation and averaging around ``base_optimizer``.

    At step t = 1, 2, ..., with y the params (where the gradient g is taken), z the base
    optimizer's iterate (z₁ = y₁ = x₁) and x the average::

        γ_max ← max(γ_max, γ(t));   w ← γ_max^r;   c ← w / (Σ w up to t)
        z ← z + base(g)                      (base's own step, its learning rate included)
        x ← (1 − c)·x + c·z                  (x recovered as (y − (1−β)·z_old)/β)
        y ← β·x + (1 − β)·z                  the update is y_new − y

    x is the point to evaluate (and to return at the end of training):
    :func:`gradx.schedule_free_eval_params`. ``learning_rate`` only sets the averaging
    weights; the base steps with its own. Only z is stored (x is recovered from y and z),
    so the memory is the base's plus one copy of the params.

    Args:
      base_optimizer: any optax transformation, without momentum of its own (Schedule-Free
        replaces it): e.g. ``gradx.sgd(γ)`` or ``gradx.adam(γ, b1=0)``.
      learning_rate: γ, a number or a schedule of t = 1, 2, ... (the step being taken, as
        optax evaluates it): the learning rate of the averaging weights.
      b1: β in (0, 1], the interpolation between x and z.
      weight_lr_power: r ≥ 0, the weights are γ_max^r (r = 2 down-weights the warmup).
      state_dtype: the dtype z is stored in; None follows the params.

    Returns:
      An optax transformation; ``update`` needs the params. The update is in the computed
      dtype, which may be wider than the gradient's. The state holds the β that built the
      current y (``b1``), so x stays exact when β is changed between steps.

    Reference:
      Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less Scheduled",
      NeurIPS 2024 (arXiv:2405.15682).

    Note:
      Equals ``optax.contrib.schedule_free`` with the same arguments (same signature); the
      state's fields are gradx's (sorted, ``count`` = steps taken, where optax keeps
      ``step_count`` = t + 1), and its scalars are float32 or wider where optax keeps them
      in the params' dtype (bfloat16 params: optax rounds β and the weights to bfloat16).
    """
    if not isinstance(base_optimizer, optax.GradientTransformation):
        raise TypeError(
            "schedule_free: base_optimizer must be an optax GradientTransformation (an "
            f"optimizer such as gradx.sgd(0.1)), got {type(base_optimizer).__name__}"
        )
    for name, value in (
        ("learning_rate", learning_rate),
        ("b1", b1),
        ("weight_lr_power", weight_lr_power),
    ):
        if not isinstance(value, jax.Array):  # arrays: the numbers of a lifted optimizer
            if name != "learning_rate" and callable(value):
                raise TypeError(f"schedule_free: {name} must be a number, got {value!r}")
            _RULES[name].check_hyperparameter("schedule_free", name, value)
    acc = dtype_arg("schedule_free", "state_dtype", state_dtype)
    base = optax.with_extra_args_support(base_optimizer)

    def init(params: Any) -> ScheduleFreeState:
        h = hyperparam_dtype(params)

        def copy(p):  # a distinct array: params and state may both be donated
            p = jnp.asarray(p)
            dtype = moment_dtype("schedule_free", "state_dtype", p.dtype, acc, real=False)
            return jnp.array(p, dtype=dtype, copy=True)

        return ScheduleFreeState(  # every leaf its own array: a state may be donated
            b1=jnp.array(b1, dtype=h, copy=True),  # not the HyperparamsState's own b1
            base_optimizer_state=base.init(params),
            count=jnp.zeros([], jnp.int32),
            max_lr=jnp.zeros([], h),
            weight_sum=jnp.zeros([], h),
            z=jax.tree.map(copy, params),
        )

    def update(updates, state, params=None, **extra_args):
        needs_params("schedule_free", params, "they are y; x is recovered from y and z")
        check_tree(updates, state.z, "z in the state")
        h = state.max_lr.dtype
        t = optax.safe_increment(state.count)
        lr = learning_rate(t) if callable(learning_rate) else learning_rate
        check_schedule_shape("schedule_free", "learning_rate", lr)
        max_lr = jnp.maximum(state.max_lr, jnp.asarray(lr).astype(h))
        weight = max_lr ** coef(weight_lr_power, max_lr)
        total = state.weight_sum + weight
        # optax's guard: 0/0 (a learning rate of 0 so far) is 0, a NaN stays NaN
        c = jnp.where(
            jnp.isnan(weight) | jnp.isnan(total),
            jnp.full_like(weight, jnp.nan),
            jnp.nan_to_num(weight / total, nan=0.0, posinf=jnp.inf),
        )
        steps, base_state = base.update(updates, state.base_optimizer_state, params, **extra_args)
        z = jax.tree.map(lambda z, u: (wide(z, u) + wide(u, z)).astype(z.dtype), state.z, steps)
        beta_then, beta = state.b1, jnp.asarray(b1).astype(h)

        def leaf(y, z_old, z_new):
            yw = wide(y, beta_then, beta, c, z_old)
            zo, zn = z_old.astype(yw.dtype), z_new.astype(yw.dtype)
            x = (yw - coef(1 - beta_then, yw) * zo) / coef(beta_then, yw)
            x = coef(1 - c, yw) * x + coef(c, yw) * zn
            return coef(beta, yw) * x + coef(1 - beta, yw) * zn - yw

        out = jax.tree.map(leaf, params, state.z, z)
        return out, ScheduleFreeState(
            b1=beta, base_optimizer_state=base_state, count=t, max_lr=max_lr, weight_sum=total,
            z=z,
        )  # fmt: skip

    return optax.GradientTransformationExtraArgs(init, update)


def averaging_weight(state: ScheduleFreeState, weight_lr_power: Any, dtype: Any) -> jax.Array:
    """c_t of the last step, read from the state after it: γ_max^r / Σw (0 before any)."""
    h = jnp.asarray(state.max_lr).astype(dtype)
    total = jnp.asarray(state.weight_sum).astype(dtype)
    weight = h ** jnp.asarray(weight_lr_power).astype(dtype)
    return jnp.where(total > 0, weight / nonzero_divisor(total), jnp.zeros_like(total))


@gain_rule(schedule_free)
def _schedule_free_gain(ctx, cells, state, incoming):
    # y_new = β·x_new + (1−β)·z_new and x_new = (1−c)·x + c·z_new: the base step in z enters
    # y with the factor β·c + 1 − β (and x with c, z with 1).
    base = closure_value(cells, "base", "schedule_free")
    power = closure_value(cells, "weight_lr_power", "schedule_free")
    gain, _ = walk_gain(ctx, base.update, state.base_optimizer_state, incoming)
    beta = in_gain_dtype(ctx, state.b1)
    c = averaging_weight(state, power, ctx.dtype)
    return Gain(gain.scale * (beta * c + 1 - beta), gain.tree), None


def warmup_value(peak: jax.Array, warmup_steps: jax.Array, t: jax.Array) -> jax.Array:
    """γ_t = γ·min(t/W, 1) as optax's ``warmup_constant_schedule(0, γ, W)`` computes it:
    (0 − γ)·(1 − min(t, W)/W) + γ, in γ's dtype."""
    peak = jnp.asarray(peak)
    w = jnp.asarray(warmup_steps)
    frac = 1 - jnp.clip(t, 0, w).astype(peak.dtype) / w.astype(peak.dtype)
    return -peak * frac + peak


class WarmupLearningRateState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t


def warmup_learning_rate(
    learning_rate: jax.Array, warmup_steps: jax.Array
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← −γ_t·g with γ_t = γ·min(t/W, 1), t = 0, 1, ... the steps taken before.

    optax's ``scale_by_learning_rate(warmup_constant_schedule(0, γ, W))``: the first step
    has γ₀ = 0. The update is in the computed dtype, which may be wider than g's.
    """

    def init(params: Any) -> WarmupLearningRateState:
        del params
        return WarmupLearningRateState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        neg = -warmup_value(learning_rate, warmup_steps, state.count)

        def leaf(g):
            gw = wide(g, neg)
            return gw * coef(neg, gw)

        count = optax.safe_increment(state.count)
        return jax.tree.map(leaf, updates), WarmupLearningRateState(count=count)

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(warmup_learning_rate)
def _warmup_gain(ctx, cells, state, incoming):
    lr = in_gain_dtype(ctx, closure_value(cells, "learning_rate", "warmup_learning_rate"))
    w = closure_value(cells, "warmup_steps", "warmup_learning_rate")
    lr = warmup_value(lr, w, jnp.maximum(jnp.asarray(state.count), 1) - 1)  # the last step's
    out = None if incoming is None else jax.tree.map(lambda g: g * -lr.astype(g.dtype), incoming)
    return Gain(-lr), out


def _rates(learning_rate: Any, warmup_steps: Any) -> tuple[Any, Any]:
    """The base's learning-rate block and the averaging weights' γ(t), as optax has them:
    the base steps with γ at the steps taken before (0-based), the weights with γ(t): the
    optimizer's schedule of the learning rate, on the state's numbers (``schedule_of``)."""
    if warmup_steps is not None:
        return warmup_learning_rate(learning_rate, warmup_steps), (
            lambda t: warmup_value(learning_rate, warmup_steps, t)
        )
    schedule = schedule_of(learning_rate)
    return scale_by_learning_rate(learning_rate), learning_rate if schedule is None else schedule


def _named(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def rename(factory: Callable[..., Any]) -> Callable[..., Any]:
        factory.__name__ = factory.__qualname__ = name
        return factory

    return rename


def _check_arguments(fn: str, learning_rate: Any, warmup_steps: Any, state_dtype: Any) -> None:
    """Refuses a schedule for warmup_steps, one for learning_rate with warmup_steps, and a
    state_dtype that is not a float (it is z's, an iterate: no moment policy applies)."""
    try:
        dtype_arg(fn, "state_dtype", state_dtype)
    except TypeError as e:
        raise TypeError(
            f"{e}: it is the dtype z (the base's iterate, a copy of the params) is stored in, "
            "not a moment's, and 'int8' quantises moments only"
        ) from None
    if callable(warmup_steps):
        raise TypeError(f"{fn}: warmup_steps must be an integer >= 1 or None, got a schedule")
    if callable(learning_rate) and not hasattr(learning_rate, "dtype") and warmup_steps is not None:
        raise TypeError(
            f"{fn}: learning_rate must be a number with warmup_steps (the warmup is a schedule "
            "of its peak), got a schedule; put the warmup in the schedule instead"
        )


_NUMBERS = dict(learning_rate=">= 0", warmup_steps="int >= 1", b1="(0, 1]", weight_lr_power=">= 0")


@optimizer(**_NUMBERS, weight_decay=">= 0")
@_named("schedule_free_sgd")
def _sgd(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    lr_block, rate = _rates(learning_rate, warmup_steps)
    base = (
        lr_block
        if weight_decay is None
        else optax.chain(add_decayed_weights(weight_decay), lr_block)
    )
    return schedule_free(base, rate, b1, weight_lr_power, state_dtype)


@optimizer(**_NUMBERS, b2="[0, 1)", eps=">= 0", weight_decay=">= 0")
@_named("schedule_free_adamw")
def _adamw(
    learning_rate: optax.ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    lr_block, rate = _rates(learning_rate, warmup_steps)
    base = optax.chain(
        precondition(optax.identity(), rms(b2, debias=True), eps),
        add_decayed_weights(weight_decay),
        lr_block,
    )
    return schedule_free(base, rate, b1, weight_lr_power, state_dtype)


def schedule_free_sgd(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Schedule-Free SGD: SGD's iterate z averaged into x, gradients taken between the two.

    With x₁ = z₁ = y₁ the initial params, at step t = 1, 2, ...::

        g ← ∇f(y) + λ·y                         (λ: weight_decay, coupled)
        z ← z − γ_{t−1}·g                       (γ_t = γ·min(t/W, 1) with warmup, else γ)
        c ← γ_max^r / Σ_{s ≤ t} γ_max,s^r        (γ_max = max over s ≤ t of γ_s)
        x ← (1 − c)·x + c·z
        y ← β·x + (1 − β)·z                     (the params after the step)

    Evaluate (and deploy) at x: ``gradx.schedule_free_eval_params(state, params)``;
    ``gradx.fit`` does it for you. Without warmup γ_{t−1} = γ_t = γ, c = 1/t and x is the
    plain average of z₂, ..., z_{t+1}.

    Blocks: ``schedule_free(add_decayed_weights(λ) → scale_by_learning_rate(γ), γ, β, r)``.

    Effective learning rate (``gradx.effective_learning_rate``): the factor on g_t in the
    step of the params y, γ_{t−1}·(1 − β + β·c_t). The average x takes g_t with the factor
    γ_{t−1}·c_t, and z with γ_{t−1}.

    Args:
      learning_rate: γ ≥ 0 (the peak, with warmup), a number or a schedule.
      warmup_steps: W ≥ 1, the length of the linear warmup, or None.
      b1: β in (0, 1]: y's interpolation between x (β = 1: gradients at the average) and z.
      weight_decay: λ ≥ 0 (coupled: added to the gradient, so multiplied by γ), or None.
      weight_lr_power: r ≥ 0, the averaging weights are γ_max^r.
      state_dtype: the dtype z is stored in, a float (z is an iterate, not a moment: no
        'int8'); None follows the params.

    Returns:
      An optax transformation; ``update`` needs the params. Its state holds learning_rate,
      b1, weight_lr_power (and warmup_steps, weight_decay when given).

    Reference:
      Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less Scheduled",
      NeurIPS 2024 (arXiv:2405.15682), Algorithm 1 with SGD's step.

    Note:
      Equals ``optax.contrib.schedule_free_sgd`` with the same arguments (signature and
      defaults), warmup included: as optax, z's step t uses γ_{t−1} (γ₀ = 0: the first step
      leaves z where it is) while the weights use γ_t; the paper's reference code uses γ_t
      for both. A schedule for ``learning_rate`` is evaluated as optax does (the base at the
      steps taken, the weights at t); with ``warmup_steps`` the learning rate must be a
      number (optax fails on a schedule there). torch.optim and Keras have no Schedule-Free.
    """
    _check_arguments("schedule_free_sgd", learning_rate, warmup_steps, state_dtype)
    return _sgd(learning_rate, warmup_steps, b1, weight_decay, weight_lr_power, state_dtype)


def schedule_free_adamw(
    learning_rate: optax.ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Schedule-Free AdamW: Adam without momentum steps z, averaged into x, y between them.

    With x₁ = z₁ = y₁ the initial params, v₀ = 0, at step t = 1, 2, ...::

        v ← β₂·v + (1 − β₂)·g²,   v̂ = v/(1 − β₂ᵗ)     (g = ∇f(y))
        z ← z − γ_{t−1}·(g/(√v̂ + ε) + λ·y)           (γ_t = γ·min(t/W, 1) with warmup)
        c ← γ_max^r / Σ_{s ≤ t} γ_max,s^r
        x ← (1 − c)·x + c·z
        y ← β₁·x + (1 − β₁)·z                        (the params after the step)

    Evaluate (and deploy) at x: ``gradx.schedule_free_eval_params(state, params)``;
    ``gradx.fit`` does it for you.

    Blocks: ``schedule_free(precondition(identity, rms(β₂, debias), ε) →
    add_decayed_weights(λ) → scale_by_learning_rate(γ), γ, β₁, r)``.

    Effective learning rate (``gradx.effective_learning_rate``): the factor on g_t in the
    step of the params y, γ_{t−1}/(√v̂_t + ε)·(1 − β₁ + β₁·c_t). The average x takes g_t
    with γ_{t−1}·c_t/(√v̂_t + ε), and z with γ_{t−1}/(√v̂_t + ε).

    Args:
      learning_rate: γ ≥ 0 (the peak, with warmup), a number or a schedule.
      warmup_steps: W ≥ 1, the length of the linear warmup, or None.
      b1: β₁ in (0, 1]: y's interpolation between x and z (not a momentum: there is none).
      b2: β₂ in [0, 1), the second moment's decay.
      eps: ε ≥ 0, added to √v̂ (a gradient that is 0 from the start steps 0, even with ε = 0).
      weight_decay: λ ≥ 0, added to the normalised gradient, at y (so multiplied by γ).
      weight_lr_power: r ≥ 0, the averaging weights are γ_max^r.
      state_dtype: the dtype z is stored in, a float (z is an iterate, not a moment: no
        'int8'); None follows the params.

    Returns:
      An optax transformation; ``update`` needs the params. Its state holds learning_rate,
      b1, b2, eps, weight_decay, weight_lr_power (and warmup_steps when given).

    Reference:
      Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less Scheduled",
      NeurIPS 2024 (arXiv:2405.15682), Algorithm 1.

    Note:
      Equals ``optax.contrib.schedule_free_adamw`` with the same arguments (signature and
      defaults), warmup included (z's step t uses γ_{t−1}, the weights γ_t, as in optax).
      The paper's Algorithm 1 puts Adam's bias correction √(1 − β₂ᵗ) into γ_t (and so into
      the weights) and uses γ_t for z's step; optax and gradx bias-correct v instead.
      optax gives NaN for a gradient that is 0 from the start with ε = 0; gradx steps 0.
      torch.optim and Keras have no Schedule-Free.
    """
    _check_arguments("schedule_free_adamw", learning_rate, warmup_steps, state_dtype)
    return _adamw(
        learning_rate, warmup_steps, b1, b2, eps, weight_decay, weight_lr_power, state_dtype
    )
