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

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# ----------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """The set a hyperparameter must lie in, written as in the error messages.

    ``"[0, 1)"``, ``"(0, 1]"``, ``">= 0"``, ``"> 0"``, ``"int >= 1"``, ``"any"``.
    Every value must also be finite.
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

    def check(self, fn: str, name: str, value: Any) -> None:
        """Raises if a concrete ``value`` breaks the rule; tracers pass unchecked."""
        if isinstance(value, jax.core.Tracer):
            return
        if isinstance(value, bool) or not _is_number(value):
            raise TypeError(f"{fn}: {name} must be a number {self.text}, got {value!r}")
        if not self.holds(np.asarray(value)):
            raise ValueError(f"{fn}: {name} must be {self.text}, got {value!r}")

    def check_hyperparameter(self, fn: str, name: str, value: Any) -> bool:
        """Checks a number, or a schedule's value at step 0; returns whether it is a schedule."""
        if callable(value) and not hasattr(value, "dtype"):
            self.check(fn, f"{name} (its schedule's value at step 0)", value(0))
            return True
        self.check(fn, name, value)
        return False


def _is_number(value: Any) -> bool:
    if isinstance(value, (int, float, np.number)):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    )


# Every rule ever declared for a name; `set_hyperparams` checks a value against these.
_RULES_BY_NAME: dict[str, set[Rule]] = {}


# ----------------------------------------------------------------------------- dtypes


def hyperparam_dtype(params: Any) -> jnp.dtype:
    """float32, or the widest floating dtype among ``params`` when that is wider.

    Never narrower than float32: with bfloat16 params, b2 = 0.999 must stay 0.999, not round to
    1.0 (optax issue 1414).
    """
    dtype = jnp.dtype(jnp.float32)
    for leaf in jax.tree.leaves(params):
        leaf_dtype = getattr(leaf, "dtype", None)
        if leaf_dtype is not None and jnp.issubdtype(leaf_dtype, jnp.floating):
            dtype = _wider(dtype, leaf_dtype)
    return dtype


def _wider(a: jnp.dtype, b: jnp.dtype) -> jnp.dtype:
    # Not jnp.promote_types: that refuses float32 + float64 under strict promotion.
    return jnp.dtype(b) if jnp.dtype(b).itemsize > jnp.dtype(a).itemsize else jnp.dtype(a)


def wide(x: jax.Array, *hs: jax.Array) -> jax.Array:
    """``x`` cast to the widest dtype of ``x`` and the hyperparameters ``hs``.

    Blocks compute in that dtype and cast the result back to the leaf's own dtype, so bf16
    params get float32 arithmetic for their scalars and keep their dtype. Weakly typed
    scalars (Python numbers given to a block) take the other operand's dtype, as in JAX.
    """
    dtype = functools.reduce(_wider, [h.dtype for h in hs if not h.weak_type], x.dtype)
    return x.astype(dtype)


# ----------------------------------------------------------------------------- structure


class TreeMismatchError(ValueError):
    """The gradient tree does not match the tree the state was built for."""


def check_tree(updates: Any, reference: Any, what: str) -> None:
    """Raises :class:`TreeMismatchError` unless ``updates`` has the structure of ``reference``."""
    got, want = jax.tree.structure(updates), jax.tree.structure(reference)
    if got != want:
        raise TreeMismatchError(
            f"the gradient tree does not match the {what}.\n"
            f"  gradients: {got}\n  {what}: {want}\n"
            "Call init with params of the same structure as the gradients."
        )


# ----------------------------------------------------------------------------- the state


class HyperparamsState(NamedTuple):
    """State of an optimizer built by :func:`optimizer`."""

    count: jax.Array  # shape=(), int32: updates so far; schedules are evaluated at it
    hyperparams: dict[str, jax.Array]  # shape=() each (batched: (K,)), hyperparameter dtype
    scheduled: dict[str, jax.Array]  # shape=() each: the value a schedule gave at the last step
    inner_state: Any  # the state of the chain of blocks


def optimizer(**rules: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Lifts a factory of blocks into an optimizer whose hyperparameters live in its state.

    ``rules`` names the numeric hyperparameters of the factory and the set each must lie in
    (see :class:`Rule`). The other arguments (flags, callables that are not hyperparameters)
    stay static. The returned constructor has the factory's signature and

    * validates concrete values at construction: ``ValueError("adam: b1 must be in [0, 1),
      got 1.5")``; a callable given for a hyperparameter is a schedule of the step count;
    * ``init(params)`` stores each value as a scalar array of :func:`hyperparam_dtype`;
    * ``update`` rebuilds the factory's chain from the values in the state.

    Example, Adam with a centered second moment in a few lines::

        @gradx.optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")
        def centered_adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8):
            return gradx.chain(
                gradx.precondition(gradx.ema(b1, debias=True),
                                   gradx.rms(b2, centered=True), eps=eps),
                gradx.scale_by_learning_rate(learning_rate))
    """
    parsed = {name: Rule.parse(text) for name, text in rules.items()}
    for name, rule in parsed.items():
        _RULES_BY_NAME.setdefault(name, set()).add(rule)

    def wrap(factory: Callable[..., Any]) -> Callable[..., optax.GradientTransformationExtraArgs]:
        fn = factory.__name__
        signature = inspect.signature(factory)
        missing = set(parsed) - set(signature.parameters)
        if missing:
            raise TypeError(f"optimizer: {fn} has no arguments named {sorted(missing)}")

        @functools.wraps(factory)
        def constructor(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{fn}: {e}") from None
            bound.apply_defaults()
            numbers, schedules, static = {}, {}, {}
            for name, value in bound.arguments.items():
                rule = parsed.get(name)
                if rule is None or value is None:  # None switches a feature off
                    static[name] = value
                elif rule.check_hyperparameter(fn, name, value):
                    schedules[name] = value
                else:
                    if np.ndim(value) != 0:
                        raise ValueError(
                            f"{fn}: {name} must be a scalar, got shape {np.shape(value)}; "
                            "batch hyperparameters with gradx.set_hyperparams under jax.vmap"
                        )
                    numbers[name] = value

            # Build the chain once now, so that errors in the static arguments surface at
            # construction rather than at init.
            factory(**static, **numbers, **{n: s(0) for n, s in schedules.items()})

            def as_array(name: str, value: Any, dtype: jnp.dtype) -> jax.Array:
                return jnp.asarray(value, jnp.int32 if parsed[name].integer else dtype)

            def init(params: Any) -> HyperparamsState:
                dtype = hyperparam_dtype(params)
                hyperparams = {n: as_array(n, v, dtype) for n, v in numbers.items()}
                scheduled = {n: as_array(n, s(0), dtype) for n, s in schedules.items()}
                inner = factory(**static, **hyperparams, **scheduled)
                return HyperparamsState(
                    count=jnp.zeros([], jnp.int32),
                    hyperparams=hyperparams,
                    scheduled=scheduled,
                    inner_state=inner.init(params),
                )

            key = (factory, fn, tuple(static.items()), tuple(schedules.items()))
            try:
                update = _shared_update(*key)
            except TypeError:  # an unhashable static argument: no sharing for this one
                update = _shared_update.__wrapped__(*key)
            return optax.GradientTransformationExtraArgs(init, update)

        constructor.hyperparameter_rules = dict(parsed)  # type: ignore[attr-defined]
        return constructor

    return wrap


@functools.lru_cache(maxsize=1024)
def _shared_update(
    factory: Callable[..., Any], fn: str, static_items: tuple, schedule_items: tuple
) -> Callable[..., Any]:
    """The update of an @optimizer, one per static configuration.

    It reads every number from the state, so ``sgd(0.1)`` and ``sgd(0.3)`` share one update
    function, and anything that caches compiled programs by function (``jax.jit``,
    ``gradx.fit``) compiles once for both.
    """
    static, schedules = dict(static_items), dict(schedule_items)

    def update(
        updates: Any, state: HyperparamsState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, HyperparamsState]:
        if not isinstance(state, HyperparamsState):
            raise TypeError(
                f"{fn}: state must be the state this optimizer's init returned, "
                f"got {type(state).__name__}"
            )
        scheduled = {
            n: jnp.asarray(s(state.count), state.scheduled[n].dtype) for n, s in schedules.items()
        }
        inner = optax.with_extra_args_support(factory(**static, **state.hyperparams, **scheduled))
        try:
            if params is not None:
                check_tree(updates, params, "params")
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        except TreeMismatchError as e:
            raise TreeMismatchError(f"{fn}: {e}") from None
        count = optax.safe_increment(state.count)
        return updates, HyperparamsState(count, state.hyperparams, scheduled, inner_state)

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
    wider; int32 for integer hyperparameters). It may be a tracer, so this works under
    ``jit``, ``grad`` and ``vmap`` (a batched value gives a batched state). Concrete values are
    checked against the rule the optimizer declared for that name.
    """
    located = _locate(state)
    keys = _keys(located)
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
        if scheduled:
            raise ValueError(
                f"set_hyperparams: {key!r} follows a schedule, which sets it at every step; "
                "build the optimizer with a number for it to set it by hand"
            )
        for rule in _RULES_BY_NAME.get(name, ()):
            rule.check("set_hyperparams", key, value)
        if not isinstance(value, jax.core.Tracer) and not _is_number(value):
            raise TypeError(f"set_hyperparams: {key} must be a number, got {value!r}")
        state = _replace(state, path, name, value)
    return state


def _replace(node: Any, path: tuple[str, ...], name: str, value: Any) -> Any:
    if not path:
        old = node.hyperparams[name]
        new = jnp.asarray(value, old.dtype)
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
    the schedule at the step count and passes the value here.
    """

    def init(params: Any) -> ScaleByLearningRateState:
        del params
        return ScaleByLearningRateState()

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        lr = jnp.asarray(learning_rate)
        # g·(−γ), not −g·γ: the sign then folds into the scalar instead of costing a negate
        # per element (γ is a runtime value, so XLA cannot fold it as it does for optax).
        return jax.tree.map(lambda g: (wide(g, lr) * -lr).astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(init, update)


class AddDecayedWeightsState(NamedTuple):
    """The weight-decay blocks keep no state."""


def needs_params(fn: str, params: Any, why: str) -> None:
    """Raises unless ``params`` was given to ``update``; ``why`` says what it is needed for."""
    if params is None:
        raise ValueError(
            f"{fn}: update needs the params ({why}): call update(grads, state, params)"
        )


def add_decayed_weights(
    weight_decay: jax.typing.ArrayLike,
) -> optax.GradientTransformationExtraArgs:
    """Block: coupled L2 decay, u ← g + λ·θ (before the optimizer's statistics see g).

    This is ``weight_decay=`` of torch's SGD, Adam, RMSprop, Adagrad, Adadelta, Adamax and
    NAdam, and ``optax.add_decayed_weights`` placed first in a chain.
    """

    def init(params: Any) -> AddDecayedWeightsState:
        del params
        return AddDecayedWeightsState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        needs_params("add_decayed_weights", params, "weight decay reads them")
        check_tree(updates, params, "params")
        wd = jnp.asarray(weight_decay)
        return jax.tree.map(
            lambda g, p: (wide(g, wd) + wd * wide(p, wd)).astype(g.dtype), updates, params
        ), state

    return optax.GradientTransformationExtraArgs(init, update)


def decoupled_weight_decay(
    weight_decay: jax.typing.ArrayLike, learning_rate: jax.typing.ArrayLike
) -> optax.GradientTransformationExtraArgs:
    """Block: decoupled decay, u ← u − γ·λ·θ (after ``scale_by_learning_rate``).

    The decay never enters the optimizer's statistics (Loshchilov & Hutter's AdamW). It
    equals torch's ``AdamW`` (θ ← (1 − γλ)·θ, then the step), optax's ``adamw`` and Keras's
    ``weight_decay=`` on any optimizer: all three multiply λ by the current learning rate.
    """

    def init(params: Any) -> AddDecayedWeightsState:
        del params
        return AddDecayedWeightsState()

    def update(updates, state, params=None, **extra_args):
        del extra_args
        needs_params("decoupled_weight_decay", params, "weight decay reads them")
        check_tree(updates, params, "params")
        wd, lr = jnp.asarray(weight_decay), jnp.asarray(learning_rate)
        return jax.tree.map(
            lambda u, p: (wide(u, wd, lr) - lr * wd * wide(p, wd, lr)).astype(u.dtype),
            updates,
            params,
        ), state

    return optax.GradientTransformationExtraArgs(init, update)
