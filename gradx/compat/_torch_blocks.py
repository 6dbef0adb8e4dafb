"""The blocks and checks behind :mod:`gradx.compat.torch`: torch's maximize and lr_decay, its
coupled weight decay, its argument checks, and the chains of blocks each class builds.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._optimizers.adam import nesterov_ema
from gradx._optimizers.adaptive import scale_by_adadelta
from gradx._optimizers.groups import grouped
from gradx._optimizers.momentum import ema, trace
from gradx._optimizers.preconditioners import inf_norm, max_rms, precondition, rms, rss
from gradx._optimizers.rectified import rectified
from gradx._optimizers.scaling import (
    add_decayed_weights,
    decoupled_weight_decay,
    scale_by_learning_rate,
)
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import abs_sq, coef, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    denominator_gain_rule,
    gain_rule,
    in_gain_dtype,
    steps_taken,
)
from gradx._protocol.rules import Rule, is_number
from gradx._protocol.rules import check_flag as _core_check_flag
from gradx._protocol.storage import decode_moments, moment_codec


def check_number(cls: str, name: str, value: Any, rule: str) -> None:
    """``rule`` (see ``gradx.Rule``) for a number, or for a schedule's value at step 0."""
    if callable(value) and not hasattr(value, "dtype"):
        Rule.parse(rule).check(cls, f"{name} (its schedule's value at step 0)", value(0))
    else:
        Rule.parse(rule).check(cls, name, value)


def check_torch_flag(cls: str, name: str, value: Any, allow_none: bool = False) -> None:
    """The check gradx's own optimizers make of a flag (a bool, NumPy's included)."""
    _core_check_flag(cls, name, value, "optional" if allow_none else "bool")


def checked_pair(cls: str, name: str, value: Any, rule: str, holds: Any) -> tuple[float, float]:
    """A concrete pair of finite numbers for which ``holds(first, second)`` is true."""
    try:
        first, second = value
        # Real scalars only: NumPy would drop a complex part (with a warning) or broadcast.
        ok = all(
            is_number(v) and not isinstance(v, bool) and np.ndim(v) == 0 for v in (first, second)
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


def with_maximize(
    opt: optax.GradientTransformationExtraArgs, maximize: bool
) -> optax.GradientTransformationExtraArgs:
    return optax.chain(_maximize(), opt) if maximize else opt


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


def no_params(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Refuses torch's habit of passing the params first, with the gradx spelling, and takes
    torch's param groups with patterns in place of tensors.

    ``torch.optim.Adam(model.parameters(), lr=1e-3)`` is ``gradx.compat.torch.Adam(lr=1e-3)``
    followed by ``opt.init(params)``: JAX optimizers are built before they see the params.
    torch's param groups (a list of dicts) are taken when each group's ``"params"`` is a
    regular expression naming its leaves by key path (see :func:`torch_param_groups`); given
    arrays, they are refused with that spelling.
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
            bad = [i for i, g in enumerate(groups) if not isinstance(g["params"], _PATTERN)]
            if not bad:
                return torch_param_groups(cls, factory, groups, options)
            spelled = ", ".join(
                "{"
                + ", ".join(
                    [f"'params': r'<pattern {i}>'"]
                    + [f"{k!r}: {v!r}" for k, v in g.items() if k != "params"]
                )
                + "}"
                for i, g in enumerate(groups)
            )
            arguments = "".join(f", {k}={v!r}" for k, v in options.items())
            raise TypeError(
                f"{cls}: a param group's 'params' must be a regular expression that names its "
                f"leaves by key path (the optimizer is built before it sees the params), got "
                f"{_describe(groups[bad[0]]['params'])} in group {bad[0]}. Write:\n"
                f"    opt = gradx.compat.torch.{cls}([{spelled}]{arguments})\n"
                f"where each pattern matches the '/'-joined key paths of the group's leaves "
                f"(e.g. r'(^|/)bias$'); see gradx.param_groups."
            )
        raise TypeError(
            f"{cls}: lr must be a number >= 0 or a schedule, got {_describe(given)}: "
            f"gradx.compat.torch optimizers take no params (they get them at init). For "
            f"torch.optim.{cls}(params, ...) write opt = {_call(cls, options)}, then "
            f"state = opt.init(params)."
        )

    return checked


_PATTERN = (str, re.Pattern)


def torch_param_groups(
    cls: str, factory: Callable[..., Any], groups: list[Mapping[str, Any]], options: dict
) -> optax.GradientTransformationExtraArgs:
    """torch's param groups, each a dict with ``"params"`` a regular expression.

    As in torch, a group's missing options take the constructor's (``options``), and each
    group's optimizer is the class built with them, on its own leaves with its own state. A
    leaf goes to the first group whose pattern ``re.search``-es its key path (see
    ``gradx.param_groups``); a leaf no group takes is an error at ``init`` (torch steps only
    the params it was given, and a silently frozen leaf is rarely meant). An optional
    ``"name"`` names the group in ``gradx.hyperparams`` (by default ``group0``, ``group1``,
    ... in list order).
    """
    built = []
    for i, group in enumerate(groups):
        name = group.get("name", f"group{i}")
        settings = {k: v for k, v in group.items() if k not in ("params", "name")}
        try:
            tx = factory(**{**options, **settings})
        except (TypeError, ValueError) as e:
            why = str(e).removeprefix(f"{cls}: ")
            raise type(e)(f"{cls}: param group {i} ({name!r}): {why}") from None
        built.append((name, group["params"], tx))
    return grouped(cls, built, None)


def check_switches(cls: str, **flags: Any) -> None:
    for name, flag in flags.items():
        check_torch_flag(cls, name, flag, allow_none=name in ("foreach", "fused"))


def check_like_torch(cls: str, inner: Any, **torch_args: Any) -> None:
    """Checks torch's numbers, named as in torch, against the gradx optimizer's rules."""
    for name, value in torch_args.items():
        rule = inner.hyperparameter_rules["learning_rate" if name == "lr" else name]
        rule.check_hyperparameter(cls, name, value)


def torch_off_if_zero(value: Any) -> Any:
    return None if isinstance(value, (int, float)) and value == 0 else value


def checked_betas(cls: str, betas: Any) -> tuple[float, float]:
    return checked_pair(
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
def torch_sgd(
    learning_rate, momentum, dampening, weight_decay, nesterov, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    velocity = (
        [] if momentum is None else [trace(momentum, nesterov, dampening=dampening, **store)]
    )
    return _chain(velocity, learning_rate, weight_decay)


@optimizer(learning_rate=">= 0", alpha="[0, 1]", eps=">= 0", weight_decay=">= 0", momentum=">= 0")
def torch_rmsprop(
    learning_rate, alpha, eps, weight_decay, momentum, centered, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    velocity = [] if momentum is None else [trace(momentum, **store)]
    den = rms(alpha, centered=centered, **store)
    step = [precondition(optax.identity(), den, eps), *velocity]
    return _chain(step, learning_rate, weight_decay)


@optimizer(
    learning_rate=">= 0",
    lr_decay=">= 0",
    weight_decay=">= 0",
    initial_accumulator_value=">= 0",
    eps=">= 0",
)
def torch_adagrad(
    learning_rate, lr_decay, weight_decay, initial_accumulator_value, eps, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    decay = [] if lr_decay is None else [_scale_by_lr_decay(lr_decay)]
    den = rss(initial_accumulator_value, **store)
    step = [precondition(optax.identity(), den, eps), *decay]
    return _chain(step, learning_rate, weight_decay)


@optimizer(learning_rate=">= 0", rho="[0, 1]", eps=">= 0", weight_decay=">= 0")
def torch_adadelta(
    learning_rate, rho, eps, weight_decay, state_dtype=None, stochastic_rounding: bool = False
):
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    return _chain([scale_by_adadelta(rho, eps, **store)], learning_rate, weight_decay)


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0", weight_decay=">= 0")
def torch_adam(
    learning_rate, b1, b2, eps, weight_decay, amsgrad, decoupled, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    den = max_rms(b2, max_of="raw_v", **store) if amsgrad else rms(b2, debias=True, **store)
    step = [precondition(ema(b1, debias=True, **store), den, eps)]
    return _chain(step, learning_rate, weight_decay, decoupled)


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0", weight_decay=">= 0")
def torch_adamax(
    learning_rate, b1, b2, eps, weight_decay, state_dtype=None, stochastic_rounding: bool = False
):
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    step = [precondition(ema(b1, debias=True, **store), inf_norm(b2, eps, **store))]
    return _chain(step, learning_rate, weight_decay)


@optimizer(
    learning_rate=">= 0",
    b1="[0, 1)",
    b2="[0, 1)",
    eps=">= 0",
    weight_decay=">= 0",
    momentum_decay=">= 0",
)
def torch_nadam(
    learning_rate, b1, b2, eps, weight_decay, momentum_decay, decoupled, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    num = nesterov_ema(b1, momentum_decay, **store)
    step = [precondition(num, rms(b2, debias=True, **store), eps)]
    return _chain(step, learning_rate, weight_decay, decoupled)


class TorchRadamRootState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    nu: Any  # like params, real: EMA of |g|²


def _torch_radam_root(
    decay: Any, eps: Any, *, state_dtype: Any = None, stochastic_rounding: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Denominator of torch's RAdam: (√v + ε)/√(1 − β₂ᵗ), ε on the raw root.

    torch's adaptive rate is √(1 − β₂ᵗ)/(√v + ε); gradx's ``rms(debias=True)`` with ε outside
    would give 1/(√v̂ + ε), which differs by ε·(1 − √(1 − β₂ᵗ)) in the denominator.
    v is stored as ``state_dtype`` says (see :func:`gradx.adam`).
    """
    codec = moment_codec(
        "RAdam", "state_dtype", None, state_dtype, stochastic_rounding, nonnegative=True
    )

    def init(params: Any) -> TorchRadamRootState:
        return TorchRadamRootState(count=jnp.zeros([], jnp.int32), nu=codec.init(params, "nu"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        b2, e = jnp.asarray(decay), jnp.asarray(eps)
        count = optax.safe_increment(state.count)
        root_c = jnp.sqrt(1 - b2 ** count.astype(b2.dtype))

        def ema_sq(g, v):
            vw = wide(v, b2, e)
            return coef(b2, vw) * vw + coef(1 - b2, vw) * abs_sq(wide(g, b2, e)).astype(vw.dtype)

        nu = jax.tree.map(ema_sq, updates, codec.decode(state.nu))
        nu, stored_nu = codec.store(nu, state.nu, (b2, 1 - b2, updates, True))
        out = jax.tree.map(lambda v: (jnp.sqrt(v) + coef(e, v)) / coef(root_c, v), nu)
        return out, TorchRadamRootState(count=count, nu=stored_nu)

    return optax.GradientTransformationExtraArgs(init, update)


@denominator_gain_rule(_torch_radam_root)
def _torch_radam_root_gain(ctx, cells, state):
    b2 = in_gain_dtype(ctx, closure_value(cells, "decay", "_torch_radam_root"))
    eps = in_gain_dtype(ctx, closure_value(cells, "eps", "_torch_radam_root"))
    root_c = jnp.sqrt(1 - b2 ** steps_taken(ctx, state.count))
    nu = decode_moments(state.nu)
    return jax.tree.map(lambda v: (jnp.sqrt(in_gain_dtype(ctx, v)) + eps) / root_c, nu)


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0", weight_decay=">= 0")
def torch_radam(
    learning_rate, b1, b2, eps, weight_decay, decoupled, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    # torch switches at ρ_t > 5; rectified at ρ_t ≥ 5: ρ_t is never exactly 5 for β₂ in (0, 1)
    # short of contrived values, and both give the same step up to r_t = √(1·3·…/…) there.
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    num, den = ema(b1, debias=True, **store), _torch_radam_root(b2, eps, **store)
    step = [rectified(num, den, b2, 5.0)]
    return _chain(step, learning_rate, weight_decay, decoupled)


@gain_rule(_maximize)
def _maximize_gain(ctx, cells, state, incoming):
    out = None if incoming is None else jax.tree.map(jnp.negative, incoming)
    return Gain(-jnp.ones([], ctx.dtype)), out


@gain_rule(_scale_by_lr_decay)
def _lr_decay_gain(ctx, cells, state, incoming):
    decay = in_gain_dtype(ctx, closure_value(cells, "lr_decay", "_scale_by_lr_decay"))
    factor = 1 / (1 + (steps_taken(ctx, state.count) - 1) * decay)
    out = None if incoming is None else jax.tree.map(lambda g: g * factor.astype(g.dtype), incoming)
    return Gain(factor), out


def torch_adam_like(cls, lr, betas, eps, weight_decay, amsgrad, decoupled, switches, store):
    """``Adam`` and ``AdamW``: torch's checks, then :func:`torch_adam` (``switches``: torch's
    kernel flags and ``maximize``; ``store``: the checked ``state_dtype`` arguments)."""
    check_like_torch(cls, torch_adam, lr=lr, eps=eps, weight_decay=weight_decay)
    b1, b2 = checked_betas(cls, betas)
    check_switches(cls, amsgrad=amsgrad, decoupled_weight_decay=decoupled, **switches)
    opt = torch_adam(
        lr, b1, b2, eps, torch_off_if_zero(weight_decay), amsgrad, decoupled, **store
    )
    return with_maximize(opt, switches["maximize"])


# the accumulator's initial value is read once, by init: set_hyperparams refuses it
torch_adagrad.state_class.read_at_init = ("initial_accumulator_value",)
