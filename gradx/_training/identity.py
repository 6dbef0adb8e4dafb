"""A run's identity, recorded in each checkpoint and compared on resume: the optimizer state's
classes, the starting hyperparameters, the arguments the optimizer was built with, digests of
the initial params and state, the data's shapes, the batch size and the callbacks' names and
settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx._protocol.dtypes import as_dtype


def describe_arrays(tree: Any) -> list[list[Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(path), list(np.shape(x)), str(jnp.result_type(x))]
        for path, x in leaves
    ]


def _checksum(x: Any) -> str | None:
    """SHA-256 of an array's shape and bytes; None for an array this process cannot read."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return None
    a = np.ascontiguousarray(np.asarray(x))
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def array_checksums(tree: Any) -> list[str | None]:
    return [_checksum(x) for x in jax.tree.leaves(tree)]


def _digest(tree: Any) -> str:
    return hashlib.sha256(json.dumps(array_checksums(tree)).encode()).hexdigest()


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _classes(tree: Any) -> list[str]:
    """The class of every node of ``tree``, depth first (HyperparamsState's name its
    optimizer)."""
    out: list[str] = []

    def walk(treedef):
        data = treedef.node_data()
        if data is not None:
            out.append(data[0].__qualname__)
            for child in treedef.children():
                walk(child)

    walk(jax.tree.structure(tree))
    return out


def _stateful(cb: Any) -> bool:
    from gradx.callbacks import Callback

    method = getattr(type(cb), "get_state", None)
    return method is not None and method is not Callback.get_state


def callback_names(callbacks: Any) -> list[str | None]:
    """A stable name per callback with counters (None for the others): its ``name``, else
    its class and ``monitor``, with ``#k`` for the k-th repeat of a name."""
    names: list[str | None] = []
    for cb in callbacks:
        if not _stateful(cb):
            names.append(None)
            continue
        name = getattr(cb, "name", None)
        if not isinstance(name, str):
            name = type(cb).__qualname__
            monitor = getattr(cb, "monitor", None)
            if isinstance(monitor, str):
                name = f"{name}[{monitor}]"
        repeats = sum(n is not None and n.split("#")[0] == name for n in names)
        names.append(f"{name}#{repeats}" if repeats else name)
    return names


def _settings(cb: Any) -> dict[str, Any]:
    """A callback's settings: its public attributes of plain types that are not counters."""
    counters = cb.get_state()
    return {
        k: v
        for k, v in sorted(vars(cb).items())
        if not k.startswith("_")
        and k not in counters
        and (v is None or isinstance(v, (str, int, float, bool)))
    }


#: Fields that checkpoints written by gradx before they were recorded lack: compared only when
#: the checkpoint has them, so that such a run still resumes.
NEWER_FIELDS = ("optimizer arguments",)


def optimizer_arguments(optimizer: Any) -> dict[str, Any]:
    """What ``optimizer`` was built from, flat: a path (``optimizer.nesterov``,
    ``optimizer.inner.state_dtype``, ``optimizer.update.update_fns[0].tx.update.max_norm``) to
    a JSON value, so that a resume with other flags (Nesterov or not, a mask, a clipping
    threshold) is told apart from the same run (a storage dtype by the state's arrays: see
    :func:`first_difference`).

    An optimizer built by an ``@gradx.optimizer`` constructor is described by the arguments it
    was called with (an inner optimizer, as lookahead's, in turn); any other transformation
    or function (optax's, a schedule, your own) by its qualified name and the values its
    closure holds, to a depth of 8. A function's code is not compared, only what it
    captures: two lambdas with different constants in their bodies read alike. Arrays are
    compared by shape, dtype and digest, other objects by their class."""
    out: dict[str, Any] = {}
    _describe(optimizer, "optimizer", out, 0, frozenset())
    return out


def _built(init: Any) -> tuple[Any, Any] | None:
    """(constructor, bound arguments) of the @optimizer whose ``init`` this is, or None."""
    from gradx._protocol.declare import BUILT

    try:
        return BUILT.get(init) if callable(init) else None
    except TypeError:  # not weakly referable: no optimizer's init
        return None


def _dtype_name(obj: Any) -> str | None:
    """The name of the dtype ``obj`` names ("int8", jnp.int8, np.dtype("int8") alike), or
    None."""
    dtype = as_dtype(obj)
    return None if dtype is None else str(dtype)


def _describe(obj: Any, path: str, out: dict[str, Any], depth: int, seen: frozenset) -> None:
    if isinstance(obj, str) and path.endswith("dtype"):  # "int8" and jnp.int8 read alike
        out[path] = _dtype_name(obj) or obj
        return
    if obj is None or isinstance(obj, (bool, int, float, str)):
        out[path] = obj
        return
    if isinstance(obj, type):  # a dtype given as jnp.bfloat16, a class
        out[path] = _dtype_name(obj) or f"{obj.__module__}.{obj.__qualname__}"
        return
    if isinstance(obj, np.dtype):
        out[path] = str(obj)
        return
    if isinstance(obj, np.generic):
        out[path] = f"{obj.dtype}:{obj}"
        return
    if isinstance(obj, (jax.Array, np.ndarray)):
        out[path] = [list(np.shape(obj)), str(obj.dtype), _checksum(obj)]
        return
    if depth >= 8 or id(obj) in seen:
        out[path] = type(obj).__qualname__
        return
    seen = seen | {id(obj)}
    built = _built(getattr(obj, "init", None)) or _built(obj)  # or an init, inside a chain
    if built is not None:
        constructor, bound = built
        out[path] = constructor.__name__
        for name, value in bound.arguments.items():
            _describe(value, f"{path}.{name}", out, depth + 1, seen)
        return
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        out[path] = f"{type(obj).__qualname__}[{len(obj)}]"
        for i, value in enumerate(obj):
            _describe(value, f"{path}[{i}]", out, depth + 1, seen)
        return
    if isinstance(obj, dict):
        out[path] = f"dict[{len(obj)}]"
        for key in sorted(obj, key=repr):
            _describe(obj[key], f"{path}[{key!r}]", out, depth + 1, seen)
        return
    if hasattr(obj, "_fields"):  # a NamedTuple, as optax's GradientTransformation
        out[path] = type(obj).__qualname__
        for name in obj._fields:
            _describe(getattr(obj, name), f"{path}.{name}", out, depth + 1, seen)
        return
    if isinstance(obj, functools.partial):
        out[path] = "partial"
        _describe(obj.func, f"{path}.func", out, depth + 1, seen)
        _describe(list(obj.args), f"{path}.args", out, depth + 1, seen)
        _describe(dict(obj.keywords), f"{path}.keywords", out, depth + 1, seen)
        return
    if isinstance(obj, re.Pattern):
        out[path] = f"re:{obj.pattern}"
        return
    if isinstance(obj, types.MethodType):  # optax.MultiSteps(...).gradient_transformation()
        out[path] = f"{obj.__func__.__module__}.{obj.__func__.__qualname__}"
        _describe(obj.__self__, f"{path}.self", out, depth + 1, seen)
        return
    if isinstance(obj, types.FunctionType):
        out[path] = f"{obj.__module__}.{obj.__qualname__}"
        if not obj.__module__.startswith(("jax.", "numpy", "jaxlib")):
            cells = obj.__closure__ or ()
            for name, cell in zip(obj.__code__.co_freevars, cells, strict=True):
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                _describe(value, f"{path}.{name}", out, depth + 1, seen)
        return
    leaves, treedef = jax.tree.flatten(obj)
    if leaves != [obj]:  # a registered pytree node (a dataclass, an equinox module)
        out[path] = str(treedef)
        for i, value in enumerate(leaves):
            _describe(value, f"{path}.<{i}>", out, depth + 1, seen)
        return
    out[path] = type(obj).__qualname__
    for name, value in sorted(getattr(obj, "__dict__", {}).items()):  # an object's settings
        _describe(value, f"{path}.{name}", out, depth + 1, seen)


def identity(params: Any, opt_state: Any, callbacks: Any, run: dict[str, Any]) -> dict:
    """What tells one run from another (see the module doc), at the start of the run:
    ``opt_state`` in the optimizer's own layout, ``run`` the data's description."""
    from gradx._protocol.access import hyperparams

    try:
        start = {k: np.asarray(v).tolist() for k, v in hyperparams(opt_state).items()}
    except (TypeError, ValueError):
        start = {}
    names = callback_names(callbacks)
    described = {k: describe_arrays(v) if k.endswith("data") else v for k, v in run.items()}
    return {
        "optimizer state classes": _classes(opt_state),
        **{f"{k} (at the start)": v for k, v in start.items()},
        **described,
        "callbacks": {n: _settings(cb) for n, cb in zip(names, callbacks, strict=True) if n},
        "initial params": _digest(params),
        "initial optimizer state": _digest(opt_state),
    }


# Optimizer arguments that only set the dtype a state is stored in. The state's arrays
# (shapes and dtypes, compared before the identity) tell two runs apart by them, and a dtype
# given equal to what None gave is the same run: nu_dtype=float16 resumes a float16 run of a
# gradx that stored v in the params' dtype.
_STORAGE_DTYPES = ("mu_dtype", "nu_dtype", "accumulator_dtype", "dtype_momentum", "state_dtype")


def _compared(name: str, value: Any) -> Any:
    if name != "optimizer arguments" or not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k.rsplit(".", 1)[-1] not in _STORAGE_DTYPES}


def first_difference(there: dict, now: dict) -> str | None:
    """The first field of two identities that differs, in words, or None. Storage dtype
    arguments of the optimizer are left to the comparison of the state's arrays."""
    for name in [*there, *(k for k in now if k not in there and k not in NEWER_FIELDS)]:
        a = _compared(name, there.get(name, "absent"))
        b = _compared(name, now.get(name, "absent"))
        if canon(a) == canon(b):
            continue
        if name.startswith("initial"):
            return f"the {name} differ"
        if isinstance(a, dict) and isinstance(b, dict):
            key = next(k for k in sorted({*a, *b}) if canon(a.get(k)) != canon(b.get(k)))
            return f"the {name} differ: {key} was {a.get(key)} there, {b.get(key)} now"
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
            return f"{name}: {a[i]} there, {b[i]} now"
        return f"{name} was {a} there, {b} now"
    return None
