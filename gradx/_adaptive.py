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
    abs_sq,
    check_tree,
    coef,
    decoupled_weight_decay,
    optimizer,
    scale_by_learning_rate,
    wide,
)
from gradx._momentum import dtype_arg, ema, moment_zeros, stored, trace

# ----------------------------------------------------------------------------- helpers


def _count_as(count: jax.Array, h: jax.Array) -> jax.Array:
    return count.astype(h.dtype)


def _ema_of(rho: jax.Array, x: jax.Array, old: jax.Array, rest: Any = None) -> jax.Array:
    """ρ·old + (1−ρ)·x, computed in :func:`wide` of both and ρ (complex if either is).

    ``rest``: 1 − ρ computed once by the caller (a block calls this once per leaf)."""
    xw, ow = wide(x, rho, old), wide(old, rho, x)
    return coef(rho, ow) * ow + coef(1 - rho if rest is None else rest, xw) * xw


def _plus(x: jax.Array, e: Any, given: Any) -> jax.Array:
    """x + e in x's dtype; nothing is traced when ``given`` (e as the caller received it) is a
    Python 0, such as rmsprop's ε_root with ε outside the root: XLA drops the x + 0 from the
    compiled program anyway, and at 1,000 leaves its tracing and lowering cost time."""
    if isinstance(given, (int, float)) and not isinstance(given, bool) and given == 0:
        return x
    return x + coef(e, x)


def _debiased(x: jax.Array, correction: Any) -> jax.Array:
    """x / correction; a correction of Python 1 (no bias correction) skips the division."""
    if isinstance(correction, int) and correction == 1:
        return x
    return x / coef(correction, x)


# ----------------------------------------------------------------------------- fan-out


class PreconditionState(NamedTuple):
    by: Any  # the state of the denominator's transform
    direction: Any  # the state of the numerator's transform


def precondition(
    direction: optax.GradientTransformation,
    by: optax.GradientTransformation,
    eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Block (fan-out): u ← direction(g) / (by(g) + ε), both fed the same gradient g.

    ``direction`` gives the numerator (``optax.identity()``, ``ema``, ``nesterov_ema``) and
    ``by`` the denominator, already square-rooted (``rms``, ``max_rms``, ``rss``,
    ``inf_norm``); the denominator is real (for complex params, a statistic of |g|). ε is
    added outside the root; an ε inside the root belongs to the denominator's block
    (``eps_root=``). Where the denominator is exactly 0 the update is 0.

    Returns:
      An optax transformation. Its update is computed, and returned, in the wider dtype of
      numerator, denominator and ε (float32 inside an optimizer with bf16 or float16 params),
      so a small denominator cannot overflow a narrow dtype before the learning rate applies.
    """
    direction = optax.with_extra_args_support(direction)
    by = optax.with_extra_args_support(by)

    def init(params: Any) -> PreconditionState:
        return PreconditionState(by=by.init(params), direction=direction.init(params))

    def update(updates, state, params=None, **extra_args):
        num, direction_state = direction.update(updates, state.direction, params, **extra_args)
        den, by_state = by.update(updates, state.by, params, **extra_args)
        e = jnp.asarray(eps)

        def leaf(n, d):
            nw, dw = wide(n, e, d), wide(d, e, n)
            total = _plus(dw, e, eps)
            # Divide by 1 where the denominator is 0: there the numerator is 0 too (every
            # gradient so far was 0), so a gradient that is 0 from the start gives a 0 step.
            # (lax.select, not jnp.where: the same select, without a call traced per leaf.)
            safe = jax.lax.select(total > 0, total, jax.lax.full_like(total, 1))
            return nw / (safe if safe.dtype == nw.dtype else safe.astype(nw.dtype))

        out = jax.tree.map(leaf, num, den)
        return out, PreconditionState(by=by_state, direction=direction_state)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- denominators


class RmsState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    mean: Any  # like params when centered (EMA of g, accumulator_dtype), else ()
    nu: Any  # like params, real (accumulator_dtype): EMA of |g|², starting at initial_scale


def rms(
    decay: jax.typing.ArrayLike,
    eps_root: jax.typing.ArrayLike = 0.0,
    debias: bool = False,
    centered: bool = False,
    initial_scale: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator): √(v̂ − |â|² + ε_root) from v ← ρ·v + (1−ρ)·|g|².

    v̂ = v / (1 − ρᵗ) with ``debias`` (else v̂ = v); with ``centered``, a ← ρ·a + (1−ρ)·g and
    â likewise, else â = 0. The variance is clipped at 0 before the root (rounding can make
    v̂ − |â|² slightly negative). v₀ = ``initial_scale`` (TF1 used 1). |g|² = g·conj(g) for
    complex params, so v is real (complex64 params keep a float32 v).

    ``accumulator_dtype`` is the dtype v and a are stored in (None follows the params; a of
    complex params stays complex).

    Returns:
      An optax transformation emitting the (real) denominator in the computed dtype, which
      may be wider than the gradient's.
    """
    acc = dtype_arg("rms", "accumulator_dtype", accumulator_dtype)

    def init(params: Any) -> RmsState:
        scale = jnp.asarray(initial_scale)
        nu = moment_zeros("rms", "accumulator_dtype", params, acc, real=True, fill=scale)
        mean = moment_zeros("rms", "accumulator_dtype", params, acc) if centered else ()
        return RmsState(count=jnp.zeros([], jnp.int32), mean=mean, nu=nu)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.nu, "second moment in the state")
        rho, e = jnp.asarray(decay), jnp.asarray(eps_root)
        count = optax.safe_increment(state.count)
        correction = 1 - rho ** _count_as(count, rho) if debias else 1
        rest = 1 - rho

        nu = jax.tree.map(
            lambda g, v: _ema_of(rho, abs_sq(wide(g, rho, v)), v, rest), updates, state.nu
        )
        mean = ()
        if centered:
            mean = jax.tree.map(lambda g, a: _ema_of(rho, g, a, rest), updates, state.mean)

        def root(v, a=None):
            vw = wide(v, rho, e) if a is None else wide(v, rho, e, a)
            var = _debiased(vw, correction)
            if a is not None:
                var = jnp.maximum(var - abs_sq(_debiased(wide(a, rho, e, v), correction)), 0)
            return jnp.sqrt(_plus(var, e, eps_root))

        out = jax.tree.map(root, nu, mean) if centered else jax.tree.map(root, nu)
        new_mean = stored(mean, state.mean) if centered else ()
        return out, RmsState(count=count, mean=new_mean, nu=stored(nu, state.nu))

    return optax.GradientTransformationExtraArgs(init, update)


class MaxRmsState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    nu: Any  # like params, real (accumulator_dtype): EMA of |g|²
    nu_max: Any  # like nu: the running maximum (of v, or of v̂ for max_of="v_hat")


MAX_OF = ("raw_v", "v_hat", "raw_v_no_correction")


def max_rms(
    decay: jax.typing.ArrayLike, max_of: str = "raw_v", accumulator_dtype: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for AMSGrad: the root of a running maximum of the second moment.

    With v ← β₂·v + (1−β₂)·|g|²:

    * ``"raw_v"`` (torch, Keras): v_max ← max(v_max, v), emits √v_max / √(1 − β₂ᵗ);
    * ``"v_hat"`` (optax's default): v_max ← max(v_max, v/(1 − β₂ᵗ)), emits √v_max;
    * ``"raw_v_no_correction"`` (Reddi et al. without correction): emits √max(v_max, v).

    ``accumulator_dtype`` is the (real) dtype v and v_max are stored in; None follows the
    params (their real precision for complex params). The denominator is emitted in the
    computed dtype, which may be wider than the gradient's.
    """
    if max_of not in MAX_OF:
        raise ValueError(f"max_rms: max_of must be one of {MAX_OF}, got {max_of!r}")
    acc = dtype_arg("max_rms", "accumulator_dtype", accumulator_dtype)

    def init(params: Any) -> MaxRmsState:
        zeros = moment_zeros("max_rms", "accumulator_dtype", params, acc, real=True)
        return MaxRmsState(count=jnp.zeros([], jnp.int32), nu=zeros, nu_max=zeros)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.nu, "second moment in the state")
        b2 = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        correction = 1 - b2 ** _count_as(count, b2)
        nu = jax.tree.map(lambda g, v: _ema_of(b2, abs_sq(wide(g, b2, v)), v), updates, state.nu)
        if max_of == "v_hat":
            nu_max = jax.tree.map(
                lambda v, m: jnp.maximum(wide(m, b2, v), _debiased(v, correction)),
                nu,
                state.nu_max,
            )
            out = jax.tree.map(jnp.sqrt, nu_max)
        else:
            nu_max = jax.tree.map(
                lambda m, v: jnp.maximum(wide(m, b2, v), wide(v, b2, m)), state.nu_max, nu
            )
            c = jnp.sqrt(correction) if max_of == "raw_v" else 1
            out = jax.tree.map(lambda m: _debiased(jnp.sqrt(m), c), nu_max)
        return out, MaxRmsState(
            count=count, nu=stored(nu, state.nu), nu_max=stored(nu_max, state.nu_max)
        )

    return optax.GradientTransformationExtraArgs(init, update)


class RssState(NamedTuple):
    sum_of_squares: Any  # like params, real (accumulator_dtype): G = G₀ + Σ |g|²


def rss(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps_root: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for Adagrad: √(G + ε_root) with G ← G + |g|², G₀ = initial value.

    ``accumulator_dtype`` is the (real) dtype G is stored in; None follows the params (their
    real precision for complex params). The denominator is emitted in the computed dtype,
    which may be wider than the gradient's.
    """
    acc = dtype_arg("rss", "accumulator_dtype", accumulator_dtype)

    def init(params: Any) -> RssState:
        g0 = jnp.asarray(initial_accumulator_value)
        return RssState(
            sum_of_squares=moment_zeros("rss", "accumulator_dtype", params, acc, True, g0)
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.sum_of_squares, "sum of squares in the state")
        e = jnp.asarray(eps_root)

        def total_of(g, s):
            g2 = abs_sq(wide(g, e, s))
            return wide(s, e, g2) + g2

        total = jax.tree.map(total_of, updates, state.sum_of_squares)
        out = jax.tree.map(lambda s: jnp.sqrt(_plus(s, e, eps_root)), total)
        return out, RssState(sum_of_squares=stored(total, state.sum_of_squares))

    return optax.GradientTransformationExtraArgs(init, update)


class InfNormState(NamedTuple):
    u: Any  # like params, real (accumulator_dtype): the exponentially weighted infinity norm


def inf_norm(
    decay: jax.typing.ArrayLike, eps: jax.typing.ArrayLike = 0.0, accumulator_dtype: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for Adamax: u ← max(β₂·u, |g| + ε), emits u.

    ε inside the max is torch's and optax's placement; Keras adds ε to u afterwards (give
    ε to ``precondition`` instead). |g| is the modulus for complex params, so u is real.
    ``accumulator_dtype`` is the (real) dtype u is stored in; None follows the params. u is
    emitted in the computed dtype, which may be wider than the gradient's.
    """
    acc = dtype_arg("inf_norm", "accumulator_dtype", accumulator_dtype)

    def init(params: Any) -> InfNormState:
        return InfNormState(u=moment_zeros("inf_norm", "accumulator_dtype", params, acc, True))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.u, "infinity norm in the state")
        b2, e = jnp.asarray(decay), jnp.asarray(eps)

        def norm_of(g, u):
            uw, mod = wide(u, b2, e, g), jnp.abs(wide(g, b2, e, u))
            return jnp.maximum(coef(b2, uw) * uw, mod + coef(e, mod))

        u = jax.tree.map(norm_of, updates, state.u)
        return u, InfNormState(u=stored(u, state.u))

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- numerators


class NesterovEmaState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    mean: Any  # like params (accumulator_dtype): the ordinary EMA m of g
    mu_product: jax.Array  # shape=(), hyperparameter dtype: P_t = ∏_{s≤t} μ_s


def nesterov_ema(
    decay: jax.typing.ArrayLike,
    momentum_decay: jax.typing.ArrayLike | None = None,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Block (numerator) for Nadam: Dozat's bias-corrected Nesterov EMA.

    With m ← β₁·m + (1−β₁)·g, μ_t = β₁·(1 − ½·0.96^(ψ·t)) and P_t = ∏_{s≤t} μ_s::

        m̂ = (1 − μ_t)/(1 − P_t)·g + μ_{t+1}/(1 − P_t·μ_{t+1})·m

    ψ = ``momentum_decay`` (torch 0.004, Keras 1); ``None`` keeps μ_t = β₁ (optax).
    ``accumulator_dtype`` is the dtype m is stored in; None follows the params. m̂ is emitted
    in the computed dtype, which may be wider than the gradient's.
    """
    acc = dtype_arg("nesterov_ema", "accumulator_dtype", accumulator_dtype)

    def init(params: Any) -> NesterovEmaState:
        dtype = jnp.asarray(decay).dtype
        mean = moment_zeros("nesterov_ema", "accumulator_dtype", params, acc)
        return NesterovEmaState(
            count=jnp.zeros([], jnp.int32), mean=mean, mu_product=jnp.ones([], dtype)
        )

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
        mean = jax.tree.map(lambda g, m: _ema_of(b1, g, m), updates, state.mean)

        def out_of(g, m):
            gw, mw = wide(g, b1, m), wide(m, b1, g)
            return coef(c_grad, gw) * gw + coef(c_mean, mw) * mw

        out = jax.tree.map(out_of, updates, mean)
        new_state = NesterovEmaState(
            count=count,
            mean=stored(mean, state.mean),
            mu_product=mu_product.astype(state.mu_product.dtype),
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init, update)


class ScaleByBiasCorrectionState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t


def scale_by_bias_correction(
    decay: jax.typing.ArrayLike, power: float = 0.5
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← (1 − βᵗ)^power · u. With β₂ and ½ it turns Adam into Keras's ε̂ form.

    The update is in the computed dtype (u widened to β's), which may be wider than u's.
    """

    def init(params: Any) -> ScaleByBiasCorrectionState:
        del params
        return ScaleByBiasCorrectionState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        b = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        c = (1 - b ** _count_as(count, b)) ** power
        return jax.tree.map(lambda u: wide(u, b) * coef(c, wide(u, b)), updates), (
            ScaleByBiasCorrectionState(count=count)
        )

    return optax.GradientTransformationExtraArgs(init, update)


class AdadeltaState(NamedTuple):
    e_d: Any  # like params, real (accumulator_dtype): EMA of squared updates |d|²
    e_g: Any  # like params, real (accumulator_dtype): EMA of |g|²


def scale_by_adadelta(
    rho: jax.typing.ArrayLike, eps: jax.typing.ArrayLike, *, accumulator_dtype: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Block: Zeiler's Adadelta direction (the learning rate is applied after it).

    E_g ← ρ·E_g + (1−ρ)·|g|²;  d = √(E_d + ε)/√(E_g + ε)·g;  E_d ← ρ·E_d + (1−ρ)·|d|².

    For complex params |·|² is the squared modulus, so both accumulators are real and d has
    g's phase. ``accumulator_dtype`` is the (real) dtype E_g and E_d are stored in; None
    follows the params. d is emitted in the computed dtype, which may be wider than g's.
    """
    acc = dtype_arg("scale_by_adadelta", "accumulator_dtype", accumulator_dtype)

    def init(params: Any) -> AdadeltaState:
        zeros = moment_zeros("scale_by_adadelta", "accumulator_dtype", params, acc, True)
        return AdadeltaState(e_d=zeros, e_g=zeros)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.e_g, "accumulators in the state")
        r, e = jnp.asarray(rho), jnp.asarray(eps)

        e_g = jax.tree.map(lambda g, eg: _ema_of(r, abs_sq(wide(g, r, eg)), eg), updates, state.e_g)

        def step_of(g, eg, ed):
            egw, edw = wide(eg, r, e, ed), wide(ed, r, e, eg)
            ratio = jnp.sqrt(edw + coef(e, edw)) / jnp.sqrt(egw + coef(e, egw))
            gw = wide(g, r, e, ratio)
            return ratio.astype(gw.dtype) * gw

        d = jax.tree.map(step_of, updates, e_g, state.e_d)
        e_d = jax.tree.map(lambda d, ed: _ema_of(r, abs_sq(wide(d, r, ed)), ed), d, state.e_d)
        return d, AdadeltaState(e_d=stored(e_d, state.e_d), e_g=stored(e_g, state.e_g))

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- optimizers

_ADAM_RULES = dict(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")


def _adam_tail(learning_rate, b2, eps_hat: bool, weight_decay=None, mask=None) -> list:
    """The blocks after the preconditioner: ε̂ scaling, the learning rate, decoupled decay."""
    tail = [scale_by_bias_correction(b2, 0.5)] if eps_hat else []
    tail.append(scale_by_learning_rate(learning_rate))
    if weight_decay is not None:
        tail.append(decoupled_weight_decay(weight_decay, learning_rate, mask))
    return tail


def _moment_dtypes(fn: str, mu_dtype: Any = None, nu_dtype: Any = None) -> None:
    """Checks the moment dtypes at construction, naming the optimizer."""
    dtype_arg(fn, "mu_dtype", mu_dtype)
    dtype_arg(fn, "nu_dtype", nu_dtype)


@optimizer(**_ADAM_RULES, eps_root=">= 0")
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
        the params (their real precision for complex params: v is real). float32 moments
        for bf16 params keep small updates that bf16 rounds away; for float16 params,
        ``nu_dtype=jnp.float32`` keeps g² ≈ 1e-8 from underflowing to 0.

    Returns:
      An optax transformation whose state holds learning_rate, b1, b2, eps, eps_root.
      The step is computed in float32 (or the params' wider dtype) and cast to the
      gradient's dtype once, at the end. Complex params: v accumulates |g|² = g·conj(g).

    Reference:
      Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.

    Note:
      Equals ``optax.adam`` and ``torch.optim.Adam``. Keras's ``Adam`` is ``eps_hat=True``
      with ε = 1e-7. The arguments up to ``eps_root`` are positional as in ``optax.adam``;
      the rest are keyword-only.
    """
    _moment_dtypes("adam", mu_dtype, nu_dtype)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype)
    den = rms(b2, eps_root=eps_root, debias=not eps_hat, accumulator_dtype=nu_dtype)
    return optax.chain(precondition(num, den, eps), *_adam_tail(learning_rate, b2, eps_hat))


@optimizer(**_ADAM_RULES, weight_decay=">= 0")
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
      mask: which leaves decay, as optax's ``mask``: None (all), a pytree of bools with the
        params' structure or a prefix of it (True = decay), or a function of the params
        returning one. Masked-out leaves get exactly Adam's update. Keras's
        ``exclude_from_weight_decay(var_names=["bias"])`` and torch's no-decay param group
        for biases and norms are one line each::

            adamw(1e-3, mask=lambda p: jax.tree.map_with_path(
                lambda path, _: "bias" not in jax.tree_util.keystr(path), p))
            adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

      mu_dtype, nu_dtype: the dtypes m and v are stored in, as in :func:`adam`.

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
    _moment_dtypes("adamw", mu_dtype, nu_dtype)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype)
    den = rms(b2, debias=not eps_hat, accumulator_dtype=nu_dtype)
    return optax.chain(
        precondition(num, den, eps),
        *_adam_tail(learning_rate, b2, eps_hat, weight_decay, mask),
    )


@optimizer(**_ADAM_RULES)
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
    _moment_dtypes("amsgrad", mu_dtype, nu_dtype)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype)
    den = max_rms(b2, max_of=max_of, accumulator_dtype=nu_dtype)
    return optax.chain(precondition(num, den, eps), *_adam_tail(learning_rate, b2, eps_hat))


@optimizer(**_ADAM_RULES)
def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    eps_in_max: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
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

    ``mu_dtype`` is the dtype m is stored in and ``nu_dtype`` the (real) dtype u is stored
    in; None follows the params. For complex params |g| is the modulus.

    Reference:
      Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Sec. 7.1.

    Note:
      Equals ``optax.adamax`` and ``torch.optim.Adamax``. The arguments up to ``eps`` are
      positional as in ``optax.adamax``; the rest are keyword-only.
    """
    _moment_dtypes("adamax", mu_dtype, nu_dtype)
    num = ema(b1, debias=True, accumulator_dtype=mu_dtype)
    if eps_in_max:
        pre = precondition(num, inf_norm(b2, eps, accumulator_dtype=nu_dtype))
    else:
        pre = precondition(num, inf_norm(b2, accumulator_dtype=nu_dtype), eps)
    return optax.chain(pre, scale_by_learning_rate(learning_rate))


@optimizer(**_ADAM_RULES, momentum_decay=">= 0")
def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    momentum_decay: float | None = 0.004,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
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

    Reference:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.

    Note:
      The arguments up to ``eps`` are positional as in ``optax.nadam``; the rest are
      keyword-only (optax's fifth is ``eps_root``).

      optax's default differs: ``optax.nadam`` keeps μ_t = β₁ (``momentum_decay=None``);
      ``gradx.compat.optax.nadam(...)`` reproduces optax's numbers.
    """
    _moment_dtypes("nadam", mu_dtype, nu_dtype)
    num = nesterov_ema(b1, momentum_decay, accumulator_dtype=mu_dtype)
    den = rms(b2, debias=True, accumulator_dtype=nu_dtype)
    return optax.chain(precondition(num, den, eps), scale_by_learning_rate(learning_rate))


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
        denominator) is stored in; None follows the params.

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
    _moment_dtypes("rmsprop", mu_dtype, nu_dtype)
    den = rms(
        decay,
        eps_root=eps if eps_in_sqrt else 0.0,
        debias=bias_correction,
        centered=centered,
        initial_scale=initial_scale,
        accumulator_dtype=nu_dtype,
    )
    blocks = [
        precondition(optax.identity(), den, 0.0 if eps_in_sqrt else eps),
        scale_by_learning_rate(learning_rate),
    ]
    if momentum is not None:
        blocks.append(trace(momentum, nesterov=nesterov, accumulator_dtype=mu_dtype))
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
) -> optax.GradientTransformationExtraArgs:
    """Adagrad (seeds 001, 003): each coordinate's step shrinks with its gradients' history.

    For t = 1, 2, ..., with G₀ = ``initial_accumulator_value``::

        G ← G + g²
        θ ← θ − γ·g / (√G + ε)         (default, seeds)
        θ ← θ − γ·g / √(G + ε)         (eps_in_sqrt=True: optax and Keras)

    Blocks: ``precondition(identity, rss(G₀), ε) → scale_by_learning_rate(γ)``.

    ``nu_dtype`` is the (real) dtype G is stored in; None follows the params. For complex
    params G sums |g|².

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
    _moment_dtypes("adagrad", nu_dtype=nu_dtype)
    den = rss(
        initial_accumulator_value,
        eps_root=eps if eps_in_sqrt else 0.0,
        accumulator_dtype=nu_dtype,
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
    second moments); None follows the params. Complex params: both accumulate |·|², so d
    keeps g's phase (optax's adadelta squares g; its tests skip complex params).

    Reference:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", 2012.

    Note:
      Equals ``optax.adadelta`` and ``torch.optim.Adadelta``. Keras defaults to α = 1e-3,
      ρ = 0.95, ε = 1e-7. The arguments up to ``eps`` are positional as in
      ``optax.adadelta``; the rest are keyword-only.
    """
    _moment_dtypes("adadelta", nu_dtype=nu_dtype)
    return optax.chain(
        scale_by_adadelta(rho, eps, accumulator_dtype=nu_dtype),
        scale_by_learning_rate(learning_rate),
    )
