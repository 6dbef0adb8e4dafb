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

Passing the params first, torch's habit (``Adam(model.parameters(), lr=1e-3)``, or a pytree
or model of arrays), raises a ``TypeError`` that shows the gradx spelling. torch's param
groups (a list of dicts, each with its ``params`` and options) are refused the same way: JAX
builds the optimizer before it sees the params, so which arrays form a group cannot be named
here. The message spells the groups as ``optax.partition`` over labels, one optimizer per
group; for the usual no-decay group on biases and norms, a weight-decay mask does the same.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._adaptive import (
    inf_norm,
    max_rms,
    nesterov_ema,
    precondition,
    rms,
    rss,
    scale_by_adadelta,
)
from gradx._core import (
    Rule,
    _is_number,
    add_decayed_weights,
    decoupled_weight_decay,
    optimizer,
    scale_by_learning_rate,
    wide,
)
from gradx._core import _check_flag as _core_check_flag
from gradx._momentum import ema, trace
from gradx._sign import rprop

__all__ = ["SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "RMSprop", "Rprop"]


# ----------------------------------------------------------------------------- shared helpers


def _check_number(cls: str, name: str, value: Any, rule: str) -> None:
    """``rule`` (see ``gradx.Rule``) for a number, or for a schedule's value at step 0."""
    if callable(value) and not hasattr(value, "dtype"):
        Rule.parse(rule).check(cls, f"{name} (its schedule's value at step 0)", value(0))
    else:
        Rule.parse(rule).check(cls, name, value)


def _check_flag(cls: str, name: str, value: Any, allow_none: bool = False) -> None:
    """The check gradx's own optimizers make of a flag (a bool, NumPy's included)."""
    _core_check_flag(cls, name, value, "optional" if allow_none else "bool")


def _pair(cls: str, name: str, value: Any, rule: str, holds: Any) -> tuple[float, float]:
    """A concrete pair of finite numbers for which ``holds(first, second)`` is true."""
    try:
        first, second = value
        # Real scalars only: NumPy would drop a complex part (with a warning) or broadcast.
        ok = all(
            _is_number(v) and not isinstance(v, bool) and np.ndim(v) == 0 for v in (first, second)
        )
        if ok:
            numbers = np.asarray([first, second], np.float64)
            ok = bool(np.all(np.isfinite(numbers))) and bool(holds(*numbers))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{cls}: {name} must be {rule}, got {value!r}")
    return first, second


class MaximizeState(NamedTuple):
    """The sign flip for ``maximize=True`` keeps no state."""


def _maximize() -> optax.GradientTransformationExtraArgs:
    """Block: g ← −g, torch's ``maximize=True`` (placed before everything else)."""

    def init(params: Any) -> MaximizeState:
        del params
        return MaximizeState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        return jax.tree.map(jnp.negative, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


def _with_maximize(
    opt: optax.GradientTransformationExtraArgs, maximize: bool
) -> optax.GradientTransformationExtraArgs:
    return optax.chain(_maximize(), opt) if maximize else opt


# ----------------------------------------------------------------------------- torch's params


def _looks_like_params(value: Any) -> bool:
    """Whether a value given as ``lr`` (the first argument) is rather a model's params.

    torch's first argument is the params (``model.parameters()``, a list of tensors or of
    param groups); a JAX user's is a pytree of arrays or a callable model (nnx, equinox).
    A number, a 0-d array or a schedule (a callable holding no arrays) is a learning rate.
    """
    if isinstance(value, (str, bytes, bool, int, float, complex, np.number)):
        return False
    if callable(value) and not hasattr(value, "dtype"):
        leaves = jax.tree.leaves(value)
        return any(np.ndim(leaf) > 0 for leaf in leaves if hasattr(leaf, "shape"))
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return np.ndim(value) > 0
    return isinstance(value, Iterable) or jax.tree.leaves(value) != [value]


def _param_groups(value: Any) -> list[Mapping[str, Any]] | None:
    """torch's param groups (a list of dicts, each with ``"params"``), or None."""
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(g, Mapping) and "params" in g for g in value):
            return list(value)
    return None


def _describe(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _call(cls: str, options: Mapping[str, Any]) -> str:
    arguments = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"gradx.compat.torch.{cls}({arguments})"


def _no_params(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Refuses torch's habit of passing the params first, with the gradx spelling.

    ``torch.optim.Adam(model.parameters(), lr=1e-3)`` is ``gradx.compat.torch.Adam(lr=1e-3)``
    followed by ``opt.init(params)``: JAX optimizers are built before they see the params.
    torch's param groups are refused too: which arrays form a group is not known when the
    optimizer is built, so the message spells the groups as an ``optax.partition`` over
    labels, one gradx optimizer per group.
    """
    cls = factory.__name__
    names = list(inspect.signature(factory).parameters)  # lr, then torch's order

    @functools.wraps(factory)
    def checked(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        if "params" in kwargs:
            given, rest = kwargs.pop("params"), dict(zip(names, args, strict=False))
        elif args and _looks_like_params(args[0]):
            given, rest = args[0], dict(zip(names, args[1:], strict=False))
        else:
            return factory(*args, **kwargs)
        options = {**rest, **kwargs}
        groups = _param_groups(given)
        if groups is not None:
            labelled = ", ".join(
                f'"group{i}": '
                + _call(cls, {**options, **{k: v for k, v in g.items() if k != "params"}})
                for i, g in enumerate(groups)
            )
            labels = "/".join(f'"group{i}"' for i in range(len(groups)))
            raise TypeError(
                f"{cls}: torch's param groups have no gradx form (the optimizer is built "
                f"before it sees the params), got {len(groups)} groups. Give each group a "
                f"label and its own optimizer:\n"
                f"    opt = optax.partition({{{labelled}}}, param_labels)\n"
                f"where param_labels is a pytree like the params holding {labels} (or a "
                f"function of the params returning it). For the usual group without weight "
                f"decay, gradx.adamw(..., mask=...) also does it in one optimizer."
            )
        raise TypeError(
            f"{cls}: lr must be a number >= 0 or a schedule, got {_describe(given)}: "
            f"gradx.compat.torch optimizers take no params (they get them at init). For "
            f"torch.optim.{cls}(params, ...) write opt = {_call(cls, options)}, then "
            f"state = opt.init(params)."
        )

    return checked


# ----------------------------------------------------------------------------- optimizers


@_no_params
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
    _check_number(cls, "lr", lr, ">= 0")
    eta_minus, eta_plus = _pair(
        cls,
        "etas",
        etas,
        "(eta_minus, eta_plus) with 0 < eta_minus < 1 < eta_plus",
        lambda lo, hi: 0 < lo < 1 < hi,
    )
    min_step, max_step = _pair(
        cls,
        "step_sizes",
        step_sizes,
        "(min_step, max_step) with 0 <= min_step <= max_step and max_step > 0",
        lambda lo, hi: 0 <= lo <= hi and hi > 0,
    )
    _check_flag(cls, "foreach", foreach, allow_none=True)
    for name, flag in (
        ("maximize", maximize),
        ("differentiable", differentiable),
        ("capturable", capturable),
    ):
        _check_flag(cls, name, flag)
    opt = rprop(
        lr,
        eta_plus=eta_plus,
        eta_minus=eta_minus,
        min_step=min_step,
        max_step=max_step,
        irprop_minus=True,
    )
    return _with_maximize(opt, maximize)


# ----------------------------------------------------------------- the rest of torch.optim
#
# Each torch class below validates torch's arguments, then builds a gradx optimizer whose
# hyperparameters use gradx's names (learning_rate, b1, b2, eps, weight_decay, ...). A zero
# momentum or weight decay leaves its block out, as torch's own code skips that work.


def _check_switches(cls: str, **flags: Any) -> None:
    for name, flag in flags.items():
        _check_flag(cls, name, flag, allow_none=name in ("foreach", "fused"))


def _checked(cls: str, inner: Any, **torch_args: Any) -> None:
    """Checks torch's numbers, named as in torch, against the gradx optimizer's rules."""
    for name, value in torch_args.items():
        rule = inner.hyperparameter_rules["learning_rate" if name == "lr" else name]
        rule.check_hyperparameter(cls, name, value)


def _off_if_zero(value: Any) -> Any:
    return None if isinstance(value, (int, float)) and value == 0 else value


def _betas(cls: str, betas: Any) -> tuple[float, float]:
    return _pair(
        cls,
        "betas",
        betas,
        "(beta1, beta2) with 0 <= beta < 1",
        lambda b1, b2: 0 <= b1 < 1 and 0 <= b2 < 1,
    )


class ScaleByLrDecayState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t


def _scale_by_lr_decay(lr_decay: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Block: u ← u / (1 + (t − 1)·lr_decay), torch Adagrad's decaying learning rate."""

    def init(params: Any) -> ScaleByLrDecayState:
        del params
        return ScaleByLrDecayState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        decay = jnp.asarray(lr_decay)
        factor = 1 / (1 + state.count.astype(decay.dtype) * decay)
        out = jax.tree.map(lambda u: (wide(u, decay) * factor).astype(u.dtype), updates)
        return out, ScaleByLrDecayState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def _chain(
    step: list, learning_rate: Any, weight_decay: Any, decoupled: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Torch's step with its weight decay: [g ← g + λ·θ] → step → ×(−γ), or, ``decoupled``,
    step → ×(−γ) → [u ← u − γ·λ·θ] (AdamW). ``weight_decay`` None: no decay block."""
    decays = weight_decay is not None
    coupled = [add_decayed_weights(weight_decay)] if decays and not decoupled else []
    after = [decoupled_weight_decay(weight_decay, learning_rate)] if decays and decoupled else []
    return optax.chain(*coupled, *step, scale_by_learning_rate(learning_rate), *after)


@optimizer(learning_rate=">= 0", momentum=">= 0", dampening="[0, 1]", weight_decay=">= 0")
def _sgd(learning_rate, momentum, dampening, weight_decay, nesterov):
    velocity = [] if momentum is None else [trace(momentum, nesterov, dampening=dampening)]
    return _chain(velocity, learning_rate, weight_decay)


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.SGD``: g ← g + λ·θ; b₁ = g, b ← μ·b + (1 − d)·g; θ ← θ − γ·b.

    Nesterov: θ ← θ − γ·(g + μ·b). γ stays outside the buffer (unlike ``gradx.momentum``),
    and the first buffer is the undamped gradient.
    """
    cls = "SGD"
    _checked(cls, _sgd, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay)
    _check_switches(
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
    opt = _sgd(
        lr, _off_if_zero(momentum), _off_if_zero(dampening), _off_if_zero(weight_decay), nesterov
    )
    return _with_maximize(opt, maximize)


@optimizer(learning_rate=">= 0", alpha="[0, 1]", eps=">= 0", weight_decay=">= 0", momentum=">= 0")
def _rmsprop(learning_rate, alpha, eps, weight_decay, momentum, centered):
    velocity = [] if momentum is None else [trace(momentum)]
    step = [precondition(optax.identity(), rms(alpha, centered=centered), eps), *velocity]
    return _chain(step, learning_rate, weight_decay)


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.RMSprop``: v ← α·v + (1−α)·g²; θ ← θ − γ·g/(√v + ε) (ε outside).

    ``centered`` uses √(v − a²) + ε; ``momentum`` μ: b ← μ·b + g/den, θ ← θ − γ·b.
    """
    cls = "RMSprop"
    _checked(
        cls, _rmsprop, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum
    )
    _check_switches(
        cls,
        centered=centered,
        capturable=capturable,
        foreach=foreach,
        maximize=maximize,
        differentiable=differentiable,
    )
    opt = _rmsprop(lr, alpha, eps, _off_if_zero(weight_decay), _off_if_zero(momentum), centered)
    return _with_maximize(opt, maximize)


@optimizer(
    learning_rate=">= 0",
    lr_decay=">= 0",
    weight_decay=">= 0",
    initial_accumulator_value=">= 0",
    eps=">= 0",
)
def _adagrad(learning_rate, lr_decay, weight_decay, initial_accumulator_value, eps):
    decay = [] if lr_decay is None else [_scale_by_lr_decay(lr_decay)]
    step = [precondition(optax.identity(), rss(initial_accumulator_value), eps), *decay]
    return _chain(step, learning_rate, weight_decay)


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adagrad``: G ← G + g²; θ ← θ − γ/(1 + (t−1)·lr_decay)·g/(√G + ε)."""
    cls = "Adagrad"
    _checked(
        cls,
        _adagrad,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
    )
    _check_switches(
        cls, foreach=foreach, maximize=maximize, differentiable=differentiable, fused=fused
    )
    opt = _adagrad(
        lr, _off_if_zero(lr_decay), _off_if_zero(weight_decay), initial_accumulator_value, eps
    )
    return _with_maximize(opt, maximize)


@optimizer(learning_rate=">= 0", rho="[0, 1]", eps=">= 0", weight_decay=">= 0")
def _adadelta(learning_rate, rho, eps, weight_decay):
    return _chain([scale_by_adadelta(rho, eps)], learning_rate, weight_decay)


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adadelta``: Zeiler's rule (see ``gradx.adadelta``) times γ."""
    cls = "Adadelta"
    _checked(cls, _adadelta, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
    _check_switches(
        cls,
        foreach=foreach,
        capturable=capturable,
        maximize=maximize,
        differentiable=differentiable,
    )
    return _with_maximize(_adadelta(lr, rho, eps, _off_if_zero(weight_decay)), maximize)


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0", weight_decay=">= 0")
def _adam(learning_rate, b1, b2, eps, weight_decay, amsgrad, decoupled):
    den = max_rms(b2, max_of="raw_v") if amsgrad else rms(b2, debias=True)
    step = [precondition(ema(b1, debias=True), den, eps)]
    return _chain(step, learning_rate, weight_decay, decoupled)


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adam``: Algorithm 1 of Kingma & Ba, ε outside the root.

    ``weight_decay`` is coupled L2 (g ← g + λ·θ) unless ``decoupled_weight_decay=True``
    (then it is ``AdamW``). ``amsgrad`` takes the max over the raw v, then divides by
    √(1 − β₂ᵗ).
    """
    return _adam_like(
        "Adam",
        lr,
        betas,
        eps,
        weight_decay,
        amsgrad,
        decoupled_weight_decay,
        foreach,
        maximize,
        capturable,
        differentiable,
        fused,
    )


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.AdamW``: θ ← (1 − γλ)·θ, then Adam's step (decoupled weight decay)."""
    return _adam_like(
        "AdamW",
        lr,
        betas,
        eps,
        weight_decay,
        amsgrad,
        True,
        foreach,
        maximize,
        capturable,
        differentiable,
        fused,
    )


def _adam_like(
    cls,
    lr,
    betas,
    eps,
    weight_decay,
    amsgrad,
    decoupled,
    foreach,
    maximize,
    capturable,
    differentiable,
    fused,
):
    _checked(cls, _adam, lr=lr, eps=eps, weight_decay=weight_decay)
    b1, b2 = _betas(cls, betas)
    _check_switches(
        cls,
        amsgrad=amsgrad,
        decoupled_weight_decay=decoupled,
        foreach=foreach,
        maximize=maximize,
        capturable=capturable,
        differentiable=differentiable,
        fused=fused,
    )
    opt = _adam(lr, b1, b2, eps, _off_if_zero(weight_decay), amsgrad, decoupled)
    return _with_maximize(opt, maximize)


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0", weight_decay=">= 0")
def _adamax(learning_rate, b1, b2, eps, weight_decay):
    step = [precondition(ema(b1, debias=True), inf_norm(b2, eps))]
    return _chain(step, learning_rate, weight_decay)


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Adamax``: u ← max(β₂·u, |g| + ε); θ ← θ − γ/(1−β₁ᵗ)·m/u."""
    cls = "Adamax"
    _checked(cls, _adamax, lr=lr, eps=eps, weight_decay=weight_decay)
    b1, b2 = _betas(cls, betas)
    _check_switches(
        cls,
        foreach=foreach,
        maximize=maximize,
        differentiable=differentiable,
        capturable=capturable,
    )
    return _with_maximize(_adamax(lr, b1, b2, eps, _off_if_zero(weight_decay)), maximize)


@optimizer(
    learning_rate=">= 0",
    b1="[0, 1)",
    b2="[0, 1)",
    eps=">= 0",
    weight_decay=">= 0",
    momentum_decay=">= 0",
)
def _nadam(learning_rate, b1, b2, eps, weight_decay, momentum_decay, decoupled):
    step = [precondition(nesterov_ema(b1, momentum_decay), rms(b2, debias=True), eps)]
    return _chain(step, learning_rate, weight_decay, decoupled)


@_no_params
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
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.NAdam``: Dozat's Nadam with μ_t = β₁(1 − ½·0.96^(ψt)), ψ = 0.004."""
    cls = "NAdam"
    _checked(cls, _nadam, lr=lr, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay)
    b1, b2 = _betas(cls, betas)
    _check_switches(
        cls,
        decoupled_weight_decay=decoupled_weight_decay,
        foreach=foreach,
        maximize=maximize,
        capturable=capturable,
        differentiable=differentiable,
    )
    opt = _nadam(
        lr, b1, b2, eps, _off_if_zero(weight_decay), momentum_decay, decoupled_weight_decay
    )
    return _with_maximize(opt, maximize)
