"""The blocks and checks behind :mod:`gradx.compat.keras`: what Keras's base optimizer does
around every step (gradient clipping, decoupled weight decay, the refused training-loop
options) and the decorator each Keras class is built with.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.scaling import (
    FLAT_ACTIVE,
    decoupled_weight_decay,
    scale_by_learning_rate,
    scale_by_trust_ratio,
)
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import abs_sq, coef, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    gain_rule,
    global_norm,
    in_gain_dtype,
    needs_incoming,
    nonzero_divisor,
    scaled,
    walk_gain,
)

COMMON = dict(weight_decay=">= 0", clipnorm="> 0", clipvalue="> 0", global_clipnorm="> 0")


def _refuse_training_loop_options(cls: str, args: Mapping[str, Any]) -> None:
    use_ema, loss_scale_factor = args["use_ema"], args["loss_scale_factor"]
    gradient_accumulation_steps = args["gradient_accumulation_steps"]
    ema_overwrite_frequency = args["ema_overwrite_frequency"]
    if use_ema:
        raise ValueError(
            f"{cls}: use_ema must be False, got True; gradx.fit(..., ema=ema_momentum) keeps "
            "the same average of the params (Keras's rule: the first step copies them) beside "
            "the optimizer"
        )
    if ema_overwrite_frequency is not None:
        raise ValueError(
            f"{cls}: ema_overwrite_frequency must be None (it needs use_ema), got "
            f"{ema_overwrite_frequency!r}; gradx.fit(..., ema=d) returns the average as "
            "ema_params and evaluates at it with eval_on='ema'"
        )
    if loss_scale_factor is not None:
        raise ValueError(
            f"{cls}: loss_scale_factor must be None, got {loss_scale_factor!r}; scale the loss "
            "and unscale the gradients in your training loop"
        )
    if gradient_accumulation_steps is not None:
        raise ValueError(
            f"{cls}: gradient_accumulation_steps must be None, got "
            f"{gradient_accumulation_steps!r}; wrap the optimizer in optax.MultiSteps"
        )


class ClipByNormState(NamedTuple):
    """Per-leaf norm clipping keeps no state."""


def clip_by_norm(max_norm: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Block: each leaf g ← g·c / max(‖g‖, c) (Keras's ``clipnorm``, per variable)."""

    def refuse_packed() -> None:
        if FLAT_ACTIVE.get():  # a packed buffer is many variables: their norms would mix
            raise ValueError(
                "clip_by_norm: clipnorm clips each variable by its own norm; inside "
                "gradx.flat the variables are packed into buffers by dtype, so it cannot "
                "see them: use global_clipnorm, or the per-leaf optimizer"
            )

    def init(params: Any) -> ClipByNormState:
        del params
        refuse_packed()
        return ClipByNormState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        refuse_packed()
        c = jnp.asarray(max_norm)

        def leaf(g):
            g_ = wide(g, c)
            norm = jnp.sqrt(jnp.sum(abs_sq(g_)))  # |g|², not g², for complex g
            return (g_ * coef(c, g_) / coef(jnp.maximum(norm, c), g_)).astype(g.dtype)

        return jax.tree.map(leaf, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def clip_by_global_norm(max_norm: jax.typing.ArrayLike) -> optax.GradientTransformation:
    """Block: every leaf g ← g·c / ‖g‖ when the norm ‖g‖ over all leaves is ≥ c (Keras's
    ``global_clipnorm``, g·c / max(‖g‖, c)).

    ``optax.clip_by_global_norm``'s arithmetic and state, computed in the wider dtype of the
    gradient and c (float32 for bfloat16 or float16 gradients, whose c is stored in float32)
    and returned in the gradient's dtype.
    """

    def update(updates, state, params=None):
        del params
        c = jnp.asarray(max_norm)
        norm = jnp.sqrt(sum(jnp.sum(abs_sq(wide(g, c))) for g in jax.tree.leaves(updates)))

        def leaf(g):
            g_ = wide(g, c)
            return jnp.where(norm < c, g_, g_ / coef(norm, g_) * coef(c, g_)).astype(g.dtype)

        return jax.tree.map(leaf, updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def clip_real(cls: str, max_delta: jax.typing.ArrayLike) -> optax.GradientTransformation:
    """``optax.clip`` (Keras's ``clipvalue``: each coordinate to [−c, c]), refusing complex
    params at ``init``: JAX's clip refuses them only at the first update, in its own words."""
    inner = optax.clip(max_delta)

    def init(params: Any) -> Any:
        for leaf in jax.tree.leaves(params):
            if jnp.iscomplexobj(leaf):
                raise TypeError(
                    f"{cls}: params must be real with clipvalue, got a "
                    f"{jnp.result_type(leaf)} leaf; clipvalue clips each coordinate to "
                    "[-clipvalue, clipvalue], an order complex numbers lack: use clipnorm or "
                    "global_clipnorm, which clip by |g|"
                )
        return inner.init(params)

    return optax.GradientTransformation(init, inner.update)


def trust_ratio_after_decay(
    learning_rate: Any, weight_decay: Any
) -> optax.GradientTransformationExtraArgs:
    """Block: :func:`gradx.scale_by_trust_ratio` taken at Keras's decayed variable.

    Keras's base optimizer decays θ ← θ − θ·λ·γ before the step, so its LAMB ratio is
    ‖θ − θ·λ·γ‖/‖u‖; the decay itself is applied after the step by :func:`around` (on the
    undecayed θ, which gives the same new θ). ``weight_decay`` None: the ratio at θ.
    """
    inner = scale_by_trust_ratio()

    def update(updates, state, params=None, **extra_args):
        if weight_decay is not None and params is not None:
            wd, lr = jnp.asarray(weight_decay), jnp.asarray(learning_rate)

            def decayed(p):
                pw = wide(p, wd, lr)
                return pw - pw * coef(wd, pw) * coef(lr, pw)

            params = jax.tree.map(decayed, params)
        return inner.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(inner.init, update)


def around(cls: str, args: Mapping[str, Any], step: Any, after: Any, rate: Any = None):
    """[clip] → step → scale_by_learning_rate (or ``rate``) → after → [decoupled weight decay]."""
    learning_rate, weight_decay = args["learning_rate"], args["weight_decay"]
    clipnorm, clipvalue, global_clipnorm = (
        args[n] for n in ("clipnorm", "clipvalue", "global_clipnorm")
    )
    clips = [c for c in (clipnorm, clipvalue, global_clipnorm) if c is not None]
    if len(clips) > 1:
        raise ValueError(
            f"{cls}: only one of clipnorm, clipvalue and global_clipnorm can be set, got "
            f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}"
        )
    blocks = []
    if clipnorm is not None:
        blocks.append(clip_by_norm(clipnorm))
    if clipvalue is not None:
        blocks.append(clip_real(cls, clipvalue))
    if global_clipnorm is not None:
        blocks.append(clip_by_global_norm(global_clipnorm))
    blocks += [*step, scale_by_learning_rate(learning_rate) if rate is None else rate, *after]
    if weight_decay is not None:
        blocks.append(decoupled_weight_decay(weight_decay, learning_rate))
    return optax.chain(*blocks)


def keras_optimizer(**rules):
    """@optimizer for a Keras optimizer, with the rules every Keras optimizer shares.

    The decorated body has the Keras class's signature (its names, defaults and positional
    order) and returns the blocks of its own step as ``(step, after)`` (or ``(step, after,
    rate)``, a block in place of ×(−γ)); the optimizer refuses the training-loop options,
    then chains [clip] → step → ×(−γ) → after → [decoupled weight decay] (:func:`around`).
    """

    def wrap(body: Callable[..., Any]) -> Callable[..., Any]:
        signature, cls = inspect.signature(body), body.__name__

        @functools.wraps(body)
        def factory(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            _refuse_training_loop_options(cls, bound.arguments)
            step, after, *rate = body(*args, **kwargs)
            return around(cls, bound.arguments, step, after, *rate)

        # The state class's name digests the factory's code name: keep the body's, as before.
        factory.__code__ = factory.__code__.replace(co_name=body.__code__.co_name)
        return optimizer(learning_rate=">= 0", **rules, **COMMON)(factory)

    return wrap


@gain_rule(clip_by_norm)
def _clip_by_norm_gain(ctx, cells, state, incoming):
    needs_incoming("clip_by_norm", incoming)
    c = in_gain_dtype(ctx, closure_value(cells, "max_norm", "clip_by_norm"))
    factors = jax.tree.map(lambda g: c / jnp.maximum(global_norm(ctx, [g]), c), incoming)
    return Gain(jnp.ones([], ctx.dtype), factors), scaled(ctx, incoming, factors)


@gain_rule(optax.clip)
def _clip_gain(ctx, cells, state, incoming):
    needs_incoming("optax.clip", incoming)
    c = in_gain_dtype(ctx, closure_value(cells, "max_delta", "optax.clip"))

    def factor(g):
        a = jnp.sqrt(in_gain_dtype(ctx, abs_sq(g)))
        return jnp.where(
            a > c, c / nonzero_divisor(a), jnp.ones_like(a)
        )  # clipped: c·sign(g) = (c/|g|)g

    factors = jax.tree.map(factor, incoming)
    return Gain(jnp.ones([], ctx.dtype), factors), scaled(ctx, incoming, factors)


@gain_rule(optax.clip_by_global_norm, clip_by_global_norm)
def _clip_by_global_norm_gain(ctx, cells, state, incoming):
    needs_incoming("clip_by_global_norm", incoming)
    c = in_gain_dtype(ctx, closure_value(cells, "max_norm", "clip_by_global_norm"))
    norm = global_norm(ctx, jax.tree.leaves(incoming))
    gain = jnp.where(norm < c, jnp.ones_like(norm), c / nonzero_divisor(norm))
    return Gain(gain), jax.tree.map(lambda g: g * gain.astype(g.dtype), incoming)


@gain_rule(trust_ratio_after_decay)
def _trust_ratio_after_decay_gain(ctx, cells, state, incoming):
    inner = closure_value(cells, "inner", "trust_ratio_after_decay")
    return walk_gain(ctx, inner.update, state, incoming)
