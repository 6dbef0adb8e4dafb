"""``keras.optimizers`` as gradx optimizers, with Keras 3's numbers.

Each factory is named like its Keras class and takes that class's argument names and
defaults: ``gradx.compat.keras.Adam(learning_rate=1e-3)`` stands for
``keras.optimizers.Adam(learning_rate=1e-3)``. It returns a gradx optimizer built from gradx's
blocks that reproduces Keras's trajectory for the same gradients (float64, to rounding). Its
hyperparameters live in the state under Keras's names (``gradx.hyperparams(state)
["beta_1"]``).

What every Keras optimizer does, in Keras's order:

1. ``clipnorm`` (each leaf to that L2 norm), ``clipvalue`` (each element to ±c) or
   ``global_clipnorm`` (all leaves together); at most one of them;
2. ``weight_decay``: decoupled, θ ← θ − γ·λ·θ (Keras multiplies λ by the learning rate);
3. the optimizer's own step.

Boolean options (``nesterov``, ``amsgrad``, ``centered``, ``use_ema``) must be bools:
``Adam(amsgrad="no")`` raises a ``TypeError`` rather than running AMSGrad.

Options that change Keras's training loop rather than the update (``use_ema``,
``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
``gradient_accumulation_steps``) cannot be honoured by an update rule and raise a
``ValueError`` when set; ``name`` is accepted and ignored.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.adam import nesterov_ema
from gradx._optimizers.adaptive import scale_by_adadelta
from gradx._optimizers.factored import clip_by_block_rms, scale_by_factored_rms
from gradx._optimizers.momentum import ema, trace
from gradx._optimizers.preconditioners import (
    inf_norm,
    max_rms,
    precondition,
    rms,
    rss,
    scale_by_bias_correction,
)
from gradx._optimizers.scaling import FLAT_ACTIVE, decoupled_weight_decay, scale_by_learning_rate
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import abs_sq, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    gain_rule,
    global_norm,
    in_gain_dtype,
    needs_incoming,
    nonzero_divisor,
    scaled,
)
from gradx.compat._adafactor import keras_param_scale
from gradx.compat._adafactor import relative_step as adafactor_relative_step

__all__ = [
    "SGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Nadam", "RMSprop",
]  # fmt: skip

_COMMON = dict(weight_decay=">= 0", clipnorm="> 0", clipvalue="> 0", global_clipnorm="> 0")


def _refuse_training_loop_options(cls: str, args: Mapping[str, Any]) -> None:
    use_ema, loss_scale_factor = args["use_ema"], args["loss_scale_factor"]
    gradient_accumulation_steps = args["gradient_accumulation_steps"]
    ema_overwrite_frequency = args["ema_overwrite_frequency"]
    if use_ema:
        raise ValueError(
            f"{cls}: use_ema must be False, got True; keep an EMA of the params in your "
            "training loop (e.g. optax.ema over params) instead"
        )
    if ema_overwrite_frequency is not None:
        raise ValueError(
            f"{cls}: ema_overwrite_frequency needs use_ema, got {ema_overwrite_frequency!r}"
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
            return (g_ * c / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g_))), c)).astype(g.dtype)

        return jax.tree.map(leaf, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def _around(cls: str, args: Mapping[str, Any], step: Any, after: Any, rate: Any = None):
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
        blocks.append(optax.clip(clipvalue))
    if global_clipnorm is not None:
        blocks.append(optax.clip_by_global_norm(global_clipnorm))
    blocks += [*step, scale_by_learning_rate(learning_rate) if rate is None else rate, *after]
    if weight_decay is not None:
        blocks.append(decoupled_weight_decay(weight_decay, learning_rate))
    return optax.chain(*blocks)


def _keras(**rules):
    """@optimizer for a Keras optimizer, with the rules every Keras optimizer shares.

    The decorated body has the Keras class's signature (its names, defaults and positional
    order) and returns the blocks of its own step as ``(step, after)`` (or ``(step, after,
    rate)``, a block in place of ×(−γ)); the optimizer refuses the training-loop options,
    then chains [clip] → step → ×(−γ) → after → [decoupled weight decay] (:func:`_around`).
    """

    def wrap(body: Callable[..., Any]) -> Callable[..., Any]:
        signature, cls = inspect.signature(body), body.__name__

        @functools.wraps(body)
        def factory(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            _refuse_training_loop_options(cls, bound.arguments)
            step, after, *rate = body(*args, **kwargs)
            return _around(cls, bound.arguments, step, after, *rate)

        # The state class's name digests the factory's code name: keep the body's, as before.
        factory.__code__ = factory.__code__.replace(co_name=body.__code__.co_name)
        return optimizer(learning_rate=">= 0", **rules, **_COMMON)(factory)

    return wrap


@_keras(momentum="[0, 1]")
def SGD(
    learning_rate=0.01,
    momentum=0.0,
    nesterov: bool = False,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="SGD",
):
    """``keras.optimizers.SGD``: v ← μ·v − γ·g; θ ← θ + v (Nesterov: θ ← θ + μ·v − γ·g).

    γ sits inside the velocity, as in :func:`gradx.momentum`.
    """
    return [], [trace(momentum, nesterov=nesterov)]


@_keras(rho="[0, 1)", momentum="[0, 1)", epsilon=">= 0")
def RMSprop(
    learning_rate=0.001,
    rho=0.9,
    momentum=0.0,
    epsilon=1e-7,
    centered: bool = False,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="rmsprop",
):
    """``keras.optimizers.RMSprop``: θ ← θ − γ·g/√(v + ε) (ε inside the root).

    With ``momentum``: b ← μ·b + γ·g/√(v + ε); θ ← θ − b. ``centered`` subtracts a².
    """
    step = [precondition(optax.identity(), rms(rho, eps_root=epsilon, centered=centered))]
    return step, [trace(momentum)]


@_keras(initial_accumulator_value=">= 0", epsilon=">= 0")
def Adagrad(
    learning_rate=0.001,
    initial_accumulator_value=0.1,
    epsilon=1e-7,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="adagrad",
):
    """``keras.optimizers.Adagrad``: G ← G + g², θ ← θ − γ·g/√(G + ε), G₀ = 0.1."""
    step = [precondition(optax.identity(), rss(initial_accumulator_value, eps_root=epsilon))]
    return step, []


@_keras(rho="[0, 1)", epsilon=">= 0")
def Adadelta(
    learning_rate=0.001,
    rho=0.95,
    epsilon=1e-7,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="adadelta",
):
    """``keras.optimizers.Adadelta``: Zeiler's rule times γ (Keras's default γ = 1e-3)."""
    return [scale_by_adadelta(rho, epsilon)], []


def _adam_step(beta_1, beta_2, epsilon, amsgrad):
    # Keras's eps-hat form: γ·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε), AMSGrad over the raw v.
    den = max_rms(beta_2, max_of="raw_v_no_correction") if amsgrad else rms(beta_2)
    return [precondition(ema(beta_1, debias=True), den, epsilon), scale_by_bias_correction(beta_2)]


_ADAM_RULES = dict(beta_1="[0, 1)", beta_2="[0, 1)", epsilon=">= 0")


@_keras(**_ADAM_RULES)
def Adam(
    learning_rate=0.001,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad: bool = False,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="adam",
):
    """``keras.optimizers.Adam``: θ ← θ − γ·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε) (the ε̂ form)."""
    return _adam_step(beta_1, beta_2, epsilon, amsgrad), []


@_keras(**_ADAM_RULES)
def AdamW(
    learning_rate=0.001,
    weight_decay=0.004,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    amsgrad: bool = False,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="adamw",
):
    """``keras.optimizers.AdamW``: Keras's Adam with ``weight_decay=0.004`` by default."""
    return _adam_step(beta_1, beta_2, epsilon, amsgrad), []


@_keras(**_ADAM_RULES)
def Adamax(
    learning_rate=0.001,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="adamax",
):
    """``keras.optimizers.Adamax``: u ← max(β₂·u, ``|g|``); θ ← θ − γ·m/((1−β₁ᵗ)(u + ε))."""
    step = [precondition(ema(beta_1, debias=True), inf_norm(beta_2), epsilon)]
    return step, []


@_keras(**_ADAM_RULES)
def Nadam(
    learning_rate=0.001,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="nadam",
):
    """``keras.optimizers.Nadam``: Dozat's Nadam with μ_t = β₁(1 − ½·0.96ᵗ) (ψ = 1)."""
    step = [
        precondition(nesterov_ema(beta_1, momentum_decay=1.0), rms(beta_2, debias=True), epsilon)
    ]
    return step, []


@_keras(beta_2_decay="<= 0", epsilon_1=">= 0", epsilon_2=">= 0", clip_threshold="> 0")
def Adafactor(
    learning_rate=0.001,
    beta_2_decay=-0.8,
    epsilon_1=1e-30,
    epsilon_2=1e-3,
    clip_threshold=1.0,
    relative_step: bool = True,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="adafactor",
):
    """``keras.optimizers.Adafactor``: optax's factored rule over the last two axes, with
    θ ← θ − min(γ, 1/√t)·max(ε₂, RMS(θ))·û (û the clipped u = g/√V̂, ε₁ added to g²).

    Every tensor of two or more dimensions is factored. RMS(θ) is taken after Keras's weight
    decay θ ← θ − λγθ. ``relative_step`` changes no number in Keras 3.15.1 (ρ_t is
    min(γ, 1/√t) either way): accepted and ignored.
    """
    del relative_step
    step = [
        scale_by_factored_rms(True, -beta_2_decay, 0, 0, epsilon_1, factor_axes="last"),
        clip_by_block_rms(clip_threshold),
        keras_param_scale(epsilon_2, learning_rate, weight_decay),
    ]
    return step, [], adafactor_relative_step(learning_rate)


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


@gain_rule(optax.clip_by_global_norm)
def _clip_by_global_norm_gain(ctx, cells, state, incoming):
    needs_incoming("optax.clip_by_global_norm", incoming)
    c = in_gain_dtype(ctx, closure_value(cells, "max_norm", "optax.clip_by_global_norm"))
    norm = global_norm(ctx, jax.tree.leaves(incoming))
    gain = jnp.where(norm < c, jnp.ones_like(norm), c / nonzero_divisor(norm))
    return Gain(gain), jax.tree.map(lambda g: g * gain.astype(g.dtype), incoming)
