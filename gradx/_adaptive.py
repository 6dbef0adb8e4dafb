"""The adaptive family: per-coordinate step sizes from running gradient statistics.

Every optimizer here is ``precondition(direction, by, eps)`` followed by
``scale_by_learning_rate``: a *fan-out* in which the numerator (``direction``) and the
denominator (``by``) both see the same incoming gradient. A sequential chain of an EMA and an
RMS scaling is not Adam (the second stage would see the first stage's output), so composition
goes through :func:`precondition`:

=========  ===================================================================
adam       precondition(ema(b1, debias), rms(b2, debias), eps)
amsgrad    precondition(ema(b1, debias), max_rms(b2, max_of), eps)
adamax     precondition(ema(b1, debias), inf_norm(b2, eps))
nadam      precondition(nesterov_ema(b1, momentum_decay), rms(b2, debias), eps)
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

from gradx._core import (
    check_tree,
    decoupled_weight_decay,
    optimizer,
    scale_by_learning_rate,
    wide,
)
from gradx._momentum import ema, trace

# ----------------------------------------------------------------------------- helpers


def _zeros(params: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, params)


def _count_as(count: jax.Array, h: jax.Array) -> jax.Array:
    return count.astype(h.dtype)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, dividing by 1 where den is 0: there num is 0 too (every gradient so far
    was 0), so a gradient that is 0 from the start gives a 0 step, not 0/0 = NaN."""
    return num / jnp.where(den > 0, den, 1)


# ----------------------------------------------------------------------------- fan-out


class PreconditionState(NamedTuple):
    direction: Any  # the state of the numerator's transform
    by: Any  # the state of the denominator's transform


def precondition(
    direction: optax.GradientTransformation,
    by: optax.GradientTransformation,
    eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Block (fan-out): u ← direction(g) / (by(g) + ε), both fed the same gradient g.

    ``direction`` gives the numerator (``optax.identity()``, ``ema``, ``nesterov_ema``) and
    ``by`` the denominator, already square-rooted (``rms``, ``max_rms``, ``rss``,
    ``inf_norm``). ε is added outside the root; an ε inside the root belongs to the
    denominator's block (``eps_root=``). Where the denominator is exactly 0 the update is 0.
    """
    direction = optax.with_extra_args_support(direction)
    by = optax.with_extra_args_support(by)

    def init(params: Any) -> PreconditionState:
        return PreconditionState(direction.init(params), by.init(params))

    def update(updates, state, params=None, **extra_args):
        num, direction_state = direction.update(updates, state.direction, params, **extra_args)
        den, by_state = by.update(updates, state.by, params, **extra_args)
        e = jnp.asarray(eps)
        out = jax.tree.map(
            lambda n, d: _safe_div(wide(n, e), wide(d, e) + e).astype(n.dtype), num, den
        )
        return out, PreconditionState(direction_state, by_state)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- denominators


class RmsState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    nu: Any  # like params: EMA of g², starting at initial_scale
    mean: Any  # like params when centered (EMA of g), else ()


def rms(
    decay: jax.typing.ArrayLike,
    eps_root: jax.typing.ArrayLike = 0.0,
    debias: bool = False,
    centered: bool = False,
    initial_scale: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator): √(v̂ − â² + ε_root) from v ← ρ·v + (1−ρ)·g².

    v̂ = v / (1 − ρᵗ) with ``debias`` (else v̂ = v); with ``centered``, a ← ρ·a + (1−ρ)·g and
    â likewise, else â = 0. The variance is clipped at 0 before the root (rounding can make
    v̂ − â² slightly negative). v₀ = ``initial_scale`` (TF1 used 1).
    """

    def init(params: Any) -> RmsState:
        scale = jnp.asarray(initial_scale)
        nu = jax.tree.map(lambda p: jnp.full_like(p, scale), params)
        return RmsState(jnp.zeros([], jnp.int32), nu, _zeros(params) if centered else ())

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.nu, "second moment in the state")
        rho, e = jnp.asarray(decay), jnp.asarray(eps_root)
        count = optax.safe_increment(state.count)
        correction = 1 - rho ** _count_as(count, rho) if debias else 1

        def ema_of(x, old):
            return (rho * wide(old, rho) + (1 - rho) * wide(x, rho)).astype(old.dtype)

        nu = jax.tree.map(lambda g, v: ema_of(jnp.square(wide(g, rho)), v), updates, state.nu)
        mean = jax.tree.map(ema_of, updates, state.mean) if centered else ()

        def root(v, a=None):
            var = wide(v, rho, e) / correction
            if a is not None:
                var = jnp.maximum(var - jnp.square(wide(a, rho, e) / correction), 0)
            return jnp.sqrt(var + e).astype(v.dtype)

        out = jax.tree.map(root, nu, mean) if centered else jax.tree.map(root, nu)
        return out, RmsState(count, nu, mean)

    return optax.GradientTransformationExtraArgs(init, update)


class MaxRmsState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    nu: Any  # like params: EMA of g²
    nu_max: Any  # like params: the running maximum (of v, or of v̂ for max_of="v_hat")


MAX_OF = ("raw_v", "v_hat", "raw_v_no_correction")


def max_rms(
    decay: jax.typing.ArrayLike, max_of: str = "raw_v"
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for AMSGrad: the root of a running maximum of the second moment.

    With v ← β₂·v + (1−β₂)·g²:

    * ``"raw_v"`` (torch, Keras): v_max ← max(v_max, v), emits √v_max / √(1 − β₂ᵗ);
    * ``"v_hat"`` (optax's default): v_max ← max(v_max, v/(1 − β₂ᵗ)), emits √v_max;
    * ``"raw_v_no_correction"`` (Reddi et al. without correction): emits √max(v_max, v).
    """
    if max_of not in MAX_OF:
        raise ValueError(f"max_rms: max_of must be one of {MAX_OF}, got {max_of!r}")

    def init(params: Any) -> MaxRmsState:
        return MaxRmsState(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.nu, "second moment in the state")
        b2 = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        correction = 1 - b2 ** _count_as(count, b2)
        nu = jax.tree.map(
            lambda g, v: (b2 * wide(v, b2) + (1 - b2) * jnp.square(wide(g, b2))).astype(v.dtype),
            updates,
            state.nu,
        )
        if max_of == "v_hat":
            nu_max = jax.tree.map(
                lambda v, m: jnp.maximum(m, (wide(v, b2) / correction).astype(m.dtype)),
                nu,
                state.nu_max,
            )
            out = jax.tree.map(jnp.sqrt, nu_max)
        else:
            nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
            c = jnp.sqrt(correction) if max_of == "raw_v" else 1
            out = jax.tree.map(lambda m: (jnp.sqrt(wide(m, b2)) / c).astype(m.dtype), nu_max)
        return out, MaxRmsState(count, nu, nu_max)

    return optax.GradientTransformationExtraArgs(init, update)


class RssState(NamedTuple):
    sum_of_squares: Any  # like params: G = G₀ + Σ g²


def rss(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0, eps_root: jax.typing.ArrayLike = 0.0
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for Adagrad: √(G + ε_root) with G ← G + g², G₀ = initial value."""

    def init(params: Any) -> RssState:
        g0 = jnp.asarray(initial_accumulator_value)
        return RssState(jax.tree.map(lambda p: jnp.full_like(p, g0), params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.sum_of_squares, "sum of squares in the state")
        e = jnp.asarray(eps_root)
        total = jax.tree.map(
            lambda g, s: (wide(s, e) + jnp.square(wide(g, e))).astype(s.dtype),
            updates,
            state.sum_of_squares,
        )
        out = jax.tree.map(lambda s: jnp.sqrt(wide(s, e) + e).astype(s.dtype), total)
        return out, RssState(total)

    return optax.GradientTransformationExtraArgs(init, update)


class InfNormState(NamedTuple):
    u: Any  # like params: the exponentially weighted infinity norm


def inf_norm(
    decay: jax.typing.ArrayLike, eps: jax.typing.ArrayLike = 0.0
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for Adamax: u ← max(β₂·u, |g| + ε), emits u.

    ε inside the max is torch's and optax's placement; Keras adds ε to u afterwards (give
    ε to ``precondition`` instead).
    """

    def init(params: Any) -> InfNormState:
        return InfNormState(_zeros(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.u, "infinity norm in the state")
        b2, e = jnp.asarray(decay), jnp.asarray(eps)
        u = jax.tree.map(
            lambda g, u: jnp.maximum(b2 * wide(u, b2, e), jnp.abs(wide(g, b2, e)) + e).astype(
                u.dtype
            ),
            updates,
            state.u,
        )
        return u, InfNormState(u)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- numerators


class NesterovEmaState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    mean: Any  # like params: the ordinary EMA m of g
    mu_product: jax.Array  # shape=(), hyperparameter dtype: P_t = ∏_{s≤t} μ_s


def nesterov_ema(
    decay: jax.typing.ArrayLike, momentum_decay: jax.typing.ArrayLike | None = None
) -> optax.GradientTransformationExtraArgs:
    """Block (numerator) for Nadam: Dozat's bias-corrected Nesterov EMA.

    With m ← β₁·m + (1−β₁)·g, μ_t = β₁·(1 − ½·0.96^(ψ·t)) and P_t = ∏_{s≤t} μ_s::

        m̂ = (1 − μ_t)/(1 − P_t)·g + μ_{t+1}/(1 − P_t·μ_{t+1})·m

    ψ = ``momentum_decay`` (torch 0.004, Keras 1); ``None`` keeps μ_t = β₁ (optax).
    """

    def init(params: Any) -> NesterovEmaState:
        dtype = jnp.asarray(decay).dtype
        return NesterovEmaState(jnp.zeros([], jnp.int32), _zeros(params), jnp.ones([], dtype))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.mean, "moving average in the state")
        b1 = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        t = _count_as(count, b1)
        if momentum_decay is None:
            mu, mu_next = b1, b1
        else:
            psi = jnp.asarray(momentum_decay, b1.dtype)
            mu = b1 * (1 - 0.5 * 0.96 ** (psi * t))
            mu_next = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
        mu_product = state.mu_product.astype(b1.dtype) * mu
        c_grad = (1 - mu) / (1 - mu_product)
        c_mean = mu_next / (1 - mu_product * mu_next)
        mean = jax.tree.map(
            lambda g, m: (b1 * wide(m, b1) + (1 - b1) * wide(g, b1)).astype(m.dtype),
            updates,
            state.mean,
        )
        out = jax.tree.map(
            lambda g, m: (c_grad * wide(g, b1) + c_mean * wide(m, b1)).astype(g.dtype),
            updates,
            mean,
        )
        return out, NesterovEmaState(count, mean, mu_product.astype(state.mu_product.dtype))

    return optax.GradientTransformationExtraArgs(init, update)


class ScaleByBiasCorrectionState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t


def scale_by_bias_correction(
    decay: jax.typing.ArrayLike, power: float = 0.5
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← (1 − βᵗ)^power · u. With β₂ and ½ it turns Adam into Keras's ε̂ form."""

    def init(params: Any) -> ScaleByBiasCorrectionState:
        del params
        return ScaleByBiasCorrectionState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        b = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        c = (1 - b ** _count_as(count, b)) ** power
        return jax.tree.map(lambda u: (wide(u, b) * c).astype(u.dtype), updates), (
            ScaleByBiasCorrectionState(count)
        )

    return optax.GradientTransformationExtraArgs(init, update)


class AdadeltaState(NamedTuple):
    e_g: Any  # like params: EMA of g²
    e_d: Any  # like params: EMA of squared updates d²


def scale_by_adadelta(
    rho: jax.typing.ArrayLike, eps: jax.typing.ArrayLike
) -> optax.GradientTransformationExtraArgs:
    """Block: Zeiler's Adadelta direction (the learning rate is applied after it).

    E_g ← ρ·E_g + (1−ρ)·g²;  d = √(E_d + ε)/√(E_g + ε)·g;  E_d ← ρ·E_d + (1−ρ)·d².
    """

    def init(params: Any) -> AdadeltaState:
        return AdadeltaState(_zeros(params), _zeros(params))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.e_g, "accumulators in the state")
        r, e = jnp.asarray(rho), jnp.asarray(eps)

        e_g = jax.tree.map(
            lambda g, eg: (r * wide(eg, r) + (1 - r) * jnp.square(wide(g, r))).astype(eg.dtype),
            updates,
            state.e_g,
        )
        d = jax.tree.map(
            lambda g, eg, ed: (
                jnp.sqrt(wide(ed, r, e) + e) / jnp.sqrt(wide(eg, r, e) + e) * wide(g, r, e)
            ).astype(g.dtype),
            updates,
            e_g,
            state.e_d,
        )
        e_d = jax.tree.map(
            lambda d, ed: (r * wide(ed, r) + (1 - r) * jnp.square(wide(d, r))).astype(ed.dtype),
            d,
            state.e_d,
        )
        return d, AdadeltaState(e_g, e_d)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- optimizers

_ADAM_RULES = dict(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")


def _adam_tail(learning_rate, b2, eps_hat: bool, weight_decay=None) -> list:
    """The blocks after the preconditioner: ε̂ scaling, the learning rate, decoupled decay."""
    tail = [scale_by_bias_correction(b2, 0.5)] if eps_hat else []
    tail.append(scale_by_learning_rate(learning_rate))
    if weight_decay is not None:
        tail.append(decoupled_weight_decay(weight_decay, learning_rate))
    return tail


@optimizer(**_ADAM_RULES, eps_root=">= 0")
def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    eps_hat: bool = False,
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

    Returns:
      An optax transformation whose state holds learning_rate, b1, b2, eps, eps_root.

    Reference:
      Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.

    Note:
      Equals ``optax.adam`` and ``torch.optim.Adam``. Keras's ``Adam`` is ``eps_hat=True``
      with ε = 1e-7.
    """
    den = rms(b2, eps_root=eps_root, debias=not eps_hat)
    return optax.chain(
        precondition(ema(b1, debias=True), den, eps), *_adam_tail(learning_rate, b2, eps_hat)
    )


@optimizer(**_ADAM_RULES, weight_decay=">= 0")
def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    eps_hat: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """AdamW: Adam with decoupled weight decay.

    Adam's step (see :func:`adam`) plus a decay that never enters m or v::

        θ ← θ − γ·(m̂/(√v̂ + ε) + λ·θ)

    Blocks: ``precondition(ema(β₁, debias), rms(β₂, debias), ε) → scale_by_learning_rate(γ)
    → decoupled_weight_decay(λ, γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1, b2, eps, eps_hat: as in :func:`adam`.
      weight_decay: λ ≥ 0, multiplied by the current γ.

    Reference:
      Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

    Note:
      Default λ = 1e-2 as torch's ``AdamW``; optax's ``adamw`` defaults to 1e-4 and Keras's
      to 0.004. All three multiply λ by the learning rate, as here.
    """
    den = rms(b2, debias=not eps_hat)
    return optax.chain(
        precondition(ema(b1, debias=True), den, eps),
        *_adam_tail(learning_rate, b2, eps_hat, weight_decay),
    )


@optimizer(**_ADAM_RULES)
def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_of: str = "raw_v",
    eps_hat: bool = False,
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

    Reference:
      Reddi, Kale and Kumar, "On the Convergence of Adam and Beyond", ICLR 2018.

    Note:
      optax's ``amsgrad`` takes the max over v̂ and differs from torch/Keras from step 2.
    """
    if eps_hat and max_of != "raw_v_no_correction":
        raise ValueError(
            "amsgrad: eps_hat=True rescales by √(1−β₂ᵗ) itself, so max_of must be "
            f"'raw_v_no_correction', got {max_of!r}"
        )
    return optax.chain(
        precondition(ema(b1, debias=True), max_rms(b2, max_of=max_of), eps),
        *_adam_tail(learning_rate, b2, eps_hat),
    )


@optimizer(**_ADAM_RULES)
def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_in_max: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Adamax: Adam with the infinity norm in place of the RMS.

    For t = 1, 2, ..., with m₀ = u₀ = 0::

        m ← β₁·m + (1−β₁)·g
        u ← max(β₂·u, |g| + ε)
        θ ← θ − γ/(1−β₁ᵗ)·m/u

    Finite when a gradient is exactly 0 from the start: then u = ε > 0 (and with ε = 0 the
    step is 0). ``eps_in_max=False`` is Keras's placement: u ← max(β₂·u, |g|),
    θ ← θ − γ·m/((1−β₁ᵗ)(u + ε)).

    Blocks: ``precondition(ema(β₁, debias), inf_norm(β₂, ε)) → scale_by_learning_rate(γ)``.

    Reference:
      Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Sec. 7.1.

    Note:
      Equals ``optax.adamax`` and ``torch.optim.Adamax``.
    """
    if eps_in_max:
        pre = precondition(ema(b1, debias=True), inf_norm(b2, eps))
    else:
        pre = precondition(ema(b1, debias=True), inf_norm(b2), eps)
    return optax.chain(pre, scale_by_learning_rate(learning_rate))


@optimizer(**_ADAM_RULES, momentum_decay=">= 0")
def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float | None = 0.004,
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

    Reference:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    """
    return optax.chain(
        precondition(nesterov_ema(b1, momentum_decay), rms(b2, debias=True), eps),
        scale_by_learning_rate(learning_rate),
    )


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
    eps_in_sqrt: bool = False,
    bias_correction: bool = False,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    initial_scale: float = 0.0,
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

    Reference:
      Tieleman and Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012.

    Note:
      torch puts ε outside (the default here) with ρ = 0.99; optax's default and Keras put it
      inside (``eps_in_sqrt=True``). ``bias_correction=True`` equals torch's
      ``Adam(betas=(0, ρ))``.
    """
    den = rms(
        decay,
        eps_root=eps if eps_in_sqrt else 0.0,
        debias=bias_correction,
        centered=centered,
        initial_scale=initial_scale,
    )
    blocks = [
        precondition(optax.identity(), den, 0.0 if eps_in_sqrt else eps),
        scale_by_learning_rate(learning_rate),
    ]
    if momentum is not None:
        blocks.append(trace(momentum, nesterov=nesterov))
    elif nesterov:
        raise ValueError("rmsprop: nesterov=True needs a momentum, got momentum=None")
    return optax.chain(*blocks)


@optimizer(learning_rate=">= 0", eps=">= 0", initial_accumulator_value=">= 0")
def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    eps: float = 1e-8,
    initial_accumulator_value: float = 0.0,
    eps_in_sqrt: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adagrad (seeds 001, 003): each coordinate's step shrinks with its gradients' history.

    For t = 1, 2, ..., with G₀ = ``initial_accumulator_value``::

        G ← G + g²
        θ ← θ − γ·g / (√G + ε)         (default, seeds)
        θ ← θ − γ·g / √(G + ε)         (eps_in_sqrt=True: optax and Keras)

    Blocks: ``precondition(identity, rss(G₀), ε) → scale_by_learning_rate(γ)``.

    Reference:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online Learning and
      Stochastic Optimization", JMLR 2011.

    Note:
      torch: ε = 1e-10 outside, G₀ = 0, plus ``lr_decay`` (a schedule here). optax and Keras:
      ε = 1e-7 inside, G₀ = 0.1.
    """
    den = rss(initial_accumulator_value, eps_root=eps if eps_in_sqrt else 0.0)
    return optax.chain(
        precondition(optax.identity(), den, 0.0 if eps_in_sqrt else eps),
        scale_by_learning_rate(learning_rate),
    )


@optimizer(learning_rate=">= 0", rho="[0, 1)", eps=">= 0")
def adadelta(
    learning_rate: optax.ScalarOrSchedule = 1.0, rho: float = 0.9, eps: float = 1e-6
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

    Reference:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.

    Note:
      Equals ``optax.adadelta`` and ``torch.optim.Adadelta``. Keras defaults to α = 1e-3,
      ρ = 0.95, ε = 1e-7.
    """
    return optax.chain(scale_by_adadelta(rho, eps), scale_by_learning_rate(learning_rate))
