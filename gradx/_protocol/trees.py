"""Tree checks shared by every block: the gradient tree against the state's, params given."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class TreeMismatchError(ValueError):
    """The gradient tree does not match the tree the state was built for."""


def check_tree(updates: Any, reference: Any, what: str) -> None:
    """Raises :class:`TreeMismatchError` unless ``updates`` has the structure of ``reference``
    and each of its leaves the shape of the matching leaf of ``reference``.

    Shapes are static, so the check costs nothing under ``jit``. Without it, a gradient of
    shape (3, 1) for a param of shape (3,) would broadcast the update to (3, 3) silently.
    """
    got, want = jax.tree.structure(updates), jax.tree.structure(reference)
    if got != want:
        raise TreeMismatchError(
            f"the gradient tree does not match the {what}.\n"
            f"  gradients: {got}\n  {what}: {want}\n"
            "Call init with params of the same structure as the gradients."
        )
    leaves = jax.tree_util.tree_leaves_with_path(updates)
    for (path, u), r in zip(leaves, jax.tree.leaves(reference), strict=True):
        if np.shape(u) != np.shape(r):
            raise TreeMismatchError(
                f"the gradient at {jax.tree_util.keystr(path) or '(the root)'} has shape "
                f"{np.shape(u)}, but the {what} there has shape {np.shape(r)}.\n"
                "Each gradient must have the shape of its param."
            )


def as_arrays(tree: Any, numpy_only: bool = False) -> Any:
    """``tree`` with every leaf that is not a JAX array (a Python or NumPy number, a NumPy
    array; with ``numpy_only``, NumPy ones only) made one, strongly typed, so that blocks can
    read ``.dtype`` and ``.weak_type``."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) or (numpy_only and not isinstance(x, (np.ndarray, np.generic))):
            return x
        return jnp.asarray(x, jnp.asarray(x).dtype)

    return jax.tree.map(leaf, tree)


_ARRAY_LIKE = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)


def _is_variable(x: Any) -> bool:
    return hasattr(x, "get_value") and not isinstance(x, jax.Array)


def unwrap_variables(tree: Any) -> Any:
    """``tree`` with each flax ``nnx.Variable`` (what ``nnx.Optimizer`` gives ``init``: a
    ``Param`` around each array) replaced by its array: for code that reads the leaves' key
    paths (a Variable adds ``/value``, the arrays ``update`` receives do not) or stores more
    than one array per leaf (an int8 moment's absmax and codes)."""
    return jax.tree.map(
        lambda x: x.get_value() if _is_variable(x) else x, tree, is_leaf=_is_variable
    )


def check_arrays(fn: str, tree: Any, what: str) -> None:
    """Refuses a leaf that is not an array or a number (a model's activation function)."""
    if all(isinstance(leaf, _ARRAY_LIKE) for leaf in jax.tree.leaves(tree)):
        return  # the common case, without building a path per leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not isinstance(leaf, _ARRAY_LIKE):
            raise TypeError(
                f"{fn}: {what} must be arrays, got a {type(leaf).__name__} at "
                f"{what}{jax.tree_util.keystr(path)}; pass only the arrays, e.g. "
                "eqx.filter(model, eqx.is_array) for an equinox model"
            )


def params_like(fn: str, updates: Any, params: Any) -> Any:
    """``params`` cut to the gradients' leaves and made arrays, or None if None.

    optax's rule: the gradients are the reference tree, and a param whose gradient is None
    is skipped. So ``update(grads, state, model)`` takes a whole equinox model, whose
    activation functions get None gradients from ``eqx.filter_grad``. A param that is not an
    array where the gradient is one is refused, naming its path; a structure or shape that
    differs from the gradients' raises :class:`TreeMismatchError`.
    """
    if params is None:
        return None
    if jax.tree.structure(params) != jax.tree.structure(updates):
        try:
            params = jax.tree.map(
                lambda g, p: None if g is None else p,
                updates,
                params,
                is_leaf=lambda x: x is None,
            )
        except (ValueError, TypeError):
            pass  # not a prefix: check_tree names the difference
        if jax.tree.structure(params) != jax.tree.structure(updates):
            check_tree(updates, params, "params")
    check_arrays(fn, params, "params")
    params = as_arrays(params)
    check_tree(updates, params, "params")
    return params


def check_inexact(fn: str, tree: Any, what: str) -> None:
    """Refuses integer and boolean leaves: a descent step on them is not representable."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"{fn}: {what} must be floating or complex arrays, got dtype {leaf.dtype} at "
                f"{what}{jax.tree_util.keystr(path)}; cast them first, e.g. "
                "jax.tree.map(lambda x: x.astype(jnp.float32), params), or leave them out "
                "(an equinox model: eqx.filter(model, eqx.is_inexact_array))"
            )


def needs_params(fn: str, params: Any, why: str) -> None:
    """Raises unless ``params`` was given to ``update``; ``why`` says what it is needed for."""
    if params is None:
        raise ValueError(
            f"{fn}: update needs the params ({why}): call update(grads, state, params)"
        )
