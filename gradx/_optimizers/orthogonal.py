"""Orthogonalised updates: Muon's Newton–Schulz iteration, its shape scaling, its routing.

========  ======================================================================
muon      split_matrices(
            matrices: ema(β, debias) or nesterov_ema(β) → orthogonalize(ns) →
                      scale_by_shape → add_decayed_weights(λ) → scale_by_learning_rate(γ),
            others:   precondition(ema(β₁) or nesterov_ema(β₁), rms(β₂, debias), ε) →
                      add_decayed_weights(λ_adam) → scale_by_learning_rate(γ_adam))
========  ======================================================================

Unlike every other family, ``orthogonalize`` is not coordinate-wise: each matrix's step is a
function of the whole matrix (about U·Vᵀ for M = U·S·Vᵀ). So these blocks read the leaves'
shapes, refuse to run inside ``gradx.flat`` (whose packed buffers are not the leaves), and
``gradx.effective_learning_rate`` refuses Muon by name. The dimension numbers (which axes of
a leaf are the matrix's rows and columns, the others a batch) are optax's
``MuonDimensionNumbers``, re-exported as ``gradx.MuonDimensionNumbers``; the helpers that
read them, the block ``scale_by_shape`` and the routing block ``split_matrices`` are in
``matrices.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._optimizers.adam import nesterov_ema
from gradx._optimizers.matrices import (
    MuonDimensionNumbers,
    leaf_dims,
    matrix_dims,
    ns_coefficients,
    ns_steps_arg,
    preconditioning_arg,
    refuse_flat,
    reshape_fns,
    scale_by_shape,
    split_matrices,
)
from gradx._optimizers.momentum import ema
from gradx._optimizers.preconditioners import precondition, rms
from gradx._optimizers.scaling import add_decayed_weights, check_numbers, scale_by_learning_rate
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import coef, dtype_arg
from gradx._protocol.gain import GAIN_FN, gain_rule
from gradx._protocol.quantized import explicit_sharding
from gradx._protocol.rules import check_flag
from gradx._protocol.storage import state_dtype_args

DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
_AOL_EPS = 1e-8  # optax's first-step floors for the 'aol' and 'schatten' preconditionings


def _rounder(to: Any, within: Any):
    """z (of dtype ``within``) rounded to ``to``'s precision and kept in ``within``, by
    ``lax.reduce_precision``: XLA may drop a round trip through ``to`` (excess precision),
    never this."""
    if jnp.finfo(to).bits >= jnp.finfo(within).bits:
        return lambda z: z
    f = jnp.finfo(to)
    return lambda z: jax.lax.reduce_precision(z, exponent_bits=f.nexp, mantissa_bits=f.nmant)


def _to(dtype: Any, z: jax.Array) -> jax.Array:
    """``z`` in ``dtype``, rounded once (a wider z first to its precision, then converted)."""
    return _rounder(dtype, z.dtype)(z).astype(dtype)


def _iterate(x, c, first, preconditioning, acc, rnd, one_dtype):
    """One Newton–Schulz step X ← c₀·X + (c₁·A + c₂·A·A)·X, A = X·Xᴴ, on a matrix (in
    ``acc``) with at most as many rows as columns. In one dtype it is optax's arithmetic,
    c₂·A·A as (c₂·A)·A. Rounding (``rnd``) to a narrower dtype it is torch's ``addmm``
    (β·C + α·(A·B)): the product accumulates in ``acc`` and the combination is rounded once,
    as a fused multiply-add (exactly so with float64 on; in float32 a tie may round the
    other way)."""

    def mm(a, b):
        return jnp.matmul(a, b, preferred_element_type=acc)

    def times(k, y):
        return coef(c[k], y) * y

    schatten = first and preconditioning == "schatten"
    a = rnd(mm(x, x.T if schatten else x.T.conj()))  # optax's Schatten: no conj
    if first and preconditioning == "aol":  # optax: rows rescaled by 1/√Σ|A_ij|
        s = jax.lax.rsqrt(jnp.clip(jnp.abs(a).sum(axis=-1), min=_AOL_EPS))[:, None]
        x, a = rnd(x * s), rnd(a * s * s.T)
    elif schatten:  # optax: X / √‖A‖_F
        s = jax.lax.rsqrt(jnp.clip(jnp.linalg.norm(a, ord="fro"), min=_AOL_EPS))
        x, a = rnd(x * s), rnd(a * s**2)
    if one_dtype:
        return times(0, x) + mm(times(1, a) + mm(times(2, a), a), x)
    fused = jax.dtypes.canonicalize_dtype(jnp.float64)

    def scaled(k, z):  # c_k (a float32 number) times z: exact in float64
        return jnp.asarray(c[k], acc).astype(fused) * z.astype(fused)

    b = rnd(_to(acc, scaled(1, a) + scaled(2, mm(a, a))))
    return rnd(_to(acc, scaled(0, x) + mm(b, x).astype(fused)))


def orthogonalize_via_newton_schulz(
    x: jax.Array,
    ns_coeffs: Any,
    ns_steps: int = 5,
    preconditioning: str = "frobenius",
    eps: jax.typing.ArrayLike = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
    *,
    eps_as_floor: bool = False,
    ns_dtype: Any = None,
) -> jax.Array:
    """X ↦ about U·Vᵀ (X = U·S·Vᵀ), by a few steps of the quintic Newton–Schulz iteration.

    For a matrix with at most as many rows as columns (a taller one is transposed, iterated
    and transposed back)::

        X ← X / (‖X‖_F + ε)                     ('frobenius'; 'spectral': ‖X‖₂)
        repeat: A = X·Xᴴ;  X ← c₀·X + (c₁·A + c₂·A·A)·X

    The coefficients (c₀, c₁, c₂) = (3.4445, −4.7750, 2.0315) maximise the slope at 0, so the
    singular values land in about [0.7, 1.2] after 5 steps rather than at 1 (Jordan's).

    Args:
      x: a matrix, or an array of any rank ≥ 2 with ``dimension_numbers``.
      ns_coeffs: (c₀, c₁, c₂), used for ``ns_steps`` steps, or an (n, 3) array of one row per
        step (then ``ns_steps`` is ignored).
      ns_steps: the number of steps (static).
      preconditioning: the first scaling: ``'frobenius'``, ``'spectral'``, ``'aol'`` (rows
        by 1/√Σ|A_ij| in the first step) or ``'schatten'`` (X/√‖XXᵀ‖_F in the first step).
      eps: ε of the Frobenius and spectral scalings.
      dimension_numbers: a ``MuonDimensionNumbers``: the reduction (rows) and output
        (columns) axes; every other axis is a batch of matrices, each iterated alone.
      eps_as_floor: divide by max(‖X‖, ε) (torch's) instead of ‖X‖ + ε (optax's).
      ns_dtype: the dtype the iteration runs in (None: ``x``'s). With bfloat16 (Jordan's
        and torch's), X is rounded to it and each product accumulates in float32, rounded
        once (as torch's ``addmm``).

    Returns:
      An array of ``x``'s shape and dtype. A zero matrix gives zeros (also with ε = 0).

    Note:
      optax's function of this name (``optax.contrib._muon``), with two keyword-only
      additions for torch's convention.
    """
    dims = matrix_dims("orthogonalize_via_newton_schulz", x, dimension_numbers)
    coeffs = np.asarray(ns_coeffs, np.float64)
    if coeffs.ndim not in (1, 2) or coeffs.shape[-1] != 3:
        raise ValueError(
            "orthogonalize_via_newton_schulz: ns_coeffs must have shape (3,) or (n, 3), got "
            f"{coeffs.shape}"
        )
    steps = ns_steps_arg("orthogonalize_via_newton_schulz", ns_steps)
    rows = [coeffs] * steps if coeffs.ndim == 1 else list(coeffs)
    preconditioning_arg("orthogonalize_via_newton_schulz", preconditioning)
    given = x.dtype
    narrow = jnp.dtype(given if ns_dtype is None else ns_dtype)
    acc = narrow if jnp.finfo(narrow).bits >= 32 else jnp.dtype(jnp.float32)

    rnd = _rounder(narrow, acc)

    def one(m, eps):
        if m.shape[0] > m.shape[1]:
            return one(m.T, eps).T
        m = rnd(_to(acc, m))  # torch rounds float64 to bfloat16 through float32
        if preconditioning in ("frobenius", "spectral"):
            ord_ = "fro" if preconditioning == "frobenius" else 2
            norm = rnd(jnp.linalg.norm(m, ord=ord_))
            e = rnd(_to(acc, jnp.asarray(eps)))
            den = rnd(jnp.maximum(norm, e) if eps_as_floor else norm + e)
            m = rnd(m / jnp.where(den == 0, jnp.ones_like(den), den))  # X = 0: 0, not 0/0
        for i, c in enumerate(rows):
            m = _iterate(m, c, i == 0, preconditioning, acc, rnd, narrow == acc)
        return m

    reshape, inverse = reshape_fns("orthogonalize_via_newton_schulz", x.shape, dims)

    def iterate(x, eps):
        return inverse(jax.vmap(one, in_axes=(0, None))(reshape(x), eps)).astype(given)

    eps = jnp.asarray(eps)
    sharding = explicit_sharding(x)
    if sharding is None:
        return iterate(x, eps)
    # With explicit mesh axes X·Xᴴ of a matrix split along its rows has both axes on the
    # same mesh axis, which JAX refuses (ShardingTypeError): the iteration runs with the
    # axes automatic (the partitioner places its products) and its result is placed like x.
    return jax.sharding.auto_axes(iterate, out_sharding=sharding)(x, eps)


class OrthogonalizeState(NamedTuple):
    """orthogonalize keeps no state."""


def orthogonalize(
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    weight_dimension_numbers: Any = None,
    eps_as_floor: bool = False,
    ns_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Block: each matrix M of the updates ↦ about U·Vᵀ (M = U·S·Vᵀ), Muon's direction.

    Each leaf goes through :func:`orthogonalize_via_newton_schulz` (see there for the
    iteration, ``preconditioning``, ``eps_as_floor`` and ``ns_dtype``). With ``adaptive``
    (Bernstein's dual norm) the result O is scaled by ⟨M, O⟩ = Σ conj(M)·O.

    Args:
      ns_coeffs: (c₀, c₁, c₂), an (n, 3) array of one row per step (then ``ns_steps`` must
        be ≥ n and all n rows are used, as in optax), or a preset name, ``'standard'`` or
        ``'dion'``.
      ns_steps: the number of steps, static (the iteration is unrolled).
      eps: ε of the first scaling (a number or a scalar array).
      weight_dimension_numbers: None (every leaf is a matrix: rows are axis 0, columns axis
        1), a pytree of ``gradx.MuonDimensionNumbers`` like the params (or a prefix of
        them), or a function of the updates returning one (optax's).

    Returns:
      An optax transformation without state. A leaf that is not a matrix and has no
      dimension numbers is refused, as is running inside ``gradx.flat``.
    """
    check_numbers("orthogonalize", eps=eps)
    fn = "orthogonalize"
    coeffs = ns_coefficients(fn, ns_coeffs, ns_steps)
    preconditioning_arg(fn, preconditioning)
    dtype_arg(fn, "ns_dtype", ns_dtype)
    check_flag(fn, "adaptive", adaptive, "bool")
    check_flag(fn, "eps_as_floor", eps_as_floor, "bool")

    def init(params: Any) -> OrthogonalizeState:
        refuse_flat(fn)
        dims = leaf_dims(fn, weight_dimension_numbers, params, every_leaf=True)
        for x, d in zip(jax.tree.leaves(params), dims, strict=True):  # bad axes fail here
            reshape_fns(fn, np.shape(x), matrix_dims(fn, x, d))
        return OrthogonalizeState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        refuse_flat(fn)
        leaves, treedef = jax.tree.flatten(updates)
        dims = leaf_dims(fn, weight_dimension_numbers, updates, every_leaf=True)

        def leaf(m, d):
            o = orthogonalize_via_newton_schulz(
                m, coeffs, ns_steps, preconditioning, eps, d,
                eps_as_floor=eps_as_floor, ns_dtype=ns_dtype,
            )  # fmt: skip
            return jnp.sum(m.conj() * o) * o if adaptive else o

        return treedef.unflatten([leaf(m, d) for m, d in zip(leaves, dims, strict=True)]), state

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(orthogonalize)
def _orthogonalize_gain(ctx, cells, state, incoming):
    raise TypeError(
        f"{GAIN_FN}: Muon's step is not coordinate-wise, so it has no effective learning rate: "
        "the orthogonalize block (Newton–Schulz) maps each momentum matrix M = U·S·Vᵀ to about "
        "U·Vᵀ, so every coordinate's step depends on the whole matrix, and no per-coordinate "
        "factor multiplies the current gradient. Muon's step is set per matrix instead: "
        "γ·√max(1, fan_out/fan_in) (or γ·consistent_rms·√max(fan_in, fan_out)) times a matrix "
        "whose singular values are all near 1"
    )


def _momentum(
    beta: Any, nesterov: bool, mu_dtype: Any, store: dict[str, Any]
) -> optax.GradientTransformationExtraArgs:
    """optax's bias-corrected momentum: m̂ = m/(1−βᵗ), or its Nesterov form."""
    if nesterov:  # β·m/(1−β^{t+1}) + (1−β)·g/(1−βᵗ)
        return nesterov_ema(beta, momentum_decay=None, accumulator_dtype=mu_dtype, **store)
    return ema(beta, debias=True, accumulator_dtype=mu_dtype, **store)


def scale_by_muon(
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    weight_dimension_numbers: Any = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Block: Muon's direction, the bias-corrected momentum orthogonalised.

    ``ema(β, debias)`` (``nesterov``: ``nesterov_ema(β)``, optax's β·m̂_{t+1} + (1−β)·ĝ_t)
    → ``orthogonalize(ns_coeffs, ns_steps, ε, adaptive, preconditioning)``, with optax's
    ``scale_by_muon``'s arguments, order and defaults: every leaf must be a matrix or have
    dimension numbers (``gradx.muon`` routes the others to Adam). ``mu_dtype`` is the dtype
    m is stored in; where it is None, ``state_dtype`` and ``stochastic_rounding`` say how
    (as in :func:`gradx.adam`).
    """
    check_numbers("scale_by_muon", beta=beta, eps=eps)
    dtype_arg("scale_by_muon", "mu_dtype", mu_dtype)
    store = state_dtype_args("scale_by_muon", state_dtype, stochastic_rounding)
    return optax.chain(
        _momentum(beta, nesterov, mu_dtype, store),
        orthogonalize(
            ns_coeffs, ns_steps, eps, adaptive=adaptive, preconditioning=preconditioning,
            weight_dimension_numbers=weight_dimension_numbers,
        ),
    )  # fmt: skip


@optimizer(
    learning_rate=">= 0",
    beta="[0, 1)",
    eps=">= 0",
    weight_decay=">= 0",
    adam_b1="[0, 1)",
    adam_b2="[0, 1)",
    adam_eps_root=">= 0",
    adam_weight_decay=">= 0",
    adam_learning_rate=">= 0",
    consistent_rms=">= 0",
)
def muon(
    learning_rate: optax.ScalarOrSchedule,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: Any = None,
    consistent_rms: float | None = None,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Muon: the momentum of each weight matrix orthogonalised by Newton–Schulz; Adam elsewhere.

    For t = 1, 2, ..., each matrix W (a 2-D leaf, or a leaf with dimension numbers) with
    m₀ = 0::

        m ← β·m + (1−β)·g
        M = m/(1−βᵗ)          (nesterov: β·m/(1−β^{t+1}) + (1−β)·g/(1−βᵗ))
        O = NS₅(M) ≈ U·Vᵀ     (M = U·S·Vᵀ; adaptive: O ← ⟨M, O⟩·O)
        W ← W − γ·(s·O + λ·W),   s = √max(1, fan_out/fan_in)  (or consistent_rms·√max(...))

    where NS₅ is five quintic Newton–Schulz steps from M/(‖M‖_F + ε) (see
    :func:`orthogonalize_via_newton_schulz`). Every other leaf (vectors, scalars) takes
    AdamW's step with ``adam_b1``, ``adam_b2``, ε, ``adam_eps_root``, ``adam_weight_decay``
    (coupled to its step, optax's ``adamw``) and ``adam_learning_rate`` (γ by default), and
    the same ``nesterov`` and ``mu_dtype``.

    Blocks: ``split_matrices(matrices, others)`` with ``matrices``: ``ema(β, debias)``
    (``nesterov_ema(β)``) → ``orthogonalize(ns_coeffs, ns_steps, ε)`` → ``scale_by_shape``
    → ``add_decayed_weights(λ, mask)`` → ``scale_by_learning_rate(γ)``; ``others``:
    ``precondition(ema(β₁, debias) or nesterov_ema(β₁), rms(β₂, ε_root, debias), ε)`` →
    ``add_decayed_weights(λ_adam)`` → ``scale_by_learning_rate(γ_adam)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      ns_coeffs: the Newton–Schulz coefficients (c₀, c₁, c₂), an (n, 3) array of one row per
        step (``ns_steps`` must then be ≥ n; all n are used), or ``'standard'`` / ``'dion'``.
        Static: a tuple of constants of the unrolled iteration, not a scalar of the state.
      ns_steps: the number of Newton–Schulz steps, static: the iteration is unrolled
        (a traced count would make it a ``while_loop`` XLA cannot fuse, and optax needs it
        concrete too).
      beta: β in [0, 1).
      eps: ε ≥ 0, of the Frobenius scaling and of Adam's denominator (shared, as in optax).
      weight_decay: λ ≥ 0 of the matrices, added after the shape scaling, times γ.
      weight_decay_mask: which matrices decay, as optax's (a pytree of bools like the params
        or a prefix, or a function of the params; it sees the matrices, the other leaves
        being ``optax.MaskedNode()``).
      mu_dtype: the dtype both momenta are stored in; None follows the params.
      nesterov: the Nesterov form, for the matrices and for Adam (optax's default: True).
      adaptive: scale O by ⟨M, O⟩ (Bernstein and Newhouse's dual norm).
      preconditioning: ``'frobenius'``, ``'spectral'``, ``'aol'`` or ``'schatten'``.
      adam_b1, adam_b2, adam_eps_root, adam_weight_decay: Adam's for the other leaves.
      adam_learning_rate: Adam's γ (a number or a schedule); None follows ``learning_rate``.
      muon_weight_dimension_numbers: None (the 2-D leaves are the matrices, rows = axis 0),
        or a pytree of ``gradx.MuonDimensionNumbers`` / None like the params (or a prefix),
        or a function of the params returning one: a leaf with dimension numbers is a batch
        of matrices (any rank ≥ 2), a None goes to Adam.
      consistent_rms: None (Jordan's width scaling) or the update's target RMS (0.2 matches
        AdamW's, Moonshot's).
      state_dtype, stochastic_rounding: how the momenta (where ``mu_dtype`` is None) and
        Adam's second moment are stored: a float dtype, ``"bfloat16"`` rounded
        stochastically, or ``"int8"`` (blockwise); see :func:`gradx.adam`. The
        Newton–Schulz iteration runs on the decoded float32 momentum.

    Returns:
      An optax transformation whose state holds ``learning_rate, beta, eps, weight_decay,
      adam_b1, adam_b2, adam_eps_root, adam_weight_decay`` (and ``adam_learning_rate``,
      ``consistent_rms`` when given). ``update`` needs the params. Refused inside
      ``gradx.flat`` and by ``gradx.effective_learning_rate`` (the step is not
      coordinate-wise).

    Reference:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024;
      Liu et al., "Muon is Scalable for LLM Training", 2025 (``consistent_rms``); Bernstein
      and Newhouse, "Old Optimizer, New Norm: An Anthology", 2024 (``adaptive``).

    Note:
      Equals ``optax.contrib.muon`` (same arguments, order and defaults) to float rounding.
      Where they differ: the iteration runs in the momentum's computed dtype (float32 for
      bfloat16 params, where optax iterates in bfloat16), and a zero momentum gives a zero
      step also with ε = 0 (optax: NaN). ``torch.optim.Muon`` (``gradx.compat.torch.Muon``)
      takes matrices only, keeps an unbiased EMA, iterates in bfloat16 and scales by
      √max(1, rows/cols) (``docs/conventions.md``, Muon).
    """
    fn = "muon"
    dtype_arg(fn, "mu_dtype", mu_dtype)
    store = state_dtype_args(fn, state_dtype, stochastic_rounding)
    ns_coefficients(fn, ns_coeffs, ns_steps)
    preconditioning_arg(fn, preconditioning)
    spec = muon_weight_dimension_numbers
    matrices = optax.chain(
        _momentum(beta, nesterov, mu_dtype, store),
        orthogonalize(
            ns_coeffs, ns_steps, eps, adaptive=adaptive, preconditioning=preconditioning,
            weight_dimension_numbers=spec,
        ),
        scale_by_shape(spec, consistent_rms),
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
    adam_lr = learning_rate if adam_learning_rate is None else adam_learning_rate
    num = _momentum(adam_b1, nesterov, mu_dtype, store)
    den = rms(adam_b2, eps_root=adam_eps_root, debias=True, **store)
    others = optax.chain(
        precondition(num, den, eps),
        add_decayed_weights(adam_weight_decay),
        scale_by_learning_rate(adam_lr),
    )
    return split_matrices(matrices, others, weight_dimension_numbers=spec)
