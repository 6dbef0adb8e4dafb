"""Adafactor's blocks: a factored second moment, and two per-leaf (per-block) RMS scalings.

=========================  ==============================================================
scale_by_factored_rms      u = g/√V̂, V̂ a rank-1 (row × column) EMA of g² for matrices
clip_by_block_rms          u ← u / max(1, RMS(u)/d), one RMS per leaf
scale_by_param_block_rms   u ← u · max(RMS(θ), ε₂), one RMS per leaf
=========================  ==============================================================

The optimizer, ``adafactor``, is in ``adafactor.py``. A *block* here is a leaf of the
params (a weight matrix, a bias): the two RMS blocks take one RMS per leaf, and the
factored moment keeps a row and a column statistic per matrix. Packed by ``gradx.flat``
the leaves are no longer blocks, so all three refuse to run inside it (the factored moment
only where it factors: with ``factored=False`` it is elementwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._optimizers.preconditioners import ema_of
from gradx._optimizers.scaling import FLAT_ACTIVE, check_numbers
from gradx._protocol.dtypes import abs_sq, coef, real_dtype, wide
from gradx._protocol.gain import (
    GAIN_FN,
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    needs_incoming,
    nonzero_divisor,
)
from gradx._protocol.storage import decode_moments, moment_codec
from gradx._protocol.trees import TreeMismatchError, needs_params, params_like

FACTOR_AXES = ("largest", "last")


def decay_rate_pow(step: jax.typing.ArrayLike, exponent: jax.typing.ArrayLike = 0.8) -> jax.Array:
    """Adafactor's β̂₂ at step index ``step`` (0, 1, ...): 1 − (step + 1)^(−exponent).

    Computed in the dtype of ``exponent`` (inside :func:`gradx.adafactor`, the stored
    hyperparameter's: float32, or float64 with float64 params); JAX's default float for a
    Python number."""
    c = jnp.asarray(exponent)
    dtype = c.dtype if jnp.issubdtype(c.dtype, jnp.floating) else jnp.asarray(1.0).dtype
    t = jnp.asarray(step + 1).astype(dtype)
    return 1 - t ** -c.astype(dtype)


def factored_dims(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int, factor_axes: str
) -> tuple[int, int] | None:
    """``(d1, d0)``, the two axes a leaf of ``shape`` is factored over, or None.

    ``factor_axes="largest"`` (optax's): the two largest axes, d0 the largest, when the
    smaller of them has at least ``min_dim_size_to_factor`` elements. ``"last"`` (torch's
    and Keras's): the last two axes, d0 the last, when both have that many. Vectors and
    scalars are never factored, nor a leaf with an empty axis among the two.
    """
    if not factored or len(shape) < 2:
        return None
    if factor_axes == "last":
        d1, d0 = len(shape) - 2, len(shape) - 1
    else:
        order = np.argsort(shape)  # optax's choice, ties included
        d1, d0 = int(order[-2]), int(order[-1])
    if min(shape[d1], shape[d0]) < max(min_dim_size_to_factor, 1):
        return None
    return d1, d0


def check_min_dim(fn: str, value: Any) -> None:
    """``min_dim_size_to_factor`` must be a Python or NumPy integer >= 0 (it is static)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{fn}: min_dim_size_to_factor must be an integer >= 0 (it decides the state's "
            f"shapes, so it cannot be an array or a schedule), got {value!r}"
        )
    if value < 0:
        raise ValueError(f"{fn}: min_dim_size_to_factor must be an integer >= 0, got {value!r}")


def refuse_inside_flat(fn: str) -> None:
    if FLAT_ACTIVE.get():
        raise ValueError(
            f"{fn}: params must not be packed by gradx.flat, got a packed buffer: the block "
            "works per leaf (a matrix's rows and columns, or one RMS per leaf), and flat "
            "packs the leaves into a few buffers per dtype; use the per-leaf optimizer"
        )


class ScaleByFactoredRmsState(NamedTuple):
    count: jax.Array  # shape=(), int32: steps taken, t
    v: Any  # like params, real (params' dtype): EMA of |g|² + ε (shape (1,) where factored)
    v_col: Any  # per leaf, shape without axis d1, real: EMA of mean(|g|² + ε) over d1 ((1,)
    # where not factored)
    v_row: Any  # per leaf, shape without axis d0, real: EMA of mean(|g|² + ε) over d0 ((1,)
    # where not factored)


STATS = ("v", "v_col", "v_row")


def _state_shapes(shape: tuple[int, ...], dims: tuple[int, int] | None) -> tuple:
    """(v, v_col, v_row) shapes of a leaf: optax's layout, (1,) placeholders included."""
    if dims is None:
        return shape, (1,), (1,)
    d1, d0 = dims
    drop = lambda d: tuple(s for i, s in enumerate(shape) if i != d)
    return (1,), drop(d1), drop(d0)


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: jax.typing.ArrayLike = 0.8,
    step_offset: jax.typing.ArrayLike = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: jax.typing.ArrayLike = 1e-30,
    decay_rate_fn: Callable[[jax.Array, Any], jax.Array] = decay_rate_pow,
    *,
    factor_axes: str = "largest",
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: Adafactor's factored second moment (Shazeer & Stern 2018), u = g/√V̂.

    With β̂ = ``decay_rate_fn(s − step_offset, decay_rate)`` at step index s = 0, 1, ...
    (default 1 − (s + 1)^(−c), c = ``decay_rate``) and G = ``|g|²`` + ε, for a leaf
    factored over axes (d1, d0) (a matrix: its rows and columns)::

        R ← β̂·R + (1−β̂)·mean_{d0}(G)          (one value per row: shape without d0)
        C ← β̂·C + (1−β̂)·mean_{d1}(G)          (one per column: shape without d1)
        V̂ = R·C / mean(R)                      (rank 1; R/mean(R) along d0, C along d1)
        u = g / √V̂

    and for any other leaf (vectors, scalars, matrices too small to factor)
    v ← β̂·v + (1−β̂)·G, u = g/√v. This is the paper's R·C/(1ᵀR) written with means, so
    R, C and the update do not grow with the matrix's size. Memory: m + n numbers for an
    m×n matrix instead of m·n.

    Args:
      factored: factor the matrices (False: every leaf keeps a full v, RMSprop-like).
      decay_rate: c, the exponent of the default β̂ schedule (0.8 in the paper).
      step_offset: subtracted from the step index before β̂ is computed (fine-tuning
        from a restored state whose count is past it).
      min_dim_size_to_factor: factor a leaf only when both axes have at least this many
        elements (static: it decides the state's shapes).
      epsilon: ε, added to ``|g|²`` (ε₁ = 1e-30 in the paper).
      decay_rate_fn: β̂ as a function of (step index − step_offset, decay_rate).
      factor_axes: ``"largest"`` (optax's: the two largest axes) or ``"last"`` (torch's and
        Keras's: the last two axes).
      state_dtype, stochastic_rounding: how v, v_col and v_row are stored: None (the
        params' real dtype), a float dtype, ``"bfloat16"`` rounded stochastically, or
        ``"int8"`` (blockwise, the unsigned map, which has no 0; statistics of fewer than
        256 elements stay float32); see :doc:`/guides/state-dtype`.

    Returns:
      An optax transformation whose state is a ``ScaleByFactoredRmsState`` with optax's
      layout (``v``, ``v_col``, ``v_row``, with (1,) placeholders where unused), stored in
      the params' (real) dtype or as ``state_dtype`` says. The update is in the computed
      dtype. Refused inside ``gradx.flat`` when ``factored``.

    Note:
      Equals ``optax.scale_by_factored_rms`` (same positional arguments), except that the
      default β̂ is computed in ``decay_rate``'s dtype (optax: float32 always) and a complex
      leaf keeps real statistics. optax's update needs the params (for their shapes); this
      one reads the gradients' shapes.
    """
    check_numbers(
        "scale_by_factored_rms",
        decay_rate=decay_rate,
        step_offset=step_offset,
        epsilon=epsilon,
    )
    if factor_axes not in FACTOR_AXES:
        raise ValueError(
            f"scale_by_factored_rms: factor_axes must be one of {FACTOR_AXES}, got {factor_axes!r}"
        )
    check_min_dim("scale_by_factored_rms", min_dim_size_to_factor)
    if not callable(decay_rate_fn):
        raise TypeError(
            "scale_by_factored_rms: decay_rate_fn must be a function of (step, decay_rate), "
            f"got {decay_rate_fn!r}"
        )
    min_dim = int(min_dim_size_to_factor)
    codec = moment_codec(
        "scale_by_factored_rms", "state_dtype", None, state_dtype, stochastic_rounding,
        nonnegative=True,
    )  # fmt: skip

    def init(params: Any) -> ScaleByFactoredRmsState:
        if factored:
            refuse_inside_flat("scale_by_factored_rms")

        def leaf(p):
            p = jnp.asarray(p)
            dims = factored_dims(p.shape, factored, min_dim, factor_axes)
            return tuple(jnp.zeros(s, real_dtype(p.dtype)) for s in _state_shapes(p.shape, dims))

        outer = jax.tree.structure(params)
        parts = outer.flatten_up_to(jax.tree.map(leaf, params))
        v, v_col, v_row = (outer.unflatten([r[i] for r in parts]) for i in range(3))
        v, v_col, v_row = (codec.init(x, f) for x, f in zip((v, v_col, v_row), STATS, strict=True))
        return ScaleByFactoredRmsState(jnp.zeros([], jnp.int32), v=v, v_col=v_col, v_row=v_row)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        if factored:
            refuse_inside_flat("scale_by_factored_rms")
        dims = [
            factored_dims(g.shape, factored, min_dim, factor_axes) for g in jax.tree.leaves(updates)
        ]
        stored_stats = state
        state = state._replace(**{f: codec.decode(getattr(state, f)) for f in STATS})
        _check_state(updates, state, dims)
        c, e = jnp.asarray(decay_rate), jnp.asarray(epsilon)
        rate = jnp.asarray(decay_rate_fn(state.count - step_offset, c))

        def leaf(g, v, v_col, v_row, dims):
            gw = wide(g, rate, e, v)
            sq = abs_sq(gw)
            sq = sq + coef(e, sq)
            if dims is None:
                v = ema_of(rate, sq, v)
                return gw * (v**-0.5).astype(gw.dtype), v, v_col, v_row
            d1, d0 = dims
            v_row = ema_of(rate, jnp.mean(sq, axis=d0), v_row)
            v_col = ema_of(rate, jnp.mean(sq, axis=d1), v_col)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row = (v_row / jnp.mean(v_row, axis=reduced_d1, keepdims=True)) ** -0.5
            col = v_col**-0.5
            u = gw * jnp.expand_dims(row, d0).astype(gw.dtype)
            return u * jnp.expand_dims(col, d1).astype(gw.dtype), v, v_col, v_row

        outer = jax.tree.structure(updates)
        leaves = (outer.flatten_up_to(x) for x in (updates, state.v, state.v_col, state.v_row))
        rows = [leaf(*args) for args in zip(*leaves, dims, strict=True)]
        u, v, v_col, v_row = (outer.unflatten([r[i] for r in rows]) for i in range(4))
        return u, ScaleByFactoredRmsState(
            count=optax.safe_increment(state.count),
            v=codec.encode(v, stored_stats.v),
            v_col=codec.encode(v_col, stored_stats.v_col),
            v_row=codec.encode(v_row, stored_stats.v_row),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def _check_state(updates: Any, state: ScaleByFactoredRmsState, dims: list) -> None:
    """Raises TreeMismatchError unless the state was built for params of the gradients'
    tree and shapes (the factored statistics have shapes of their own)."""
    if jax.tree.structure(updates) != jax.tree.structure(state.v):
        raise TreeMismatchError(
            "scale_by_factored_rms: the gradient tree does not match the second moment in the "
            f"state.\n  gradients: {jax.tree.structure(updates)}\n"
            f"  state: {jax.tree.structure(state.v)}\n"
            "Call init with params of the same structure as the gradients."
        )
    leaves = jax.tree_util.tree_leaves_with_path(updates)
    stats = zip(*(jax.tree.leaves(x) for x in (state.v, state.v_col, state.v_row)), strict=True)
    for (path, g), have, d in zip(leaves, stats, dims, strict=True):
        want = _state_shapes(tuple(np.shape(g)), d)
        if tuple(tuple(np.shape(x)) for x in have) != want:
            where = jax.tree_util.keystr(path) or "(the root)"
            raise TreeMismatchError(
                f"scale_by_factored_rms: the gradient at {where} has shape {np.shape(g)}, but "
                "the state there was built for another shape "
                f"(v, v_col, v_row: {[np.shape(x) for x in have]}).\n"
                "Each gradient must have the shape of its param."
            )


class ClipByBlockRmsState(NamedTuple):
    """clip_by_block_rms keeps no state."""


def block_rms(x: jax.Array) -> jax.Array:
    """√mean(|x|²) over the whole leaf, real, in ``x``'s precision."""
    return jnp.sqrt(jnp.mean(abs_sq(x)))


def clip_by_block_rms(threshold: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Block: u ← u / max(1, RMS(u)/d), one RMS per leaf (Adafactor's update clipping).

    RMS(u) = √mean(``|u|²``) over the whole leaf (a weight matrix, a bias), so a leaf whose
    update is larger than d on average is shrunk to RMS d, and smaller ones pass unchanged.
    Equals ``optax.clip_by_block_rms``. Refused inside ``gradx.flat``, whose packed buffers
    are not the leaves.

    Args:
      threshold: d > 0 (1 in the paper).

    Returns:
      An optax transformation; its update is in the computed dtype (``wide`` of u and d).
    """
    check_numbers("clip_by_block_rms", threshold=threshold)

    def init(params: Any) -> ClipByBlockRmsState:
        del params
        refuse_inside_flat("clip_by_block_rms")
        return ClipByBlockRmsState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        refuse_inside_flat("clip_by_block_rms")
        d = jnp.asarray(threshold)

        def leaf(u):
            uw = wide(u, d)
            rms = block_rms(uw)
            return uw / coef(jnp.maximum(1, rms / coef(d, rms)), uw)

        return jax.tree.map(leaf, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class ScaleByParamBlockRmsState(NamedTuple):
    """scale_by_param_block_rms keeps no state."""


def param_block_rms(p: jax.Array, min_scale: jax.Array) -> jax.Array:
    """max(RMS(θ), min_scale) of one leaf, in θ's (real) precision: min_scale where
    RMS(θ) ≤ min_scale (optax's ``safe_root_mean_squares``)."""
    rms = block_rms(p)
    return jnp.where(rms <= coef(min_scale, rms), coef(min_scale, rms), rms)


def scale_by_param_block_rms(
    min_scale: jax.typing.ArrayLike = 1e-3,
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← u · max(RMS(θ), ε₂), one RMS per leaf (Adafactor's relative step size).

    Each leaf's step is proportional to its params' scale RMS(θ) = √mean(``|θ|²``), floored at
    ε₂ = ``min_scale`` so that a leaf at zero still moves. Equals
    ``optax.scale_by_param_block_rms``. ``update`` needs the params; refused inside
    ``gradx.flat``, whose packed buffers are not the leaves.

    Args:
      min_scale: ε₂ ≥ 0 (1e-3 in the paper).

    Returns:
      An optax transformation; its update is in the computed dtype (``wide`` of u, θ and
      ε₂).
    """
    check_numbers("scale_by_param_block_rms", min_scale=min_scale)

    def init(params: Any) -> ScaleByParamBlockRmsState:
        del params
        refuse_inside_flat("scale_by_param_block_rms")
        return ScaleByParamBlockRmsState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        fn = "scale_by_param_block_rms"
        refuse_inside_flat(fn)
        needs_params(fn, params, "the step is scaled by each leaf's RMS(θ)")
        params = params_like(fn, updates, params)
        lo = jnp.asarray(min_scale)

        def leaf(u, p):
            uw, pw = wide(u, lo, p), wide(p, lo, u)
            return uw * coef(param_block_rms(pw, lo), uw)

        return jax.tree.map(leaf, updates, params), state

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- gain rules


def factored_inverse_root(ctx, v, v_col, v_row, dims) -> jax.Array:
    """1/√V̂ of one leaf from its statistics, in the gain dtype (broadcasts to the leaf)."""
    if dims is None:
        return in_gain_dtype(ctx, v) ** -0.5
    d1, d0 = dims
    v_row, v_col = in_gain_dtype(ctx, v_row), in_gain_dtype(ctx, v_col)
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row = (v_row / nonzero_divisor(jnp.mean(v_row, axis=reduced_d1, keepdims=True))) ** -0.5
    return jnp.expand_dims(row, d0) * jnp.expand_dims(v_col**-0.5, d1)


def shapes_template(ctx, incoming: Any, block: str) -> Any:
    """The tree whose leaves give the params' shapes: the gradient received, or the params."""
    template = incoming if incoming is not None else ctx.params
    if template is None:
        raise ValueError(
            f"{GAIN_FN}: the {block} block's statistics do not say which leaves are factored: "
            "pass params= (or grads=)"
        )
    return template


@gain_rule(scale_by_factored_rms)
def _factored_rms_gain(ctx, cells, state, incoming):
    # u = g/√V̂_t with V̂_t from the statistics after the step: the factor on g is 1/√V̂_t.
    name = "scale_by_factored_rms"
    factored = closure_value(cells, "factored", name)

    min_dim, axes = closure_value(cells, "min_dim", name), closure_value(cells, "factor_axes", name)
    template = shapes_template(ctx, incoming, name)

    def factor(x, v, v_col, v_row):
        dims = factored_dims(tuple(np.shape(x)), factored, min_dim, axes)
        return jnp.broadcast_to(factored_inverse_root(ctx, v, v_col, v_row, dims), np.shape(x))

    v, v_col, v_row = (decode_moments(getattr(state, f)) for f in STATS)
    tree = jax.tree.map(factor, template, v, v_col, v_row)
    out = None if incoming is None else scaled_by(incoming, tree)
    return Gain(jnp.ones([], ctx.dtype), tree), out


def gain_rms(ctx, x: jax.Array) -> jax.Array:
    """RMS(x) of one leaf in the gain dtype (|x|² taken first: x may be complex)."""
    return jnp.sqrt(jnp.mean(in_gain_dtype(ctx, abs_sq(jnp.asarray(x)))))


def scaled_by(incoming: Any, factors: Any) -> Any:
    return jax.tree.map(lambda g, f: g * f.astype(g.dtype), incoming, factors)


@gain_rule(clip_by_block_rms)
def _clip_by_block_rms_gain(ctx, cells, state, incoming):
    # u/max(1, RMS(u)/d): a factor per leaf, from the update the block received.
    needs_incoming("clip_by_block_rms", incoming)
    d = in_gain_dtype(ctx, closure_value(cells, "threshold", "clip_by_block_rms"))
    tree = jax.tree.map(lambda u: 1 / jnp.maximum(1, gain_rms(ctx, u) / d), incoming)
    return Gain(jnp.ones([], ctx.dtype), tree), scaled_by(incoming, tree)


@gain_rule(scale_by_param_block_rms)
def _param_block_rms_gain(ctx, cells, state, incoming):
    # u·max(RMS(θ), ε₂): a factor per leaf, from the params the step was taken at.
    if ctx.params is None:
        raise ValueError(
            f"{GAIN_FN}: the scale_by_param_block_rms block scales each leaf by its params' RMS: "
            "pass params= (the params the last step was taken at)"
        )
    lo = in_gain_dtype(ctx, closure_value(cells, "min_scale", "scale_by_param_block_rms"))
    tree = jax.tree.map(
        lambda p: jnp.where(gain_rms(ctx, p) <= lo, lo, gain_rms(ctx, p)), ctx.params
    )
    out = None if incoming is None else scaled_by(incoming, tree)
    return Gain(jnp.ones([], ctx.dtype), tree), out
