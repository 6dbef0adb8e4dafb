"""The checks and chains of blocks behind :mod:`gradx.compat.optax`."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from gradx._optimizers.adam import nesterov_ema
from gradx._optimizers.adaptive import scale_by_adadelta
from gradx._optimizers.momentum import ema
from gradx._optimizers.preconditioners import max_rms, precondition, rms
from gradx._optimizers.scaling import add_decayed_weights, scale_by_learning_rate
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import dtype_arg

_ADAM_RULES = dict(
    learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0", eps_root=">= 0", weight_decay=">= 0"
)


def check_like_optax(fn: str, inner: Any, **values: Any) -> None:
    """Checks optax's numbers against the rules of the gradx optimizer, named after ``fn``."""
    for name, value in values.items():
        inner.hyperparameter_rules[name].check_hyperparameter(fn, name, value)


def moment_dtype(fn: str, name: str, dtype: Any) -> None:
    """Refuses a moment dtype narrower than float32: optax multiplies the stored moment by β
    in that dtype (a Python β is weakly typed), gradx's blocks in float32; with bfloat16 the
    two runs are 1e-2 apart within 25 steps."""
    dtype = dtype_arg(fn, name, dtype)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        raise ValueError(
            f"{fn}: {name} must be None, float32 or float64, got {dtype.name}: optax computes "
            f"β·m in {dtype.name}, gradx's blocks in float32, so the numbers would differ; "
            f"gradx's own optimizers take {name}={dtype.name} with their float32 rule"
        )


def named_like_optax(name: str) -> Any:
    """Names a factory for @optimizer's messages; its __qualname__ stays unique."""

    def rename(factory: Any) -> Any:
        factory.__name__ = name
        return factory

    return rename


def off_if_zero(value: Any) -> Any:
    """None for a Python 0 (optax skips the block then too), else the value."""
    return None if isinstance(value, (int, float)) and value == 0 else value


@optimizer(**_ADAM_RULES)
@named_like_optax("adam")
def _adam(
    learning_rate, b1, b2, eps, eps_root, weight_decay, mask, mu_dtype, nesterov: bool,
    state_dtype=None, stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:  # fmt: skip
    """optax's scale_by_adam (nesterov: its Nadam), [+ λ·θ], then −γ: optax's adam family."""
    dtype_arg("adam", "mu_dtype", mu_dtype)
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    if nesterov:
        num = nesterov_ema(b1, momentum_decay=None, accumulator_dtype=mu_dtype, **store)
    else:
        num = ema(b1, debias=True, accumulator_dtype=mu_dtype, **store)
    blocks = [precondition(num, rms(b2, eps_root=eps_root, debias=True, **store), eps)]
    if weight_decay is not None:  # optax's adamw: added to the Adam step, then times −γ
        blocks.append(add_decayed_weights(weight_decay, mask))
    blocks.append(scale_by_learning_rate(learning_rate))
    return optax.chain(*blocks)


def optax_adam_like(
    fn, learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, wd=None, mask=None, store=None
):
    check_like_optax(
        fn, _adam, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root
    )
    if wd is not None:
        check_like_optax(fn, _adam, weight_decay=wd)
    if not isinstance(nesterov, bool):
        raise TypeError(f"{fn}: nesterov must be a bool, got {nesterov!r}")
    moment_dtype(fn, "mu_dtype", mu_dtype)
    return _adam(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        weight_decay=off_if_zero(wd),
        mask=mask,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        **(store or {}),
    )


@optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")
@named_like_optax("amsgrad")
def optax_amsgrad(
    learning_rate, b1, b2, eps, mu_dtype, bias_correction_mu: bool, bias_correction_nu: bool,
    state_dtype=None, stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:  # fmt: skip
    """optax's scale_by_amsgrad (max over v̂, or over v without correction), then −γ."""
    store = {"state_dtype": state_dtype, "stochastic_rounding": stochastic_rounding}
    num = ema(b1, debias=bias_correction_mu, accumulator_dtype=mu_dtype, **store)
    max_of = "v_hat" if bias_correction_nu else "raw_v_no_correction"
    den = max_rms(b2, max_of=max_of, **store)
    return optax.chain(precondition(num, den, eps), scale_by_learning_rate(learning_rate))


@optimizer(learning_rate=">= 0", rho="[0, 1)", eps=">= 0", weight_decay=">= 0")
@named_like_optax("adadelta")
def optax_adadelta(
    learning_rate, rho, eps, weight_decay, weight_decay_mask, state_dtype=None,
    stochastic_rounding: bool = False,
):  # fmt: skip
    """[+ λ·θ] → Zeiler's step → −γ: optax's adadelta."""
    decay = [] if weight_decay is None else [add_decayed_weights(weight_decay, weight_decay_mask)]
    step = scale_by_adadelta(
        rho, eps, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding
    )
    return optax.chain(*decay, step, scale_by_learning_rate(learning_rate))


def refuse_lookahead_params(params: Any) -> None:
    if isinstance(params, optax.LookaheadParams):
        raise TypeError(
            "lookahead: params must be the fast params, got an optax.LookaheadParams: gradx "
            "keeps the slow weights in the state, so init and update take the params you "
            "train (params.fast) and the updates apply to them"
        )
