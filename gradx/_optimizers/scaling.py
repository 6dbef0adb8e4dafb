"""Scaling blocks: the learning rate, weight decay (coupled and decoupled) and normalisation.

Blocks: ``scale_by_learning_rate`` (−γ, the last block of every optimizer),
``add_decayed_weights`` (coupled decay, g + λθ), ``decoupled_weight_decay`` (AdamW's
u − γλθ), ``normalize`` (g/‖g‖), ``scale_by_trust_ratio`` (u·‖θ‖/‖u‖ per leaf, LAMB's).
Optimizer: ``normalized_sgd``.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.declare import optimizer, schedule_of
from gradx._protocol.dtypes import abs_sq, coef, hyperparam_dtype, wide
from gradx._protocol.gain import (
    GAIN_FN,
    Gain,
    closure_value,
    gain_rule,
    global_norm,
    in_gain_dtype,
    needs_incoming,
    nonzero_divisor,
    unit_gain,
)
from gradx._protocol.schedule import schedule_multiplier
from gradx._protocol.trees import TreeMismatchError, needs_params, params_like


def check_numbers(fn: str, **numbers: Any) -> None:
    """Raises unless each of a block's ``numbers`` is a number or an array, not a callable.

    A block's numbers are fixed when it is built; a schedule belongs to an optimizer, which
    evaluates it at the step count and passes the value to its blocks. The one callable let
    through is the optimizer's own schedule, which an :func:`optimizer` passes while it
    builds its chain at construction (``schedule_of`` knows it).
    """
    for name, value in numbers.items():
        if callable(value) and schedule_of(value) is None:
            label = getattr(value, "__qualname__", None)
            raise TypeError(
                f"{fn}: {name} must be a number or a scalar array, got "
                f"{f'the function {label}' if label else f'{value!r}, a callable'}; for a "
                "schedule, build an optimizer with it (gradx.sgd(schedule)) or declare one "
                "with @gradx.optimizer"
            )


class ScaleByLearningRateState(NamedTuple):
    """scale_by_learning_rate keeps no state."""


def scale_by_learning_rate(
    learning_rate: jax.typing.ArrayLike,
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← −γ·g, the descent step every optimizer ends with.

    ``learning_rate`` is a number or a scalar array (inside an optimizer, the value from the
    state). To follow a schedule, build an optimizer with :func:`optimizer`, which evaluates
    the schedule at the step count and passes the value here. The update is in the computed
    dtype (``wide`` of g and γ), which may be wider than g's.
    """
    check_numbers("scale_by_learning_rate", learning_rate=learning_rate)

    def init(params: Any) -> ScaleByLearningRateState:
        del params
        return ScaleByLearningRateState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        lr = jnp.asarray(learning_rate)
        neg = -lr  # once per step, not once per leaf
        # g·(−γ), not −g·γ: the sign then folds into the scalar instead of costing a negate
        # per element (γ is a runtime value, so XLA cannot fold it as it does for optax).

        def leaf(g):
            gw = wide(g, lr)
            return gw * coef(neg, gw)

        return jax.tree.map(leaf, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class AddDecayedWeightsState(NamedTuple):
    """The weight-decay blocks keep no state."""


def _check_mask(fn: str, mask: Any) -> None:
    """Raises unless ``mask`` is None, a callable, or a pytree of Python/NumPy bools."""
    if mask is None or callable(mask):
        return
    for leaf in jax.tree.leaves(mask):
        if not isinstance(leaf, (bool, np.bool_)):
            raise TypeError(
                f"{fn}: mask must be a pytree of bools (True = decay this leaf) or a function "
                f"of the params returning one, got a leaf {leaf!r}"
            )


# True while gradx.flat runs an optimizer on packed buffers (a few per dtype), whose leaves are
# no longer the params': a mask naming leaves would silently decay the wrong coordinates.
FLAT_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("gradx_flat", default=False)


def _full_mask(fn: str, mask: Any, params: Any) -> Any:
    """One bool per params leaf: ``mask`` (or ``mask(params)``) broadcast from a prefix tree."""
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    if FLAT_ACTIVE.get():
        raise ValueError(
            f"{fn}: mask must be None inside gradx.flat, got {mask!r}: flat packs the leaves "
            "into a few buffers per dtype, so a mask cannot name them; use the per-leaf optimizer"
        )
    tree = mask(params) if callable(mask) else mask
    _check_mask(fn, tree)
    try:
        return jax.tree.map(lambda b, sub: jax.tree.map(lambda _: b, sub), tree, params)
    except ValueError:
        raise TreeMismatchError(
            f"{fn}: the mask tree does not match the params (it must have their structure "
            f"or a prefix of it).\n  mask: {jax.tree.structure(tree)}\n"
            f"  params: {jax.tree.structure(params)}"
        ) from None


def _decay_init(fn: str, mask: Any) -> Callable[[Any], AddDecayedWeightsState]:
    """The ``init`` of a weight-decay block: checks the mask now, and against the params."""
    _check_mask(fn, mask)

    def init(params: Any) -> AddDecayedWeightsState:
        _full_mask(fn, mask, params)  # a bad mask fails at init
        return AddDecayedWeightsState()

    return init


def _decayed(
    fn: str, updates: Any, params: Any, mask: Any, leaf: Callable[..., Any], *numbers: Any
) -> Any:
    """The update of a weight-decay block: ``leaf(u, θ, *numbers)`` (the numbers as arrays)
    on the leaves the mask selects; the others pass through unchanged, bit for bit.

    Each block keeps its own ``update`` closure (over ``weight_decay`` and ``mask``): gradx's
    gain rules find a block by the code of its ``update`` and read those numbers from it.
    """
    needs_params(fn, params, "weight decay reads them")
    params = params_like(fn, updates, params)  # the gradients' leaves (optax's rule)
    arrays = [jnp.asarray(x) for x in numbers]
    return jax.tree.map(
        lambda u, p, decay: leaf(u, p, *arrays) if decay else u,
        updates,
        params,
        _full_mask(fn, mask, params),
    )


def add_decayed_weights(
    weight_decay: jax.typing.ArrayLike, mask: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Block: coupled L2 decay, u ← g + λ·θ (before the optimizer's statistics see g).

    This is ``weight_decay=`` of torch's SGD, Adam, RMSprop, Adagrad, Adadelta, Adamax and
    NAdam, and ``optax.add_decayed_weights`` placed first in a chain.

    Args:
      weight_decay: λ (a number or a scalar array).
      mask: which leaves decay. None (all), a pytree of bools with the params' structure (or
        a prefix of it; True = decay), or a function of the params returning one, as
        optax's ``mask``. Masked-out leaves pass through unchanged, bit for bit.

    Returns:
      An optax transformation. Its update is in the computed dtype (``wide`` of g, λ
      and θ), which may be wider than g's.
    """
    check_numbers("add_decayed_weights", weight_decay=weight_decay)
    init = _decay_init("add_decayed_weights", mask)

    def update(updates, state, params=None, **extra_args):
        del extra_args

        def leaf(g, p, wd):
            gw, pw = wide(g, wd, p), wide(p, wd, g)
            return gw + coef(wd, pw) * pw

        decayed = _decayed("add_decayed_weights", updates, params, mask, leaf, weight_decay)
        return decayed, state

    return optax.GradientTransformationExtraArgs(init, update)


#: The values of ``weight_decay_scaling``: what λ is multiplied by.
WEIGHT_DECAY_SCALINGS = ("learning_rate", "schedule")


def check_weight_decay_scaling(fn: str, value: Any) -> None:
    if not isinstance(value, str) or value not in WEIGHT_DECAY_SCALINGS:
        raise ValueError(
            f"{fn}: weight_decay_scaling must be 'learning_rate' (λ·γ_t, torch, optax, Keras) "
            f"or 'schedule' (λ·η_t, the AdamW paper), got {value!r}"
        )


def decoupled_weight_decay(
    weight_decay: jax.typing.ArrayLike,
    learning_rate: jax.typing.ArrayLike,
    mask: Any = None,
    *,
    weight_decay_scaling: str = "learning_rate",
) -> optax.GradientTransformationExtraArgs:
    """Block: decoupled decay, u ← u − γ·λ·θ (after ``scale_by_learning_rate``).

    The decay never enters the optimizer's statistics (Loshchilov & Hutter's AdamW). With
    ``weight_decay_scaling``:

    * ``"learning_rate"`` (default): u ← u − γ_t·λ·θ. This equals torch's ``AdamW``
      (θ ← (1 − γλ)·θ, then the step), optax's ``adamw`` and Keras's ``weight_decay=`` on any
      optimizer: all three multiply λ by the current learning rate.
    * ``"schedule"`` (the AdamW paper's Algorithm 2): u ← u − η_t·λ·θ, with η_t the schedule
      multiplier γ_t/γ_peak: the value of the learning rate's gradx schedule
      (:mod:`gradx.schedules`) over its largest value (0 if that is 0); for a learning rate
      given as a number η_t = 1, so θ decays by λ per step whatever γ is. Inside an optimizer,
      ``learning_rate`` must be its learning rate as it passes it (the peak is read from its
      schedule; an optax schedule's peak is unknown: refused); outside one a block's numbers
      are fixed, so η_t = 1.

    Args:
      weight_decay: λ (a number or a scalar array).
      learning_rate: γ, the current learning rate.
      mask: which leaves decay. None (all), a pytree of bools with the params' structure (or
        a prefix of it; True = decay), or a function of the params returning one, as
        optax's ``mask``. Masked-out leaves pass through unchanged, bit for bit.
      weight_decay_scaling: ``"learning_rate"`` or ``"schedule"``, as above.

    Returns:
      An optax transformation. Its update is in the computed dtype (``wide`` of u, λ, γ
      and θ), which may be wider than u's.
    """
    fn = "decoupled_weight_decay"
    check_numbers(fn, weight_decay=weight_decay, learning_rate=learning_rate)
    check_weight_decay_scaling(fn, weight_decay_scaling)
    init = _decay_init(fn, mask)
    factor = (
        learning_rate
        if weight_decay_scaling == "learning_rate"
        else schedule_multiplier(fn, "learning_rate", learning_rate)
    )

    def update(updates, state, params=None, **extra_args):
        del extra_args

        def leaf(u, p, wd, lr):
            uw, pw = wide(u, wd, lr, p), wide(p, wd, lr, u)
            return uw - coef(lr * wd, pw) * pw

        decayed = _decayed(fn, updates, params, mask, leaf, weight_decay, factor)
        return decayed, state

    return optax.GradientTransformationExtraArgs(init, update)


class NormalizeState(NamedTuple):
    """normalize keeps no state."""


def _largest_modulus(leaves: list[jax.Array], acc: jax.Array) -> jax.Array:
    """max |x| over ``leaves`` (complex: of the real and imaginary parts), in ``acc``'s dtype."""
    parts = [p for x in leaves for p in ((x.real, x.imag) if jnp.iscomplexobj(x) else (x,))]
    maxima = [jnp.max(jnp.abs(p), initial=0).astype(acc.dtype) for p in parts]
    return functools.reduce(jnp.maximum, maxima, acc)


def _over(x: jax.Array, m: jax.Array) -> jax.Array:
    """x / m for a real scalar m > 0, divided (not multiplied by 1/m, which can be subnormal);
    a complex x has its parts divided."""
    if jnp.iscomplexobj(x):
        return jax.lax.complex(x.real / coef(m, x.real), x.imag / coef(m, x.imag))
    return x / coef(m, x)


def normalize() -> optax.GradientTransformationExtraArgs:
    """Block: u ← g / ‖g‖, one L2 norm over the whole pytree; u = 0 where g = 0.

    ‖g‖² = Σ|g|² (complex leaves count their modulus). The norm is accumulated in float32
    (or wider) whatever the leaves' dtype, and the update is returned in that dtype. g is
    divided by m = max|g| before squaring, u = (g/m)/‖g/m‖, so ‖u‖ = 1 for every finite
    g ≠ 0, however small or large (Σg² itself under- or overflows float32 for ‖g‖ below
    about 1e-19 or above 1.8e19). Safe at g = 0, also for ``jax.grad`` through the update
    (no NaN from the norm's derivative).
    """

    def init(params: Any) -> NormalizeState:
        del params
        return NormalizeState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        acc = jnp.zeros([], hyperparam_dtype(updates))
        # Σ|g|² over- or underflows float32 for ‖g‖ beyond about 1.8e19 or below 1e-19 (a 0
        # step): square g/m, m = max|g|, whose largest entry is 1, and step (g/m)/‖g/m‖.
        m = _largest_modulus([wide(g, acc) for g in leaves], acc)
        positive = m > 0
        safe = jnp.where(positive, m, 1)
        scaled = jax.tree.map(lambda g: _over(wide(g, acc), safe), updates)
        squares = sum(jnp.sum(abs_sq(g)) for g in jax.tree.leaves(scaled))
        inverse = jnp.where(positive, jax.lax.rsqrt(jnp.where(positive, squares, 1)), 0)
        return jax.tree.map(lambda g: g * coef(inverse, g), scaled), state

    return optax.GradientTransformationExtraArgs(init, update)


@optimizer(learning_rate=">= 0")
def normalized_sgd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Normalized gradient descent: θ ← θ − γ·g/‖g‖ (seed 004).

    ‖g‖ is one L2 norm over the whole pytree, so every step has length γ whatever the scale
    of the gradient; at g = 0 the step is 0. With a constant γ it ends circling the minimum
    at distance about γ: pair it with a decaying schedule.

    Blocks: ``normalize() → scale_by_learning_rate(γ)``.

    Args:
      learning_rate: γ ≥ 0, the step length, a number or a schedule of the step count.

    Returns:
      An optax transformation whose state holds ``learning_rate``.
    """
    return optax.chain(normalize(), scale_by_learning_rate(learning_rate))


class ScaleByTrustRatioState(NamedTuple):
    # one scalar per params leaf, shape=(), float32 (or the leaf's wider real dtype): the
    # trust ratio the last update used, 1 before any (the gain rule reads it)
    trust_ratio: Any


def _flat_refuses(fn: str) -> None:
    if FLAT_ACTIVE.get():
        raise ValueError(
            f"{fn}: params must not be packed by gradx.flat, got a packed buffer: the trust ratio "
            "is a norm per leaf (per layer), and flat packs the leaves into a few buffers per "
            "dtype; use the per-leaf optimizer"
        )


def _clipped_norm(x: jax.Array, min_norm: jax.Array) -> jax.Array:
    """max(‖x‖, min_norm), safe for ``jax.grad`` at 0 (optax's ``safe_norm``)."""
    squares = jnp.sum(abs_sq(wide(x, min_norm))).astype(min_norm.dtype)
    above = squares > min_norm * min_norm
    return jnp.where(above, jnp.sqrt(jnp.where(above, squares, 1)), min_norm)


def scale_by_trust_ratio(
    min_norm: jax.typing.ArrayLike = 0.0,
    trust_coefficient: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Block: LAMB's layer-wise trust ratio, u ← u·c·‖θ‖/(‖u‖ + ε), one ratio per leaf.

    With n(x) = max(‖x‖, min_norm) (L2 over the whole leaf, Frobenius for a matrix)::

        r = c·n(θ)/(n(u) + ε),   r = 1 where n(θ) = 0 or n(u) = 0
        u ← r·u

    so a leaf at the origin, or with a zero update, keeps its update as it came. Equals
    ``optax.scale_by_trust_ratio``. The norms and r are computed in float32 (or the leaf's
    wider precision); r is kept in the state for ``gradx.effective_learning_rate``.

    Args:
      min_norm: the smallest norm used for θ and u (0: no clipping).
      trust_coefficient: c, a multiplier of the ratio.
      eps: ε, added to the update's norm.

    Returns:
      An optax transformation whose ``update`` needs the params. Refused inside
      ``gradx.flat``, whose packed buffers are not the leaves.
    """
    check_numbers(
        "scale_by_trust_ratio", min_norm=min_norm, trust_coefficient=trust_coefficient, eps=eps
    )

    def init(params: Any) -> ScaleByTrustRatioState:
        _flat_refuses("scale_by_trust_ratio")
        ratio = jax.tree.map(lambda p: jnp.ones([], hyperparam_dtype(p)), params)
        return ScaleByTrustRatioState(trust_ratio=ratio)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        fn = "scale_by_trust_ratio"
        _flat_refuses(fn)
        needs_params(fn, params, "the trust ratio is ‖θ‖/‖u‖")
        params = params_like(fn, updates, params)
        if jax.tree.structure(updates) != jax.tree.structure(state.trust_ratio):
            raise TreeMismatchError(
                f"{fn}: the gradients' tree does not match the state's (one trust ratio per "
                f"params leaf).\n  gradients: {jax.tree.structure(updates)}\n"
                f"  state: {jax.tree.structure(state.trust_ratio)}"
            )
        numbers = [jnp.asarray(x) for x in (min_norm, trust_coefficient, eps)]

        def leaf(u, p, old):
            lo, c, e = (wide(x, old, *numbers) for x in numbers)
            theta, step = _clipped_norm(p, lo), _clipped_norm(u, lo)
            ratio = jnp.where((theta == 0) | (step == 0), jnp.ones_like(c), c * theta / (step + e))
            uw = wide(u, ratio)
            return uw * coef(ratio, uw), ratio.astype(old.dtype)

        out = jax.tree.map(leaf, updates, params, state.trust_ratio)
        outer = jax.tree.structure(updates)
        rows = outer.flatten_up_to(out)  # not jax.tree.transpose: it fails on an empty tree
        u, ratio = (outer.unflatten([row[i] for row in rows]) for i in range(2))
        return u, ScaleByTrustRatioState(trust_ratio=ratio)

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(scale_by_learning_rate)
def _learning_rate_gain(ctx, cells, state, incoming):
    lr = in_gain_dtype(ctx, closure_value(cells, "learning_rate", "scale_by_learning_rate"))
    out = None if incoming is None else jax.tree.map(lambda g: g * -lr.astype(g.dtype), incoming)
    return Gain(-lr), out


@gain_rule(add_decayed_weights)
def _coupled_decay_gain(ctx, cells, state, incoming):
    # u = g + λθ: the factor on g is 1; the decay term is not a multiple of g.
    out = None
    if incoming is not None and ctx.params is not None:
        wd = closure_value(cells, "weight_decay", "add_decayed_weights")
        mask = closure_value(cells, "mask", "add_decayed_weights")
        pass

        full = _full_mask(GAIN_FN, mask, ctx.params)
        out = jax.tree.map(
            lambda g, p, m: g + jnp.asarray(wd).astype(g.dtype) * p.astype(g.dtype) if m else g,
            incoming,
            ctx.params,
            full,
        )
    return unit_gain(ctx), out


@gain_rule(decoupled_weight_decay)
def _decoupled_decay_gain(ctx, cells, state, incoming):
    # u − γλθ: the decay is a term in θ, not in g (AdamW's point), so the factor on g is 1.
    return unit_gain(ctx), None


@gain_rule(normalize)
def _normalize_gain(ctx, cells, state, incoming):
    needs_incoming("normalize", incoming)
    # 1/‖g‖ = (1/‖g/m‖)/m, m = max|g|, as the update computes it: ‖g‖ itself may overflow
    zero = jnp.zeros([], ctx.dtype)
    leaves = [wide(g, zero) for g in jax.tree.leaves(incoming)]
    m = in_gain_dtype(ctx, _largest_modulus(leaves, zero))
    norm = global_norm(ctx, [_over(g, nonzero_divisor(m)) for g in leaves])
    gain = jnp.where(m > 0, 1 / nonzero_divisor(norm) / nonzero_divisor(m), jnp.zeros_like(m))
    out = jax.tree.map(lambda g: g * gain.astype(g.dtype), incoming)
    return Gain(gain), out


@gain_rule(scale_by_trust_ratio)
def _trust_ratio_gain(ctx, cells, state, incoming):
    # u ← r·u with r per leaf, kept in the state by the last update: r is the factor on
    # whatever the block received, the current gradient's part included.
    tree = jax.tree.map(lambda r: in_gain_dtype(ctx, r), state.trust_ratio)
    out = (
        None
        if incoming is None
        else jax.tree.map(lambda g, r: g * r.astype(g.dtype), incoming, tree)
    )
    return Gain(jnp.ones([], ctx.dtype), tree), out
