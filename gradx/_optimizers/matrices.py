"""Matrices for the orthogonal family (orthogonal.py): which leaves are matrices, how a leaf
of any rank is a batch of matrices (optax's ``MuonDimensionNumbers``), the fans, the checks of
the blocks' static arguments, the block ``scale_by_shape`` (a factor per matrix from its
fans), and the routing block ``split_matrices`` (matrices to one
transform, the other leaves to another: Muon's matrices and its Adam).
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

from gradx._optimizers.scaling import FLAT_ACTIVE, check_numbers
from gradx._protocol.dtypes import coef, wide
from gradx._protocol.gain import (
    GAIN_FN,
    Gain,
    closure_value,
    gain_rule,
    in_gain_dtype,
    walk_gain,
)
from gradx._protocol.storage import salt_rounding_keys
from gradx._protocol.trees import TreeMismatchError

__all__ = ["MuonDimensionNumbers"]

#: optax's presets of ``ns_coeffs`` (``optax.contrib._muon._NS_COEFFS_PRESET_DICT``).
NS_PRESETS = {
    "standard": (3.4445, -4.7750, 2.0315),
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")


def is_dims(x: Any) -> bool:
    return isinstance(x, MuonDimensionNumbers)


class _Box:
    """A dimension number (or None) held as a pytree leaf."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def leaf_dims(fn: str, spec: Any, tree: Any, every_leaf: bool = False) -> list[Any]:
    """The dimension numbers of each leaf of ``tree`` (None: not a matrix), from ``spec``.

    ``spec`` None: a 2-D leaf is a matrix (rows axis 0, columns axis 1), the others are not.
    Else a ``MuonDimensionNumbers`` or None for every leaf, a pytree of them like ``tree`` or
    a prefix of it, or a function of ``tree`` returning one (optax's rules). With
    ``every_leaf``, a leaf without dimension numbers is refused, naming its path.
    """
    pairs = jax.tree_util.tree_leaves_with_path(tree)
    paths, leaves = [p for p, _ in pairs], [x for _, x in pairs]
    if spec is None:
        dims = [MuonDimensionNumbers() if np.ndim(x) == 2 else None for x in leaves]
    else:
        given = spec(tree) if callable(spec) else spec
        if given is None or is_dims(given):
            dims = [given] * len(leaves)
        else:
            try:
                boxed = jax.tree.map(
                    lambda d, sub: jax.tree.map(lambda _: _Box(d), sub),
                    given,
                    tree,
                    is_leaf=lambda v: v is None or is_dims(v),
                )
            except (ValueError, TypeError):
                raise TreeMismatchError(
                    f"{fn}: the dimension numbers must have the params' structure or a prefix "
                    f"of it.\n  dimension numbers: {jax.tree.structure(given, is_leaf=is_dims)}"
                    f"\n  params: {jax.tree.structure(tree)}"
                ) from None
            dims = [b.value for b in jax.tree.leaves(boxed)]
            for d in dims:
                if d is not None and not is_dims(d):
                    raise TypeError(
                        f"{fn}: weight_dimension_numbers must hold gradx.MuonDimensionNumbers "
                        f"or None, got {d!r}"
                    )
    if every_leaf:
        for path, x, d in zip(paths, leaves, dims, strict=True):
            if d is None:
                raise ValueError(
                    f"{fn}: every leaf must be a matrix or have dimension numbers, got shape "
                    f"{np.shape(x)} at {jax.tree_util.keystr(path) or '(the root)'}: give it "
                    "gradx.MuonDimensionNumbers in weight_dimension_numbers, or route it "
                    "elsewhere with gradx.split_matrices (as gradx.muon routes it to Adam)"
                )
    return dims


def matrix_dims(fn: str, x: Any, dims: Any) -> MuonDimensionNumbers:
    """The dimension numbers of one array: (0, 1) for a matrix (whatever is given, as optax
    does), ``dims`` for an array of another rank."""
    if np.ndim(x) == 2:
        return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    if not is_dims(dims):
        raise ValueError(
            f"{fn}: x must be a matrix or come with dimension_numbers, got shape "
            f"{np.shape(x)} and dimension_numbers={dims!r}"
        )
    return dims


def _axes(shape: tuple[int, ...], dims: MuonDimensionNumbers) -> tuple[tuple[int, ...], ...]:
    def norm(a: Any) -> tuple[int, ...]:
        return tuple(ax % len(shape) for ax in ((a,) if isinstance(a, int) else a))

    return norm(dims.reduction_axis), norm(dims.output_axis)


def shape_products(shape: tuple[int, ...], dims: MuonDimensionNumbers) -> tuple[int, int]:
    """(fan_in, fan_out): the products of the reduction and of the output axes' sizes."""
    reduction, output = _axes(shape, dims)
    return math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)


def reshape_fns(fn: str, shape: tuple[int, ...], dims: MuonDimensionNumbers):
    """(to, back): an array of ``shape`` to (batch, fan_in, fan_out) and back (optax's)."""
    if len(shape) < 2:
        raise ValueError(f"{fn}: an orthogonalised leaf must have rank >= 2, got shape {shape}")
    reduction, output = _axes(shape, dims)
    if set(reduction) & set(output):
        raise ValueError(
            f"{fn}: the reduction and output axes must be disjoint, got {reduction} and "
            f"{output} for shape {shape} ({dims!r})"
        )
    batch = tuple(sorted(set(range(len(shape))) - set(reduction) - set(output)))
    order = batch + reduction + output
    inverse = tuple(sorted(range(len(shape)), key=lambda i: order[i]))
    sizes = [tuple(shape[a] for a in axes) for axes in (batch, reduction, output)]
    flat = tuple(math.prod(s) for s in sizes)
    return (
        lambda x: x.transpose(order).reshape(flat),
        lambda x: x.reshape(sizes[0] + sizes[1] + sizes[2]).transpose(inverse),
    )


def ns_steps_arg(fn: str, ns_steps: Any, most: int | None = None) -> int:
    """``ns_steps`` as a Python int >= 0 (and < ``most``): it unrolls the iteration."""
    try:
        if isinstance(ns_steps, bool):
            raise TypeError
        steps = operator.index(ns_steps)
    except TypeError:
        steps = None
    if steps is None or steps < 0 or (most is not None and steps >= most):
        bound = "an integer >= 0" if most is None else f"an integer in [0, {most})"
        raise ValueError(
            f"{fn}: ns_steps must be {bound} (static: the iteration is unrolled), got {ns_steps!r}"
        )
    return steps


def ns_coefficients(fn: str, ns_coeffs: Any, ns_steps: Any, name: str = "ns_coeffs") -> np.ndarray:
    """The coefficients as a float64 array of shape (3,) or (n, 3), presets resolved; with
    (n, 3), ``ns_steps`` must be >= n and all n rows are used (optax's rule)."""
    steps = ns_steps_arg(fn, ns_steps)
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_PRESETS:
            raise ValueError(
                f"{fn}: {name} must be (c0, c1, c2), rows of them, or one of "
                f"{sorted(NS_PRESETS)}, got {ns_coeffs!r}"
            )
        ns_coeffs = NS_PRESETS[ns_coeffs]
    try:
        coeffs = np.asarray(ns_coeffs, np.float64)
    except (TypeError, ValueError):
        coeffs = np.zeros((0,))
    if coeffs.ndim not in (1, 2) or coeffs.shape[-1] != 3 or not np.all(np.isfinite(coeffs)):
        raise ValueError(
            f"{fn}: {name} must be 3 finite numbers (c0, c1, c2) or an (n, 3) array of "
            f"them, got {ns_coeffs!r}"
        )
    if coeffs.ndim == 2 and coeffs.shape[0] > steps:
        raise ValueError(
            f"{fn}: ns_steps must be >= the {coeffs.shape[0]} rows of {name} (one per step; "
            f"all are used), got {steps}"
        )
    return coeffs


def preconditioning_arg(fn: str, preconditioning: Any) -> None:
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(
            f"{fn}: preconditioning must be one of {PRECONDITIONINGS}, got {preconditioning!r}"
        )


def refuse_flat(fn: str) -> None:
    if FLAT_ACTIVE.get():
        raise ValueError(
            f"{fn}: params must not be packed by gradx.flat, got a packed buffer: Muon treats "
            "each matrix as a whole (and tells matrices from the other leaves by their shapes), "
            "and flat packs the leaves into a few 1-D buffers per dtype; use the per-leaf "
            "optimizer"
        )


class ScaleByShapeState(NamedTuple):
    """scale_by_shape keeps no state."""


def scale_by_shape(
    weight_dimension_numbers: Any = None,
    consistent_rms: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Block: each matrix's update times a factor of its shape, u ← s·u.

    With fan_in the product of the reduction axes' sizes and fan_out that of the output
    axes' (rows and columns of a plain matrix)::

        s = √max(1, fan_out/fan_in)                  (consistent_rms None: Jordan's)
        s = consistent_rms·√max(fan_in, fan_out)     (Moonshot's: 0.2 matches AdamW's RMS)

    Args:
      weight_dimension_numbers: as in :func:`orthogonalize`.
      consistent_rms: None, or the target RMS of the update (a number or a scalar array).

    Returns:
      An optax transformation without state (optax's ``scale_by_shape`` in
      ``optax.contrib._muon``).
    """
    check_numbers("scale_by_shape", consistent_rms=consistent_rms)
    fn = "scale_by_shape"

    def init(params: Any) -> ScaleByShapeState:
        refuse_flat(fn)
        leaf_dims(fn, weight_dimension_numbers, params, every_leaf=True)
        return ScaleByShapeState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        refuse_flat(fn)
        leaves, treedef = jax.tree.flatten(updates)
        factors = shape_factors(fn, weight_dimension_numbers, consistent_rms, updates)

        def leaf(u, s):
            uw = wide(u, s)
            return uw * coef(s, uw)

        return treedef.unflatten([leaf(u, s) for u, s in zip(leaves, factors, strict=True)]), state

    return optax.GradientTransformationExtraArgs(init, update)


def shape_factors(fn: str, spec: Any, consistent_rms: Any, tree: Any) -> list[jax.Array]:
    """scale_by_shape's factor of each leaf of ``tree``, as optax computes it."""
    out = []
    for x, d in zip(jax.tree.leaves(tree), leaf_dims(fn, spec, tree, every_leaf=True), strict=True):
        fan_in, fan_out = shape_products(np.shape(x), d)
        if np.size(x) == 0:  # no elements to scale (and fan_in may be 0)
            out.append(jnp.asarray(1.0))
        elif consistent_rms is None:
            out.append(jnp.sqrt(jnp.maximum(1, fan_out / fan_in)))
        else:
            out.append(jnp.sqrt(jnp.maximum(fan_in, fan_out)) * jnp.asarray(consistent_rms))
    return out


@gain_rule(scale_by_shape)
def _shape_gain(ctx, cells, state, incoming):
    spec = closure_value(cells, "weight_dimension_numbers", "scale_by_shape")
    rms = closure_value(cells, "consistent_rms", "scale_by_shape")
    tree = incoming if incoming is not None else ctx.params
    if tree is None:
        raise ValueError(f"{GAIN_FN}: scale_by_shape's factor is read off the shapes: pass params=")
    factors = [in_gain_dtype(ctx, s) for s in shape_factors(GAIN_FN, spec, rms, tree)]
    gains = jax.tree.structure(tree).unflatten(factors)
    out = (
        None if incoming is None else jax.tree.map(lambda g, s: g * s.astype(g.dtype), tree, gains)
    )
    return Gain(jnp.ones([], ctx.dtype), gains), out


class SplitMatricesState(NamedTuple):
    matrices: Any  # the matrices' transform's state, the other leaves optax.MaskedNode()
    others: Any  # the others' transform's state, the matrices optax.MaskedNode()


def matrix_mask(fn: str, spec: Any, tree: Any) -> list[bool]:
    """Per leaf of ``tree``: a matrix (to be orthogonalised)?"""
    return [d is not None for d in leaf_dims(fn, spec, tree)]


def _parts(tree: Any, mask: list[bool]) -> tuple[Any, Any]:
    """``tree`` twice: its matrices (the others masked), its others (the matrices masked)."""
    leaves, treedef = jax.tree.flatten(tree)
    hole = optax.MaskedNode()
    pairs = [(x, hole) if m else (hole, x) for x, m in zip(leaves, mask, strict=True)]
    return tuple(treedef.unflatten([p[i] for p in pairs]) for i in range(2))


def _joined(treedef: Any, mask: list[bool], matrices: Any, others: Any) -> Any:
    a, b = treedef.flatten_up_to(matrices), treedef.flatten_up_to(others)
    return treedef.unflatten([x if m else y for x, y, m in zip(a, b, mask, strict=True)])


def split_matrices(
    matrices: optax.GradientTransformation,
    others: optax.GradientTransformation,
    *,
    weight_dimension_numbers: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Block: the matrices go through ``matrices``, the other leaves through ``others``.

    A leaf is a matrix when it is 2-D (``weight_dimension_numbers`` None) or when its
    dimension numbers are not None (a pytree of ``gradx.MuonDimensionNumbers`` or None like
    the params, or a prefix of them, or a function of the params returning one): optax's
    ``muon`` rule. Each transform sees the params with the other leaves replaced by
    ``optax.MaskedNode()``, as in ``optax.partition``.

    Returns:
      An optax transformation whose state is a ``SplitMatricesState``. Refused inside
      ``gradx.flat`` (its packed buffers are not the leaves).
    """
    fn = "split_matrices"
    matrices, others = (optax.with_extra_args_support(t) for t in (matrices, others))

    def init(params: Any) -> SplitMatricesState:
        refuse_flat(fn)
        mine, rest = _parts(params, matrix_mask(fn, weight_dimension_numbers, params))
        return SplitMatricesState(  # each part's rounding keys its own
            matrices=salt_rounding_keys(matrices.init(mine), "matrices"),
            others=salt_rounding_keys(others.init(rest), "others"),
        )

    def update(updates, state, params=None, **extra_args):
        refuse_flat(fn)
        mask = matrix_mask(fn, weight_dimension_numbers, updates)
        (mu, ou), treedef = _parts(updates, mask), jax.tree.structure(updates)
        mp, op = (None, None) if params is None else _parts(params, mask)
        mu, ms = matrices.update(mu, state.matrices, mp, **extra_args)
        ou, os_ = others.update(ou, state.others, op, **extra_args)
        return _joined(treedef, mask, mu, ou), SplitMatricesState(matrices=ms, others=os_)

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(split_matrices)
def _split_gain(ctx, cells, state, incoming):
    # Each branch's gain on its own leaves, joined; the matrices' branch of muon refuses.
    spec = closure_value(cells, "weight_dimension_numbers", "split_matrices")
    tree = incoming if incoming is not None else ctx.params
    if tree is None:
        raise ValueError(f"{GAIN_FN}: split_matrices routes leaves by their shapes: pass params=")
    mask = matrix_mask(GAIN_FN, spec, tree)
    treedef, parts = jax.tree.structure(tree), _parts(tree, mask)
    inputs = (None, None) if incoming is None else parts
    params = (None, None) if ctx.params is None else _parts(ctx.params, mask)
    factors, outs = [], []
    for i, name in enumerate(("matrices", "others")):
        branch, sub = closure_value(cells, name, "split_matrices"), parts[i]
        gain, out = walk_gain(
            ctx._replace(params=params[i]), branch.update, getattr(state, name), inputs[i]
        )
        if gain.tree is None:
            factors.append(jax.tree.map(lambda _, s=gain.scale: s, sub))
        else:
            factors.append(jax.tree.map(lambda v, s=gain.scale: s * v, gain.tree))
        outs.append(out)
    joined = _joined(treedef, mask, *factors)
    out = None if any(o is None for o in outs) else _joined(treedef, mask, *outs)
    return Gain(jnp.ones([], ctx.dtype), joined), out
