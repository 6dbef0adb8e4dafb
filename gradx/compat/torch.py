"""``torch.optim``'s optimizers as gradx optimizers, with torch's numbers.

Each factory is named like its ``torch.optim`` class and takes that class's argument names and
defaults, without ``params``: ``gradx.compat.torch.Rprop(lr=0.01)`` stands for
``torch.optim.Rprop(model.parameters(), lr=0.01)``. It returns a gradx optimizer (an
``optax.GradientTransformationExtraArgs``, built from gradx's blocks) whose trajectory matches
torch's for the same gradients, in float64 to rounding; its hyperparameters live in its state,
readable with ``gradx.hyperparams``. Feed it the gradient of the loss you would call
``backward()`` on and apply the updates with ``optax.apply_updates``.

torch's implementation switches (``foreach``, ``fused``, ``capturable``, ``differentiable``)
choose kernels, not numbers: they are accepted and ignored (JAX programs are always
differentiable and capturable). ``maximize=True`` ascends, as in torch. Bad values raise
``ValueError`` in gradx's format, named after the torch class, e.g.
``"Rprop: etas must be (eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus, got (1.5, 1.2)"``.
The conventions each class reproduces are listed in ``docs/conventions.md``.

Every class with moments (all but ``Rprop``) also takes gradx's keyword-only ``state_dtype``
and ``stochastic_rounding``, which store the moments as in :func:`gradx.adam` (a float dtype,
bfloat16 rounded stochastically, or blockwise int8); torch has neither.

float16 params are where the numbers part by design: gradx keeps their never-negative moments
(v, AMSGrad's maximum, Adamax's u, Adagrad's sum, RMSprop's and Adadelta's averages of
squares, Adafactor's factors) in float32, their first moments in float16. torch 2.13 keeps all
its state in float16, where (1 − β₂)·g² and ``eps=1e-8`` round to 0 for small gradients: on
g = 1e-3 and lr = 1e-3 from θ = 0, torch's float16 ``Adam``, ``AdamW``, ``NAdam`` and
``RMSprop`` reach −inf at step 1 and ``RAdam`` at step 6, while gradx's step by about lr
(``Adam``: θ = −0.295 after 300 steps, against float32's −0.300, the gap being θ's own float16
rounding). torch's ``Adagrad``, ``Adadelta`` and ``Adamax`` do not underflow on that input.
``state_dtype="float16"`` stores every moment in float16 again, but the step is still computed
in float32, from the new moment before it is rounded: that reproduces neither torch's −inf nor
float32 (Adam's v̂ then holds one step's (1 − β₂)·g², and its step grows to about 16·lr in
300 steps). The measured numbers are in ``docs/conventions.md``.

Passing the params first, torch's habit (``Adam(model.parameters(), lr=1e-3)``, or a pytree
or model of arrays), raises a ``TypeError`` that shows the gradx spelling. torch's param
groups (a list of dicts, each with its ``params`` and the options that differ) are taken with
a regular expression for ``params``, since JAX builds the optimizer before it sees the params:
``AdamW([{"params": r"^embed/", "lr": 1e-4}, {"params": r".*"}], lr=1e-3)``. Each leaf goes
to the first group whose pattern ``re.search``-es its '/'-joined key path (as in
``gradx.param_groups``), a group's missing options take the constructor's (torch's rule), a
leaf no group takes is an error at ``init``, and ``gradx.hyperparams`` keys each group's
values ``group0/...``, ``group1/...`` (or by the group's optional ``"name"``). Groups of
arrays are refused with that spelling.
"""

from __future__ import annotations

from typing import Any

import optax

from gradx._optimizers.sign import rprop
from gradx._protocol.storage import state_dtype_args
from gradx.compat._adafactor import Adafactor as Adafactor
from gradx.compat._torch_blocks import (
    check_like_torch,
    check_number,
    check_switches,
    check_torch_flag,
    checked_betas,
    checked_pair,
    no_params,
    torch_adadelta,
    torch_adagrad,
    torch_adam_like,
    torch_adamax,
    torch_nadam,
    torch_off_if_zero,
    torch_radam,
    torch_rmsprop,
    torch_sgd,
    with_maximize,
)
from gradx.compat._torch_muon import Muon as Muon

__all__ = [
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
]


@no_params
def Rprop(
    lr: optax.ScalarOrSchedule = 0.01,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50),
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Rprop``: iRprop⁻, with torch's defaults.

    torch 2.13's update, for t = 1, 2, ..., with step⁰ = lr and prev⁰ = 0 for every weight
    and s = sign(g·prev)::

        step ← clamp(step·(η⁺ if s > 0, η⁻ if s < 0, 1 if s = 0), min_step, max_step)
        g ← 0 where s < 0
        θ ← θ − step·sign(g);  prev ← g

    so the step size is clamped on every step, the first included, and a weight whose
    gradient changed sign does not move on that step. A NaN gradient acts as 0, as in torch:
    torch's sign(NaN) is 0, so s = 0 (factor 1, the step size is kept), the weight moves by
    step·sign(NaN) = 0, and the NaN stored as prev makes the next s 0 again, as a 0 would.
    The weight carries on with the next finite gradient instead of turning NaN.

    This is ``gradx.rprop(lr, eta_plus=η⁺, eta_minus=η⁻, min_step=..., max_step=...,
    irprop_minus=True)``; its state holds the hyperparameters under gradx's names
    (``learning_rate, eta_plus, eta_minus, min_step, max_step``).

    Args:
      lr: the initial step size, ≥ 0 (read at the first update; torch also uses ``lr`` only
        to initialise the step sizes).
      etas: (η⁻, η⁺) with 0 < η⁻ < 1 < η⁺.
      step_sizes: (min_step, max_step) with 0 ≤ min_step ≤ max_step and max_step > 0.
      foreach: accepted and ignored (a kernel choice in torch).
      maximize: ascend: the gradient's sign is flipped before everything else.
      differentiable: accepted and ignored (JAX can always differentiate through the step).
      capturable: accepted and ignored (a CUDA-graph switch in torch).

    Reference:
      Igel, Hüsken, "Improving the Rprop learning algorithm", NC 2000 (iRprop⁻).

    Note:
      gradx's own ``gradx.rprop`` follows seed 004 instead (η⁻ = 0.6, a sign change still
      moves, a zero product shrinks the step, the first step is not adapted). optax 0.2.8's
      ``rprop`` lags one step behind both (``docs/conventions.md``, Rprop).
    """
    cls = "Rprop"
    check_number(cls, "lr", lr, ">= 0")
    eta_minus, eta_plus = checked_pair(
        cls,
        "etas",
        etas,
        "(eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus",
        lambda lo, hi: 0 < lo < 1 < hi,
    )
    min_step, max_step = checked_pair(
        cls,
        "step_sizes",
        step_sizes,
        "(min_step, max_step) with 0 <= min_step <= max_step and max_step > 0",
        lambda lo, hi: 0 <= lo <= hi and hi > 0,
    )
    check_torch_flag(cls, "foreach", foreach, allow_none=True)
    for name, flag in (
        ("maximize", maximize),
        ("differentiable", differentiable),
        ("capturable", capturable),
    ):
        check_torch_flag(cls, name, flag)
    opt = rprop(
        lr,
        eta_plus=eta_plus,
        eta_minus=eta_minus,
        min_step=min_step,
        max_step=max_step,
        irprop_minus=True,
    )
    return with_maximize(opt, maximize)


@no_params
def SGD(
    lr: optax.ScalarOrSchedule = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    differentiable: bool = False,
    fused: bool | None = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.SGD``: g ← g + λ·θ; b₁ = g, b ← μ·b + (1 − d)·g; θ ← θ − γ·b.

    Nesterov: θ ← θ − γ·(g + μ·b). γ stays outside the buffer (unlike ``gradx.momentum``),
    and the first buffer is the undamped gradient.
    """
    cls = "SGD"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(
        cls, torch_sgd, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay
    )
    check_switches(
        cls,
        nesterov=nesterov,
        maximize=maximize,
        foreach=foreach,
        differentiable=differentiable,
        fused=fused,
    )
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"{cls}: nesterov=True requires momentum > 0 and dampening = 0, got "
            f"momentum={momentum!r}, dampening={dampening!r}"
        )
    opt = torch_sgd(
        lr,
        torch_off_if_zero(momentum),
        torch_off_if_zero(dampening),
        torch_off_if_zero(weight_decay),
        nesterov,
        **store,
    )
    return with_maximize(opt, maximize)


@no_params
def RMSprop(
    lr: optax.ScalarOrSchedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.RMSprop``: v ← α·v + (1−α)·g²; θ ← θ − γ·g/(√v + ε) (ε outside).

    ``centered`` uses √(v − a²) + ε; ``momentum`` μ: b ← μ·b + g/den, θ ← θ − γ·b.
    """
    cls = "RMSprop"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(
        cls,
        torch_rmsprop,
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
    )
    check_switches(
        cls,
        centered=centered,
        capturable=capturable,
        foreach=foreach,
        maximize=maximize,
        differentiable=differentiable,
    )
    opt = torch_rmsprop(
        lr,
        alpha,
        eps,
        torch_off_if_zero(weight_decay),
        torch_off_if_zero(momentum),
        centered,
        **store,
    )
    return with_maximize(opt, maximize)


@no_params
def Adagrad(
    lr: optax.ScalarOrSchedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adagrad``: G ← G + g²; θ ← θ − γ/(1 + (t−1)·lr_decay)·g/(√G + ε).
    """
    cls = "Adagrad"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(
        cls,
        torch_adagrad,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
    )
    check_switches(
        cls, foreach=foreach, maximize=maximize, differentiable=differentiable, fused=fused
    )
    opt = torch_adagrad(
        lr,
        torch_off_if_zero(lr_decay),
        torch_off_if_zero(weight_decay),
        initial_accumulator_value,
        eps,
        **store,
    )
    return with_maximize(opt, maximize)


@no_params
def Adadelta(
    lr: optax.ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    foreach: bool | None = None,
    *,
    capturable: bool = False,
    maximize: bool = False,
    differentiable: bool = False,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adadelta``: Zeiler's rule (see ``gradx.adadelta``) times γ.
    """
    cls = "Adadelta"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(cls, torch_adadelta, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
    check_switches(
        cls,
        foreach=foreach,
        capturable=capturable,
        maximize=maximize,
        differentiable=differentiable,
    )
    opt = torch_adadelta(lr, rho, eps, torch_off_if_zero(weight_decay), **store)
    return with_maximize(opt, maximize)


@no_params
def Adam(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    decoupled_weight_decay: bool = False,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adam``: Algorithm 1 of Kingma & Ba, ε outside the root.

    ``weight_decay`` is coupled L2 (g ← g + λ·θ) unless ``decoupled_weight_decay=True``
    (then it is ``AdamW``). ``amsgrad`` takes the max over the raw v, then divides by
    √(1 − β₂ᵗ).
    """
    store = state_dtype_args("Adam", state_dtype, stochastic_rounding)
    switches = dict(foreach=foreach, maximize=maximize, capturable=capturable, fused=fused)
    switches.update(differentiable=differentiable)
    return torch_adam_like(
        "Adam", lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay, switches, store
    )


@no_params
def AdamW(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.AdamW``: θ ← (1 − γλ)·θ, then Adam's step (decoupled weight decay).
    """
    store = state_dtype_args("AdamW", state_dtype, stochastic_rounding)
    switches = dict(foreach=foreach, maximize=maximize, capturable=capturable, fused=fused)
    switches.update(differentiable=differentiable)
    return torch_adam_like("AdamW", lr, betas, eps, weight_decay, amsgrad, True, switches, store)


@no_params
def Adamax(
    lr: optax.ScalarOrSchedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    capturable: bool = False,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adamax``: u ← max(β₂·u, ``|g|`` + ε); θ ← θ − γ/(1−β₁ᵗ)·m/u.
    """
    cls = "Adamax"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(cls, torch_adamax, lr=lr, eps=eps, weight_decay=weight_decay)
    b1, b2 = checked_betas(cls, betas)
    check_switches(
        cls,
        foreach=foreach,
        maximize=maximize,
        differentiable=differentiable,
        capturable=capturable,
    )
    opt = torch_adamax(lr, b1, b2, eps, torch_off_if_zero(weight_decay), **store)
    return with_maximize(opt, maximize)


@no_params
def NAdam(
    lr: optax.ScalarOrSchedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.NAdam``: Dozat's Nadam with μ_t = β₁(1 − ½·0.96^(ψt)), ψ = 0.004.
    """
    cls = "NAdam"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(
        cls, torch_nadam, lr=lr, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay
    )
    b1, b2 = checked_betas(cls, betas)
    check_switches(
        cls,
        decoupled_weight_decay=decoupled_weight_decay,
        foreach=foreach,
        maximize=maximize,
        capturable=capturable,
        differentiable=differentiable,
    )
    opt = torch_nadam(
        lr,
        b1,
        b2,
        eps,
        torch_off_if_zero(weight_decay),
        momentum_decay,
        decoupled_weight_decay,
        **store,
    )
    return with_maximize(opt, maximize)


@no_params
def RAdam(
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.RAdam``: Adam rectified while ρ_t ≤ 5, ε on the raw root.

    θ ← θ − γ·r_t·m̂·√(1 − β₂ᵗ)/(√v + ε) where ρ_t > 5, else θ ← θ − γ·m̂ (ρ_t and r_t as in
    :func:`gradx.radam`). ε is added to √v before the bias correction, unlike
    ``gradx.radam``/``optax.radam`` (√v̂ + ε). ``weight_decay`` is coupled L2 unless
    ``decoupled_weight_decay=True`` (θ ← (1 − γλ)·θ first, as ``AdamW``).
    """
    cls = "RAdam"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(cls, torch_radam, lr=lr, eps=eps, weight_decay=weight_decay)
    b1, b2 = checked_betas(cls, betas)
    check_switches(
        cls,
        decoupled_weight_decay=decoupled_weight_decay,
        foreach=foreach,
        maximize=maximize,
        capturable=capturable,
        differentiable=differentiable,
    )
    wd = torch_off_if_zero(weight_decay)
    opt = torch_radam(lr, b1, b2, eps, wd, decoupled_weight_decay, **store)
    return with_maximize(opt, maximize)
