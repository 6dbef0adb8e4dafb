"""Adam and its family, each a ``precondition`` of an EMA by a second moment.

=========  ===================================================================
adam       precondition(ema(b1, debias), rms(b2, debias), eps)
adamw      adam, then decoupled_weight_decay
amsgrad    precondition(ema(b1, debias), max_rms(b2, max_of), eps)
adamax     precondition(ema(b1, debias), inf_norm(b2, eps))
nadam      precondition(nesterov_ema(b1, momentum_decay), rms(b2, debias), eps)
radam      rectified(ema(b1, debias), rms(b2, debias), b2, threshold, eps)
=========  ===================================================================
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.momentum import ema
from gradx._optimizers.preconditioners import (
    count_as,
    ema_of,
    inf_norm,
    max_rms,
    precondition,
    rms,
    scale_by_bias_correction,
)
from gradx._optimizers.scaling import (
    check_numbers,
    check_weight_decay_scaling,
    decoupled_weight_decay,
    scale_by_learning_rate,
)
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import coef, dtype_arg, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    nonzero_divisor,
    steps_taken,
)
from gradx._protocol.storage import moment_codec, state_dtype_args
from gradx._protocol.trees import check_tree


class NesterovEmaState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    mean: Any  # like params (accumulator_dtype): the ordinary EMA m of g
    mu_product: jax.Array  # shape=(), hyperparameter dtype: P_t = ∏_{s≤t} μ_s


def nesterov_ema(
    decay: jax.typing.ArrayLike,
    momentum_decay: jax.typing.ArrayLike | None = None,
    accumulator_dtype: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block (numerator) for Nadam: Dozat's bias-corrected Nesterov EMA.

    With m ← β₁·m + (1−β₁)·g, μ_t = β₁·(1 − ½·0.96^(ψ·t)) and P_t = ∏_{s≤t} μ_s::

        m̂ = (1 − μ_t)/(1 − P_t)·g + μ_{t+1}/(1 − P_t·μ_{t+1})·m

    ψ = ``momentum_decay`` (torch 0.004, Keras 1); ``None`` keeps μ_t = β₁ (optax).
    ``accumulator_dtype`` is the dtype m is stored in; None follows the params, or
    ``state_dtype`` and ``stochastic_rounding`` as in :func:`trace`. m̂ is emitted in the
    computed dtype, which may be wider than the gradient's.
    """
    check_numbers("nesterov_ema", decay=decay, momentum_decay=momentum_decay)
    codec = moment_codec(
        "nesterov_ema", "accumulator_dtype", accumulator_dtype, state_dtype, stochastic_rounding
    )

    def init(params: Any) -> NesterovEmaState:
        dtype = jnp.asarray(decay).dtype
        mean = codec.init(params, "mean")
        return NesterovEmaState(
            count=jnp.zeros([], jnp.int32), mean=mean, mu_product=jnp.ones([], dtype)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old = codec.decode(state.mean)
        check_tree(updates, old, "moving average in the state")
        b1 = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        t = count_as(count, b1)
        if momentum_decay is None:
            mu, mu_next = b1, b1
        else:
            psi = jnp.asarray(momentum_decay, b1.dtype)
            mu = b1 * (1 - 0.5 * 0.96 ** (psi * t))
            mu_next = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
        mu_product = state.mu_product.astype(b1.dtype) * mu
        c_grad = (1 - mu) / (1 - mu_product)
        c_mean = mu_next / (1 - mu_product * mu_next)
        mean = jax.tree.map(lambda g, m: ema_of(b1, g, m), updates, old)
        mean, stored_mean = codec.store(mean, state.mean, (b1, 1 - b1, updates, False))

        def out_of(g, m):
            gw, mw = wide(g, b1, m), wide(m, b1, g)
            return coef(c_grad, gw) * gw + coef(c_mean, mw) * mw

        out = jax.tree.map(out_of, updates, mean)
        new_state = NesterovEmaState(
            count=count,
            mean=stored_mean,
            mu_product=mu_product.astype(state.mu_product.dtype),
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init, update)


ADAM_RULES = dict(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")


def _adam_tail(
    learning_rate, b2, eps_hat: bool, weight_decay=None, mask=None, scaling="learning_rate"
) -> list:
    """The blocks after the preconditioner: ε̂ scaling, the learning rate, decoupled decay."""
    tail = [scale_by_bias_correction(b2, 0.5)] if eps_hat else []
    tail.append(scale_by_learning_rate(learning_rate))
    if weight_decay is not None:
        tail.append(
            decoupled_weight_decay(weight_decay, learning_rate, mask, weight_decay_scaling=scaling)
        )
    return tail


def moment_dtypes(fn: str, mu_dtype: Any = None, nu_dtype: Any = None) -> None:
    """Checks the moment dtypes at construction, naming the optimizer."""
    dtype_arg(fn, "mu_dtype", mu_dtype)
    dtype_arg(fn, "nu_dtype", nu_dtype)


@optimizer(**ADAM_RULES, eps_root=">= 0")
def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    eps_hat: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adam (seeds 000 and 004): EMA momentum divided by an RMS scaling.

    For t = 1, 2, ..., with m₀ = v₀ = 0::

        m ← β₁·m + (1−β₁)·g            v ← β₂·v + (1−β₂)·g²
        m̂ = m/(1−β₁ᵗ)                   v̂ = v/(1−β₂ᵗ)
        θ ← θ − γ·m̂ / (√(v̂ + ε_root) + ε)

    With ``eps_hat=True`` (Keras/TF): θ ← θ − γ·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε), the paper's
    "ε̂" form, which equals the above with an ε that is larger early on.

    Blocks: ``precondition(ema(β₁, debias), rms(β₂, ε_root, debias), ε) →
    scale_by_learning_rate(γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1: β₁ in [0, 1). Seed 000 writes "β₁ = 0.99": a typo for the paper's 0.9.
      b2: β₂ in [0, 1).
      eps: ε ≥ 0, outside the root.
      eps_root: ε_root ≥ 0, inside the root (optax's ``eps_root``).
      eps_hat: Keras's ε̂ form.
      mu_dtype: the dtype m is stored in (optax's ``mu_dtype``); None follows the params.
      nu_dtype: the dtype v is stored in (optax has none: its issue 1552); None follows
        the params (their real precision for complex params: v is real), except float16
        params, whose v is float32: in float16, (1 − β₂)·g² rounds to 0 for ``|g|`` below
        about 5.5e-3 (the step grows to 16× the learning rate) and coarsely up to
        ``|g|`` ≈ 1.5e-2 (steps off by up to 4×). float32 moments for bf16 params keep
        small updates that bf16 rounds away.
      state_dtype: how m and v are stored where ``mu_dtype``/``nu_dtype`` are None (see
        :doc:`/guides/state-dtype`): None follows the params (v of float16 params in
        float32, as for ``nu_dtype``); a float dtype stores them in
        it (``"float32"`` for bf16 params); ``"int8"`` quantises each leaf of ≥ 256
        elements in blocks of 256: one float32 absmax per block and per element the int8
        code of an 8-bit floating-point map of ``x``/absmax (3 mantissa bits: within
        6.25%; signed for m, unsigned with no 0 for v, so v never reads back as 0 in a
        nonzero block), smaller leaves in float32: about 2 bytes of state per parameter
        instead of 8. The step reads m and v back from their codes.
      stochastic_rounding: with ``state_dtype="bfloat16"``, round m and v to bfloat16
        stochastically (unbiased: small EMA increments are not lost); the PRNG key and a
        count live in the state, so runs are reproducible and resume exactly.

    Returns:
      An optax transformation whose state holds learning_rate, b1, b2, eps, eps_root.
      The step is computed in float32 (or the params' wider dtype) and cast to the
      gradient's dtype once, at the end. Complex params: v accumulates ``|g|²`` = g·conj(g).

    Reference:
      Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.

    Note:
      Equals ``optax.adam`` and ``torch.optim.Adam``. Keras's ``Adam`` is ``eps_hat=True``
      with ε = 1e-7. The arguments up to ``eps_root`` are positional as in ``optax.adam``;
      the rest are keyword-only.

    Examples:
      >>> import jax.numpy as jnp, optax, gradx
      >>> opt = gradx.adam(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.array([0.5, -0.5])}
      >>> updates, state = opt.update(grads, state, params)
      >>> [round(u, 4) for u in updates["w"].tolist()]  # step 1: -lr·sign(g)
      [-0.1, 0.1]
      >>> [round(p, 4) for p in optax.apply_updates(params, updates)["w"].tolist()]
      [0.9, -1.9]
    """
    moment_dtypes("adam", mu_dtype, nu_dtype)
    store = state_dtype_args("adam", state_dtype, stochastic_rounding)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype, **store)
    den = rms(b2, eps_root=eps_root, debias=not eps_hat, accumulator_dtype=nu_dtype, **store)
    return optax.chain(precondition(num, den, eps), *_adam_tail(learning_rate, b2, eps_hat))


@optimizer(**ADAM_RULES, weight_decay=">= 0")
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    weight_decay: float = 1e-2,
    eps_hat: bool = False,
    mask: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    weight_decay_scaling: str = "learning_rate",
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """AdamW: Adam with decoupled weight decay.

    Adam's step (see :func:`adam`) plus a decay that never enters m or v::

        θ ← θ − γ_t·(m̂/(√v̂ + ε) + λ·θ)              weight_decay_scaling="learning_rate"
        θ ← θ − γ_t·m̂/(√v̂ + ε) − η_t·λ·θ            weight_decay_scaling="schedule"

    with η_t = γ_t/γ_peak the schedule multiplier (1 for a constant γ), as in the paper's
    Algorithm 2 (see :func:`decoupled_weight_decay` and ``docs/conventions.md``).

    Blocks: ``precondition(ema(β₁, debias), rms(β₂, debias), ε) → scale_by_learning_rate(γ)
    → decoupled_weight_decay(λ, γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1, b2, eps, eps_hat: as in :func:`adam`.
      weight_decay: λ ≥ 0, multiplied by the current γ.
      mask: which leaves decay, as optax's ``mask``: None (all), a pytree of bools with the
        params' structure or a prefix of it (True = decay), or a function of the params
        returning one. Masked-out leaves get exactly Adam's update. Keras's
        ``exclude_from_weight_decay(var_names=["bias"])`` and torch's no-decay param group
        for biases and norms are one line each::

            adamw(1e-3, mask=lambda p: jax.tree.map_with_path(
                lambda path, _: "bias" not in jax.tree_util.keystr(path), p))
            adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

      mu_dtype, nu_dtype: the dtypes m and v are stored in, as in :func:`adam`.
      weight_decay_scaling: what λ is multiplied by: ``"learning_rate"`` (γ_t; torch, optax
        and Keras) or ``"schedule"`` (η_t = γ_t/γ_peak; the paper). With ``"schedule"`` the
        learning rate must be a number (η_t = 1: θ decays by λ per step) or a gradx schedule
        (:mod:`gradx.schedules`), whose peak is known; λ is then typically ~γ_peak times
        smaller than torch's.
      state_dtype, stochastic_rounding: how m and v are stored otherwise, as in :func:`adam`.

    Reference:
      Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

    Note:
      Default λ = 1e-2 as torch's ``AdamW``; optax's ``adamw`` defaults to 1e-4 and Keras's
      to 0.004. All three multiply λ by the learning rate, as here. The arguments up to
      ``eps`` are positional as in ``optax.adamw``; the rest are keyword-only (optax's fifth
      is ``eps_root``).

      optax's default differs: λ = 1e-4 there; ``gradx.compat.optax.adamw(...)`` reproduces
      optax's numbers.
    """
    moment_dtypes("adamw", mu_dtype, nu_dtype)
    check_weight_decay_scaling("adamw", weight_decay_scaling)
    store = state_dtype_args("adamw", state_dtype, stochastic_rounding)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype, **store)
    den = rms(b2, debias=not eps_hat, accumulator_dtype=nu_dtype, **store)
    return optax.chain(
        precondition(num, den, eps),
        *_adam_tail(learning_rate, b2, eps_hat, weight_decay, mask, weight_decay_scaling),
    )


@optimizer(**ADAM_RULES)
def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    max_of: str = "raw_v",
    eps_hat: bool = False,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """AMSGrad: Adam whose denominator never decreases.

    With m, v, m̂ as in :func:`adam`::

        v_max ← max(v_max, v)
        θ ← θ − γ·m̂ / (√v_max/√(1−β₂ᵗ) + ε)

    Blocks: ``precondition(ema(β₁, debias), max_rms(β₂, max_of), ε) →
    scale_by_learning_rate(γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1, b2, eps: as in :func:`adam`.
      max_of: what the maximum is taken over: ``"raw_v"`` (default; torch and Keras),
        ``"v_hat"`` (the bias-corrected v̂, optax's default) or ``"raw_v_no_correction"``
        (Reddi et al. without any bias correction; optax's ``bias_correction_nu=False``).
      eps_hat: Keras's ε̂ form (with ``max_of="raw_v_no_correction"`` it is Keras's
        ``Adam(amsgrad=True)``).
      mu_dtype, nu_dtype: the dtypes m and v (with v_max) are stored in, as in :func:`adam`.
      state_dtype, stochastic_rounding: how m, v, v_max are stored otherwise, as in
        :func:`adam`.

    Reference:
      Reddi, Kale and Kumar, "On the Convergence of Adam and Beyond", ICLR 2018.

    Note:
      The arguments up to ``eps`` are positional as in ``optax.amsgrad``; the rest are
      keyword-only.

      optax's default differs: ``optax.amsgrad`` takes the max over v̂ (``max_of="v_hat"``)
      and differs from torch/Keras from step 2; ``gradx.compat.optax.amsgrad(...)``
      reproduces optax's numbers.
    """
    if eps_hat and max_of != "raw_v_no_correction":
        raise ValueError(
            "amsgrad: eps_hat=True rescales by √(1−β₂ᵗ) itself, so max_of must be "
            f"'raw_v_no_correction', got {max_of!r}"
        )
    moment_dtypes("amsgrad", mu_dtype, nu_dtype)
    store = state_dtype_args("amsgrad", state_dtype, stochastic_rounding)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype, **store)
    den = max_rms(b2, max_of=max_of, accumulator_dtype=nu_dtype, **store)
    return optax.chain(precondition(num, den, eps), *_adam_tail(learning_rate, b2, eps_hat))


@optimizer(**ADAM_RULES)
def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_in_max: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adamax: Adam with the infinity norm in place of the RMS.

    For t = 1, 2, ..., with m₀ = u₀ = 0::

        m ← β₁·m + (1−β₁)·g
        u ← max(β₂·u, |g| + ε)
        θ ← θ − γ/(1−β₁ᵗ)·m/u

    Finite when a gradient is exactly 0 from the start: then u = ε > 0 (and with ε = 0 the
    step is 0). ``eps_in_max=False`` is Keras's placement: u ← max(β₂·u, ``|g|``),
    θ ← θ − γ·m/((1−β₁ᵗ)(u + ε)).

    Blocks: ``precondition(ema(β₁, debias), inf_norm(β₂, ε)) → scale_by_learning_rate(γ)``.

    ``mu_dtype`` is the dtype m is stored in and ``nu_dtype`` the (real) dtype u is stored
    in; None follows the params (u of float16 params in float32, as every never-negative
    moment), or ``state_dtype`` and ``stochastic_rounding`` as in :func:`adam`. For complex
    params ``|g|`` is the modulus.

    Reference:
      Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Sec. 7.1.

    Note:
      Equals ``optax.adamax`` and ``torch.optim.Adamax``. The arguments up to ``eps`` are
      positional as in ``optax.adamax``; the rest are keyword-only.
    """
    moment_dtypes("adamax", mu_dtype, nu_dtype)
    store = state_dtype_args("adamax", state_dtype, stochastic_rounding)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype, **store)
    if eps_in_max:
        pre = precondition(num, inf_norm(b2, eps, accumulator_dtype=nu_dtype, **store))
    else:
        pre = precondition(num, inf_norm(b2, accumulator_dtype=nu_dtype, **store), eps)
    return optax.chain(pre, scale_by_learning_rate(learning_rate))


@optimizer(**ADAM_RULES, momentum_decay=">= 0")
def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    momentum_decay: float | None = 0.004,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Nadam: Adam with Nesterov momentum (Dozat).

    With v̂ as in :func:`adam`, μ_t = β₁·(1 − ½·0.96^(ψ·t)) and P_t = ∏_{s≤t} μ_s::

        m ← β₁·m + (1−β₁)·g
        θ ← θ − γ·[(1−μ_t)/(1−P_t)·g + μ_{t+1}/(1−P_t·μ_{t+1})·m] / (√v̂ + ε)

    Blocks: ``precondition(nesterov_ema(β₁, ψ), rms(β₂, debias), ε) →
    scale_by_learning_rate(γ)``.

    Args:
      momentum_decay: ψ ≥ 0. 0.004 (= 1/250, Dozat's schedule, torch's default); 1 is
        Keras 3's schedule; ``None`` keeps μ_t = β₁ (optax's ``nadam``).
      mu_dtype, nu_dtype: the dtypes m and v are stored in, as in :func:`adam`.
      state_dtype, stochastic_rounding: how m and v are stored otherwise, as in :func:`adam`.

    Reference:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.

    Note:
      The arguments up to ``eps`` are positional as in ``optax.nadam``; the rest are
      keyword-only (optax's fifth is ``eps_root``).

      optax's default differs: ``optax.nadam`` keeps μ_t = β₁ (``momentum_decay=None``);
      ``gradx.compat.optax.nadam(...)`` reproduces optax's numbers.
    """
    moment_dtypes("nadam", mu_dtype, nu_dtype)
    store = state_dtype_args("nadam", state_dtype, stochastic_rounding)
    num = nesterov_ema(b1, momentum_decay, accumulator_dtype=mu_dtype, **store)
    den = rms(b2, debias=True, accumulator_dtype=nu_dtype, **store)
    return optax.chain(precondition(num, den, eps), scale_by_learning_rate(learning_rate))


@gain_rule(nesterov_ema)
def _nesterov_ema_gain(ctx, cells, state, incoming):
    # m̂ = c_g·g + c_m·m_t with m_t = β₁·m_{t−1} + (1−β₁)·g: the factor on g is c_g + c_m(1−β₁).
    b1 = in_gain_dtype(ctx, closure_value(cells, "decay", "nesterov_ema"))
    psi = closure_value(cells, "momentum_decay", "nesterov_ema")
    t = steps_taken(ctx, state.count)
    if psi is None:
        mu, mu_next = b1, b1
    else:
        psi = in_gain_dtype(ctx, psi)
        mu = b1 * (1 - 0.5 * 0.96 ** (psi * t))
        mu_next = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
    product = in_gain_dtype(ctx, state.mu_product)  # P_t, after the step
    c_grad = (1 - mu) / nonzero_divisor(1 - product)
    c_mean = mu_next / nonzero_divisor(1 - product * mu_next)
    return Gain(c_grad + c_mean * (1 - b1)), None
