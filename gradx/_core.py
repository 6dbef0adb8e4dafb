"""Protocol glue: blocks, optimizers, and hyperparameters that live in the state.

gradx speaks optax's protocol and adds one idea to it.

* A **block** (``scale_by_learning_rate``, ``trace``, ``ema``, ``precondition``, ...) is a
  plain ``optax.GradientTransformationExtraArgs`` whose numbers are fixed when it is built,
  exactly like optax's ``scale_by_*`` transforms.
* An **optimizer** is a function that builds a short chain of blocks from its
  hyperparameters, lifted by :func:`optimizer`. The lifted constructor validates the numbers,
  stores them in the state as arrays, and rebuilds the chain from the state on every
  ``update``. Rebuilding happens while tracing, so after ``jit`` it costs nothing; and because
  the numbers are data, a new learning rate is a new input, not a new program, and ``vmap``
  over a state whose hyperparameters are batched trains one model per value.

A hyperparameter may also be a schedule: a callable of the step count (any optax schedule).
The callable is static; the step count lives in the state.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import importlib
import inspect
import math
import operator
import re
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._sharding import shard_like_params

# ----------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """The set a hyperparameter must lie in, written as in the error messages.

    ``"[0, 1)"``, ``"(0, 1]"``, ``">= 0"``, ``"> 0"``, ``"int >= 1"``, ``"any"``.
    Every value must also be finite, both as given and as stored (see :meth:`check`).
    """

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = True
    high_closed: bool = True
    integer: bool = False

    @classmethod
    def parse(cls, text: str) -> Rule:
        interval = re.fullmatch(r"\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*", text)
        if interval:
            lo_b, lo, hi, hi_b = interval.groups()
            return cls(f"in {text.strip()}", float(lo), float(hi), lo_b == "[", hi_b == "]")
        bound = re.fullmatch(r"\s*(int\s+)?(>=|>|<=|<)\s*(\S+)\s*", text)
        if bound:
            integer, op, value = bound.groups()
            value = float(value)
            prefix = "an integer " if integer else ""
            rule_text = f"{prefix}{op} {bound.group(3)}"
            if op.startswith(">"):
                return cls(rule_text, low=value, low_closed=op == ">=", integer=bool(integer))
            return cls(rule_text, high=value, high_closed=op == "<=", integer=bool(integer))
        if text.strip() == "any":
            return cls("finite")
        raise ValueError(
            f"Rule.parse: text must look like '[0, 1)', '>= 0' or 'int >= 1', got {text!r}"
        )

    def holds(self, x: np.ndarray) -> bool:
        if not np.all(np.isfinite(x)):
            return False
        if self.integer and not np.all(np.equal(np.round(x), x)):
            return False
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return bool(np.all(above & below))

    def holds_traced(self, x: jax.Array) -> jax.Array:
        """:meth:`holds` for an array that may be traced: a boolean array, all over ``x``."""
        ok = jnp.isfinite(x) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.ones_like(x, bool)
        if self.integer and jnp.issubdtype(x.dtype, jnp.inexact):
            ok &= jnp.round(x) == x
        if self.low > -math.inf:
            low = jnp.asarray(self.low).astype(x.dtype)
            ok &= x >= low if self.low_closed else x > low
        if self.high < math.inf:
            high = jnp.asarray(self.high).astype(x.dtype)
            ok &= x <= high if self.high_closed else x < high
        return jnp.all(ok)

    def storage_dtype(self, dtype: Any = None) -> np.dtype:
        """The dtype a value is stored in: int32 for an integer rule, else ``dtype``
        (default float32, the narrowest dtype :func:`hyperparam_dtype` returns)."""
        if self.integer:
            return np.dtype(np.int32)
        return np.dtype(jnp.float32 if dtype is None else dtype)

    def check(self, fn: str, name: str, value: Any, dtype: Any = None) -> None:
        """Raises if a concrete ``value`` breaks the rule; tracers pass unchecked.

        The value is checked as given and as it will be stored, in ``dtype`` (see
        :meth:`storage_dtype`): ``b1 = 1 − 1e−10`` is 1.0 in float32 and breaks
        ``[0, 1)``; ``1e39`` is inf in float32 and breaks every rule.
        """
        if isinstance(value, jax.core.Tracer):
            return
        if _is_complex(value):
            raise TypeError(
                f"{fn}: {name} must be a real number {self.text}, got the complex {value!r}"
            )
        if isinstance(value, bool) or not _is_number(value):
            raise TypeError(f"{fn}: {name} must be a number {self.text}, got {value!r}")
        try:  # a Python int past float64's range (10**400) is an object array to NumPy
            x = np.asarray(value, np.float64) if isinstance(value, int) else np.asarray(value)
        except OverflowError:
            raise ValueError(
                f"{fn}: {name} must be {self.text}, got an integer of {len(str(abs(value)))} "
                "digits, which overflows float64"
            ) from None
        if not self.holds(x):
            raise ValueError(f"{fn}: {name} must be {self.text}, got {value!r}")
        stored_dtype = self.storage_dtype(dtype)
        if self.integer:
            info = np.iinfo(stored_dtype)
            if not info.min <= x <= info.max:
                raise ValueError(
                    f"{fn}: {name} must be {self.text}, got {value!r}, which does not fit in "
                    f"{stored_dtype.name}, the dtype it is stored in"
                )
            return
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            stored = x.astype(stored_dtype)
        if not self.holds(stored):
            raise ValueError(
                f"{fn}: {name} must be {self.text}, got {value!r}, which rounds to "
                f"{stored.item()!r} in {stored_dtype.name}, the dtype it is stored in"
            )

    def check_hyperparameter(self, fn: str, name: str, value: Any, dtype: Any = None) -> bool:
        """Checks a number, or a schedule's value at step 0; returns whether it is a schedule."""
        if callable(value) and not hasattr(value, "dtype"):
            first = value(0)
            self.check(fn, f"{name} (its schedule's value at step 0)", first, dtype)
            check_schedule_shape(fn, name, first)
            return True
        self.check(fn, name, value, dtype)
        return False


def _is_number(value: Any) -> bool:
    """A real number: a Python int or float, or a real NumPy/JAX number or array."""
    if _is_complex(value):
        return False
    if isinstance(value, (int, float, np.number)):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    )


def _is_complex(value: Any) -> bool:
    """A complex number or array (np.complex64(1e-3) is an np.number, and not a real one)."""
    if isinstance(value, complex):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)


def check_schedule_shape(fn: str, name: str, value: Any) -> None:
    """Refuses a schedule's value that is not a scalar (one number per step, not one per
    coordinate): it would be broadcast over every leaf silently. Shapes are static, so this
    works on tracers, when ``update`` is traced."""
    if np.ndim(value) != 0:
        raise ValueError(
            f"{fn}: {name}'s schedule must return a scalar, got shape {np.shape(value)}"
        )


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclasses.dataclass(frozen=True)
class _Relation:
    """A rule between two hyperparameters of one optimizer, e.g. ``"min_step <= max_step"``."""

    left: str
    op: str
    right: str

    @classmethod
    def parse(cls, text: str) -> _Relation:
        match = re.fullmatch(r"\s*(\w+)\s*(<=|<|>=|>)\s*(\w+)\s*", text)
        if not match:
            raise ValueError(
                f"optimizer: a relation must look like 'min_step <= max_step', got {text!r}"
            )
        return cls(*match.groups())

    def holds(self, left: Any, right: Any) -> Any:
        return _COMPARISONS[self.op](left, right)

    def message(self, fn: str, left: np.generic, right: np.generic) -> str:
        # str, not repr: a float32 0.005 reads 0.005, not 0.004999999888241291.
        return f"{fn}: {self.left} must be {self.op} {self.right} ({right!s}), got {left!s}"


def _concrete(value: Any) -> np.generic | None:
    """``value`` as a NumPy scalar, or None for a tracer (or a container of one)."""
    leaves = jax.tree.leaves(value)
    if len(leaves) != 1 or isinstance(leaves[0], jax.core.Tracer):
        return None
    return np.asarray(leaves[0])[()]


# ----------------------------------------------------------------------------- dtypes


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


# ----------------------------------------------------------------------------- structure


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


def _as_arrays(tree: Any, numpy_only: bool = False) -> Any:
    """``tree`` with every leaf that is not a JAX array (a Python or NumPy number, a NumPy
    array; with ``numpy_only``, NumPy ones only) made one, strongly typed, so that blocks can
    read ``.dtype`` and ``.weak_type``."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) or (numpy_only and not isinstance(x, (np.ndarray, np.generic))):
            return x
        return jnp.asarray(x, jnp.asarray(x).dtype)

    return jax.tree.map(leaf, tree)


_ARRAY_LIKE = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)


def _check_arrays(fn: str, tree: Any, what: str) -> None:
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
    _check_arrays(fn, params, "params")
    params = _as_arrays(params)
    check_tree(updates, params, "params")
    return params


def _check_inexact(fn: str, tree: Any, what: str) -> None:
    """Refuses integer and boolean leaves: a descent step on them is not representable."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"{fn}: {what} must be floating or complex arrays, got dtype {leaf.dtype} at "
                f"{what}{jax.tree_util.keystr(path)}; cast them first, e.g. "
                "jax.tree.map(lambda x: x.astype(jnp.float32), params)"
            )


# ----------------------------------------------------------------------------- runtime checks

_RUNTIME_CHECKS = {"on": False}


class _Switch:
    def __init__(self, enabled: bool) -> None:
        self.previous = _RUNTIME_CHECKS["on"]
        _RUNTIME_CHECKS["on"] = enabled

    def __enter__(self) -> _Switch:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _RUNTIME_CHECKS["on"] = self.previous


def check_hyperparams(enabled: bool = True) -> _Switch:
    """Switches on (or off) the runtime checks of hyperparameters in every optimizer's update.

    Concrete values are always checked in Python: at construction (each number, and each
    schedule's value at step 0, against the optimizer's rules, as stored in float32) and by
    :func:`set_hyperparams` (in the state's dtype). What those checks cannot see is checked
    at run time when this switch is on: at every ``update`` of an optimizer built by
    :func:`optimizer`,

    * every value in the state (including tracers given to :func:`set_hyperparams` under
      ``jit`` or ``vmap``), every schedule's value at the current step and every value
      injected from outside (``optax.inject_hyperparams``) is checked against its rule
      (finite, in its set, an integer where the rule says so);
    * the optimizer's relations between hyperparameters (rprop: ``min_step <= max_step``).

    The checks are ``jax.experimental.checkify`` checks: wrap the function that calls
    ``update`` in ``checkify.checkify`` (jitted or not) and call ``err.throw()`` on the error
    it returns. Called eagerly without ``checkify``, a failed check raises at once; under
    ``jit`` without ``checkify``, JAX refuses to trace a check. The switch is read when
    ``update`` is traced: a program traced with the switch off has no checks and costs
    nothing extra; one traced with it on keeps them. ``jax.jit`` reuses a traced program
    for the same function, so switch before a jitted step is first called (or call
    ``jax.clear_caches()``).

    Use it as a function (``gradx.check_hyperparams(True)``, until switched off) or as a
    context manager (``with gradx.check_hyperparams():``, restored on exit).

    Args:
      enabled: True to check, False to stop checking.

    Returns:
      A context manager that restores the previous setting on exit.
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"check_hyperparams: enabled must be a bool, got {enabled!r}")
    return _Switch(bool(enabled))


def _runtime_checks(
    fn: str,
    owner: type[HyperparamsState],
    count: jax.Array,
    values: dict[str, jax.Array],
    schedules: Mapping[str, Any],
    injected: Mapping[str, Any],
) -> None:
    from jax.experimental import checkify  # only when the checks are on

    for name, value in values.items():
        if name in schedules:
            what = f"{name} (its schedule's value at step {{step}})"
        elif name in injected:
            what = f"{name} (the value given from outside at step {{step}})"
        else:
            what = f"{name} (at step {{step}})"
        rule = owner.rules[name]
        checkify.check(
            rule.holds_traced(value),
            f"{fn}: {what} must be {rule.text}, got {{value}}",
            value=value,
            step=count,
        )
    for relation in owner.relations:
        if relation.left in values and relation.right in values:
            left, right = values[relation.left], values[relation.right]
            checkify.check(
                jnp.all(relation.holds(left, right)),
                f"{fn}: {relation.left} must be {relation.op} {relation.right} ({{right}}), "
                "got {left} at step {step}",
                left=left,
                right=right,
                step=count,
            )


# ----------------------------------------------------------------------------- the state


class HyperparamsState(NamedTuple):
    """State of an optimizer built by :func:`optimizer`.

    Each optimizer declared with :func:`optimizer` gets its own subclass of this NamedTuple,
    with the same four fields and no other leaves: ``isinstance(state, HyperparamsState)``
    holds for all of them. The subclass carries, as class attributes, the optimizer's name
    (``owner``), its rules (``rules``) and its relations, so :func:`set_hyperparams` checks a
    value against the rule of the optimizer that owns it, and ``update`` refuses a state built
    by another optimizer. The subclass pickles by a name registered in this module (the
    factory's module and name), so a state unpickles in a new process; flax's msgpack and
    orbax restore it from a target state as any NamedTuple. Its fields, as every gradx state's,
    are in sorted order, so orbax's restore without a target (dicts) rebuilds it with
    ``jax.tree.unflatten`` (see :mod:`gradx.checkpoint`).
    """

    count: jax.Array  # shape=(), int32: updates so far; schedules are evaluated at it
    hyperparams: dict[str, jax.Array]  # shape=() each (batched: (K,)), hyperparameter dtype
    inner_state: Any  # the state of the chain of blocks
    scheduled: dict[str, jax.Array]  # shape=() each: the value a schedule gave at the last step


# The state class of every declared optimizer, by registered name (the class's __qualname__).
_STATE_CLASSES: dict[str, type[HyperparamsState]] = {}
_STATE_PREFIX = "HyperparamsState["


def _state_class(
    factory: Callable[..., Any],
    fn: str,
    rules: Mapping[str, Rule],
    relations: tuple[_Relation, ...],
) -> type[HyperparamsState]:
    """The state class of one optimizer declaration, registered for pickle.

    Its ``__qualname__`` is a name that is the same in every process (the factory's module
    and qualified name, and a digest of its rules), served by this module's ``__getattr__``,
    so pickle finds the class by name. A later declaration of the same name (a notebook cell
    run again) replaces the earlier one, as Python does for a redefined class.
    """
    module = getattr(factory, "__module__", None) or "__main__"
    qualname = getattr(factory, "__qualname__", fn)
    code = getattr(getattr(factory, "__code__", None), "co_name", "")
    spec = repr((code, sorted((n, r.text) for n, r in rules.items()), relations))
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    key = f"{_STATE_PREFIX}{module}:{qualname}#{digest}]".replace(".", "/")
    cls = type(
        "HyperparamsState",
        (HyperparamsState,),
        {
            "__slots__": (),
            "__module__": __name__,
            "__qualname__": key,
            "__doc__": f"State of the optimizer {fn}: see gradx.HyperparamsState.",
            "owner": fn,
            "rules": types.MappingProxyType(dict(rules)),
            "relations": relations,
        },
    )
    _STATE_CLASSES[key] = cls
    return cls


def __getattr__(name: str) -> Any:
    """Serves the state class of each declared optimizer by its registered name (for pickle)."""
    if name.startswith(_STATE_PREFIX):
        if name not in _STATE_CLASSES:
            # A state pickled in another process: importing the module that declares the
            # optimizer registers its class.
            module = name[len(_STATE_PREFIX) :].split(":", 1)[0].replace("/", ".")
            try:
                importlib.import_module(module)
            except ImportError:
                pass
        if name in _STATE_CLASSES:
            return _STATE_CLASSES[name]
        raise AttributeError(
            f"gradx: no optimizer declared in this process has the state class {name!r}; "
            "import the module that declares that optimizer first"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _flag_kind(annotation: Any) -> str | None:
    """'bool' or 'optional' for a parameter annotated ``bool`` or ``bool | None``, else None."""
    if annotation is bool:
        return "bool"
    text = str(annotation).replace(" ", "").replace("typing.", "")
    if text == "bool":
        return "bool"
    if text in ("bool|None", "None|bool", "Optional[bool]", "Union[bool,None]"):
        return "optional"
    return None


def _takes_none(p: inspect.Parameter) -> bool:
    """Whether None is a value of this hyperparameter (it switches a feature off): its
    default is None, its annotation names None, or it has neither (a bare factory)."""
    if p.default is None or "None" in str(p.annotation):
        return True
    return p.default is p.empty and p.annotation is p.empty


def _check_flag(fn: str, name: str, value: Any, kind: str) -> None:
    if isinstance(value, (bool, np.bool_)) or (kind == "optional" and value is None):
        return
    allowed = "a bool or None" if kind == "optional" else "a bool"
    raise TypeError(f"{fn}: {name} must be {allowed}, got {value!r}")


def optimizer(*relations: str, **rules: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Lifts a factory of blocks into an optimizer whose hyperparameters live in its state.

    ``rules`` names the numeric hyperparameters of the factory and the set each must lie in
    (see :class:`Rule`); ``relations`` (positional) are rules between two of them, such as
    ``"min_step <= max_step"``. The other arguments (flags, callables that are not
    hyperparameters) stay static; one annotated ``bool`` (or ``bool | None``) must be one.
    The returned constructor has the factory's signature (keyword-only arguments stay
    keyword-only) and

    * validates concrete values at construction, as stored in float32 (int32 for integer
      rules): ``ValueError("adam: b1 must be in [0, 1), got 1.5")``. A value must be a real
      scalar (not complex, a bool, a string or an array of several numbers); None only
      where the factory's argument defaults to None or is annotated with ``| None`` (None
      switches a feature off), else ``TypeError("adam: learning_rate must be ..., got
      None")``;
    * takes a callable for a hyperparameter as a schedule of the step count (it must return a
      scalar: checked at step 0 and when ``update`` is traced), and a JAX array
      or tracer (what ``optax.inject_hyperparams`` passes) as a value set from outside: the
      update uses the value it was built with, not the state's copy, and records it in the
      state's ``scheduled`` like a schedule's value (so ``set_hyperparams`` refuses it);
    * ``init(params)`` stores each number as a scalar array of :func:`hyperparam_dtype`;
      params must be floating or complex (Python numbers are made arrays);
    * ``update`` refuses a state built by another optimizer and gradients whose tree or
      shapes differ from the params, rebuilds the factory's chain from the values in the
      state, and returns updates in the dtype of the incoming gradient, leaf by leaf.

    With :func:`check_hyperparams` switched on, ``update`` also checks every value at run
    time.

    Example, Adam with a centered second moment in a few lines::

        @gradx.optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")
        def centered_adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8):
            return gradx.chain(
                gradx.precondition(gradx.ema(b1, debias=True),
                                   gradx.rms(b2, centered=True), eps=eps),
                gradx.scale_by_learning_rate(learning_rate))
    """
    parsed = {name: Rule.parse(text) for name, text in rules.items()}
    links = tuple(_Relation.parse(text) for text in relations)
    for link in links:
        for name in (link.left, link.right):
            if name not in parsed:
                raise TypeError(
                    f"optimizer: the relation '{link.left} {link.op} {link.right}' names "
                    f"{name!r}, which has no rule"
                )

    def wrap(factory: Callable[..., Any]) -> Callable[..., optax.GradientTransformationExtraArgs]:
        fn = factory.__name__
        signature = inspect.signature(factory)
        missing = set(parsed) - set(signature.parameters)
        if missing:
            raise TypeError(f"optimizer: {fn} has no arguments named {sorted(missing)}")
        flags = {
            name: "optional" if p.default is None else kind
            for name, p in signature.parameters.items()
            if name not in parsed and (kind := _flag_kind(p.annotation))
        }
        nullable = {name for name, p in signature.parameters.items() if _takes_none(p)}
        owner = _state_class(factory, fn, parsed, links)

        @functools.wraps(factory)
        def constructor(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{fn}: {e}") from None
            bound.apply_defaults()
            numbers, schedules, injected, static = {}, {}, {}, {}
            for name, value in bound.arguments.items():
                rule = parsed.get(name)
                if rule is not None and value is None and name not in nullable:
                    raise TypeError(
                        f"{fn}: {name} must be a number {rule.text} or a schedule, got None"
                    )
                if rule is None or value is None:  # None switches a feature off
                    if name in flags:
                        _check_flag(fn, name, value, flags[name])
                    static[name] = value
                elif rule.check_hyperparameter(fn, name, value):
                    schedules[name] = value
                else:
                    if np.ndim(value) != 0:
                        raise ValueError(
                            f"{fn}: {name} must be a scalar, got shape {np.shape(value)}; "
                            "batch hyperparameters with gradx.set_hyperparams under jax.vmap"
                        )
                    (injected if isinstance(value, jax.Array) else numbers)[name] = value
            given = {**numbers, **injected}
            for link in links:
                left, right = _concrete(given.get(link.left)), _concrete(given.get(link.right))
                if left is not None and right is not None and not link.holds(left, right):
                    raise ValueError(link.message(fn, left, right))

            # Build the chain once now, so that errors in the static arguments surface at
            # construction rather than at init.
            factory(**static, **given, **{n: s(0) for n, s in schedules.items()})

            def as_array(name: str, value: Any, dtype: jnp.dtype) -> jax.Array:
                return jnp.asarray(value, jnp.int32 if parsed[name].integer else dtype)

            def init(params: Any) -> HyperparamsState:
                _check_arrays(fn, params, "params")
                params = _as_arrays(params)
                _check_inexact(fn, params, "params")
                dtype = hyperparam_dtype(params)
                hyperparams = {n: as_array(n, v, dtype) for n, v in numbers.items()}
                scheduled = {n: as_array(n, s(0), dtype) for n, s in schedules.items()}
                scheduled.update({n: as_array(n, v, dtype) for n, v in injected.items()})
                inner = factory(**static, **hyperparams, **scheduled)
                state = owner(
                    count=jnp.zeros([], jnp.int32),
                    hyperparams=hyperparams,
                    inner_state=inner.init(params),
                    scheduled=scheduled,
                )
                return shard_like_params(state, params)  # on a mesh: scalars replicated

            if injected:  # the values are part of this update: nothing to share
                update = _make_update(owner, factory, fn, static, schedules, injected)
            else:
                key = (owner, factory, fn, tuple(static.items()), tuple(schedules.items()))
                try:
                    update = _shared_update(*key)
                except TypeError:  # an unhashable static argument: no sharing for this one
                    update = _shared_update.__wrapped__(*key)
            if _elementwise(factory, static):
                ELEMENTWISE.add(update)
            return optax.GradientTransformationExtraArgs(init, update)

        constructor.hyperparameter_rules = dict(parsed)  # type: ignore[attr-defined]
        constructor.state_class = owner  # type: ignore[attr-defined]
        return constructor

    return wrap


#: The updates of gradx's own optimizers built from numbers, flags and such optimizers only
#: (no user block, no mask): every coordinate is treated alike, so ``gradx.fit`` may run them packed
#: (``gradx.flat``). A block that does not (Keras's per-variable ``clipnorm``) refuses to run
#: packed; ``fit`` then runs leaf by leaf.
ELEMENTWISE: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()

_PLAIN = (bool, int, float, complex, str, np.dtype, type, np.generic)


def _elementwise(factory: Callable[..., Any], static: Mapping[str, Any]) -> bool:
    module = getattr(factory, "__module__", None) or ""

    def plain(v: Any) -> bool:
        if isinstance(v, optax.GradientTransformation):  # lookahead's inner optimizer
            return v.update in ELEMENTWISE
        return v is None or isinstance(v, _PLAIN)

    return module.startswith("gradx.") and all(plain(v) for v in static.values())


@functools.lru_cache(maxsize=1024)
def _shared_update(
    owner: type[HyperparamsState],
    factory: Callable[..., Any],
    fn: str,
    static_items: tuple,
    schedule_items: tuple,
) -> Callable[..., Any]:
    """The update of an @optimizer, one per static configuration.

    It reads every number from the state, so ``sgd(0.1)`` and ``sgd(0.3)`` share one update
    function, and anything that caches compiled programs by function (``jax.jit``,
    ``gradx.fit``) compiles once for both.
    """
    return _make_update(owner, factory, fn, dict(static_items), dict(schedule_items), {})


def _cast_like(u: Any, g: jax.Array) -> jax.Array:
    """``u`` in ``g``'s dtype (strongly typed); no cast traced when it already is."""
    if isinstance(u, jax.Array) and u.dtype == g.dtype and not u.weak_type:
        return u
    return jnp.asarray(u).astype(g.dtype)


def _make_update(
    owner: type[HyperparamsState],
    factory: Callable[..., Any],
    fn: str,
    static: dict[str, Any],
    schedules: dict[str, Any],
    injected: dict[str, Any],
) -> Callable[..., Any]:
    """The update of an @optimizer: the chain rebuilt from the state's values at every call,
    with each schedule evaluated at the step count and each injected value as given."""
    outside = set(schedules) | set(injected)
    stored = set(owner.rules) - outside - {n for n, v in static.items() if v is None}

    def update(
        updates: Any, state: HyperparamsState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, HyperparamsState]:
        if type(state) is not owner:
            built_by = (
                f"built by {type(state).owner}"
                if isinstance(state, HyperparamsState) and hasattr(type(state), "owner")
                else f"a {type(state).__name__}"
            )
            raise TypeError(
                f"{fn}: state must be the state this optimizer's init returned, got "
                f"{built_by}; call {fn}'s init"
            )
        if set(state.hyperparams) != stored or set(state.scheduled) != outside:
            raise TypeError(
                f"{fn}: state must be the state this optimizer's init returned; it was built "
                f"by a {fn} with other settings: it stores {sorted(state.hyperparams)} and "
                f"takes {sorted(state.scheduled)} from schedules or from outside, where this "
                f"one stores {sorted(stored)} and takes {sorted(outside)}"
            )
        # Python numbers, and NumPy values (a state restored by flax's msgpack), become arrays;
        # in the inner state only NumPy values: a block there may keep a Python flag.
        updates = _as_arrays(updates)
        state = state._replace(
            count=_as_arrays(state.count),
            hyperparams=_as_arrays(state.hyperparams),
            scheduled=_as_arrays(state.scheduled),
            inner_state=_as_arrays(state.inner_state, numpy_only=True),
        )
        _check_inexact(fn, updates, "gradients")
        scheduled = {}
        for n, s in schedules.items():
            value = s(state.count)
            check_schedule_shape(fn, n, value)
            scheduled[n] = jnp.asarray(value, state.scheduled[n].dtype)
        scheduled.update({n: jnp.asarray(v, state.scheduled[n].dtype) for n, v in injected.items()})
        if _RUNTIME_CHECKS["on"]:
            values = {**state.hyperparams, **scheduled}
            _runtime_checks(fn, owner, state.count, values, schedules, injected)
        inner = optax.with_extra_args_support(factory(**static, **state.hyperparams, **scheduled))
        try:
            params = params_like(fn, updates, params)
            out, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        except TreeMismatchError as e:
            raise TreeMismatchError(f"{fn}: {e}") from None
        # Blocks may return a wider dtype than the gradient (float16 steps are computed in
        # float32): one cast per leaf, here at the end.
        out = jax.tree.map(_cast_like, out, updates)
        count = optax.safe_increment(state.count)
        return out, owner(
            count=count, hyperparams=state.hyperparams, inner_state=inner_state, scheduled=scheduled
        )

    return update


# ----------------------------------------------------------------------------- read / write


def _children(node: Any) -> list[tuple[str, Any]] | None:
    """The named children of a container node of a state, or None for a leaf."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return list(zip(node._fields, node, strict=True))
    if isinstance(node, (tuple, list)):
        return [(str(i), child) for i, child in enumerate(node)]
    if isinstance(node, Mapping):
        return [(str(k), v) for k, v in node.items()]
    return None


def _locate(state: Any) -> dict[str, list[tuple[tuple[str, ...], str, bool]]]:
    """name -> [(path to its HyperparamsState, name, is_scheduled), ...]."""
    found: dict[str, list[tuple[tuple[str, ...], str, bool]]] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, HyperparamsState):
            for name in node.hyperparams:
                found.setdefault(name, []).append((path, name, False))
            for name in node.scheduled:
                found.setdefault(name, []).append((path, name, True))
            walk(node.inner_state, (*path, "inner_state"))
            return
        for key, child in _children(node) or ():
            walk(child, (*path, key))

    walk(state, ())
    return found


def _keys(
    located: dict[str, list[tuple[tuple[str, ...], str, bool]]],
) -> dict[str, tuple[tuple[str, ...], str, bool]]:
    """Public key -> location (from _locate): the bare name when unique, else 'path/name'."""
    keys = {}
    for name, places in located.items():
        for path, _, scheduled in places:
            key = name if len(places) == 1 else "/".join((*path, name))
            keys[key] = (path, name, scheduled)
    return keys


def _get(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        node = dict(_children(node))[key]
    return node


def hyperparams(state: Any) -> dict[str, jax.Array]:
    """The hyperparameters in an optimizer state, by name.

    Names are the optimizer's argument names. A name that occurs more than once (two
    optimizers in one chain) is keyed by its path in the state, e.g. ``"0/learning_rate"``.
    A scheduled value is the one used at the last step (at step 0 before any update).
    """
    out = {}
    for key, (path, name, scheduled) in _keys(_locate(state)).items():
        node = _get(state, path)
        out[key] = (node.scheduled if scheduled else node.hyperparams)[name]
    return out


def set_hyperparams(state: Any, **values: Any) -> Any:
    """A copy of ``state`` with new hyperparameter values, keyed as by :func:`hyperparams`.

    A value is cast to the dtype already in the state (float32, or the params' dtype when
    wider; int32 for integer hyperparameters), and the leaf keeps its container (a flax
    ``nnx.OptArray`` stays one). It may be a tracer, so this works under ``jit``, ``grad`` and
    ``vmap`` (a batched value gives a batched state). Concrete values are checked, as they
    will be stored, against the rule the owning optimizer declared for that name, and against
    its relations (rprop: ``min_step <= max_step``); tracers are checked at run time only, by
    :func:`check_hyperparams`. A value the optimizer computes and records in its state (the α
    of lookahead with ``alpha="quadratic"``, fitted at every sync) is refused: its state
    class lists it, with the reason, in its ``outputs`` mapping.
    """
    located = _locate(state)
    keys = _keys(located)
    touched = set()
    for key, value in values.items():
        if key not in keys:
            if key in located:
                paths = ", ".join(repr(k) for k, loc in keys.items() if loc[1] == key)
                raise ValueError(
                    f"set_hyperparams: {key!r} occurs {len(located[key])} times in this "
                    f"state; address one by its path: {paths}"
                )
            raise ValueError(
                f"set_hyperparams: the state has no hyperparameter {key!r}; it has {sorted(keys)}"
            )
        path, name, scheduled = keys[key]
        output = getattr(type(_get(state, path)), "outputs", {}).get(name)
        if output is not None:
            raise ValueError(f"set_hyperparams: {output}")
        if scheduled:
            raise ValueError(
                f"set_hyperparams: {key!r} follows a schedule or a value given from outside, "
                "which sets it at every step: the optimizer was built with a callable or a JAX "
                "array for it (optax.inject_hyperparams passes JAX arrays; set those in its "
                f"state.hyperparams). Build the optimizer with a Python number for {key!r} to "
                "set it by hand"
            )
        node = _get(state, path)
        old = jax.tree.leaves(node.hyperparams[name])[0]
        rule = getattr(type(node), "rules", {}).get(name)
        if rule is not None:
            rule.check("set_hyperparams", key, value, old.dtype)
        if not isinstance(value, jax.core.Tracer) and not _is_number(value):
            raise TypeError(f"set_hyperparams: {key} must be a number, got {value!r}")
        state = _replace(state, path, name, value)
        touched.add(path)
    for path in touched:
        _check_relations(_get(state, path))
    return state


def _check_relations(node: HyperparamsState) -> None:
    """The relations of the owning optimizer between values set by hand, where concrete."""
    for link in getattr(type(node), "relations", ()):
        if link.left in node.hyperparams and link.right in node.hyperparams:
            left = _concrete(node.hyperparams[link.left])
            right = _concrete(node.hyperparams[link.right])
            if left is not None and right is not None and not link.holds(left, right):
                raise ValueError(link.message("set_hyperparams", left, right))


def _replace(node: Any, path: tuple[str, ...], name: str, value: Any) -> Any:
    if not path:
        # tree.map over the old leaf keeps its container (flax nnx wraps state leaves in
        # variables; a bare array there would be dropped by nnx's state filters).
        new = jax.tree.map(lambda old: jnp.asarray(value, old.dtype), node.hyperparams[name])
        return node._replace(hyperparams={**node.hyperparams, name: new})
    key, rest = path[0], path[1:]
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return node._replace(**{key: _replace(getattr(node, key), rest, name, value)})
    if isinstance(node, (tuple, list)):
        items = list(node)
        items[int(key)] = _replace(items[int(key)], rest, name, value)
        return type(node)(items)
    original_key = next(k for k in node if str(k) == key)
    return {**node, original_key: _replace(node[original_key], rest, name, value)}


# ----------------------------------------------------------------------------- the base block


class ScaleByLearningRateState(NamedTuple):
    """scale_by_learning_rate keeps no state."""


def scale_by_learning_rate(
    learning_rate: jax.typing.ArrayLike,
) -> optax.GradientTransformationExtraArgs:
    """Block: u ← −γ·g, the descent step every optimizer ends with.

    ``learning_rate`` is a number or a scalar array (inside an optimizer, the value from the
    state). To follow a schedule, build an optimizer with :func:`optimizer`, which evaluates
    the schedule at the step count and passes the value here. The update is in the computed
    dtype (:func:`wide` of g and γ), which may be wider than g's.
    """

    def init(params: Any) -> ScaleByLearningRateState:
        del params
        return ScaleByLearningRateState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        lr = jnp.asarray(learning_rate)
        neg = -lr  # once per step, not once per leaf
        # g·(−γ), not −g·γ: the sign then folds into the scalar instead of costing a negate
        # per element (γ is a runtime value, so XLA cannot fold it as it does for optax).

        def leaf(g):
            gw = wide(g, lr)
            return gw * coef(neg, gw)

        return jax.tree.map(leaf, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class AddDecayedWeightsState(NamedTuple):
    """The weight-decay blocks keep no state."""


def needs_params(fn: str, params: Any, why: str) -> None:
    """Raises unless ``params`` was given to ``update``; ``why`` says what it is needed for."""
    if params is None:
        raise ValueError(
            f"{fn}: update needs the params ({why}): call update(grads, state, params)"
        )


def _check_mask(fn: str, mask: Any) -> None:
    """Raises unless ``mask`` is None, a callable, or a pytree of Python/NumPy bools."""
    if mask is None or callable(mask):
        return
    for leaf in jax.tree.leaves(mask):
        if not isinstance(leaf, (bool, np.bool_)):
            raise TypeError(
                f"{fn}: mask must be a pytree of bools (True = decay this leaf) or a function "
                f"of the params returning one, got a leaf {leaf!r}"
            )


# True while gradx.flat runs an optimizer on packed buffers (a few per dtype), whose leaves are
# no longer the params': a mask naming leaves would silently decay the wrong coordinates.
_FLAT_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("gradx_flat", default=False)


def _full_mask(fn: str, mask: Any, params: Any) -> Any:
    """One bool per params leaf: ``mask`` (or ``mask(params)``) broadcast from a prefix tree."""
    if mask is None:
        return jax.tree.map(lambda _: True, params)
    if _FLAT_ACTIVE.get():
        raise ValueError(
            f"{fn}: mask must be None inside gradx.flat, got {mask!r}: flat packs the leaves "
            "into a few buffers per dtype, so a mask cannot name them; use the per-leaf optimizer"
        )
    tree = mask(params) if callable(mask) else mask
    _check_mask(fn, tree)
    try:
        return jax.tree.map(lambda b, sub: jax.tree.map(lambda _: b, sub), tree, params)
    except ValueError:
        raise TreeMismatchError(
            f"{fn}: the mask tree does not match the params (it must have their structure "
            f"or a prefix of it).\n  mask: {jax.tree.structure(tree)}\n"
            f"  params: {jax.tree.structure(params)}"
        ) from None


def _decay_init(fn: str, mask: Any) -> Callable[[Any], AddDecayedWeightsState]:
    """The ``init`` of a weight-decay block: checks the mask now, and against the params."""
    _check_mask(fn, mask)

    def init(params: Any) -> AddDecayedWeightsState:
        _full_mask(fn, mask, params)  # a bad mask fails at init
        return AddDecayedWeightsState()

    return init


def _decayed(
    fn: str, updates: Any, params: Any, mask: Any, leaf: Callable[..., Any], *numbers: Any
) -> Any:
    """The update of a weight-decay block: ``leaf(u, θ, *numbers)`` (the numbers as arrays)
    on the leaves the mask selects; the others pass through unchanged, bit for bit.

    Each block keeps its own ``update`` closure (over ``weight_decay`` and ``mask``): gradx's
    gain rules find a block by the code of its ``update`` and read those numbers from it.
    """
    needs_params(fn, params, "weight decay reads them")
    params = params_like(fn, updates, params)  # the gradients' leaves (optax's rule)
    arrays = [jnp.asarray(x) for x in numbers]
    return jax.tree.map(
        lambda u, p, decay: leaf(u, p, *arrays) if decay else u,
        updates,
        params,
        _full_mask(fn, mask, params),
    )


def add_decayed_weights(
    weight_decay: jax.typing.ArrayLike, mask: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Block: coupled L2 decay, u ← g + λ·θ (before the optimizer's statistics see g).

    This is ``weight_decay=`` of torch's SGD, Adam, RMSprop, Adagrad, Adadelta, Adamax and
    NAdam, and ``optax.add_decayed_weights`` placed first in a chain.

    Args:
      weight_decay: λ (a number or a scalar array).
      mask: which leaves decay. None (all), a pytree of bools with the params' structure (or
        a prefix of it; True = decay), or a function of the params returning one, as
        optax's ``mask``. Masked-out leaves pass through unchanged, bit for bit.

    Returns:
      An optax transformation. Its update is in the computed dtype (:func:`wide` of g, λ
      and θ), which may be wider than g's.
    """
    init = _decay_init("add_decayed_weights", mask)

    def update(updates, state, params=None, **extra_args):
        del extra_args

        def leaf(g, p, wd):
            gw, pw = wide(g, wd, p), wide(p, wd, g)
            return gw + coef(wd, pw) * pw

        decayed = _decayed("add_decayed_weights", updates, params, mask, leaf, weight_decay)
        return decayed, state

    return optax.GradientTransformationExtraArgs(init, update)


def decoupled_weight_decay(
    weight_decay: jax.typing.ArrayLike, learning_rate: jax.typing.ArrayLike, mask: Any = None
) -> optax.GradientTransformationExtraArgs:
    """Block: decoupled decay, u ← u − γ·λ·θ (after ``scale_by_learning_rate``).

    The decay never enters the optimizer's statistics (Loshchilov & Hutter's AdamW). It
    equals torch's ``AdamW`` (θ ← (1 − γλ)·θ, then the step), optax's ``adamw`` and Keras's
    ``weight_decay=`` on any optimizer: all three multiply λ by the current learning rate.

    Args:
      weight_decay: λ (a number or a scalar array).
      learning_rate: γ, the current learning rate.
      mask: which leaves decay. None (all), a pytree of bools with the params' structure (or
        a prefix of it; True = decay), or a function of the params returning one, as
        optax's ``mask``. Masked-out leaves pass through unchanged, bit for bit.

    Returns:
      An optax transformation. Its update is in the computed dtype (:func:`wide` of u, λ, γ
      and θ), which may be wider than u's.
    """
    init = _decay_init("decoupled_weight_decay", mask)

    def update(updates, state, params=None, **extra_args):
        del extra_args

        def leaf(u, p, wd, lr):
            uw, pw = wide(u, wd, lr, p), wide(p, wd, lr, u)
            return uw - coef(lr * wd, pw) * pw

        decayed = _decayed(
            "decoupled_weight_decay", updates, params, mask, leaf, weight_decay, learning_rate
        )
        return decayed, state

    return optax.GradientTransformationExtraArgs(init, update)
