"""optax's optimizers as gradx optimizers, with optax's defaults and numbers.

Each function is named like its optax function and takes that function's arguments, in its
order, with its defaults: ``gradx.compat.optax.adamw(1e-3)`` stands for ``optax.adamw(1e-3)``
(``weight_decay=1e-4``, where ``gradx.adamw``'s default is 1e-2). It returns a gradx
optimizer built from gradx's blocks, with its hyperparameters in its state under optax's
names (``gradx.hyperparams(state)["b1"]``), whose updates equal optax 0.2.8's for the same
gradients, to float rounding. Porting an optax script is changing ``optax.X`` to
``gradx.compat.optax.X``.

Every function with moments also takes gradx's keyword-only ``state_dtype`` and
``stochastic_rounding`` (after optax's arguments), which store the moments as in
:func:`gradx.adam` (a float dtype, bfloat16 rounded stochastically, or blockwise int8);
optax has neither (its ``mu_dtype`` stays, and wins for the first moment).

gradx's own optimizers follow the seeds and the papers; with defaults, six of optax's
same-named ones give other numbers: ``adamw`` (weight decay 1e-4 against 1e-2), ``amsgrad``
(the max over v̂), ``nadam`` (no momentum schedule), ``rprop`` (optax's update lags a step),
``adagrad`` (ε = 1e-7 inside the root, G₀ = 0.1) and ``rmsprop`` (ε inside the root).

An argument gradx's blocks cannot reproduce raises an error naming the function and the
argument when set to anything but optax's default; none is ignored: ``amsgrad``'s
``eps_root``, a ``mu_dtype`` or ``accumulator_dtype`` narrower than float32 (optax multiplies
β by the moment in that dtype, gradx in float32), ``adadelta``'s ``learning_rate=None`` (with
which optax ascends) and a schedule for ``rprop``'s ``learning_rate``. The differences are
listed in ``docs/conventions.md``.

bfloat16 and float16 params are the one place the numbers differ by design: gradx computes
their steps with float32 hyperparameters, optax in the params' dtype, where β₂ = 0.999 rounds
to 1.0 in bfloat16 (optax issue 1414; float16 holds 0.9990234375). gradx also stores the
second moments of float16 params in float32, where optax's underflow to 0: on a gradient of
1e-3, optax's float16 Adam steps by −inf, this module's ``adam`` by minus the learning rate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers import adam as gradx_adam
from gradx._optimizers import adaptive as _adaptive
from gradx._optimizers import momentum as _momentum
from gradx._optimizers.lookahead import lookahead as _gradx_lookahead
from gradx._optimizers.sign import refuse_complex
from gradx._protocol.declare import optimizer
from gradx._protocol.gain import closure_value, gain_rule, walk_gain
from gradx._protocol.storage import state_dtype_args
from gradx._protocol.trees import check_tree
from gradx.compat._optax_builders import (
    check_like_optax,
    moment_dtype,
    named_like_optax,
    off_if_zero,
    optax_adadelta,
    optax_adam_like,
    optax_amsgrad,
    refuse_lookahead_params,
)

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "amsgrad",
    "lookahead",
    "nadam",
    "nadamw",
    "rmsprop",
    "rprop",
    "sgd",
]


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``adam`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.adam(learning_rate, b1, b2, eps, eps_root=eps_root, mu_dtype=mu_dtype)``
    (``nesterov=True``: optax's Nadam, ``gradx.nadam(..., momentum_decay=None)``)."""
    store = state_dtype_args("adam", state_dtype, stochastic_rounding)
    return optax_adam_like(
        "adam", learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, store=store
    )


def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``nadam`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.nadam(learning_rate, b1, b2, eps, momentum_decay=None)`` (no momentum schedule,
    where gradx's default follows Dozat's ψ = 0.004)."""
    store = state_dtype_args("nadam", state_dtype, stochastic_rounding)
    return optax_adam_like(
        "nadam", learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, store=store
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``adamw`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.adamw(learning_rate, b1, b2, eps, weight_decay=1e-4, mask=mask)`` (gradx's
    default weight decay is 1e-2, torch's)."""
    store = state_dtype_args("adamw", state_dtype, stochastic_rounding)
    return optax_adam_like(
        "adamw", learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, weight_decay, mask,
        store,
    )  # fmt: skip


def nadamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = True,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``nadamw`` reproduced with gradx's blocks, hyperparameters in the state:
    optax's Nadam (``gradx.nadam(..., momentum_decay=None)``) with decoupled weight decay
    λ·γ·θ, as in ``gradx.adamw``."""
    store = state_dtype_args("nadamw", state_dtype, stochastic_rounding)
    return optax_adam_like(
        "nadamw", learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, weight_decay, mask,
        store,
    )  # fmt: skip


def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``amsgrad`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.amsgrad(learning_rate, b1, b2, eps, max_of="v_hat")`` (gradx's default takes the
    max over the raw v, as torch and Keras do). ``eps_root`` must be 0."""
    fn = "amsgrad"
    check_like_optax(fn, optax_amsgrad, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
    if not (isinstance(eps_root, (int, float)) and eps_root == 0):
        raise ValueError(
            f"{fn}: eps_root must be 0 (gradx's AMSGrad block has no ε inside the root), "
            f"got {eps_root!r}"
        )
    moment_dtype(fn, "mu_dtype", mu_dtype)
    store = state_dtype_args(fn, state_dtype, stochastic_rounding)
    return optax_amsgrad(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        mu_dtype=mu_dtype,
        bias_correction_mu=bias_correction_mu,
        bias_correction_nu=bias_correction_nu,
        **store,
    )


def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``adamax`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.adamax(learning_rate, b1, b2, eps)`` (the same defaults)."""
    store = state_dtype_args("adamax", state_dtype, stochastic_rounding)
    return gradx_adam.adamax(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, **store)


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``sgd`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.sgd(learning_rate, momentum, nesterov, mu_dtype=accumulator_dtype)``."""
    moment_dtype("sgd", "accumulator_dtype", accumulator_dtype)
    store = state_dtype_args("sgd", state_dtype, stochastic_rounding)
    return _momentum.sgd(
        learning_rate=learning_rate,
        momentum=momentum,
        nesterov=nesterov,
        mu_dtype=accumulator_dtype,
        **store,
    )


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``adagrad`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.adagrad(learning_rate, eps=1e-7, initial_accumulator_value=0.1,
    eps_in_sqrt=True)`` (gradx's defaults: ε = 1e-8 outside the root, G₀ = 0)."""
    return _adaptive.adagrad(
        learning_rate=learning_rate,
        eps=eps,
        initial_accumulator_value=initial_accumulator_value,
        eps_in_sqrt=True,
        **state_dtype_args("adagrad", state_dtype, stochastic_rounding),
    )


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``rmsprop`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.rmsprop(learning_rate, decay, eps, eps_in_sqrt=True, ...)`` (gradx's default puts
    ε outside the root, as the seeds and torch do)."""
    return _adaptive.rmsprop(
        learning_rate=learning_rate,
        decay=decay,
        eps=eps,
        eps_in_sqrt=eps_in_sqrt,
        bias_correction=bias_correction,
        centered=centered,
        momentum=momentum,
        nesterov=nesterov,
        initial_scale=initial_scale,
        **state_dtype_args("rmsprop", state_dtype, stochastic_rounding),
    )


def adadelta(
    learning_rate: optax.ScalarOrSchedule | None = None,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    *,
    state_dtype: Any | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``adadelta`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.adadelta(learning_rate, rho, eps)``, after ``gradx.add_decayed_weights(λ)``.

    ``learning_rate=None`` (optax's default) is refused: optax 0.2.8 then applies no
    learning rate at all, not even its sign, so its Adadelta ascends the loss.
    """
    fn = "adadelta"
    if learning_rate is None:
        raise ValueError(
            f"{fn}: learning_rate must be a number >= 0 or a schedule, got None: optax 0.2.8's "
            "adadelta with learning_rate=None skips scale_by_learning_rate, sign included, and "
            "ascends the loss; give learning_rate=1.0 for Zeiler's descent"
        )
    check_like_optax(
        fn, optax_adadelta, learning_rate=learning_rate, rho=rho, eps=eps, weight_decay=weight_decay
    )
    return optax_adadelta(
        learning_rate=learning_rate,
        rho=rho,
        eps=eps,
        weight_decay=off_if_zero(weight_decay),
        weight_decay_mask=weight_decay_mask,
        **state_dtype_args(fn, state_dtype, stochastic_rounding),
    )


class ScaleByRpropState(NamedTuple):
    count: jax.Array  # shape=(), int32: updates so far; 0: step sizes not yet set
    prev_updates: Any  # like params: step·sign(g) of the last update, 0 where the sign flipped
    step_sizes: Any  # like params: the step size of each weight


def scale_by_rprop(
    learning_rate: jax.typing.ArrayLike,
    eta_minus: jax.typing.ArrayLike = 0.5,
    eta_plus: jax.typing.ArrayLike = 1.2,
    min_step_size: jax.typing.ArrayLike = 1e-6,
    max_step_size: jax.typing.ArrayLike = 50.0,
) -> optax.GradientTransformationExtraArgs:
    """Block: optax 0.2.8's ``scale_by_rprop``, whose update lags one step.

    With s = g·p (p: the last ``prev_updates``, 0 at first) and step⁰ = ``learning_rate``::

        step ← step if s = 0, else clip(step·(η⁺ if s > 0 else η⁻), min, max)
        u ← 0 where s < 0, else p           (the previous step's move: the first u is 0)
        p ← 0 where s < 0, else step·sign(g)

    The learning rate is read at the first update, not at ``init``, so ``set_hyperparams``
    before the first update takes effect.
    """

    def init(params: Any) -> ScaleByRpropState:
        refuse_complex("rprop", params)  # gradx.scale_by_rprop's refusal, named after optax's
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByRpropState(
            count=jnp.zeros([], jnp.int32), prev_updates=zeros, step_sizes=zeros
        )

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_tree(updates, state.step_sizes, "step sizes in the state")
        first = state.count == 0

        def leaf(g, prev, step):
            lr, down, up, lo, hi = (
                jnp.asarray(x).astype(g.dtype)  # optax's Python numbers take g's dtype
                for x in (learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
            )
            step = jnp.where(first, lr, step)
            s = g * prev
            step = jnp.where(s == 0, step, jnp.clip(step * jnp.where(s > 0, up, down), lo, hi))
            zero = jnp.zeros_like(g)
            return -jnp.where(s < 0, zero, prev), jnp.where(s < 0, zero, step * jnp.sign(g)), step

        out = jax.tree.map(leaf, updates, state.prev_updates, state.step_sizes)
        outer = jax.tree.structure(updates)
        rows = outer.flatten_up_to(out)
        u, prev, step = (outer.unflatten([row[i] for row in rows]) for i in range(3))
        return u, ScaleByRpropState(
            count=optax.safe_increment(state.count), prev_updates=prev, step_sizes=step
        )

    return optax.GradientTransformationExtraArgs(init, update)


@optimizer(
    "min_step_size <= max_step_size",
    learning_rate=">= 0",
    eta_minus="[0, 1]",
    eta_plus=">= 1",
    min_step_size=">= 0",
    max_step_size=">= 0",
)
@named_like_optax("rprop")
def _rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size):
    return scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)


def rprop(
    learning_rate: float,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``rprop`` reproduced with gradx's blocks, hyperparameters in the state:
    :func:`gradx.scale_by_rprop` (optax 0.2.8's update lags one step; ``gradx.rprop``
    follows seed 004, ``gradx.compat.torch.Rprop`` torch's iRprop⁻). ``learning_rate`` is a
    number."""
    if callable(learning_rate):
        raise TypeError(
            f"rprop: learning_rate must be a number (optax's rprop takes no schedule: it is "
            f"only the initial step size), got {learning_rate!r}"
        )
    return _rprop(
        learning_rate=learning_rate,
        eta_minus=eta_minus,
        eta_plus=eta_plus,
        min_step_size=min_step_size,
        max_step_size=max_step_size,
    )


def lookahead(
    fast_optimizer: optax.GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """optax's ``lookahead`` reproduced with gradx's blocks, hyperparameters in the state:
    ``gradx.lookahead(fast_optimizer, sync_period, alpha=slow_step_size, reset_state)``.

    The slow weights live in the state, so init and update take the params themselves, not
    an ``optax.LookaheadParams`` (refused); they follow optax's fast params.
    """
    opt = _gradx_lookahead(
        fast_optimizer, sync_period=sync_period, alpha=slow_step_size, reset_state=reset_state
    )

    def init(params: Any) -> Any:
        refuse_lookahead_params(params)
        return opt.init(params)

    def update(updates, state, params=None, **extra_args):
        refuse_lookahead_params(params)
        return opt.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(lookahead)
def _lookahead_gain(ctx, cells, state, incoming):
    """gradx.effective_learning_rate: the wrapped gradx.lookahead's rule."""
    return walk_gain(ctx, closure_value(cells, "opt", "lookahead").update, state, incoming)
