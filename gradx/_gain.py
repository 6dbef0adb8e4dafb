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

import inspect
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx import _adaptive, _core, _lookahead, _momentum, _sign
from gradx._core import _as_arrays, abs_sq, hyperparam_dtype
from gradx.compat import keras as compat_keras
from gradx.compat import torch as compat_torch

_FN = "effective_learning_rate"


class _Gain(NamedTuple):
    """A block's factor on the current gradient: ``scale`` (a scalar) times ``tree``.

    ``tree`` is None (the factor is the same for every coordinate) or a pytree like the
    params, whose leaves broadcast against the params' leaves.
    """

    scale: jax.Array
    tree: Any = None


class _Context(NamedTuple):
    dtype: Any  # the dtype every gain is computed in
    params: Any  # the params at the last step (or None)


def _f(ctx: _Context, x: Any) -> jax.Array:
    return jnp.asarray(x).astype(ctx.dtype)


def _one(ctx: _Context) -> _Gain:
    return _Gain(jnp.ones([], ctx.dtype))


def _times(a: _Gain, b: _Gain) -> _Gain:
    if a.tree is None:
        tree = b.tree
    elif b.tree is None:
        tree = a.tree
    else:
        tree = jax.tree.map(jnp.multiply, a.tree, b.tree)
    return _Gain(a.scale * b.scale, tree)


def _safe(x: jax.Array) -> jax.Array:
    """``x`` with 0 replaced by 1: a divisor that is 0 only in a state no step produced."""
    return jnp.where(x == 0, jnp.ones_like(x), x)


def _steps(ctx: _Context, count: jax.Array) -> jax.Array:
    """t = max(count, 1) in the gain dtype (count 0 is the state before any step)."""
    return _f(ctx, jnp.maximum(count, 1))


def _cells(fn: Callable[..., Any]) -> dict[str, Any]:
    """The variables an ``update`` function closes over, by name: the block's numbers."""
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    out = {}
    for name, cell in zip(names, getattr(fn, "__closure__", None) or (), strict=True):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    return out


def _codes(factory: Callable[..., Any]) -> list[types.CodeType]:
    """The code of ``factory`` and of every function defined inside it, at any depth: the
    ``update`` functions it makes share one of these code objects, whatever their names."""
    code = getattr(inspect.unwrap(factory), "__code__", None)
    found, stack = [], [code] if code is not None else []
    while stack:
        code = stack.pop()
        found.append(code)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def _name(fn: Callable[..., Any]) -> str:
    """``"package's factory (module:factory)"`` of an update function made inside a factory."""
    qualname = getattr(fn, "__qualname__", repr(fn)).split(".<locals>.")[0]
    module = getattr(fn, "__module__", None) or "?"
    return f"{module.split('.')[0]}'s {qualname} ({module}:{qualname})"


def _need(cells: dict[str, Any], name: str, block: str) -> Any:
    if name not in cells:
        raise TypeError(
            f"{_FN}: the {block} block no longer keeps {name!r} where gradx's gain rule reads "
            "it; the block and its gain rule have drifted apart"
        )
    return cells[name]


# ----------------------------------------------------------------------------- the walk

# Each rule: (ctx, cells, state, incoming) -> (gain, outgoing). ``incoming`` is the tree the
# block received at the last step when it is known (the gradient, for a first block given
# ``grads=``), else None; ``outgoing`` is what the block emitted, when the rule can say.
_Rule = Callable[[_Context, dict[str, Any], Any, Any], tuple[_Gain, Any]]
# Both registries are keyed by the code objects of the factories' inner functions (see
# _codes): an ``update`` is found by its ``__code__``, so a block may move or be renamed.
_RULES: dict[types.CodeType, _Rule] = {}
_DENOMINATORS: dict[types.CodeType, Callable[[_Context, dict[str, Any], Any], Any]] = {}


def _registrar(registry: dict[types.CodeType, Any], factories: tuple[Callable[..., Any], ...]):
    def register(fn):
        for factory in factories:
            for code in _codes(factory):
                registry[code] = fn
        return fn

    return register


def _rule(*factories: Callable[..., Any]):
    """Registers a gain rule for the blocks that ``factories`` build (by object, not name)."""
    return _registrar(_RULES, factories)


def _denominator(*factories: Callable[..., Any]):
    """Registers the denominator of ``precondition`` that ``factories`` build."""
    return _registrar(_DENOMINATORS, factories)


def _walk(ctx: _Context, update: Callable[..., Any], state: Any, incoming: Any):
    rule = _RULES.get(getattr(update, "__code__", None))
    if rule is None:
        raise TypeError(
            f"{_FN}: the block {_name(update)} has no gain rule, so its factor on the "
            "current gradient is unknown. gradx's optimizers and blocks all have one (e.g. "
            "gradx.adam in place of optax.adam); a chain is supported when every block in it is"
        )
    return rule(ctx, _cells(update), state, incoming)


def _needs_incoming(block: str, incoming: Any) -> None:
    if incoming is None:
        raise ValueError(
            f"{_FN}: the {block} block's gain depends on the gradient it received at the last "
            "step: pass grads= (the gradient of that step; with weight decay before the block, "
            "params= too, the params it was taken at)"
        )


# ----------------------------------------------------------------------------- structure


@_rule(_core._make_update)
def _optimizer_gain(ctx, cells, state, incoming):
    """An @optimizer: rebuild its chain from the values in the state, as its update does."""
    factory, static = _need(cells, "factory", "optimizer"), _need(cells, "static", "optimizer")
    values = {**_as_arrays(state.hyperparams), **_as_arrays(state.scheduled)}
    inner = factory(**static, **values)
    gain, out = _walk(ctx, inner.update, state.inner_state, incoming)
    # Before the first step there is no last step: α_ef is 0.
    taken = _f(ctx, jnp.asarray(state.count) > 0)
    return _Gain(gain.scale * taken, gain.tree), out


@_rule(optax.chain)
def _chain_gain(ctx, cells, state, incoming):
    gain = _one(ctx)
    for update, s in zip(_need(cells, "update_fns", "chain"), state, strict=True):
        block_gain, incoming = _walk(ctx, update, s, incoming)
        gain = _times(gain, block_gain)
    return gain, incoming


@_rule(optax.with_extra_args_support)
def _extra_args_gain(ctx, cells, state, incoming):
    return _walk(ctx, _need(cells, "tx", "with_extra_args_support").update, state, incoming)


@_rule(_lookahead._report_alpha)
def _report_alpha_gain(ctx, cells, state, incoming):
    return _walk(ctx, _need(cells, "opt", "lookahead").update, state, incoming)


@_rule(_lookahead._fixed)
def _lookahead_fixed_gain(ctx, cells, state, incoming):
    if _need(cells, "reset_state", "lookahead"):
        raise ValueError(
            f"{_FN}: lookahead(reset_state=True) re-initialises the inner optimizer's state at "
            "every sync, so the inner gain of a sync step cannot be read from the state after "
            "it; use reset_state=False"
        )
    inner = _need(cells, "inner", "lookahead")
    gain, _ = _walk(ctx, inner.update, state.fast_state, incoming)
    # A sync step emits α·(inner step) + (1 − α)·(φ − θ): the inner step's gain times α.
    alpha = _f(ctx, _need(cells, "alpha", "lookahead"))
    synced = jnp.asarray(state.phase) == 0
    return _Gain(gain.scale * jnp.where(synced, alpha, jnp.ones_like(alpha)), gain.tree), None


@_rule(_lookahead._fitted)
def _lookahead_fitted_gain(ctx, cells, state, incoming):
    inner = _need(cells, "inner", "lookahead")
    gain, _ = _walk(ctx, inner.update, state.fast_state, incoming)
    # The sync call takes no inner step: g_t only sets α through the slope, so its factor is 0.
    stepped = _f(ctx, jnp.asarray(state.phase) != 0)
    return _Gain(gain.scale * stepped, gain.tree), None


# ----------------------------------------------------------------------------- pass-through


@_rule(optax.identity)
def _identity_gain(ctx, cells, state, incoming):
    return _one(ctx), incoming


@_rule(_core.scale_by_learning_rate)
def _learning_rate_gain(ctx, cells, state, incoming):
    lr = _f(ctx, _need(cells, "learning_rate", "scale_by_learning_rate"))
    out = None if incoming is None else jax.tree.map(lambda g: g * -lr.astype(g.dtype), incoming)
    return _Gain(-lr), out


@_rule(_core.add_decayed_weights)
def _coupled_decay_gain(ctx, cells, state, incoming):
    # u = g + λθ: the factor on g is 1; the decay term is not a multiple of g.
    out = None
    if incoming is not None and ctx.params is not None:
        wd = _need(cells, "weight_decay", "add_decayed_weights")
        mask = _need(cells, "mask", "add_decayed_weights")
        from gradx._core import _full_mask

        full = _full_mask(_FN, mask, ctx.params)
        out = jax.tree.map(
            lambda g, p, m: g + jnp.asarray(wd).astype(g.dtype) * p.astype(g.dtype) if m else g,
            incoming,
            ctx.params,
            full,
        )
    return _one(ctx), out


@_rule(_core.decoupled_weight_decay)
def _decoupled_decay_gain(ctx, cells, state, incoming):
    # u − γλθ: the decay is a term in θ, not in g (AdamW's point), so the factor on g is 1.
    return _one(ctx), None


@_rule(compat_torch._maximize)
def _maximize_gain(ctx, cells, state, incoming):
    out = None if incoming is None else jax.tree.map(jnp.negative, incoming)
    return _Gain(-jnp.ones([], ctx.dtype)), out


@_rule(compat_torch._scale_by_lr_decay)
def _lr_decay_gain(ctx, cells, state, incoming):
    decay = _f(ctx, _need(cells, "lr_decay", "_scale_by_lr_decay"))
    factor = 1 / (1 + (_steps(ctx, state.count) - 1) * decay)
    out = None if incoming is None else jax.tree.map(lambda g: g * factor.astype(g.dtype), incoming)
    return _Gain(factor), out


@_rule(_adaptive.scale_by_bias_correction)
def _bias_correction_gain(ctx, cells, state, incoming):
    b = _f(ctx, _need(cells, "decay", "scale_by_bias_correction"))
    power = _need(cells, "power", "scale_by_bias_correction")
    c = (1 - b ** _steps(ctx, state.count)) ** power
    out = None if incoming is None else jax.tree.map(lambda g: g * c.astype(g.dtype), incoming)
    return _Gain(c), out


def _scaled(ctx: _Context, incoming: Any, factors: Any) -> Any:
    return jax.tree.map(lambda g, c: g * c.astype(g.dtype), incoming, factors)


def _norm(ctx: _Context, leaves: list[Any]) -> jax.Array:
    return jnp.sqrt(sum((jnp.sum(_f(ctx, abs_sq(g))) for g in leaves), jnp.zeros([], ctx.dtype)))


@_rule(_momentum.normalize)
def _normalize_gain(ctx, cells, state, incoming):
    _needs_incoming("normalize", incoming)
    norm = _norm(ctx, jax.tree.leaves(incoming))
    gain = jnp.where(norm > 0, 1 / _safe(norm), jnp.zeros_like(norm))  # g = 0: no step
    out = jax.tree.map(lambda g: g * gain.astype(g.dtype), incoming)
    return _Gain(gain), out


@_rule(compat_keras.clip_by_norm)
def _clip_by_norm_gain(ctx, cells, state, incoming):
    _needs_incoming("clip_by_norm", incoming)
    c = _f(ctx, _need(cells, "max_norm", "clip_by_norm"))
    factors = jax.tree.map(lambda g: c / jnp.maximum(_norm(ctx, [g]), c), incoming)
    return _Gain(jnp.ones([], ctx.dtype), factors), _scaled(ctx, incoming, factors)


@_rule(optax.clip)
def _clip_gain(ctx, cells, state, incoming):
    _needs_incoming("optax.clip", incoming)
    c = _f(ctx, _need(cells, "max_delta", "optax.clip"))

    def factor(g):
        a = jnp.sqrt(_f(ctx, abs_sq(g)))
        return jnp.where(a > c, c / _safe(a), jnp.ones_like(a))  # clipped: c·sign(g) = (c/|g|)g

    factors = jax.tree.map(factor, incoming)
    return _Gain(jnp.ones([], ctx.dtype), factors), _scaled(ctx, incoming, factors)


@_rule(optax.clip_by_global_norm)
def _clip_by_global_norm_gain(ctx, cells, state, incoming):
    _needs_incoming("optax.clip_by_global_norm", incoming)
    c = _f(ctx, _need(cells, "max_norm", "optax.clip_by_global_norm"))
    norm = _norm(ctx, jax.tree.leaves(incoming))
    gain = jnp.where(norm < c, jnp.ones_like(norm), c / _safe(norm))
    return _Gain(gain), jax.tree.map(lambda g: g * gain.astype(g.dtype), incoming)


# ----------------------------------------------------------------------------- numerators


@_rule(_momentum.trace)
def _trace_gain(ctx, cells, state, incoming):
    # Heavy ball v_t = μ·v_{t−1} + u_t: this step's factor on u_t is 1 (the velocity carries
    # a share of it into later steps too; see effective_learning_rate's Note). Nesterov emits
    # u_t + μ·v_t, so 1 + μ. torch's dampening d keeps (1 − d)·u_t after the first step.
    mu = _f(ctx, _need(cells, "decay", "trace"))
    dampening = _need(cells, "dampening", "trace")
    keep = jnp.ones([], ctx.dtype)
    if dampening is not None:
        first = jnp.asarray(state.count) <= 1
        keep = jnp.where(first, keep, 1 - _f(ctx, dampening))
    gain = keep * (1 + mu) if _need(cells, "nesterov", "trace") else keep
    return _Gain(gain), None


@_rule(_momentum.ema)
def _ema_gain(ctx, cells, state, incoming):
    beta = _f(ctx, _need(cells, "decay", "ema"))
    if _need(cells, "init", "ema") == "first":  # m₁ = g₁: the first step's factor is 1
        beta = jnp.where(jnp.asarray(state.count) <= 1, jnp.zeros_like(beta), beta)
    gain = 1 - beta
    if _need(cells, "debias", "ema"):
        gain = gain / _safe(1 - beta ** _steps(ctx, state.count))
    return _Gain(gain), None


@_rule(_adaptive.nesterov_ema)
def _nesterov_ema_gain(ctx, cells, state, incoming):
    # m̂ = c_g·g + c_m·m_t with m_t = β₁·m_{t−1} + (1−β₁)·g: the factor on g is c_g + c_m(1−β₁).
    b1 = _f(ctx, _need(cells, "decay", "nesterov_ema"))
    psi = _need(cells, "momentum_decay", "nesterov_ema")
    t = _steps(ctx, state.count)
    if psi is None:
        mu, mu_next = b1, b1
    else:
        psi = _f(ctx, psi)
        mu = b1 * (1 - 0.5 * 0.96 ** (psi * t))
        mu_next = b1 * (1 - 0.5 * 0.96 ** (psi * (t + 1)))
    product = _f(ctx, state.mu_product)  # P_t, after the step
    c_grad = (1 - mu) / _safe(1 - product)
    c_mean = mu_next / _safe(1 - product * mu_next)
    return _Gain(c_grad + c_mean * (1 - b1)), None


# ----------------------------------------------------------------------------- preconditioner


@_rule(_adaptive.precondition)
def _precondition_gain(ctx, cells, state, incoming):
    direction = _need(cells, "direction", "precondition")
    by = _need(cells, "by", "precondition")
    eps = _f(ctx, _need(cells, "eps", "precondition"))
    gain, _ = _walk(ctx, direction.update, state.direction, incoming)
    rule = _DENOMINATORS.get(getattr(by.update, "__code__", None))
    if rule is None:
        raise TypeError(
            f"{_FN}: the denominator {_name(by.update)} of precondition has no gain rule; "
            "gradx's rms, max_rms, rss and inf_norm have one"
        )
    den = rule(ctx, _cells(by.update), state.by)

    def inverse(d):
        total = d + eps
        # precondition divides by 1 where the denominator is 0 (its step is 0 there).
        return 1 / jnp.where(total > 0, total, jnp.ones_like(total))

    return _times(gain, _Gain(jnp.ones([], ctx.dtype), jax.tree.map(inverse, den))), None


def _debiased_gain(x: jax.Array, correction: Any) -> jax.Array:
    return x / _safe(correction)


@_denominator(_adaptive.rms)
def _rms_gain(ctx, cells, state):
    rho = _f(ctx, _need(cells, "decay", "rms"))
    eps_root = _f(ctx, _need(cells, "eps_root", "rms"))
    correction = 1 - rho ** _steps(ctx, state.count) if _need(cells, "debias", "rms") else 1

    def root(v, a=None):
        var = _debiased_gain(_f(ctx, v), correction)
        if a is not None:
            var = jnp.maximum(var - _f(ctx, abs_sq(_debiased_gain(a, correction))), 0)
        return jnp.sqrt(var + eps_root)

    if _need(cells, "centered", "rms"):
        return jax.tree.map(root, state.nu, state.mean)
    return jax.tree.map(root, state.nu)


@_denominator(_adaptive.max_rms)
def _max_rms_gain(ctx, cells, state):
    b2 = _f(ctx, _need(cells, "decay", "max_rms"))
    max_of = _need(cells, "max_of", "max_rms")
    if max_of == "raw_v":
        c = jnp.sqrt(1 - b2 ** _steps(ctx, state.count))
        return jax.tree.map(lambda m: jnp.sqrt(_f(ctx, m)) / _safe(c), state.nu_max)
    return jax.tree.map(lambda m: jnp.sqrt(_f(ctx, m)), state.nu_max)


@_denominator(_adaptive.rss)
def _rss_gain(ctx, cells, state):
    eps_root = _f(ctx, _need(cells, "eps_root", "rss"))
    return jax.tree.map(lambda s: jnp.sqrt(_f(ctx, s) + eps_root), state.sum_of_squares)


@_denominator(_adaptive.inf_norm)
def _inf_norm_gain(ctx, cells, state):
    # u_t = max(β₂·u_{t−1}, |g| + ε) already holds its ε: the max-norm's gain is 1/u_t.
    return jax.tree.map(lambda u: _f(ctx, u), state.u)


# ----------------------------------------------------------------------------- whole steps


@_rule(_adaptive.scale_by_adadelta)
def _adadelta_gain(ctx, cells, state, incoming):
    # α_ef = √(Δ_{t−1} + ε)/√(s_t + ε). The state after the step holds s_t and Δ_t; with
    # q = |g|²/(s_t + ε), Δ_t = ρΔ_{t−1} + (1−ρ)(Δ_{t−1} + ε)q gives Δ_{t−1} back. The
    # subtraction loses at most a rounding of (1−ρ)εq ≤ ε, small beside Δ_{t−1} + ε.
    _needs_incoming("scale_by_adadelta", incoming)
    rho = _f(ctx, _need(cells, "rho", "scale_by_adadelta"))
    eps = _f(ctx, _need(cells, "eps", "scale_by_adadelta"))

    def ratio(g, s, d):
        s, d = _f(ctx, s), _f(ctx, d)
        q = _f(ctx, abs_sq(g)) / (s + eps)
        before = jnp.maximum((d - (1 - rho) * eps * q) / (rho + (1 - rho) * q), 0)
        return jnp.sqrt(before + eps) / jnp.sqrt(s + eps)

    factors = jax.tree.map(ratio, incoming, state.e_g, state.e_d)
    return _Gain(jnp.ones([], ctx.dtype), factors), _scaled(ctx, incoming, factors)


@_rule(_sign.scale_by_rprop)
def _rprop_gain(ctx, cells, state, incoming):
    # u_i = −α_i·sign(g_i) = −(α_i/|g_i|)·g_i; the state keeps α_i and g_i (0 where iRprop⁻
    # dropped a flipped gradient: that weight did not move, factor 0; likewise where g_i = 0).
    def factor(step, g):
        a = jnp.abs(_f(ctx, g))
        return jnp.where(a > 0, -_f(ctx, step) / _safe(a), jnp.zeros_like(a))

    return _Gain(jnp.ones([], ctx.dtype), jax.tree.map(factor, state.step_size, state.prev_grad)), (
        None
    )


# ----------------------------------------------------------------------------- public


def _alpha(update: Callable[..., Any], state: Any, params: Any = None, grads: Any = None) -> Any:
    """α_ef of the update function ``update`` (see :func:`effective_learning_rate`)."""
    if params is not None:
        params = _as_arrays(params)
    if grads is not None:
        grads = _as_arrays(grads)
    ctx = _Context(hyperparam_dtype((state, params, grads)), params)
    gain, _ = _walk(ctx, update, state, grads)
    template = params if params is not None else grads if grads is not None else gain.tree
    if template is None:
        raise ValueError(
            f"{_FN}: this optimizer keeps no per-coordinate statistics, so its state does not "
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
        ``normalize`` (γ/‖g‖), Adadelta (Δ_{t−1} is recovered from Δ_t with it) and the
        clipping blocks of ``gradx.compat.keras``.

    Returns:
      A pytree like the params (or the grads, or the optimizer's per-coordinate state): α_ef
      of every coordinate, ≥ 0 (negative only for ``gradx.compat.torch``'s
      ``maximize=True``, which steps up the gradient), in float32 (or the params' wider
      dtype). Works under ``jit`` and ``vmap`` (a batched state gives a batched result).

    Raises:
      TypeError: the optimizer has a block whose gain gradx does not know (a bare optax
        transform such as ``optax.adam``), named in the message.
      ValueError: a block needs ``grads`` (or ``params``) and they were not given.

    Reference:
      Seed 001's optimizer slides ("learning rate efectivo" of each optimizer) and seed 002's
      Adam slide (see docs/seeds.md); Kingma and Ba, "Adam: A Method for Stochastic
      Optimization", ICLR 2015, Sec. 2.1 (Adam's effective step).

    Note:
      No other optimizer library reports this. It is the quantity seed 001 lists for every
      optimizer ("learning rate efectivo") and seed 002 draws for Adam ("tasa de aprendizaje
      efectiva").
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{_FN}: optimizer must be an optax GradientTransformation (a gradx optimizer), "
            f"got {type(optimizer).__name__}"
        )
    return _alpha(optimizer.update, state, params, grads)


# ----------------------------------------------------------------------------- diagnostics

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
    ctx = _Context(hyperparam_dtype(params), None)
    after = optax.apply_updates(params, updates)
    g, u, p = (_norm(ctx, jax.tree.leaves(x)) for x in (grads, updates, after))
    ratio = jnp.where(p > 0, u / _safe(p), jnp.where(u > 0, jnp.full_like(u, np.inf), 0))
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
