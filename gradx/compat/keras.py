"""``keras.optimizers`` as gradx optimizers, with Keras 3's numbers.

Each factory is named like its Keras class and takes that class's argument names and
defaults: ``gradx.compat.keras.Adam(learning_rate=1e-3)`` stands for
``keras.optimizers.Adam(learning_rate=1e-3)``. It returns a gradx optimizer built from gradx's
blocks that reproduces Keras's trajectory for the same gradients (float64, to rounding). Its
hyperparameters live in the state under Keras's names (``gradx.hyperparams(state)
["beta_1"]``).

What every Keras optimizer does, in Keras's order:

1. ``clipnorm`` (each leaf to that L2 norm), ``clipvalue`` (each element to ±c) or
   ``global_clipnorm`` (all leaves together); at most one of them. The norms are of ``|g|``,
   so complex gradients are clipped by modulus, and are computed in float32 for bfloat16 and
   float16 gradients (c is stored in float32), then cast back; ``clipvalue`` refuses complex
   params (a ``TypeError`` at ``init``);
2. ``weight_decay``: decoupled, θ ← θ − γ·λ·θ (Keras multiplies λ by the learning rate);
3. the optimizer's own step.

Boolean options (``nesterov``, ``amsgrad``, ``centered``, ``use_ema``) must be bools:
``Adam(amsgrad="no")`` raises a ``TypeError`` rather than running AMSGrad.

Options that change Keras's training loop rather than the update (``use_ema``,
``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
``gradient_accumulation_steps``) cannot be honoured by an update rule and raise a
``ValueError`` when set; ``name`` is accepted and ignored.

Every class also takes gradx's keyword-only ``state_dtype`` and ``stochastic_rounding``,
which store the moments as in :func:`gradx.adam` (a float dtype, bfloat16 rounded
stochastically, or blockwise int8); Keras has neither.

float16 params are where the numbers part by design: gradx keeps their never-negative moments
(v, AMSGrad's maximum, Adamax's norm, Adagrad's accumulator, RMSprop's and Adadelta's averages
of squares, Adafactor's and Lamb's second moments) in float32, their first moments in float16.
Keras 3.15 keeps every optimizer variable in its variable's dtype, float16, where (1 − β₂)·g²
rounds to 0 for small gradients: on g = 1e-3 and ``learning_rate=1e-3`` from θ = 0, Keras's
float16 ``Adam`` keeps v = 0 and divides by ε alone, stepping by 0.5 at step 1 and 4.0 at
step 300 (θ = −867), and ``Nadam`` by 9 and 8 (θ = −2424), while gradx's step by about the
learning rate (``Adam``: θ = −0.295 after 300 steps, against float32's −0.300, the gap being
θ's own float16 rounding). Keras's ``RMSprop`` (ρ = 0.9), ``Adagrad``, ``Adadelta`` and
``Adamax`` do not underflow on that input. ``state_dtype="float16"`` stores every moment in
float16 again, but the step is still computed in float32, from the new moment before it is
rounded: that reproduces neither Keras's float16 steps nor float32 (Adam's v̂ then holds one
step's (1 − β₂)·g², and its step grows to about 16 times the learning rate in 300 steps).
The measured numbers are in ``docs/conventions.md``.
"""

from __future__ import annotations

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
from gradx._optimizers.sign import scale_by_lion
from gradx._protocol.storage import state_dtype_args
from gradx.compat._adafactor import keras_param_scale
from gradx.compat._adafactor import relative_step as adafactor_relative_step
from gradx.compat._keras_blocks import keras_optimizer as _keras
from gradx.compat._keras_blocks import trust_ratio_after_decay

__all__ = [
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Lamb",
    "Lion",
    "Nadam",
    "RMSprop",
]


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.SGD``: v ← μ·v − γ·g; θ ← θ + v (Nesterov: θ ← θ + μ·v − γ·g).

    γ sits inside the velocity, as in :func:`gradx.momentum`.
    """
    store = state_dtype_args("SGD", state_dtype, stochastic_rounding)
    return [], [trace(momentum, nesterov=nesterov, **store)]


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.RMSprop``: θ ← θ − γ·g/√(v + ε) (ε inside the root).

    With ``momentum``: b ← μ·b + γ·g/√(v + ε); θ ← θ − b. ``centered`` subtracts a².
    """
    store = state_dtype_args("RMSprop", state_dtype, stochastic_rounding)
    den = rms(rho, eps_root=epsilon, centered=centered, **store)
    return [precondition(optax.identity(), den)], [trace(momentum, **store)]


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Adagrad``: G ← G + g², θ ← θ − γ·g/√(G + ε), G₀ = 0.1."""
    store = state_dtype_args("Adagrad", state_dtype, stochastic_rounding)
    den = rss(initial_accumulator_value, eps_root=epsilon, **store)
    return [precondition(optax.identity(), den)], []


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Adadelta``: Zeiler's rule times γ (Keras's default γ = 1e-3)."""
    store = state_dtype_args("Adadelta", state_dtype, stochastic_rounding)
    return [scale_by_adadelta(rho, epsilon, **store)], []


def _adam_step(cls, beta_1, beta_2, epsilon, amsgrad, state_dtype, stochastic_rounding):
    # Keras's eps-hat form: γ·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε), AMSGrad over the raw v.
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    if amsgrad:
        den = max_rms(beta_2, max_of="raw_v_no_correction", **store)
    else:
        den = rms(beta_2, **store)
    num = ema(beta_1, debias=True, **store)
    return [precondition(num, den, epsilon), scale_by_bias_correction(beta_2)]


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Adam``: θ ← θ − γ·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε) (the ε̂ form)."""
    step = _adam_step("Adam", beta_1, beta_2, epsilon, amsgrad, state_dtype, stochastic_rounding)
    return step, []


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.AdamW``: Keras's Adam with ``weight_decay=0.004`` by default."""
    step = _adam_step("AdamW", beta_1, beta_2, epsilon, amsgrad, state_dtype, stochastic_rounding)
    return step, []


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Adamax``: u ← max(β₂·u, ``|g|``); θ ← θ − γ·m/((1−β₁ᵗ)(u + ε))."""
    store = state_dtype_args("Adamax", state_dtype, stochastic_rounding)
    num, den = ema(beta_1, debias=True, **store), inf_norm(beta_2, **store)
    return [precondition(num, den, epsilon)], []


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Nadam``: Dozat's Nadam with μ_t = β₁(1 − ½·0.96ᵗ) (ψ = 1)."""
    store = state_dtype_args("Nadam", state_dtype, stochastic_rounding)
    num = nesterov_ema(beta_1, momentum_decay=1.0, **store)
    return [precondition(num, rms(beta_2, debias=True, **store), epsilon)], []


@_keras(beta_1="(0, 1]", beta_2="[0, 1]")
def Lion(
    learning_rate=0.001,
    beta_1=0.9,
    beta_2=0.99,
    weight_decay=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
    use_ema: bool = False,
    ema_momentum=0.99,
    ema_overwrite_frequency=None,
    loss_scale_factor=None,
    gradient_accumulation_steps=None,
    name="lion",
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Lion``: θ ← θ − γ·sign(β₁·m + (1−β₁)·g), then m ← β₂·m + (1−β₂)·g.

    As :func:`gradx.lion`, with Keras's weight decay (θ ← θ − γ·λ·θ, from its base optimizer)
    and its range for β₁, (0, 1] (β₁ = 0 would make Lion signSGD, which Keras refuses).
    """
    store = state_dtype_args("Lion", state_dtype, stochastic_rounding)
    return [scale_by_lion(beta_1, beta_2, **store)], []


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
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Adafactor``: optax's factored rule over the last two axes, with
    θ ← θ − min(γ, 1/√t)·max(ε₂, RMS(θ))·û (û the clipped u = g/√V̂, ε₁ added to g²).

    Every tensor of two or more dimensions is factored. RMS(θ) is taken after Keras's weight
    decay θ ← θ − λγθ. ``relative_step`` changes no number in Keras 3.15.1 (ρ_t is
    min(γ, 1/√t) either way): accepted and ignored.
    """
    del relative_step
    store = state_dtype_args("Adafactor", state_dtype, stochastic_rounding)
    step = [
        scale_by_factored_rms(
            True, -beta_2_decay, 0, 0, epsilon_1, factor_axes="last", **store
        ),
        clip_by_block_rms(clip_threshold),
        keras_param_scale(epsilon_2, learning_rate, weight_decay),
    ]
    return step, [], adafactor_relative_step(learning_rate)



@_keras(**_ADAM_RULES)
def Lamb(
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
    name="lamb",
    *,
    state_dtype=None,
    stochastic_rounding: bool = False,
):
    """``keras.optimizers.Lamb``: u = m̂/(√v̂ + ε), θ ← θ − γ·r·u with r = ‖θ‖/‖u‖ per variable.

    Unlike :func:`gradx.lamb` (optax's and the paper's), Keras leaves the weight decay out of
    u and out of the ratio: its base optimizer first decays θ ← θ − γ·λ·θ, and r is taken at
    that decayed θ. r = 1 where ‖θ‖ or ‖u‖ is 0. The ratio is per leaf: refused inside
    ``gradx.flat``.
    """
    store = state_dtype_args("Lamb", state_dtype, stochastic_rounding)
    num, den = ema(beta_1, debias=True, **store), rms(beta_2, debias=True, **store)
    step = [
        precondition(num, den, epsilon),
        trust_ratio_after_decay(learning_rate, weight_decay),
    ]
    return step, []


# the accumulator's initial value is read once, by init: set_hyperparams refuses it
Adagrad.state_class.read_at_init = ("initial_accumulator_value",)
