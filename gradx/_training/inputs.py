"""fit's, sweep's and search's inputs, checked once: data, batch size, key, optimizer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol import rules as _rules
from gradx._protocol.storage import CAST_TO_INIT
from gradx._protocol.trees import TreeMismatchError
from gradx._tools.flat import sign_like


def check_flag(fn: str, name: str, value: Any) -> bool:
    _rules.check_flag(fn, name, value, "bool")  # the optimizers' check: bool("false") is True
    return bool(value)


def check_function(fn: str, name: str, value: Any) -> None:
    """Raises a TypeError unless ``value`` (``loss_fn``, ``eval_fn``) is callable."""
    if not callable(value):
        raise TypeError(f"{fn}: {name} must be callable, got {type(value).__name__} {value!r}")


def check_eval(fn: str, eval_fn: Any, eval_data: Any, default: Any) -> Any:
    """``eval_data`` as arrays (``default`` where None is given), ``eval_fn`` checked to be
    callable; ``eval_data`` as it is without an ``eval_fn``."""
    if eval_fn is None:
        return eval_data
    check_function(fn, "eval_fn", eval_fn)
    return default if eval_data is None else numeric_arrays(fn, "eval_data", eval_data)


def check_optimizer(fn: str, optimizer: Any) -> None:
    """Raises a TypeError naming the fix unless ``optimizer`` has ``init`` and ``update``."""
    if callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None)):
        return
    want = f"{fn}: optimizer must be an optax GradientTransformation such as gradx.adam(1e-3)"
    if isinstance(optimizer, str):
        raise TypeError(
            f"{want}, got the string {optimizer!r} (gradx.OPTIMIZERS[{optimizer!r}]"
            "(learning_rate) builds one by name)"
        )
    if callable(optimizer):  # a constructor, not called: gradx.adam, optax.sgd
        import gradx

        name = getattr(optimizer, "__name__", None) or type(optimizer).__name__
        owner = next((m for m in (gradx, optax) if getattr(m, name, None) is optimizer), None)
        label = name if owner is None else f"{owner.__name__}.{name}"
        raise TypeError(f"{want}, got the function {label}; call it: {label}(1e-3)")
    raise TypeError(f"{want}, got {optimizer!r}, which has no init and update methods")


_LIST_OF_BATCHES = (
    "{fn}: data must be a pytree of arrays with one leading example axis (a tuple or dict, "
    "e.g. (x, y)), got a list of {count} pytrees, which reads as a list of batches; to "
    "train on them in memory, join them: jax.tree.map(lambda *xs: np.concatenate(xs), "
    "*batches)"
)


def prepare_data(fn: str, name: str, data: Any) -> tuple[Any, int]:
    # A top-level list of pytrees (tuples, dicts) is a list of batches, not one pytree: as
    # arrays, its leaves would all be examples and loss_fn would see the list. A list of
    # arrays ([x, y], Keras's multi-input form) stays in-memory data.
    if isinstance(data, list) and data and all(isinstance(x, (tuple, list, Mapping)) for x in data):
        message = _LIST_OF_BATCHES.format(fn=fn, count=len(data))
        if fn == "fit":
            message += "; to stream them batch by batch, pass data=lambda epoch: batches"
        raise ValueError(message)
    leaves, treedef = jax.tree.flatten(data)
    if not leaves:
        raise ValueError(f"{fn}: {name} must be a pytree of arrays, got one with no leaves")
    arrays = jax.tree.leaves(numeric_arrays(fn, name, data))
    lengths = [a.shape[0] if a.ndim else None for a in arrays]
    if None in lengths or len(set(lengths)) != 1 or lengths[0] == 0:
        shapes = jax.tree.unflatten(treedef, [a.shape for a in arrays])
        raise ValueError(
            f"{fn}: {name} must be arrays with one leading example axis of the same nonzero "
            f"length, got shapes {shapes}"
        )
    return jax.tree.unflatten(treedef, arrays), lengths[0]


def numeric_arrays(fn: str, name: str, tree: Any) -> Any:
    """``tree`` with every leaf made a JAX array (``jnp.asarray``), or a TypeError naming the
    first leaf that is not numeric (a string, an array of strings, an object)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    arrays = []
    for path, x in leaves:
        try:
            arrays.append(jnp.asarray(x))
        except TypeError:
            got = (
                f"an array of dtype {x.dtype}"
                if hasattr(x, "dtype")
                else f"{type(x).__name__} {x!r}"
            )
            raise TypeError(
                f"{fn}: {name} must be a pytree of numeric arrays, got {got} at "
                f"{name}{jax.tree_util.keystr(path)}"
            ) from None
    return jax.tree.unflatten(treedef, arrays)


def mismatch(new: Any, old: Any) -> str | None:
    """The first difference of structure, shape or dtype between two pytrees, or None."""
    if jax.tree.structure(new) != jax.tree.structure(old):
        return f"structure {jax.tree.structure(new)} vs {jax.tree.structure(old)}"
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(new)[0], jax.tree.leaves(old), strict=True
    ):
        ta, tb = (np.shape(a), jnp.result_type(a)), (np.shape(b), jnp.result_type(b))
        if ta != tb:
            where = jax.tree_util.keystr(path)
            return f"{where}: shape {ta[0]} dtype {ta[1]} vs shape {tb[0]} dtype {tb[1]}"
    return None


def check_opt_state(fn: str, optimizer: Any, params: Any, opt_state: Any) -> Any:
    """``opt_state`` (None: none given), which must have the structure, shapes and dtypes of
    ``optimizer.init(params)``, or a :class:`TreeMismatchError` (a ValueError).

    A state whose every ``gradx.FlatState`` lacks the params' signature (pickled by gradx
    before it had one, or built by hand) and differs from init's only in those classes comes
    back in init's structure (its leaves unchanged), signed (``flat.sign_like``)."""
    if opt_state is None:
        return None
    want = jax.eval_shape(optimizer.init, params)
    diff = mismatch(opt_state, want)
    if diff is None:
        return opt_state
    signed = sign_like(opt_state, want)
    if signed is not None:  # an unsigned flat state: what differs beyond its class
        diff = mismatch(signed, want)
        if diff is None:
            return signed
        opt_state = signed
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(opt_state)):  # 5, "adam"
        got = f"got {type(opt_state).__name__} {opt_state!r}"
    else:
        got = f"first difference (given vs init's): {diff}{_earlier_gradx(opt_state, want)}"
    raise TreeMismatchError(
        f"{fn}: opt_state does not have the structure, shapes and dtypes of "
        "optimizer.init(params), which it must have: a state of this optimizer for these "
        f"params (e.g. an earlier fit's result.opt_state); {got}"
    )


def _earlier_gradx(given: Any, want: Any) -> str:
    """A note for a state of init's structure with a float16 leaf where init has float32: a
    never-negative moment of float16 params, as gradx stored it before it kept them in
    float32 (and how to bring the state to today's dtypes); else ''."""
    if jax.tree.structure(given) != jax.tree.structure(want):
        return ""
    for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(want), strict=True):
        same_shape = np.shape(a) == np.shape(b)
        if same_shape and (jnp.result_type(a), jnp.result_type(b)) == (jnp.float16, jnp.float32):
            return (
                " (an earlier gradx stored the never-negative moments of float16 params in "
                f"float16, where they round to 0: {CAST_TO_INIT})"
            )
    return ""


def steps_and_dropped(fn: str, n: int, batch_size: int | None) -> tuple[int, int]:
    if batch_size is None:
        return 1, 0
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"{fn}: batch_size must be None or an integer >= 1, got {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"{fn}: batch_size must be None or an integer in [1, {n}] (the number of "
            f"examples), got {batch_size}"
        )
    return n // batch_size, n % batch_size


def check_key(fn: str, key: Any, batch_size: int | None) -> Any:
    if key is None:
        if batch_size is None:
            return jax.random.key(0)  # full batch: never used
        raise ValueError(
            f"{fn}: key must be a JAX PRNG key (e.g. jax.random.key(0)) to shuffle "
            f"minibatches, got None"
        )
    is_typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    is_raw = isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32
    if not ((is_typed and key.shape == ()) or (is_raw and key.shape == (2,))):
        raise ValueError(
            f"{fn}: key must be a JAX PRNG key (one: jax.random.key(0) or "
            f"jax.random.PRNGKey(0)), got {key!r}"
        )
    return key


def fresh_copy(tree: Any) -> Any:
    # The epoch program donates params and state; never hand it the caller's own buffers.
    # (A transfer, in place: an eager jnp.array copy compiles a program per leaf shape, about
    # 10 ms each on CPU.)
    return jax.device_put(tree, may_alias=False)


def rule_error(fn: str, error: Exception, where: Mapping[str, str], at: str) -> Exception | None:
    """``error``, raised by ``set_hyperparams`` for a value breaking the optimizer's rule for
    one of the names in ``where``, told as ``fn``'s about that argument: ``"sweep:
    grid['learning_rate'] must be >= 0, got -1.0 (at index 2)"``; None for another error."""
    text = str(error)
    for name, label in where.items():
        own = f"set_hyperparams: {name} must be "
        if text.startswith(own):
            return type(error)(f"{fn}: {label} must be {text[len(own) :]}{at}")
    return None


def check_int(fn: str, name: str, value: Any, low: int) -> int:
    """``value`` as an int, or a ValueError unless it is an integer >= ``low`` (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{fn}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)
