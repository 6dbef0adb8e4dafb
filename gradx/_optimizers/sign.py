"""Sign-based methods: Rprop, one adaptive step size per weight, and Lion, the sign of a
momentum.

Blocks: ``scale_by_rprop`` (the seed's rule, or iRprop⁻ with ``irprop_minus=True``, which is
torch's), ``scale_by_lion``. Optimizers: ``rprop``, ``lion``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.scaling import (
    check_numbers,
    check_weight_decay_scaling,
    decoupled_weight_decay,
    scale_by_learning_rate,
)
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import coef, dtype_arg, wide
from gradx._protocol.gain import Gain, gain_rule, in_gain_dtype, needs_incoming, nonzero_divisor
from gradx._protocol.storage import moment_codec, state_dtype_args
from gradx._protocol.trees import check_tree


class RpropState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32: updates so far; 0 means "no previous gradient"
    prev_grad: Any  # like params: the last gradient (0 where iRprop⁻ dropped it)
    step_size: Any  # like params (shape and dtype): α_i used by the last update


def refuse_complex(fn: str, params: Any) -> None:
    """Rprop's refusal of complex params (``fn`` names the caller): sign(g)·sign(g_prev) > 0
    means nothing for a complex g."""
    for leaf in jax.tree.leaves(params):
        if jnp.iscomplexobj(leaf):
            raise TypeError(
                f"{fn}: params must be real, got a {jnp.result_type(leaf)} leaf; Rprop compares "
                "gradient signs, which complex numbers lack: optimize the real and imaginary "
                "parts as separate real params"
            )


def scale_by_rprop(
    learning_rate: jax.typing.ArrayLike,
    *,
    eta_plus: jax.typing.ArrayLike = 1.2,
    eta_minus: jax.typing.ArrayLike = 0.6,
    min_step: jax.typing.ArrayLike = 1e-6,
    max_step: jax.typing.ArrayLike = 50.0,
    irprop_minus: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: Rprop, u_i ← −α_i·sign(g_i) with a step size α_i per weight.

    Rprop's step sizes are absolute lengths, so this block emits the descent update itself;
    no ``scale_by_learning_rate`` follows it. With s_i = sign(g_i)·sign(g_i_prev), for
    t = 1, 2, ...::

        t = 1:  α_i ← clip(α⁰, min_step, max_step)                 (no previous gradient)
        t > 1:  α_i ← clip(α_i·η⁺, min, max)   where s_i > 0
                α_i ← clip(α_i·η⁻, min, max)   where s_i ≤ 0       (the seed's rule)
        u_i = −α_i·sign(g_i)

    With ``irprop_minus=True`` (iRprop⁻, torch's ``Rprop``), every step including the first
    applies a factor and the clip: η⁺ where s_i > 0, η⁻ where s_i < 0, 1 where s_i = 0; and
    where the sign flipped (s_i < 0) the gradient is taken as 0: that weight does not move,
    and 0 is remembered as its previous gradient, so its next step size keeps its value.
    A NaN gradient counts as 0 there (torch's sign(NaN) is 0): the weight does not move and
    its step size is kept, instead of turning NaN for good.

    α⁰ (``learning_rate``) is read at the first update, not at ``init``: a learning rate
    set with ``gradx.set_hyperparams`` before the first update takes effect.

    Args:
      learning_rate: α⁰, the initial step size of every weight (number or scalar array).
      eta_plus: η⁺ > 1, growth factor where the gradient kept its sign.
      eta_minus: η⁻ in (0, 1), shrink factor.
      min_step: lower clip of every α_i.
      max_step: upper clip of every α_i.
      irprop_minus: use iRprop⁻ (torch's convention) instead of the seed's rule.
    """
    check_numbers(
        "scale_by_rprop",
        learning_rate=learning_rate,
        eta_plus=eta_plus,
        eta_minus=eta_minus,
        min_step=min_step,
        max_step=max_step,
    )

    def init(params: Any) -> RpropState:
        refuse_complex("scale_by_rprop", params)
        return RpropState(
            count=jnp.zeros([], jnp.int32),
            step_size=jax.tree.map(jnp.zeros_like, params),
            prev_grad=jax.tree.map(jnp.zeros_like, params),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.step_size, "step sizes in the state")
        lr, up, down, lo, hi = (
            jnp.asarray(x) for x in (learning_rate, eta_plus, eta_minus, min_step, max_step)
        )
        first = state.count == 0

        def leaf(g, prev, stored_step):
            # Signs, not the product g·prev: the product of two tiny gradients underflows to 0.
            sp = jnp.sign(prev)  # ±1 or 0: exact in g's dtype, if the gradient has another
            s = jnp.sign(g) * (sp if sp.dtype == g.dtype else sp.astype(g.dtype))
            one = jnp.ones([], up.dtype)
            if irprop_minus:
                factor = jnp.where(s > 0, up, jnp.where(s < 0, down, one))
                # A NaN gradient acts as 0, as in torch, where sign(NaN) is 0: s = 0, so the
                # factor is 1; the weight moves by step·sign(NaN) = 0; torch's prev becomes
                # NaN, which makes the next s 0 again, just as the 0 stored here does.
                g = jnp.where((s < 0) | jnp.isnan(g), jnp.zeros_like(g), g)
            else:
                factor = jnp.where(first, one, jnp.where(s > 0, up, down))
            start = jnp.where(first, lr.astype(up.dtype), wide(stored_step, up))
            step = jnp.clip(wide(start, lr) * factor, lo, hi)
            u = -step * jnp.sign(wide(g, step))
            # the state keeps its dtypes whatever the gradient's (bf16 gradients, f32 params)
            return u.astype(g.dtype), g.astype(prev.dtype), step.astype(stored_step.dtype)

        out = jax.tree.map(leaf, updates, state.prev_grad, state.step_size)
        outer = jax.tree.structure(updates)
        rows = outer.flatten_up_to(out)  # not jax.tree.transpose: it fails on an empty tree
        u, prev, step = (outer.unflatten([row[i] for row in rows]) for i in range(3))
        return u, RpropState(
            count=optax.safe_increment(state.count), prev_grad=prev, step_size=step
        )

    return optax.GradientTransformationExtraArgs(init, update)


@optimizer(
    "min_step <= max_step",
    learning_rate=">= 0",
    eta_plus="> 1",
    eta_minus="(0, 1)",
    min_step=">= 0",
    max_step="> 0",
)
def rprop(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    *,
    eta_plus: float = 1.2,
    eta_minus: float = 0.6,
    min_step: float = 1e-6,
    max_step: float = 50.0,
    irprop_minus: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Rprop: each weight moves by its own step size α_i along −sign(g_i) (seed 004).

    Seed 004: choose α⁰ for all weights, then::

        w_i^t = w_i^{t−1} − α_i^t·sign(∇_i L(w^{t−1}))
        α_i^{t+1} = α_i^t·η⁺   if sign(∇_i L(w^t)·∇_i L(w^{t−1})) > 0
        α_i^{t+1} = α_i^t·η⁻   if sign(∇_i L(w^t)·∇_i L(w^{t−1})) ≤ 0

    with η⁺ = 1.2, η⁻ = 0.6 in the seed. Written per update t = 1, 2, ... with g^t the
    gradient it receives and s_i = sign(g_i^t)·sign(g_i^{t−1})::

        α_i^1 = clip(α⁰, min_step, max_step)                 (t = 1: no previous gradient,
                                                              so nothing to adapt to)
        α_i^t = clip(α_i^{t−1}·(η⁺ if s_i > 0 else η⁻), min_step, max_step)     (t > 1)
        θ_i ← θ_i − α_i^t·sign(g_i^t)

    So the first update already moves every weight with a nonzero gradient by α⁰, and each
    later step size is adapted with the gradient it is about to be used with. A zero gradient
    (s_i = 0) counts as "≤ 0" and shrinks the step, as in the seed.

    Blocks: ``scale_by_rprop(α⁰, eta_plus=η⁺, eta_minus=η⁻, min_step=..., max_step=...)``.

    Args:
      learning_rate: α⁰ ≥ 0, the initial step size of every weight. It is read at the first
        update (a schedule is evaluated at step 0; later values are not used, since every
        α_i then adapts on its own).
      eta_plus: η⁺ > 1.
      eta_minus: η⁻ in (0, 1).
      min_step: the smallest step size, ≥ 0.
      max_step: the largest step size, > 0 and ≥ ``min_step``.
      irprop_minus: iRprop⁻ instead of the seed's rule; see the Note.

    Returns:
      An optax transformation whose state is a ``HyperparamsState`` holding
      ``learning_rate, eta_plus, eta_minus, min_step, max_step`` around an ``RpropState``
      (``count``; ``step_size`` and ``prev_grad``, both like params).

    References:
      Riedmiller, Braun, "A direct adaptive method for faster backpropagation learning: the
      RPROP algorithm", IEEE ICNN 1993.
      Igel, Hüsken, "Improving the Rprop learning algorithm", NC 2000 (iRprop⁻).

    Note:
      The default η⁻ = 0.6 is the seed's; torch and optax default to η⁻ = 0.5 (both keep
      η⁺ = 1.2, [1e-6, 50]). torch's ``Rprop`` is iRprop⁻: where the sign flipped it does not
      move and forgets the gradient; a zero product keeps the step size; every step, the
      first included, is clipped. ``irprop_minus=True`` gives exactly that, and
      ``gradx.compat.torch.Rprop`` wraps it with torch's names and defaults. optax 0.2.8's
      ``rprop`` returns the previous step's update (its first update is 0, optax PR #1725)
      and never clips α⁰; gradx does not copy that. Only ``learning_rate`` is positional:
      optax's ``rprop(lr, eta_minus, eta_plus, min_step_size, max_step_size)`` orders the
      others differently.

      optax's default differs: η⁻ = 0.5 there, and optax's one-step lag;
      ``gradx.compat.optax.rprop(...)`` reproduces optax's numbers.
    """
    return scale_by_rprop(
        learning_rate,
        eta_plus=eta_plus,
        eta_minus=eta_minus,
        min_step=min_step,
        max_step=max_step,
        irprop_minus=irprop_minus,
    )


@gain_rule(scale_by_rprop)
def _rprop_gain(ctx, cells, state, incoming):
    # u_i = −α_i·sign(g_i) = −(α_i/|g_i|)·g_i; the state keeps α_i and g_i (0 where iRprop⁻
    # dropped a flipped gradient: that weight did not move, factor 0; likewise where g_i = 0).
    def factor(step, g):
        a = jnp.abs(in_gain_dtype(ctx, g))
        return jnp.where(a > 0, -in_gain_dtype(ctx, step) / nonzero_divisor(a), jnp.zeros_like(a))

    return Gain(jnp.ones([], ctx.dtype), jax.tree.map(factor, state.step_size, state.prev_grad)), (
        None
    )


class ScaleByLionState(NamedTuple):
    count: jax.Array  # shape=(), dtype=int32: updates so far
    mu: Any  # like params, in mu_dtype (None: the params' dtype): the momentum m


def scale_by_lion(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: Lion's direction, u ← sign(β₁·m + (1−β₁)·g), then m ← β₂·m + (1−β₂)·g.

    The sign is taken of the interpolation between the momentum *before* this step and the
    gradient; the momentum is then updated with a second rate β₂. Every coordinate of u is
    −1, 0 or +1 (0 only where the interpolation is exactly 0), in the gradient's dtype, so a
    ``scale_by_learning_rate`` follows. Equals ``optax.scale_by_lion`` (its ``mode='hard'``).

    Args:
      b1: β₁, the weight of the momentum in the interpolation the sign is taken of.
      b2: β₂, the decay of the momentum.
      mu_dtype: the dtype m is stored in (optax's ``mu_dtype``); None follows the params.
      state_dtype, stochastic_rounding: how m is stored where ``mu_dtype`` is None, as in
        :func:`trace`.
    """
    check_numbers("scale_by_lion", b1=b1, b2=b2)
    codec = moment_codec("scale_by_lion", "mu_dtype", mu_dtype, state_dtype, stochastic_rounding)

    def init(params: Any) -> ScaleByLionState:
        return ScaleByLionState(count=jnp.zeros([], jnp.int32), mu=codec.init(params, "mu"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old = codec.decode(state.mu)
        check_tree(updates, old, "momentum in the state")
        beta1, beta2 = jnp.asarray(b1), jnp.asarray(b2)
        rest1, rest2 = 1 - beta1, 1 - beta2  # once per step, not once per leaf

        def leaf(g, m):
            gw, mw = wide(g, beta1, m), wide(m, beta1, g)
            u = jnp.sign(coef(rest1, gw) * gw + coef(beta1, mw) * mw)
            return u.astype(g.dtype), coef(rest2, gw) * gw + coef(beta2, mw) * mw

        out = jax.tree.map(leaf, updates, old)
        outer = jax.tree.structure(updates)
        rows = outer.flatten_up_to(out)  # not jax.tree.transpose: it fails on an empty tree
        u, mu = (outer.unflatten([row[i] for row in rows]) for i in range(2))
        count = optax.safe_increment(state.count)
        stored = codec.encode(mu, state.mu, (beta2, rest2, updates, False))
        return u, ScaleByLionState(count=count, mu=stored)

    return optax.GradientTransformationExtraArgs(init, update)


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", weight_decay=">= 0")
def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: float = 1e-3,
    mask: Any = None,
    *,
    weight_decay_scaling: str = "learning_rate",
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Lion: the sign of an interpolated momentum, with decoupled weight decay.

    For t = 1, 2, ..., with m₀ = 0::

        u = sign(β₁·m + (1−β₁)·g)
        m ← β₂·m + (1−β₂)·g
        θ ← θ − γ·(u + λ·θ)

    Every step moves each weight by γ (plus the decay), whatever the gradient's scale, so
    Lion wants a learning rate 3-10x smaller than AdamW's and a λ 3-10x larger (the paper's
    advice). It keeps one buffer (m), AdamW two.

    Blocks: ``scale_by_lion(β₁, β₂) → scale_by_learning_rate(γ) →
    decoupled_weight_decay(λ, γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1: β₁ in [0, 1), the momentum's weight inside the sign.
      b2: β₂ in [0, 1), the momentum's decay.
      mu_dtype: the dtype m is stored in; None follows the params.
      weight_decay: λ ≥ 0, multiplied by the current γ.
      mask: which leaves decay, as optax's ``mask``: None (all), a pytree of bools with the
        params' structure or a prefix of it (True = decay), or a function of the params
        returning one.
      weight_decay_scaling: what λ is multiplied by: ``"learning_rate"`` (γ_t, as optax) or
        ``"schedule"`` (η_t = γ_t/γ_peak, the AdamW paper's convention), as in
        :func:`gradx.adamw`.
      state_dtype, stochastic_rounding: how m is stored where ``mu_dtype`` is None: a float
        dtype, ``"bfloat16"`` rounded stochastically, or ``"int8"`` (blockwise); see
        :func:`gradx.adam`.

    Returns:
      An optax transformation whose state is a ``HyperparamsState`` holding
      ``b1, b2, learning_rate, weight_decay`` around the blocks' states (``count`` and the
      momentum ``mu``, like params).

    Reference:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.

    Note:
      Equals ``optax.lion`` (same arguments, order and defaults). optax adds λ·θ before
      its learning-rate block, −γ·(u + λθ); gradx subtracts γλθ after it, −γu − γλθ: the same
      step, up to rounding.
    """
    dtype_arg("lion", "mu_dtype", mu_dtype)
    store = state_dtype_args("lion", state_dtype, stochastic_rounding)
    check_weight_decay_scaling("lion", weight_decay_scaling)
    return optax.chain(
        scale_by_lion(b1, b2, mu_dtype, **store),
        scale_by_learning_rate(learning_rate),
        decoupled_weight_decay(
            weight_decay, learning_rate, mask, weight_decay_scaling=weight_decay_scaling
        ),
    )


@gain_rule(scale_by_lion)
def _lion_gain(ctx, cells, state, incoming):
    # u_i = sign(c_i), c = β₁·m_{t−1} + (1−β₁)·g_i, is not linear in g. As for Rprop, the
    # factor is the step per unit gradient, |u_i|/|g_i| = 1/|g_i| (0 where g_i = 0). |u_i| is 1
    # except where c_i is exactly 0, which the state (m_t only) cannot tell: counted as 1.
    needs_incoming("scale_by_lion", incoming)

    def factor(g):
        a = in_gain_dtype(ctx, jnp.abs(g))
        return jnp.where(a > 0, 1 / nonzero_divisor(a), jnp.zeros_like(a))

    return Gain(jnp.ones([], ctx.dtype), jax.tree.map(factor, incoming)), None
