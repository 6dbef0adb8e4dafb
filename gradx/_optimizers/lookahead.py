"""Lookahead: k steps forward with any optimizer, then one step back (seed 004).

``lookahead(inner, sync_period, alpha)`` wraps any optax or gradx optimizer. It is drop-in:
params stay the user's plain pytree, the slow weights live in the state, and the update
emitted at a sync moves the params onto the new slow point. ``alpha`` is a fixed step (as in
the paper and ``optax.lookahead``) or ``"quadratic"``: fitted at every sync from the losses at
the two ends of the cycle and the slope at its finish.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._optimizers.momentum import momentum
from gradx._protocol.declare import BUILT, optimizer
from gradx._protocol.dtypes import wide
from gradx._protocol.gain import GAIN_FN, Gain, closure_value, gain_rule, in_gain_dtype, walk_gain
from gradx._protocol.state import HyperparamsState
from gradx._protocol.storage import state_dtype_args
from gradx._protocol.trees import check_tree, needs_params


class LookaheadState(NamedTuple):
    fast_state: Any  # the inner optimizer's state
    phase: jax.Array  # shape=(), dtype=int32: inner steps since the last sync
    slow: Any  # like params (shape and dtype): the slow weights, the start of the cycle


class FittedLookaheadState(NamedTuple):
    alpha: jax.Array  # shape=(), dtype=hyperparameter dtype: α of the last sync (1 before it)
    fast_state: Any  # the inner optimizer's state
    loss_start: jax.Array  # shape=(), dtype=hyperparameter dtype: L(0), the loss at the start
    phase: jax.Array  # shape=(), dtype=int32: inner steps since the last sync, 0..k
    slow: Any  # like params (shape and dtype): the slow weights, the start of the cycle


_WHY_PARAMS = "the emitted update at a sync moves them onto the slow weights"


_NEEDS_VALUE = (
    "lookahead: alpha='quadratic' needs the loss: call update(grads, state, params, value=loss)"
)


def _keep_hyperparams(fresh: Any, current: Any) -> Any:
    """``fresh`` (a new inner state) with the hyperparameters and step counts of ``current``.

    ``reset_state`` restarts the inner optimizer's statistics, not its settings: values set
    with ``gradx.set_hyperparams`` and the position of every schedule survive a sync.
    """
    if isinstance(fresh, HyperparamsState):
        inner = _keep_hyperparams(fresh.inner_state, current.inner_state)
        return current._replace(inner_state=inner)  # keeps the optimizer's state class
    if isinstance(fresh, tuple) and hasattr(fresh, "_fields"):
        return type(fresh)(*map(_keep_hyperparams, fresh, current))
    if isinstance(fresh, (tuple, list)):
        return type(fresh)(map(_keep_hyperparams, fresh, current))
    if isinstance(fresh, Mapping):
        return type(fresh)({k: _keep_hyperparams(v, current[k]) for k, v in fresh.items()})
    return fresh


def _reset(inner: optax.GradientTransformation, point: Any, current: Any, when: Any = True) -> Any:
    """The inner state re-initialised at ``point`` where ``when`` holds, else ``current``.

    Each fresh leaf takes the dtype of the running one, so that either can be selected under
    jit. Leaves that are Python numbers or bools (optax's own lookahead test keeps a bool
    flag in its inner state, which its update returns as a Python ``False``) become arrays.
    """
    fresh = _keep_hyperparams(inner.init(point), current)

    def leaf(f: Any, c: Any) -> Any:
        dtype = jnp.asarray(c).dtype
        return jnp.where(when, jnp.asarray(f, dtype), jnp.asarray(c, dtype))

    return jax.tree.map(leaf, fresh, current)


def _unzip(outer: Any, out: Any, n: int) -> tuple[Any, ...]:
    """``n`` trees shaped like ``outer`` from a tree of ``n``-tuples (empty trees included)."""
    rows = outer.flatten_up_to(out)
    return tuple(outer.unflatten([row[i] for row in rows]) for i in range(n))


def _named(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def rename(factory: Callable[..., Any]) -> Callable[..., Any]:
        factory.__name__ = factory.__qualname__ = name
        return factory

    return rename


def fit_alpha(
    loss_start: jax.Array,
    loss_finish: jax.Array,
    slope_finish: jax.Array,
    alpha_min: jax.Array,
    alpha_max: jax.Array,
) -> jax.Array:
    """The minimiser of L̂(α) = aα² + bα + c fitted to L(0), L(1) and L'(1), safeguarded.

    c = L(0), a + b + c = L(1), 2a + b = L'(1) give a = L'(1) − (L(1) − L(0)) and
    b = 2(L(1) − L(0)) − L'(1). If a > 0 (convex) the minimiser is −b / 2a = ½ − ½·(L(1) −
    L(0)) / a, clipped to [alpha_min, alpha_max] (a nearly straight descending fit gives
    alpha_max). Otherwise the parabola has no minimum (concave, or a straight line:
    degenerate) and the model is not trusted away from the two measured points: α = 1 (the
    finish) if L(1) ≤ L(0), else α = 0 (the start), clipped likewise.

    The three inputs are divided by the largest of their magnitudes first (α does not depend
    on the scale), so huge finite losses cannot overflow; the result is never NaN from finite
    inputs, and with a NaN input it is the fallback.
    """
    scale = jnp.maximum(
        jnp.maximum(jnp.abs(loss_start), jnp.abs(loss_finish)), jnp.abs(slope_finish)
    )
    scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, jnp.ones_like(scale))
    rise = loss_finish / scale - loss_start / scale
    a = slope_finish / scale - rise
    convex = a > 0
    vertex = 0.5 - 0.5 * rise / jnp.where(convex, a, jnp.ones_like(a))
    fallback = jnp.where(loss_finish <= loss_start, jnp.ones_like(a), jnp.zeros_like(a))
    alpha = jnp.where(convex & ~jnp.isnan(vertex), vertex, fallback)
    return jnp.clip(alpha, alpha_min, alpha_max)


@optimizer(sync_period="int >= 1", alpha="[0, 1]")
@_named("lookahead")
def _fixed(
    inner: optax.GradientTransformation,
    sync_period: int,
    alpha: float,
    reset_state: bool,
) -> optax.GradientTransformationExtraArgs:
    inner = optax.with_extra_args_support(inner)

    def init(params: Any) -> LookaheadState:
        return LookaheadState(
            slow=jax.tree.map(jnp.array, params),  # copies: a donated step gets each buffer once
            phase=jnp.zeros([], jnp.int32),
            fast_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra_args):
        needs_params("lookahead", params, _WHY_PARAMS)
        check_tree(updates, state.slow, "slow weights in the state")
        k, a = jnp.asarray(sync_period), jnp.asarray(alpha)
        steps, fast_state = inner.update(updates, state.fast_state, params, **extra_args)
        phase = state.phase + 1
        sync = phase >= k

        def leaf(u, p, s):
            s_w = wide(s, a)
            finish = wide(p, a) + wide(u, a)
            new = s_w + a * (finish - s_w)
            jump = (new - wide(p, a)).astype(u.dtype)
            return jnp.where(sync, jump, u), jnp.where(sync, new.astype(s.dtype), s)

        out = jax.tree.map(leaf, steps, params, state.slow)
        updates, slow = _unzip(jax.tree.structure(steps), out, 2)
        if reset_state:
            fast_state = _reset(inner, slow, fast_state, when=sync)
        phase = jnp.where(sync, jnp.zeros_like(phase), phase)
        return updates, LookaheadState(fast_state=fast_state, phase=phase, slow=slow)

    return optax.GradientTransformationExtraArgs(init, update)


@optimizer(sync_period="int >= 1", alpha=">= 0", alpha_min=">= 0", alpha_max=">= 0")
@_named("lookahead")
def _fitted(
    inner: optax.GradientTransformation,
    sync_period: int,
    alpha: float,
    alpha_min: float,
    alpha_max: float,
    reset_state: bool,
) -> optax.GradientTransformationExtraArgs:
    inner = optax.with_extra_args_support(inner)

    def init(params: Any) -> FittedLookaheadState:
        h = jnp.asarray(alpha_min).dtype
        return FittedLookaheadState(
            slow=jax.tree.map(jnp.array, params),  # copies: a donated step gets each buffer once
            phase=jnp.zeros([], jnp.int32),
            fast_state=inner.init(params),
            loss_start=jnp.zeros([], h),
            alpha=jnp.array(alpha, h),  # a copy: not the hyperparameter's buffer
        )

    def update(updates, state, params=None, **extra_args):
        needs_params("lookahead", params, _WHY_PARAMS)
        if extra_args.get("value") is None:
            raise ValueError(_NEEDS_VALUE)
        check_tree(updates, state.slow, "slow weights in the state")
        value = jnp.asarray(extra_args["value"])
        if value.shape != ():
            raise ValueError(f"lookahead: value must be the scalar loss, got shape {value.shape}")
        k, lo, hi = (jnp.asarray(x) for x in (sync_period, alpha_min, alpha_max))
        h = state.alpha.dtype
        value = value.astype(h)
        # The first call of a cycle is at the start point (params == slow): its loss is L(0).
        loss_start = jnp.where(state.phase == 0, value, state.loss_start)

        def inner_step(_):
            steps, fast_state = inner.update(updates, state.fast_state, params, **extra_args)
            steps = jax.tree.map(lambda u, g: u.astype(g.dtype), steps, updates)
            return steps, state.slow, fast_state, state.phase + 1, state.alpha

        def sync(_):
            # The (k+1)-th call: params are the finish, `updates` is ∇L(finish), used only for
            # dL/dα(1) = ⟨∇L(finish), finish − start⟩; no inner step is taken with it.
            slope = sum(
                (
                    jnp.sum(wide(g, lo).astype(h) * (wide(p, lo) - wide(s, lo)).astype(h))
                    for g, p, s in zip(
                        jax.tree.leaves(updates),
                        jax.tree.leaves(params),
                        jax.tree.leaves(state.slow),
                        strict=True,
                    )
                ),
                jnp.zeros([], h),
            )
            alpha = fit_alpha(loss_start, value, slope, lo.astype(h), hi.astype(h))
            new = jax.tree.map(
                lambda p, s: wide(s, alpha) + alpha * (wide(p, alpha) - wide(s, alpha)),
                params,
                state.slow,
            )
            jump = jax.tree.map(
                lambda n, p, g: (n - wide(p, alpha)).astype(g.dtype), new, params, updates
            )
            slow = jax.tree.map(lambda n, s: n.astype(s.dtype), new, state.slow)
            fast_state = _reset(inner, slow, state.fast_state) if reset_state else state.fast_state
            return jump, slow, fast_state, jnp.zeros_like(state.phase), alpha

        steps, slow, fast_state, phase, alpha = jax.lax.cond(
            state.phase >= k, sync, inner_step, None
        )
        return steps, FittedLookaheadState(
            alpha=alpha, fast_state=fast_state, loss_start=loss_start, phase=phase, slow=slow
        )

    return optax.GradientTransformationExtraArgs(init, update)


# The fitted α is recorded in the hyperparameters for gradx.hyperparams to read, but the next
# sync overwrites it: set_hyperparams refuses it with this reason (a value set by hand would
# be silently lost).
_fitted.state_class.outputs = {
    "alpha": (
        "alpha of lookahead_fitted (lookahead with alpha='quadratic') is fitted at every sync "
        "(an output), not a setting; bound it with alpha_min and alpha_max, or build lookahead "
        "with a number for alpha to set it by hand"
    )
}


def _report_alpha(
    opt: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """Copies the α of the last sync into the state's hyperparameters after every update."""

    def update(updates, state, params=None, **extra_args):
        updates, state = opt.update(updates, state, params, **extra_args)
        used = state.inner_state.alpha.astype(state.hyperparams["alpha"].dtype)
        return updates, state._replace(hyperparams={**state.hyperparams, "alpha": used})

    return optax.GradientTransformationExtraArgs(opt.init, update)


@functools.wraps(_fitted)  # its name, signature and rules
def _quadratic(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
    """``lookahead(alpha="quadratic")``: :func:`_fitted` with its α reported.

    Recorded in ``BUILT`` as the constructor of what it returns (whose ``init`` is
    ``_fitted``'s), so that ``gradx.param_groups`` rebuilds each group in this form, α reported.
    """
    opt = _report_alpha(_fitted(*args, **kwargs))
    BUILT[opt.init] = (_quadratic, BUILT[opt.init][1])
    return opt


def lookahead(
    inner: optax.GradientTransformation,
    sync_period: int | Callable[[jax.Array], Any] = 5,
    alpha: float | str | Callable[[jax.Array], Any] = 0.5,
    reset_state: bool = False,
    *,
    alpha_range: tuple[float, float] = (0.0, 2.0),
) -> optax.GradientTransformationExtraArgs:
    """Lookahead: k steps forward with ``inner``, then one step back (seed 004).

    Seed 004: take k steps with an optimizer A, then choose a point between the start and the
    finish, x_res = (1 − α)·x_start + α·x_finish, and start the next k steps from x_res. With
    φ the slow weights (φ₀ = θ₀) and t = 1, 2, ... counting updates::

        θ ← θ + A(g_t)                               every update (k inner steps per cycle)
        at the end of a cycle:  φ ← φ + α·(θ − φ);  θ ← φ

    The params you hold are θ (the fast weights; gradients are taken there). At a sync the
    emitted update is φ_new − θ, so after ``optax.apply_updates`` the params sit on the new
    slow point. The slow weights are kept in the state.

    **Fixed α** (a number in [0, 1], or a schedule): a cycle is ``sync_period`` = k calls; the
    k-th call takes its inner step and then syncs, exactly like ``optax.lookahead`` (paper,
    Algorithm 1).

    **Fitted α** (``alpha="quadratic"``, seed 004): a cycle is k + 1 calls. Calls 1..k are
    inner steps; call 1 is at the start φ and its ``value=`` is L(0). Call k + 1 is at the
    finish θ: its ``value=`` is L(1), and its gradient gives dL/dα(1) = ⟨∇L(θ), θ − φ⟩. That
    call takes no inner step (the gradient is used only where it was computed, for the
    slope); it fits L̂(α) = aα² + bα + c to L(0), L(1), dL/dα(1), moves to the minimiser
    α* = −b/2a clipped to ``alpha_range``, and emits the jump. Cost: one extra gradient (and
    loss) per cycle, k + 1 evaluations for k inner steps; memory: one copy of the params.
    When the fit has no minimum (a ≤ 0: concave or a straight line) the safer measured point
    is taken: α = 1 if L(1) ≤ L(0), else α = 0. With minibatches L(0) and L(1) come from
    different batches, so α is noisy; the range keeps it bounded.

    Args:
      inner: the fast optimizer, any optax ``GradientTransformation`` (gradx or optax).
      sync_period: k ≥ 1, inner steps per cycle (an int, stored as an int32 hyperparameter).
      alpha: α in [0, 1] (a number or a schedule), or ``"quadratic"`` to fit it at each sync.
      reset_state: re-initialise the inner optimizer's state at each sync (as optax does).
        Its hyperparameters and schedule step counts are kept, so values set with
        ``gradx.set_hyperparams`` survive.
      alpha_range: (α_min, α_max) with 0 ≤ α_min ≤ α_max, the clip of the fitted α; only
        used with ``alpha="quadratic"`` (with a fixed α it is checked all the same, then
        unused). The default (0, 2) allows extrapolating up to one cycle's length past the
        finish. Stored as the hyperparameters ``alpha_min``, ``alpha_max``.

    Returns:
      An optax transformation. ``update`` needs ``params`` (and ``value=`` with the fitted α).
      Its state is a ``HyperparamsState`` holding ``sync_period`` and ``alpha`` (and
      ``alpha_min``, ``alpha_max`` when fitted) around a ``LookaheadState`` (``slow``,
      ``phase``, ``fast_state``; the fitted ``FittedLookaheadState`` adds ``loss_start`` and
      ``alpha``). The inner optimizer's hyperparameters are found by ``gradx.hyperparams``
      through it. With ``"quadratic"``, ``gradx.hyperparams(state)["alpha"]`` is the α of the
      last sync (1 before the first); it is an output, and ``gradx.set_hyperparams`` refuses
      to set it (``alpha_min`` and ``alpha_max`` can be set).

    Reference:
      Zhang, Lucas, Hinton, Ba, "Lookahead Optimizer: k steps forward, 1 step back",
      NeurIPS 2019.

    Note:
      ``optax.lookahead(inner, sync_period, slow_step_size)`` needs its ``LookaheadParams``
      (fast, slow) wrapper as params; gradx keeps params plain and gives the same fast
      trajectory for a fixed α. optax has no defaults for k and α; gradx uses the paper's
      k = 5, α = 0.5. optax's ``reset_state`` also resets the inner optimizer's
      hyperparameters and step count. torch.optim and Keras have no lookahead.
      ``value=`` and any other extra argument are passed on to ``inner``.
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            "lookahead: inner must be an optax GradientTransformation (an optimizer such as "
            f"gradx.adam(1e-3)), got {type(inner).__name__}"
        )
    if not isinstance(reset_state, bool):
        raise TypeError(f"lookahead: reset_state must be a bool, got {reset_state!r}")
    try:  # checked with a fixed alpha too, where it is not used: a bad range is a bug either way
        alpha_min, alpha_max = alpha_range
        ok = 0 <= float(alpha_min) <= float(alpha_max) < np.inf
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "lookahead: alpha_range must be (alpha_min, alpha_max) with "
            f"0 <= alpha_min <= alpha_max, got {alpha_range!r}"
        )
    if not isinstance(alpha, str):
        return _fixed(inner, sync_period, alpha, reset_state)
    if alpha != "quadratic":
        raise ValueError(f"lookahead: alpha must be in [0, 1] or 'quadratic', got {alpha!r}")
    return _quadratic(inner, sync_period, 1.0, alpha_min, alpha_max, reset_state)


def lookahead_momentum(
    learning_rate: optax.ScalarOrSchedule,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Lookahead (k = 5, α = 0.5) around heavy-ball momentum (μ = 0.9).

    ``state_dtype`` and ``stochastic_rounding`` store the momentum's velocity (see
    :func:`gradx.momentum`); the slow weights are a copy of the params, kept in their dtype.
    """
    store = state_dtype_args("lookahead_momentum", state_dtype, stochastic_rounding)
    return lookahead(momentum(learning_rate, **store))


def lookahead_fitted(
    learning_rate: optax.ScalarOrSchedule,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Lookahead (k = 5) around momentum, α fitted by a quadratic at each sync (seed 004).

    ``state_dtype`` and ``stochastic_rounding`` as in :func:`lookahead_momentum`.
    """
    store = state_dtype_args("lookahead_fitted", state_dtype, stochastic_rounding)
    return lookahead(momentum(learning_rate, **store), alpha="quadratic")


@gain_rule(_report_alpha)
def _report_alpha_gain(ctx, cells, state, incoming):
    return walk_gain(ctx, closure_value(cells, "opt", "lookahead").update, state, incoming)


@gain_rule(_fixed)
def _lookahead_fixed_gain(ctx, cells, state, incoming):
    if closure_value(cells, "reset_state", "lookahead"):
        raise ValueError(
            f"{GAIN_FN}: lookahead(reset_state=True) re-initialises the inner optimizer's state at "
            "every sync, so the inner gain of a sync step cannot be read from the state after "
            "it; use reset_state=False"
        )
    inner = closure_value(cells, "inner", "lookahead")
    gain, _ = walk_gain(ctx, inner.update, state.fast_state, incoming)
    # A sync step emits α·(inner step) + (1 − α)·(φ − θ): the inner step's gain times α.
    alpha = in_gain_dtype(ctx, closure_value(cells, "alpha", "lookahead"))
    synced = jnp.asarray(state.phase) == 0
    return Gain(gain.scale * jnp.where(synced, alpha, jnp.ones_like(alpha)), gain.tree), None


@gain_rule(_fitted)
def _lookahead_fitted_gain(ctx, cells, state, incoming):
    inner = closure_value(cells, "inner", "lookahead")
    gain, _ = walk_gain(ctx, inner.update, state.fast_state, incoming)
    # The sync call takes no inner step: g_t only sets α through the slope, so its factor is 0.
    stepped = in_gain_dtype(ctx, jnp.asarray(state.phase) != 0)
    return Gain(gain.scale * stepped, gain.tree), None
