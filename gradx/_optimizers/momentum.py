"""Gradient descent and its momentum family: blocks and the seeds' optimizers.

Blocks: ``trace`` (heavy-ball velocity), ``ema`` (exponential moving average), ``nesterov_ema``
(Nadam's numerator). Optimizers: ``sgd``, ``momentum``, ``nesterov``,
``ema_momentum``, each a short chain of blocks ending in
``scale_by_learning_rate``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._optimizers.scaling import check_numbers, scale_by_learning_rate
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import coef, dtype_arg, wide
from gradx._protocol.gain import (
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    nonzero_divisor,
    steps_taken,
)
from gradx._protocol.storage import moment_codec, state_dtype_args
from gradx._protocol.trees import check_tree


class TraceState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    velocity: Any  # like params (dtype: accumulator_dtype if given): the running sum v


def trace(
    decay: jax.typing.ArrayLike,
    nesterov: bool = False,
    *,
    dampening: jax.typing.ArrayLike | None = None,
    accumulator_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: heavy-ball velocity, v ← μ·v + (1 − d)·u; emits v (or u + μ·v with ``nesterov``).

    Placed after ``scale_by_learning_rate`` the incoming u is −γ_t·g, so v ← μ·v − γ_t·g
    keeps each step's learning rate inside the velocity, as in the seeds and Keras. The first
    step sets v₁ = u₁ undamped (torch's convention for its ``dampening`` d; with d = 0 it
    is the same as starting from v₀ = 0).

    Args:
      decay: μ, the momentum (a number or a scalar array).
      nesterov: emit the look-ahead step u + μ·v_new instead of v_new.
      dampening: d, the share of each new u left out of the velocity after the first step;
        None (the default) is d = 0 without the extra multiply.
      accumulator_dtype: the dtype v is stored in (optax's name); None follows the params.
      state_dtype, stochastic_rounding: how v is stored where ``accumulator_dtype`` is None:
        None (the params' dtype), a float dtype, ``"bfloat16"`` with stochastic rounding, or
        ``"int8"`` (blockwise; see :doc:`/guides/state-dtype`).

    ``decay`` and ``nesterov`` are positional as in ``optax.trace``; the rest are
    keyword-only (optax's third argument is ``accumulator_dtype``).

    Returns:
      An optax transformation. Its update is in the computed dtype
      (``wide`` of u, μ and v), which may be wider than u's: the new v as
      stored (rounded to a bfloat16 buffer and back, see ``as_stored``; decoded from its
      codes for an int8 moment).
    """
    check_numbers("trace", decay=decay, dampening=dampening)
    codec = moment_codec(
        "trace", "accumulator_dtype", accumulator_dtype, state_dtype, stochastic_rounding
    )

    def init(params: Any) -> TraceState:
        return TraceState(count=jnp.zeros([], jnp.int32), velocity=codec.init(params, "velocity"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old = codec.decode(state.velocity)
        check_tree(updates, old, "velocity in the state")
        mu = jnp.asarray(decay)
        if dampening is None:
            keep = None  # no multiply at all
        else:  # torch: the first buffer is u itself, later ones keep (1 − d)·u
            keep = jnp.where(state.count == 0, 1, 1 - jnp.asarray(dampening))

        def velocity_of(u, v):
            uw, vw = wide(u, mu, v), wide(v, mu, u)
            return coef(mu, vw) * vw + (uw if keep is None else coef(keep, uw) * uw)

        velocity = jax.tree.map(velocity_of, updates, old)
        gain = 1 if keep is None else keep
        affine = (mu, gain, updates, False)  # v = μ·v + keep·u
        velocity, stored_velocity = codec.store(velocity, state.velocity, affine)
        if nesterov:
            updates = jax.tree.map(lambda u, v: coef(mu, v) * v + wide(u, mu, v), updates, velocity)
        else:
            updates = velocity
        new_state = TraceState(
            count=optax.safe_increment(state.count),
            velocity=stored_velocity,
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)


class EmaState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    mean: Any  # like params (dtype: accumulator_dtype if given): the biased average m


EMA_INITS = ("zero", "first")


def ema(
    decay: jax.typing.ArrayLike,
    debias: bool = False,
    *,
    init: str = "zero",
    accumulator_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: exponential moving average, m ← β·m + (1−β)·g.

    ``init="zero"``: m₀ = 0 (the seeds, optax); emits m, or m / (1 − βᵗ) with ``debias``
    (t = 1, 2, ...), the state keeping the biased m. ``init="first"``: m₁ = g₁, unbiased from
    the start, which is torch's ``SGD(momentum=β, dampening=β)`` (torch's buffer adds
    (1 − dampening)·g). The correction is computed in the hyperparameter dtype.

    ``accumulator_dtype`` is the dtype m is stored in (optax's name); None follows the
    params, or ``state_dtype`` and ``stochastic_rounding`` where given (as in :func:`trace`).
    The update is in the computed dtype (``wide`` of g, β and m),
    which may be wider than g's: the new m as stored (rounded to a bfloat16 buffer and back;
    decoded from its codes for an int8 moment).

    ``decay`` and ``debias`` are positional as in ``optax.ema``; the rest are keyword-only.
    optax's default differs: ``optax.ema`` debiases by default (``debias=True``), this block
    does not; pass ``debias=True`` for optax's numbers.

    Examples:
      Adam, chained from blocks (what :func:`gradx.adam` builds):

      >>> import jax.numpy as jnp, gradx
      >>> opt = gradx.chain(
      ...     gradx.precondition(gradx.ema(0.9, debias=True), gradx.rms(0.999, debias=True), 1e-8),
      ...     gradx.scale_by_learning_rate(0.1),
      ... )
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.5])}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> [round(u, 4) for u in updates["w"].tolist()]
      [-0.1, 0.1]
    """
    check_numbers("ema", decay=decay)
    if init not in EMA_INITS:
        raise ValueError(f"ema: init must be one of {EMA_INITS}, got {init!r}")
    if debias and init == "first":
        raise ValueError(
            "ema: debias=True corrects a zero start; with init='first' it must be False"
        )
    codec = moment_codec(
        "ema", "accumulator_dtype", accumulator_dtype, state_dtype, stochastic_rounding
    )

    def init_state(params: Any) -> EmaState:
        return EmaState(count=jnp.zeros([], jnp.int32), mean=codec.init(params, "mean"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old = codec.decode(state.mean)
        check_tree(updates, old, "moving average in the state")
        beta = jnp.asarray(decay)
        if init == "first":  # on the first step, m = g: as if β were 0 once
            beta = jnp.where(state.count == 0, jnp.zeros_like(beta), beta)
        count = optax.safe_increment(state.count)
        rest = 1 - beta  # once per step, not once per leaf

        def mean_of(g, m):
            gw, mw = wide(g, beta, m), wide(m, beta, g)
            return coef(beta, mw) * mw + coef(rest, gw) * gw

        mean = jax.tree.map(mean_of, updates, old)
        mean, stored_mean = codec.store(mean, state.mean, (beta, rest, updates, False))
        if debias:
            correction = 1 - beta ** count.astype(beta.dtype)
            updates = jax.tree.map(lambda m: m / coef(correction, m), mean)
        else:
            updates = mean
        return updates, EmaState(count=count, mean=stored_mean)

    return optax.GradientTransformationExtraArgs(init_state, update)


def _buffer_dtype(fn: str, accumulator_dtype: Any, mu_dtype: Any) -> tuple[str, Any]:
    """The momentum buffer's dtype, given as optax's ``accumulator_dtype`` or gradx's
    ``mu_dtype`` (not both), with the name it was given under."""
    if accumulator_dtype is not None and mu_dtype is not None:
        raise TypeError(
            f"{fn}: accumulator_dtype and mu_dtype name the same buffer's dtype; give one, "
            f"got accumulator_dtype={accumulator_dtype!r} and mu_dtype={mu_dtype!r}"
        )
    if mu_dtype is not None:
        dtype_arg(fn, "mu_dtype", mu_dtype)
        return "mu_dtype", mu_dtype
    dtype_arg(fn, "accumulator_dtype", accumulator_dtype)
    return "accumulator_dtype", accumulator_dtype


@optimizer(learning_rate=">= 0", momentum="[0, 1)")
def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    mu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Gradient descent: θ ← θ − γ·g; with ``momentum``, optax's ``sgd``.

    Batch GD, SGD and minibatch SGD are this same rule; they differ only in the gradient fed
    to it: g = ∇L(θ) over the whole training set (batch GD, seed 001's ∂J/∂θ), over one
    example drawn at random (SGD, seed 004's ∇L_s), or over a minibatch (seed 004's ∇L_b). The
    regime is a property of the data loop, not of the optimizer; ``gradx.fit`` picks it with
    one ``batch_size`` argument.

    With a ``momentum`` μ (optax's and torch's form, γ outside the buffer), v₀ = 0::

        v ← μ·v + g
        θ ← θ − γ·v                (nesterov=False)
        θ ← θ − γ·(g + μ·v)        (nesterov=True)

    Blocks: ``scale_by_learning_rate(γ)``; with a momentum ``trace(μ, nesterov) →
    scale_by_learning_rate(γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule of the step count.
      momentum: μ in [0, 1), or None (the default) for plain gradient descent.
      nesterov: the look-ahead form; needs a momentum.
      accumulator_dtype: the dtype the buffer v is stored in (optax's name); None follows
        the params. Needs a momentum.
      mu_dtype: the same, under the name gradx's other optimizers use; give one of the two.
      state_dtype, stochastic_rounding: how v is stored where neither dtype is given (a
        float dtype, ``"bfloat16"`` rounded stochastically, ``"int8"``): see :func:`adam`.

    Returns:
      An optax ``GradientTransformationExtraArgs``; its state is a ``HyperparamsState``
      holding ``learning_rate`` (and ``momentum``).

    Note:
      ``sgd(γ, μ, nesterov, accumulator_dtype)`` equals ``optax.sgd`` with the same
      positional arguments, and ``torch.optim.SGD(lr=γ, momentum=μ, nesterov=...)``, where
      the buffer is stored in the dtype it is computed in (float32 params, with
      ``accumulator_dtype`` None or float32). A narrower ``accumulator_dtype`` (bfloat16)
      differs from optax: gradx's step reads the buffer as stored (rounded), optax's the
      float32 value before rounding (``docs/conventions.md``). :func:`momentum` and
      :func:`nesterov` keep γ inside the velocity (the seeds' and Keras's form): the same
      numbers for a constant γ, not under a schedule.

    Examples:
      >>> import jax.numpy as jnp, gradx
      >>> opt = gradx.sgd(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.5])}
      >>> updates, state = opt.update(grads, opt.init(params), params)
      >>> [round(u, 4) for u in updates["w"].tolist()]
      [-0.05, 0.05]
    """
    name, dtype = _buffer_dtype("sgd", accumulator_dtype, mu_dtype)
    store = state_dtype_args("sgd", state_dtype, stochastic_rounding)
    if momentum is None:
        if nesterov:
            raise ValueError("sgd: nesterov=True needs a momentum, got momentum=None")
        name, given = (name, dtype) if dtype is not None else ("state_dtype", state_dtype)
        if given is not None:
            raise ValueError(
                f"sgd: {name}={given!r} sets the momentum buffer's dtype, but "
                "momentum=None keeps no buffer"
            )
        return scale_by_learning_rate(learning_rate)
    return optax.chain(
        trace(momentum, nesterov=nesterov, accumulator_dtype=dtype, **store),
        scale_by_learning_rate(learning_rate),
    )


@optimizer(learning_rate=">= 0", momentum="[0, 1)")
def momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    *,
    mu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Heavy-ball momentum (seeds 000 and 004).

    For t = 1, 2, ..., with v₀ = 0::

        v ← μ·v − γ_t·g
        θ ← θ + v                  (nesterov=False)
        θ ← θ + μ·v − γ_t·g        (nesterov=True, see :func:`nesterov`)

    γ_t sits inside the velocity, so under a schedule every past gradient keeps the learning
    rate of its own step, as in the seeds' θ_{t+1} = θ_t − Σ μⁱ γ_{t−i} g_{t−i}.

    Blocks: ``scale_by_learning_rate(γ) → trace(μ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule of the step count.
      momentum: μ in [0, 1), the seeds' "viscosity".
      nesterov: use the look-ahead form.
      accumulator_dtype: the dtype v is stored in (optax's name, as in ``optax.sgd``); None
        follows the params.
      mu_dtype: the same, under the name gradx's other optimizers use; give one of the two.
      state_dtype, stochastic_rounding: how v is stored where neither dtype is given (a
        float dtype, ``"bfloat16"`` rounded stochastically, ``"int8"``): see :func:`adam`.

    Returns:
      An optax transformation whose state holds ``learning_rate`` and ``momentum``.

    Note:
      For a constant γ this equals ``optax.sgd(γ, momentum=μ)`` and ``torch.optim.SGD(lr=γ,
      momentum=μ)``, which keep γ outside the buffer. Under a schedule they differ; Keras's
      ``SGD`` keeps γ inside, as here.
    """
    _, dtype = _buffer_dtype("momentum", accumulator_dtype, mu_dtype)
    store = state_dtype_args("momentum", state_dtype, stochastic_rounding)
    return optax.chain(
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov=nesterov, accumulator_dtype=dtype, **store),
    )


@optimizer(learning_rate=">= 0", momentum="[0, 1)")
def nesterov(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    accumulator_dtype: Any = None,
    *,
    mu_dtype: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Nesterov momentum: the gradient is taken at the look-ahead point (seed 004).

    Seed 004 (Sutskever et al.'s form), v₀ = 0::

        v ← μ·v − γ·∇L(θ + μ·v)
        θ ← θ + v

    The params this optimizer produces are the look-ahead point φ = θ + μ·v, where the
    gradient is evaluated, so you simply pass ∇L(φ) at the current params. Substituting
    φ gives the update::

        v ← μ·v − γ·∇L(φ)
        φ ← φ + μ·v − γ·∇L(φ)

    and φ = θ whenever v = 0 (at the start and at convergence).

    Blocks: ``scale_by_learning_rate(γ) → trace(μ, nesterov=True)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule of the step count.
      momentum: μ in [0, 1).
      accumulator_dtype: the dtype v is stored in (optax's name, as in ``optax.sgd``); None
        follows the params.
      mu_dtype: the same, under the name gradx's other optimizers use; give one of the two.
      state_dtype, stochastic_rounding: how v is stored where neither dtype is given (a
        float dtype, ``"bfloat16"`` rounded stochastically, ``"int8"``): see :func:`adam`.

    Returns:
      An optax transformation whose state holds ``learning_rate`` and ``momentum``.

    Reference:
      Sutskever, Martens, Dahl, Hinton, "On the importance of initialization and momentum in
      deep learning", ICML 2013.

    Note:
      Equal to ``optax.sgd(γ, μ, nesterov=True)`` and ``torch.optim.SGD(lr=γ, momentum=μ,
      nesterov=True)`` for a constant γ.
    """
    _, dtype = _buffer_dtype("nesterov", accumulator_dtype, mu_dtype)
    store = state_dtype_args("nesterov", state_dtype, stochastic_rounding)
    return optax.chain(
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov=True, accumulator_dtype=dtype, **store),
    )


@optimizer(learning_rate=">= 0", beta="[0, 1)")
def ema_momentum(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.9,
    bias_correction: bool = False,
    ema_init: str = "zero",
    mu_dtype: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Momentum as an exponential moving average of gradients (seeds 001 and 002).

    For t = 1, 2, ..., with m₀ = 0::

        m ← β·m + (1−β)·g
        θ ← θ − γ·m                    (bias_correction=False)
        θ ← θ − γ·m / (1 − βᵗ)         (bias_correction=True)

    Without the correction the first steps are short (m₁ = (1−β)·g₁); the correction
    removes that bias towards m₀ = 0.

    Blocks: ``ema(β, debias=bias_correction) → scale_by_learning_rate(γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule of the step count.
      beta: β in [0, 1).
      bias_correction: divide by 1 − βᵗ.
      ema_init: ``"zero"`` (m₀ = 0, the seeds) or ``"first"`` (m₁ = g₁, torch's
        ``SGD(momentum=β, dampening=β)``; no bias to correct, so bias_correction=False).
      mu_dtype: the dtype m is stored in; None follows the params.
      state_dtype, stochastic_rounding: how m is stored where ``mu_dtype`` is None (a
        float dtype, ``"bfloat16"`` rounded stochastically, ``"int8"``): see :func:`adam`.

    Returns:
      An optax transformation whose state holds ``learning_rate`` and ``beta``.

    Note:
      Equal to ``optax.chain(optax.ema(β, debias=...), optax.scale(-γ))``. torch's
      ``SGD(momentum=β, dampening=β)`` starts at g₁ instead: that is ``ema_init="first"``.
    """
    dtype_arg("ema_momentum", "mu_dtype", mu_dtype)
    store = state_dtype_args("ema_momentum", state_dtype, stochastic_rounding)
    return optax.chain(
        ema(beta, debias=bias_correction, init=ema_init, accumulator_dtype=mu_dtype, **store),
        scale_by_learning_rate(learning_rate),
    )


@gain_rule(trace)
def _trace_gain(ctx, cells, state, incoming):
    # Heavy ball v_t = μ·v_{t−1} + u_t: this step's factor on u_t is 1 (the velocity carries
    # a share of it into later steps too; see effective_learning_rate's Note). Nesterov emits
    # u_t + μ·v_t, so 1 + μ. torch's dampening d keeps (1 − d)·u_t after the first step.
    mu = in_gain_dtype(ctx, closure_value(cells, "decay", "trace"))
    dampening = closure_value(cells, "dampening", "trace")
    keep = jnp.ones([], ctx.dtype)
    if dampening is not None:
        first = jnp.asarray(state.count) <= 1
        keep = jnp.where(first, keep, 1 - in_gain_dtype(ctx, dampening))
    gain = keep * (1 + mu) if closure_value(cells, "nesterov", "trace") else keep
    return Gain(gain), None


@gain_rule(ema)
def _ema_gain(ctx, cells, state, incoming):
    beta = in_gain_dtype(ctx, closure_value(cells, "decay", "ema"))
    if closure_value(cells, "init", "ema") == "first":  # m₁ = g₁: the first step's factor is 1
        beta = jnp.where(jnp.asarray(state.count) <= 1, jnp.zeros_like(beta), beta)
    gain = 1 - beta
    if closure_value(cells, "debias", "ema"):
        gain = gain / nonzero_divisor(1 - beta ** steps_taken(ctx, state.count))
    return Gain(gain), None
