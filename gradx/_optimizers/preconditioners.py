"""Preconditioners: the fan-out ``precondition(direction, by, eps)`` and its denominators.

A sequential chain of an EMA and an RMS scaling is not Adam (the second stage would see the
first stage's output), so the adaptive optimizers compose through :func:`precondition`, whose
numerator (``direction``) and denominator (``by``) both see the same incoming gradient.
Denominators: ``rms`` (√v̂), ``max_rms`` (AMSGrad's running maximum), ``rss`` (Adagrad's
√Σg²), ``inf_norm`` (Adamax's u). Also ``rectified`` (RAdam's fan-out: the rectified ratio,
or the numerator alone while the variance is intractable) and ``scale_by_bias_correction``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.scaling import check_numbers
from gradx._protocol.constants import positive_by_construction, zero_by_construction
from gradx._protocol.dtypes import abs_sq, coef, wide
from gradx._protocol.gain import (
    DENOMINATORS,
    GAIN_FN,
    Gain,
    block_name,
    closure_cells,
    closure_value,
    debiased_gain,
    denominator_gain_rule,
    gain_product,
    gain_rule,
    in_gain_dtype,
    nonzero_divisor,
    steps_taken,
    walk_gain,
)
from gradx._protocol.storage import decode_moments, moment_codec
from gradx._protocol.trees import check_tree


def count_as(count: jax.Array, h: jax.Array) -> jax.Array:
    return count.astype(h.dtype)


def ema_of(rho: jax.Array, x: jax.Array, old: jax.Array, rest: Any = None) -> jax.Array:
    """ρ·old + (1−ρ)·x, computed in ``wide`` of both and ρ (complex if either is).

    ``rest``: 1 − ρ computed once by the caller (a block calls this once per leaf)."""
    xw, ow = wide(x, rho, old), wide(old, rho, x)
    return coef(rho, ow) * ow + coef(1 - rho if rest is None else rest, xw) * xw


def plus(x: jax.Array, e: Any, given: Any) -> jax.Array:
    """x + e in x's dtype; nothing is traced when ``given`` (e as the caller received it) is a
    Python 0, such as rmsprop's ε_root with ε outside the root, or an ε_root an optimizer was
    built with as 0 (``zero_by_construction``, which the caller asks when it is built): XLA
    drops an x + 0 from the compiled program, and at 1,000 leaves its tracing costs time."""
    if isinstance(given, (int, float)) and not isinstance(given, bool) and given == 0:
        return x
    return x + coef(e, x)


def _debiased(x: jax.Array, correction: Any) -> jax.Array:
    """x / correction; a correction of Python 1 (no bias correction) skips the division."""
    if isinstance(correction, int) and correction == 1:
        return x
    return x / coef(correction, x)


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
    ``inf_norm``); the denominator is real (for complex params, a statistic of ``|g|``). ε is
    added outside the root; an ε inside the root belongs to the denominator's block
    (``eps_root=``). Where the denominator is exactly 0 the update is 0.

    Returns:
      An optax transformation. Its update is computed, and returned, in the wider dtype of
      numerator, denominator and ε (float32 inside an optimizer with bf16 or float16 params),
      so a small denominator cannot overflow a narrow dtype before the learning rate applies.

    Examples:
      RMSProp's direction, g / (√v + ε), then the learning rate:

      >>> import jax.numpy as jnp, optax, gradx
      >>> opt = gradx.chain(
      ...     gradx.precondition(optax.identity(), gradx.rms(0.9), 1e-8),
      ...     gradx.scale_by_learning_rate(0.01),
      ... )
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.5])}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> [round(u, 4) for u in updates["w"].tolist()]  # -lr·g/√(0.1·g²)
      [-0.0316, 0.0316]
    """
    check_numbers("precondition", eps=eps)
    direction = optax.with_extra_args_support(direction)
    by = optax.with_extra_args_support(by)
    # ε > 0 for good (given so): the denominator is never 0, no guard compiled.
    guarded = not positive_by_construction(eps)

    def init(params: Any) -> PreconditionState:
        return PreconditionState(by=by.init(params), direction=direction.init(params))

    def update(updates, state, params=None, **extra_args):
        num, direction_state = direction.update(updates, state.direction, params, **extra_args)
        den, by_state = by.update(updates, state.by, params, **extra_args)
        e = jnp.asarray(eps)

        def leaf(n, d):
            nw, dw = wide(n, e, d), wide(d, e, n)
            total = plus(dw, e, eps)
            # Divide by +inf where the denominator is 0: the step there is 0 (a finite n/inf),
            # also where the numerator is not 0 (a momentum outlives a v with β₂ = 0, or a v
            # that underflowed), and jax.grad meets no 0/0. One select, as a divisor of 1 took.
            # (lax.select, not jnp.where: the same select, without a call traced per leaf.)
            safe = (
                jax.lax.select(total == 0, jax.lax.full_like(total, jnp.inf), total)
                if guarded
                else total
            )
            return nw / (safe if safe.dtype == nw.dtype else safe.astype(nw.dtype))

        out = jax.tree.map(leaf, num, den)
        return out, PreconditionState(by=by_state, direction=direction_state)

    return optax.GradientTransformationExtraArgs(init, update)


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
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator): √(v̂ − ``|â|²`` + ε_root) from v ← ρ·v + (1−ρ)·``|g|²``.

    v̂ = v / (1 − ρᵗ) with ``debias`` (else v̂ = v); with ``centered``, a ← ρ·a + (1−ρ)·g and
    â likewise, else â = 0. The variance is clipped at 0 before the root (rounding can make
    v̂ − ``|â|²`` slightly negative). v₀ = ``initial_scale`` (TF1 used 1). ``|g|²`` = g·conj(g) for
    complex params, so v is real (complex64 params keep a float32 v).

    ``accumulator_dtype`` is the dtype v and a are stored in: None follows the params (v of
    float16 params in float32, as every never-negative moment, see :doc:`/guides/state-dtype`;
    a, which may be negative, stays float16; a of complex params stays complex), or
    ``state_dtype`` and ``stochastic_rounding`` as in :func:`trace`. ``centered`` refuses
    int8 moments (the difference v̂ − â² of two 8-bit moments is rounding noise where the
    mean dominates).

    Returns:
      An optax transformation emitting the (real) denominator in the computed dtype, which
      may be wider than the gradient's.
    """
    check_numbers("rms", decay=decay, eps_root=eps_root, initial_scale=initial_scale)
    store = ("rms", "accumulator_dtype", accumulator_dtype, state_dtype, stochastic_rounding)
    nu_codec, mean_codec = moment_codec(*store, nonnegative=True), moment_codec(*store)
    if centered and nu_codec.policy.kind == "int8":
        raise ValueError(
            "rms (RMSProp's denominator): centered=True takes the variance as v̂ − â², and "
            "from int8 moments (each read back within 6.25%) that difference is rounding "
            "noise wherever the mean dominates, clipped to 0 and the step divided by ε "
            "alone; store a centered RMSProp's moments in a float dtype (state_dtype="
            f"'bfloat16' or 'float32', or accumulator_dtype), got state_dtype={state_dtype!r}"
        )
    added = 0 if zero_by_construction(eps_root) else eps_root  # 0 for good: nothing added

    def init(params: Any) -> RmsState:
        nu = nu_codec.init(params, "nu", fill=jnp.asarray(initial_scale))
        mean = mean_codec.init(params, "mean") if centered else ()
        return RmsState(count=jnp.zeros([], jnp.int32), mean=mean, nu=nu)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old_nu = nu_codec.decode(state.nu)
        check_tree(updates, old_nu, "second moment in the state")
        rho, e = jnp.asarray(decay), jnp.asarray(eps_root)
        count = optax.safe_increment(state.count)
        correction = 1 - rho ** count_as(count, rho) if debias else 1
        rest = 1 - rho

        nu = jax.tree.map(
            lambda g, v: ema_of(rho, abs_sq(wide(g, rho, v)), v, rest), updates, old_nu
        )
        nu, stored_nu = nu_codec.store(nu, state.nu, (rho, rest, updates, True))
        mean = ()
        if centered:
            old_mean = mean_codec.decode(state.mean)
            mean = jax.tree.map(lambda g, a: ema_of(rho, g, a, rest), updates, old_mean)
            mean, stored_mean = mean_codec.store(mean, state.mean, (rho, rest, updates, False))

        def root(v, a=None):
            vw = wide(v, rho, e) if a is None else wide(v, rho, e, a)
            var = _debiased(vw, correction)
            if a is not None:
                var = jnp.maximum(var - abs_sq(_debiased(wide(a, rho, e, v), correction)), 0)
            return jnp.sqrt(plus(var, e, added))

        out = jax.tree.map(root, nu, mean) if centered else jax.tree.map(root, nu)
        new_mean = stored_mean if centered else ()
        return out, RmsState(count=count, mean=new_mean, nu=stored_nu)

    return optax.GradientTransformationExtraArgs(init, update)


class MaxRmsState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    nu: Any  # like params, real (accumulator_dtype): EMA of |g|²
    nu_max: Any  # like nu: the running maximum (of v, or of v̂ for max_of="v_hat")


MAX_OF = ("raw_v", "v_hat", "raw_v_no_correction")


def max_rms(
    decay: jax.typing.ArrayLike,
    max_of: str = "raw_v",
    accumulator_dtype: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for AMSGrad: the root of a running maximum of the second moment.

    With v ← β₂·v + (1−β₂)·``|g|²``:

    * ``"raw_v"`` (torch, Keras): v_max ← max(v_max, v), emits √v_max / √(1 − β₂ᵗ);
    * ``"v_hat"`` (optax's default): v_max ← max(v_max, v/(1 − β₂ᵗ)), emits √v_max;
    * ``"raw_v_no_correction"`` (Reddi et al. without correction): emits √max(v_max, v).

    ``accumulator_dtype`` is the (real) dtype v and v_max are stored in; None follows the
    params (their real precision for complex params; float32 for float16 params, as every
    never-negative moment: see :doc:`/guides/state-dtype`), or ``state_dtype`` and
    ``stochastic_rounding`` as in :func:`trace`. Stored in int8, v_max is rounded up to a
    map value, never down, so the maximum the step reads never decreases. The denominator is
    emitted in the computed dtype, which may be wider than the gradient's.
    """
    check_numbers("max_rms", decay=decay)
    if max_of not in MAX_OF:
        raise ValueError(f"max_rms: max_of must be one of {MAX_OF}, got {max_of!r}")
    store = ("max_rms", "accumulator_dtype", accumulator_dtype, state_dtype)
    codec = moment_codec(*store, stochastic_rounding, nonnegative=True)

    def init(params: Any) -> MaxRmsState:
        return MaxRmsState(
            count=jnp.zeros([], jnp.int32),
            nu=codec.init(params, "nu"),
            nu_max=codec.init(params, "nu_max"),
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old_nu, old_max = codec.decode(state.nu), codec.decode(state.nu_max)
        check_tree(updates, old_nu, "second moment in the state")
        b2 = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        correction = 1 - b2 ** count_as(count, b2)
        nu = jax.tree.map(lambda g, v: ema_of(b2, abs_sq(wide(g, b2, v)), v), updates, old_nu)
        nu, stored_nu = codec.store(nu, state.nu, (b2, 1 - b2, updates, True))
        if max_of == "v_hat":
            nu_max = jax.tree.map(
                lambda v, m: jnp.maximum(wide(m, b2, v), _debiased(v, correction)), nu, old_max
            )
            nu_max, stored_max = codec.store(nu_max, state.nu_max, up=True)
            out = jax.tree.map(jnp.sqrt, nu_max)
        else:
            nu_max = jax.tree.map(
                lambda m, v: jnp.maximum(wide(m, b2, v), wide(v, b2, m)), old_max, nu
            )
            nu_max, stored_max = codec.store(nu_max, state.nu_max, up=True)
            c = jnp.sqrt(correction) if max_of == "raw_v" else 1
            out = jax.tree.map(lambda m: _debiased(jnp.sqrt(m), c), nu_max)
        return out, MaxRmsState(
            count=count,
            nu=stored_nu,
            nu_max=stored_max,
        )

    return optax.GradientTransformationExtraArgs(init, update)


class RssState(NamedTuple):
    sum_of_squares: Any  # like params, real (accumulator_dtype): G = G₀ + Σ |g|²


def rss(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps_root: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for Adagrad: √(G + ε_root) with G ← G + ``|g|²``, G₀ = initial value.

    ``accumulator_dtype`` is the (real) dtype G is stored in; None follows the params (their
    real precision for complex params; float32 for float16 params, as every never-negative
    moment: see :doc:`/guides/state-dtype`), or ``state_dtype`` and ``stochastic_rounding`` as
    in :func:`trace`. The denominator is emitted in the computed dtype, which may be wider
    than the gradient's.
    """
    check_numbers("rss", initial_accumulator_value=initial_accumulator_value, eps_root=eps_root)
    store = ("rss", "accumulator_dtype", accumulator_dtype, state_dtype)
    codec = moment_codec(*store, stochastic_rounding, nonnegative=True)
    added = 0 if zero_by_construction(eps_root) else eps_root  # 0 for good: nothing added

    def init(params: Any) -> RssState:
        g0 = jnp.asarray(initial_accumulator_value)
        return RssState(sum_of_squares=codec.init(params, "sum_of_squares", fill=g0))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old = codec.decode(state.sum_of_squares)
        check_tree(updates, old, "sum of squares in the state")
        e = jnp.asarray(eps_root)

        def total_of(g, s):
            g2 = abs_sq(wide(g, e, s))
            return wide(s, e, g2) + g2

        total = jax.tree.map(total_of, updates, old)
        total, stored_total = codec.store(total, state.sum_of_squares, (1, 1, updates, True))
        out = jax.tree.map(lambda s: jnp.sqrt(plus(s, e, added)), total)
        return out, RssState(sum_of_squares=stored_total)

    return optax.GradientTransformationExtraArgs(init, update)


class InfNormState(NamedTuple):
    u: Any  # like params, real (accumulator_dtype): the exponentially weighted infinity norm


def inf_norm(
    decay: jax.typing.ArrayLike,
    eps: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block (denominator) for Adamax: u ← max(β₂·u, ``|g|`` + ε), emits u.

    ε inside the max is torch's and optax's placement; Keras adds ε to u afterwards (give
    ε to ``precondition`` instead). ``|g|`` is the modulus for complex params, so u is real.
    ``accumulator_dtype`` is the (real) dtype u is stored in; None follows the params
    (float32 for float16 params, as every never-negative moment: see
    :doc:`/guides/state-dtype`), or ``state_dtype`` and ``stochastic_rounding`` as in
    :func:`trace`. u is emitted in the computed dtype, which may be wider than the gradient's.
    """
    check_numbers("inf_norm", decay=decay, eps=eps)
    store = ("inf_norm", "accumulator_dtype", accumulator_dtype, state_dtype)
    codec = moment_codec(*store, stochastic_rounding, nonnegative=True)

    def init(params: Any) -> InfNormState:
        return InfNormState(u=codec.init(params, "u"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old = codec.decode(state.u)
        check_tree(updates, old, "infinity norm in the state")
        b2, e = jnp.asarray(decay), jnp.asarray(eps)

        def norm_of(g, u):
            uw, mod = wide(u, b2, e, g), jnp.abs(wide(g, b2, e, u))
            return jnp.maximum(coef(b2, uw) * uw, mod + coef(e, mod))

        u = jax.tree.map(norm_of, updates, old)
        u, stored_u = codec.store(u, state.u)
        return u, InfNormState(u=stored_u)

    return optax.GradientTransformationExtraArgs(init, update)


class ScaleByBiasCorrectionState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t


def scale_by_bias_correction(
    decay: jax.typing.ArrayLike, power: float = 0.5
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← (1 − βᵗ)^power · u. With β₂ and ½ it turns Adam into Keras's ε̂ form.

    The update is in the computed dtype (u widened to β's), which may be wider than u's.
    """
    check_numbers("scale_by_bias_correction", decay=decay)

    def init(params: Any) -> ScaleByBiasCorrectionState:
        del params
        return ScaleByBiasCorrectionState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        b = jnp.asarray(decay)
        count = optax.safe_increment(state.count)
        c = (1 - b ** count_as(count, b)) ** power
        return jax.tree.map(lambda u: wide(u, b) * coef(c, wide(u, b)), updates), (
            ScaleByBiasCorrectionState(count=count)
        )

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(scale_by_bias_correction)
def _bias_correction_gain(ctx, cells, state, incoming):
    b = in_gain_dtype(ctx, closure_value(cells, "decay", "scale_by_bias_correction"))
    power = closure_value(cells, "power", "scale_by_bias_correction")
    c = (1 - b ** steps_taken(ctx, state.count)) ** power
    out = None if incoming is None else jax.tree.map(lambda g: g * c.astype(g.dtype), incoming)
    return Gain(c), out


@gain_rule(precondition)
def _precondition_gain(ctx, cells, state, incoming):
    direction = closure_value(cells, "direction", "precondition")
    by = closure_value(cells, "by", "precondition")
    eps = in_gain_dtype(ctx, closure_value(cells, "eps", "precondition"))
    gain, _ = walk_gain(ctx, direction.update, state.direction, incoming)
    rule = DENOMINATORS.get(getattr(by.update, "__code__", None))
    if rule is None:
        raise TypeError(
            f"{GAIN_FN}: the denominator {block_name(by.update)} of precondition has no gain rule; "
            "gradx's rms, max_rms, rss and inf_norm have one"
        )
    den = rule(ctx, closure_cells(by.update), state.by)

    def inverse(d):
        total = d + eps
        # precondition's step is 0 where the denominator is 0: so is the factor on g there.
        zero = total == 0
        return jnp.where(zero, jnp.zeros_like(total), 1 / jnp.where(zero, 1, total))

    return gain_product(gain, Gain(jnp.ones([], ctx.dtype), jax.tree.map(inverse, den))), None


@denominator_gain_rule(rms)
def _rms_gain(ctx, cells, state):
    rho = in_gain_dtype(ctx, closure_value(cells, "decay", "rms"))
    eps_root = in_gain_dtype(ctx, closure_value(cells, "eps_root", "rms"))
    correction = (
        1 - rho ** steps_taken(ctx, state.count) if closure_value(cells, "debias", "rms") else 1
    )

    def root(v, a=None):
        var = debiased_gain(in_gain_dtype(ctx, v), correction)
        if a is not None:
            var = jnp.maximum(var - in_gain_dtype(ctx, abs_sq(debiased_gain(a, correction))), 0)
        return jnp.sqrt(var + eps_root)

    nu = decode_moments(state.nu)
    if closure_value(cells, "centered", "rms"):
        return jax.tree.map(root, nu, decode_moments(state.mean))
    return jax.tree.map(root, nu)


@denominator_gain_rule(max_rms)
def _max_rms_gain(ctx, cells, state):
    b2 = in_gain_dtype(ctx, closure_value(cells, "decay", "max_rms"))
    max_of = closure_value(cells, "max_of", "max_rms")
    nu_max = decode_moments(state.nu_max)
    if max_of == "raw_v":
        c = jnp.sqrt(1 - b2 ** steps_taken(ctx, state.count))
        return jax.tree.map(lambda m: jnp.sqrt(in_gain_dtype(ctx, m)) / nonzero_divisor(c), nu_max)
    return jax.tree.map(lambda m: jnp.sqrt(in_gain_dtype(ctx, m)), nu_max)


@denominator_gain_rule(rss)
def _rss_gain(ctx, cells, state):
    eps_root = in_gain_dtype(ctx, closure_value(cells, "eps_root", "rss"))
    total = decode_moments(state.sum_of_squares)
    return jax.tree.map(lambda s: jnp.sqrt(in_gain_dtype(ctx, s) + eps_root), total)


@denominator_gain_rule(inf_norm)
def _inf_norm_gain(ctx, cells, state):
    # u_t = max(β₂·u_{t−1}, |g| + ε) already holds its ε: the max-norm's gain is 1/u_t.
    return jax.tree.map(lambda u: in_gain_dtype(ctx, u), decode_moments(state.u))
