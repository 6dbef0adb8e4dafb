"""Dtypes: of the hyperparameters (float32 or wider, never narrower) and of the moments.

Hyperparameters are stored in float32, or in the params' dtype when that is wider (float64):
bfloat16 params must not turn b2 = 0.999 into 1.0. Moments follow the params unless an
argument (``mu_dtype``, ``accumulator_dtype``) says otherwise; a complex param keeps a real
second moment (``abs_sq``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def real_dtype(dtype: Any) -> jnp.dtype:
    """The real dtype of the same precision: float32 for complex64, float64 for complex128."""
    dtype = jnp.dtype(dtype)
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def hyperparam_dtype(params: Any) -> jnp.dtype:
    """float32, or the widest floating precision among ``params`` when that is wider.

    Never narrower than float32: with bfloat16 params, b2 = 0.999 must stay 0.999, not round to
    1.0 (optax issue 1414). Complex params count as their real precision (complex64 as
    float32, complex128 as float64): hyperparameters are real numbers.
    """
    dtype = jnp.dtype(jnp.float32)
    for leaf in jax.tree.leaves(params):
        leaf_dtype = getattr(leaf, "dtype", None)
        if leaf_dtype is not None and jnp.issubdtype(leaf_dtype, jnp.inexact):
            dtype = _wider(dtype, real_dtype(leaf_dtype))
    return dtype


def at_least_float32(x: jax.Array) -> jax.Array:
    """``x`` in float32 at least: a narrower float, an integer or a bool becomes float32;
    float32, float64 and complex arrays stay as they are. Where a number is computed or summed
    wider than it is stored (a half-precision loss gradient, averages of bool metrics, fit's
    moving average of bfloat16 params)."""
    if jnp.issubdtype(x.dtype, jnp.inexact) and jnp.finfo(x.dtype).bits >= 32:
        return x
    return x.astype(jnp.float32)


def _wider(a: jnp.dtype, b: jnp.dtype) -> jnp.dtype:
    """``a`` at the wider precision of ``a`` and ``b``, keeping ``a``'s kind (real or complex).

    Not jnp.promote_types: that refuses float32 + float64 under strict promotion.
    """
    a, b = jnp.dtype(a), jnp.dtype(b)
    ra, rb = real_dtype(a), real_dtype(b)
    if rb.itemsize <= ra.itemsize or not jnp.issubdtype(rb, jnp.floating):
        return a
    # Spelled out: jnp.result_type(float64, complex64) is refused under strict promotion.
    return jnp.dtype(f"complex{16 * rb.itemsize}") if jnp.issubdtype(a, jnp.complexfloating) else rb


def wide(x: jax.Array, *hs: jax.Array) -> jax.Array:
    """``x`` cast to the widest precision of ``x`` and of ``hs``, keeping ``x``'s kind.

    ``hs`` are the hyperparameters (and any other array the result is combined with). Blocks
    compute in that dtype: bf16 or float16 params get float32 arithmetic for their scalars,
    and a complex ``x`` stays complex (complex64 widened by a float64 ``h`` is complex128).
    Weakly typed scalars (Python numbers given to a block) take the other operand's dtype,
    as in JAX. Blocks return their result in this computed dtype; an optimizer built by
    :func:`optimizer` casts its final update to the gradient's dtype once, at the end.
    """
    dtype = functools.reduce(_wider, [h.dtype for h in hs if not h.weak_type], x.dtype)
    if dtype == x.dtype and not getattr(x, "weak_type", True):
        return x  # the common case: no cast to trace (one per leaf and operand adds up)
    return x.astype(dtype)


def coef(h: jax.typing.ArrayLike, x: jax.Array) -> jax.Array:
    """The scalar ``h`` as an array of ``x``'s dtype, so ``coef(h, x) * x`` needs no promotion.

    ``x`` is the result of :func:`wide` over ``h``, so the cast never narrows a non-weak ``h``;
    a complex ``x`` turns a real ``h`` into a complex scalar with zero imaginary part.
    """
    h = jnp.asarray(h)
    if h.dtype == x.dtype and not h.weak_type:
        return h  # already the right scalar: no cast to trace
    return h.astype(x.dtype)


def abs_sq(x: jax.Array) -> jax.Array:
    """|x|², real: x² for real ``x``, (x·conj(x)).real for complex (optax's ``abs_sq``)."""
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return (x * jnp.conj(x)).real
    return jnp.square(x)


def as_dtype(value: Any) -> jnp.dtype | None:
    """The dtype ``value`` names ("int8", jnp.int8, np.dtype("int8") alike), or None for
    None and for anything that names none. An array or a NumPy number is not a dtype,
    though ``jnp.dtype`` reads one off it (``jnp.zeros(3)`` would be float32)."""
    if value is None or isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return None
    try:
        return jnp.dtype(value)
    except TypeError:
        return None


def dtype_arg(fn: str, name: str, dtype: Any) -> jnp.dtype | None:
    """``dtype`` as a real floating ``jnp.dtype``, or None; raises on anything else."""
    if dtype is None:
        return None
    canonical = as_dtype(dtype)
    if canonical is None or not jnp.issubdtype(canonical, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must be a real floating dtype (e.g. jnp.float32) or None, got {dtype!r}"
        )
    return canonical


def moment_dtype(fn: str, name: str, leaf_dtype: Any, dtype: Any, real: bool) -> jnp.dtype:
    """The dtype a moment of a params leaf is stored in.

    ``dtype`` None follows the leaf; a ``real`` moment (of |g|²) of a complex leaf is real
    (complex64 → float32). One exception: a ``real`` moment of a float16 leaf is float32
    (all of them, Adamax's infinity norm too, which would not underflow: one simple rule).
    float16 has 5 exponent bits: at β₂ = 0.999, (1 − β₂)·g² rounds to 0 in float16 for
    ``|g|`` under about 5.5e-3 (v stays 0 and Adam's step grows to 16 times the learning
    rate in 300 steps, without a sign) and is coarsely rounded up to ``|g|`` ≈ 1.5e-2 (steps
    off by up to 4×); bfloat16 has float32's exponent range.
    A first moment (``real=False``) of a complex leaf given a real ``dtype`` is stored in
    its complex counterpart (float32 → complex64, float64 → complex128).
    """
    leaf_dtype = jnp.dtype(leaf_dtype)
    if dtype is None:
        if not real:
            return leaf_dtype
        own = real_dtype(leaf_dtype)
        if jnp.finfo(own).nexp < jnp.finfo(jnp.float32).nexp:
            return jnp.dtype(jnp.float32)
        return own
    dtype = jnp.dtype(dtype)
    if real or not jnp.issubdtype(leaf_dtype, jnp.complexfloating):
        return dtype
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise TypeError(
            f"{fn}: {name} must be float32 or float64 for complex params (its complex "
            f"counterpart stores the moment), got {dtype} for {leaf_dtype} params"
        )
    return jnp.dtype(f"complex{16 * dtype.itemsize}")


def moment_zeros(
    fn: str, name: str, params: Any, dtype: Any, real: bool = False, fill: Any = 0
) -> Any:
    """A moment like ``params``, filled with ``fill``, in :func:`moment_dtype` per leaf."""

    def leaf(p):
        p = jnp.asarray(p)
        return jnp.full_like(p, fill, dtype=moment_dtype(fn, name, p.dtype, dtype, real))

    return jax.tree.map(leaf, params)


def stored(new: Any, old: Any) -> Any:
    """The state's leaves: each value of ``new`` cast to the dtype ``old`` is stored in."""
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def as_stored(new: Any, old: Any) -> Any:
    """``new`` as the state keeps it, in ``new``'s dtype: the value a block's update reads.

    Rounded to ``old``'s dtype and back where that dtype is narrower but has as many exponent
    bits (bfloat16 for float32): reading the moment it stores, the update needs no old moment
    once the new one is written, so XLA keeps no copy of it (a buffer the moment's size, every
    step). A dtype of fewer exponent bits (float16) could underflow a small v to 0 and blow
    up the step: there, and where the dtypes agree, ``new`` is returned as it is.
    """

    def leaf(n: jax.Array, o: jax.Array) -> jax.Array:
        if n.dtype == o.dtype or jnp.finfo(o.dtype).nexp < jnp.finfo(n.dtype).nexp:
            return n
        return n.astype(o.dtype).astype(n.dtype)

    return jax.tree.map(leaf, new, old)
