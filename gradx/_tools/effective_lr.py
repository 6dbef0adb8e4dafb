"""The effective learning rate: the factor each coordinate's current gradient is stepped by.

Seeds 001 and 002 explain every optimizer by its *effective learning rate* α_ef, the factor in
front of the current gradient g_t in the step::

    θ_t = θ_{t−1} − α_ef ⊙ g_t − (terms that do not involve g_t)

EMA momentum α(1−β); with bias correction α(1−β)/(1−βᵗ); Adagrad α/(√Σg² + ε); RMSProp
α/(√v̂_t + ε); Adam α(1−β₁)/((1−β₁ᵗ)(√v̂_t + ε)); Adamax α(1−β₁)/((1−β₁ᵗ)u_t); Adadelta
α₀√((Δ_{t−1} + ε)/(s_t + ε)).

Composition is the architecture here too: every block has a *gain*, the factor it multiplies
the current gradient by on its way through (the learning-rate block −γ, an EMA (1−β)[/(1−βᵗ)],
a preconditioner 1/(den + ε), a max-norm 1/u, Adadelta's ratio, Rprop's step/|g|), and a
chain's α_ef is minus the product of its blocks' gains. The blocks' numbers are read from the
chain that an optimizer rebuilds from its state (exactly the chain its last ``update`` ran),
and each block's statistics from its part of the state after that update. So an optimizer
written with ``@gradx.optimizer`` from gradx's blocks gets its α_ef for free; a block gradx does
not know (a bare optax transform such as ``optax.scale_by_adam``) is refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.dtypes import hyperparam_dtype
from gradx._protocol.gain import GAIN_FN, GainContext, global_norm, nonzero_divisor, walk_gain
from gradx._protocol.trees import as_arrays


def _alpha(update: Callable[..., Any], state: Any, params: Any = None, grads: Any = None) -> Any:
    """α_ef of the update function ``update`` (see :func:`effective_learning_rate`)."""
    if params is not None:
        params = as_arrays(params)
    if grads is not None:
        grads = as_arrays(grads)
    ctx = GainContext(hyperparam_dtype((state, params, grads)), params)
    gain, _ = walk_gain(ctx, update, state, grads)
    template = params if params is not None else grads if grads is not None else gain.tree
    if template is None:
        raise ValueError(
            f"{GAIN_FN}: this optimizer keeps no per-coordinate statistics, so its state does not "
            "know the params' shapes: pass params= (or grads=)"
        )
    factors = gain.tree if gain.tree is not None else jax.tree.map(lambda _: None, template)

    def leaf(p, f):
        shape = jnp.shape(p)
        value = -gain.scale if f is None else -gain.scale * f
        return jnp.broadcast_to(value, shape).astype(ctx.dtype)

    if gain.tree is None:
        return jax.tree.map(lambda p: leaf(p, None), template)
    return jax.tree.map(leaf, template, factors)


def effective_learning_rate(
    optimizer: optax.GradientTransformation,
    state: Any,
    params: Any = None,
    grads: Any = None,
) -> Any:
    """The effective learning rate α_ef of the last step, per coordinate (seeds 001, 002).

    α_ef is the factor in front of the current gradient in the step the optimizer took::

        θ_t = θ_{t−1} − α_ef ⊙ g_t − (terms that do not involve g_t)

    with every statistic at its value after step t (v̂_t, u_t, s_t, the step count t). It is
    the product of the gains of the optimizer's blocks (times −1), so for the seeds'
    optimizers it is their formula::

        sgd, momentum              γ                           (nesterov: γ(1+μ))
        ema_momentum               γ(1−β),  with bias_correction γ(1−β)/(1−βᵗ)
        adagrad                    γ/(√G_t + ε)               (eps_in_sqrt: γ/√(G_t + ε))
        rmsprop                    γ/(√v_t + ε)               (bias_correction: v̂_t; eps_in_sqrt:
                                                              γ/√(v_t + ε); centered: v − a²)
        adam, adamw                γ(1−β₁)/((1−β₁ᵗ)(√(v̂_t + ε_root) + ε))
        amsgrad                    as adam with √v_max/√(1−β₂ᵗ) (or max_of's variant)
        adamax                     γ(1−β₁)/((1−β₁ᵗ)·u_t)
        nadam                      γ·(c_g + c_m(1−β₁))/(√v̂_t + ε), m̂ = c_g·g + c_m·m_t
        adadelta                   α₀·√(Δ_{t−1} + ε)/√(s_t + ε)
        rprop                      α_i/|g_i|  (0 where the weight did not move)
        lion                       γ/|g_i|  (0 where g_i = 0)
        lamb                       adam's, times the leaf's trust ratio r = ‖θ‖/‖u‖
        adafactor                  γ(1−β₁)·max(RMS θ, 10⁻³)/(max(1, RMS(u)/d)·√V̂_t), per
                                   leaf, u = g/√V̂_t (pass params= and grads=)
        normalized_sgd             γ/‖g‖

    Definitions where the seeds leave a choice, each the factor in front of g_t in *this*
    step's update, so that α_ef ⊙ g_t is exactly the g_t-part of the step:

    * heavy-ball momentum (``momentum``, ``sgd(momentum=μ)``): γ. The velocity carries
      μ, μ², ... of g_t into later steps, γ/(1−μ) in all, but seed 001 counts EMA momentum's
      α(1−β) the same way (this step only), and so does this.
    * Nesterov: γ(1+μ), the look-ahead step u + μ·v_t takes g_t twice.
    * lookahead (fixed α): the inner optimizer's α_ef, times α at a sync step (the sync
      emits α·(inner step) + (1 − α)·(φ − θ)). Fitted α: the inner α_ef at inner steps, 0 at
      the sync call, which takes no inner step (g_t only sets α, through the slope).
      ``reset_state=True`` with a fixed α is refused: the inner state a sync step used is
      gone from the state after it.
    * Lion: u_i = sign(β₁·m + (1−β₁)·g_i) is not linear in g_i. As for Rprop, α_ef is the
      step per unit gradient, ``γ·|u_i|/|g_i| = γ/|g_i|`` (0 where g_i = 0); α_ef ⊙ g_t then
      has the step's length, with g_t's sign (the step's sign is the interpolation's).
      ``|u_i| = 1`` is assumed also where the interpolation is exactly 0, which the state
      cannot tell.
    * LAMB's trust ratio r multiplies everything its block receives, the g_t-part included:
      α_ef is Adam's times r, the ratio the last step used (kept in the state).
    * Schedule-Free (``schedule_free_adamw``, ``schedule_free_sgd``, the ``schedule_free``
      block): the params are y, so α_ef is the factor on g_t in y's step, the base
      optimizer's α_ef times (1 − β + β·c_t), c_t the weight of the new z in the average.
      The average x (``schedule_free_eval_params``) takes g_t with the base's α_ef times c_t.
    * weight decay: coupled (``add_decayed_weights``, torch's ``weight_decay=``) and
      decoupled (``adamw``) decay add a term in θ, not in g_t: they leave α_ef unchanged.
    * seed 002 calls η/(√v̂_t + ε), Adam's factor on m̂_t, the effective learning rate; it
      is this α_ef times (1−β₁ᵗ)/(1−β₁).

    Args:
      optimizer: a gradx optimizer (anything in ``gradx.OPTIMIZERS``, ``gradx.compat``'s
        classes, a ``@gradx.optimizer`` or ``gradx.chain`` of gradx blocks), the one whose
        ``update`` produced ``state``.
      state: the optimizer state after the last step. Before any step α_ef is 0.
      params: the params (any pytree); gives the result its structure and shapes (needed
        when the optimizer keeps no per-coordinate state, e.g. ``sgd``), and the params the
        last gradient was taken at for a coupled weight decay placed before a block that
        needs ``grads``.
      grads: the gradient of the last step. Needed by the blocks whose gain depends on it:
        ``normalize`` (γ/‖g‖), ``scale_by_lion`` (``γ/|g|``), Adadelta (Δ_{t−1} is recovered
        from Δ_t with it) and the clipping blocks of ``gradx.compat.keras``.

    Returns:
      A pytree like the params (or the grads, or the optimizer's per-coordinate state): α_ef
      of every coordinate, ≥ 0 (negative only for ``gradx.compat.torch``'s
      ``maximize=True``, which steps up the gradient), in float32 (or the params' wider
      dtype). Works under ``jit`` and ``vmap`` (a batched state gives a batched result).

    Raises:
      TypeError: the optimizer has a block whose gain gradx does not know (a bare optax
        transform such as ``optax.adam``), named in the message; it is packed by
        :func:`gradx.flat`; or it is Muon
        (``gradx.muon``, or any chain with ``gradx.orthogonalize``), whose step is not
        coordinate-wise: each matrix's step depends on the whole matrix, so no
        per-coordinate factor multiplies the gradient.
      ValueError: a block needs ``grads`` (or ``params``) and they were not given.

    Reference:
      Seed 001's optimizer slides ("learning rate efectivo" of each optimizer) and seed 002's
      Adam slide (see docs/seeds.md); Kingma and Ba, "Adam: A Method for Stochastic
      Optimization", ICLR 2015, Sec. 2.1 (Adam's effective step).

    Note:
      No other optimizer library reports this. It is the quantity seed 001 lists for every
      optimizer ("learning rate efectivo") and seed 002 draws for Adam ("tasa de aprendizaje
      efectiva").

    Examples:
      Adam's first step moves each coordinate by lr·sign(g), so α_ef = lr/``|g|``:

      >>> import jax.numpy as jnp, gradx
      >>> opt = gradx.adam(0.1)
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> grads = {"w": jnp.array([0.5, -0.5])}
      >>> _, state = opt.update(grads, opt.init(params), params)
      >>> alpha = gradx.effective_learning_rate(opt, state, params)
      >>> [round(a, 3) for a in alpha["w"].tolist()]
      [0.2, 0.2]
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{GAIN_FN}: optimizer must be an optax GradientTransformation (a gradx optimizer), "
            f"got {type(optimizer).__name__}"
        )
    from gradx._tools.flat import is_flat

    if is_flat(optimizer):
        raise TypeError(
            f"{GAIN_FN}: optimizer must run leaf by leaf, got one packed by gradx.flat (its "
            "state is laid out in buffers, not like the params); pass the optimizer that "
            "gradx.flat wraps, with its state (fit packs and unpacks it itself)"
        )
    return _alpha(optimizer.update, state, params, grads)


#: The history entries fit(diagnostics=True) and sweep(diagnostics=True) add.
DIAGNOSTICS = (
    "grad_norm",
    "update_norm",
    "update_ratio",
    "alpha_q10",
    "alpha_q50",
    "alpha_q90",
)


QUANTILES = (0.1, 0.5, 0.9)


def epoch_diagnostics(
    fn: str,
    update: Callable[..., Any],
    state: Any,
    grads: Any,
    params: Any,
    updates: Any,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """``extra`` (an epoch's history entries) with the diagnostics of its last step added.

    ‖g‖, ‖u‖ and ‖u‖/‖θ + u‖ (global L2 norms, float32 or wider) of the step that gave
    ``state``: ``grads`` and ``updates`` are that step's, ``params`` the params it was taken
    at. The ratio divides by the params *after* the step, so that params starting at 0 (a
    model's biases, a linear model) give a finite first ratio; it is 0 where u = 0 and inf
    where only θ + u is 0. Then the 10/50/90% quantiles of α_ef over all coordinates.
    """
    for name in DIAGNOSTICS:
        if name in extra:
            raise ValueError(
                f"{fn}: loss_fn's aux must not use the name {name!r} with diagnostics=True "
                f"(the diagnostics write {', '.join(DIAGNOSTICS)}), got it"
            )
    ctx = GainContext(hyperparam_dtype(params), None)
    after = optax.apply_updates(params, updates)
    g, u, p = (global_norm(ctx, jax.tree.leaves(x)) for x in (grads, updates, after))
    ratio = jnp.where(p > 0, u / nonzero_divisor(p), jnp.where(u > 0, jnp.full_like(u, np.inf), 0))
    norms = {"grad_norm": g, "update_norm": u, "update_ratio": ratio}
    return {**extra, **norms, **alpha_quantiles(update, state, params, grads)}


def alpha_quantiles(update: Callable[..., Any], state: Any, params: Any, grads: Any) -> dict:
    """The 10/50/90% quantiles of α_ef over all coordinates of all params."""
    alpha = _alpha(update, state, params, grads)
    leaves = [jnp.ravel(a) for a in jax.tree.leaves(alpha)]
    if not leaves:
        zero = jnp.zeros([], hyperparam_dtype(params))
        return {f"alpha_q{round(100 * q)}": zero for q in QUANTILES}
    values = jnp.concatenate(leaves)
    qs = jnp.quantile(values, jnp.asarray(QUANTILES, values.dtype))
    return {f"alpha_q{round(100 * q)}": qs[i] for i, q in enumerate(QUANTILES)}
