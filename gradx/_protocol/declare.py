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
The callable is static; the step count lives in the state. A gradx schedule
(:class:`gradx.schedules.ArraySchedule`) keeps its numbers in the state too, as ``h/<number>``
(see ``schedule.py``): its formula is static, its numbers are data.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.checks import RUNTIME_CHECKS, runtime_checks
from gradx._protocol.constants import built_from, decide_from_numbers
from gradx._protocol.dtypes import hyperparam_dtype
from gradx._protocol.gain import Gain, closure_value, gain_rule, in_gain_dtype, walk_gain
from gradx._protocol.placement import shard_like_params
from gradx._protocol.rules import (
    Relation,
    Rule,
    check_flag,
    check_schedule_shape,
    concrete_value,
    flag_kind,
)
from gradx._protocol.schedule import (
    ArraySchedule,
    ScheduleSpec,
    number_is_integer,
    number_rule,
    peak_entry,
    schedule_peaks,
)
from gradx._protocol.state import HyperparamsState, declare_state_class, variant_state_class
from gradx._protocol.trees import (
    TreeMismatchError,
    as_arrays,
    check_arrays,
    check_inexact,
    params_like,
)


def _takes_none(p: inspect.Parameter) -> bool:
    """Whether None is a value of this hyperparameter (it switches a feature off): its
    default is None, its annotation names None, or it has neither (a bare factory)."""
    if p.default is None or "None" in str(p.annotation):
        return True
    return p.default is p.empty and p.annotation is p.empty


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
      scalar: checked at step 0 and when ``update`` is traced); a gradx schedule
      (:mod:`gradx.schedules`) for hyperparameter h stores its numbers in the state as
      ``h/<number>`` (its value numbers checked against h's rule), so they are set like any
      hyperparameter, and schedules of one kind share one update; and a JAX array
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
    links = tuple(Relation.parse(text) for text in relations)
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
            if name not in parsed and (kind := flag_kind(p.annotation))
        }
        nullable = {name for name, p in signature.parameters.items() if _takes_none(p)}
        owner = declare_state_class(factory, fn, parsed, links)

        @functools.wraps(factory)
        def constructor(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{fn}: {e}") from None
            bound.apply_defaults()
            numbers, schedules, injected, static = {}, {}, {}, {}
            # gradx schedules: their numbers (h/<number>), as arrays, and each value at step 0
            in_state, arrays, first = {}, {}, {}
            for name, value in bound.arguments.items():
                rule = parsed.get(name)
                if rule is not None and value is None and name not in nullable:
                    raise TypeError(
                        f"{fn}: {name} must be a number {rule.text} or a schedule, got None"
                    )
                if rule is None or value is None:  # None switches a feature off
                    if name in flags:
                        check_flag(fn, name, value, flags[name])
                    static[name] = value
                elif isinstance(value, ArraySchedule):
                    for k, v in value.numbers.items():
                        number_rule(k, rule).check(fn, f"{name}/{k}", v)
                    rule.check_hyperparameter(fn, name, value)
                    schedules[name] = value.spec
                    arrays[name] = {f"{name}/{k}": v for k, v in value.arrays().items()}
                    in_state.update({f"{name}/{k}": v for k, v in value.numbers.items()})
                    first[name] = value(0)
                elif rule.check_hyperparameter(fn, name, value):
                    schedules[name] = first[name] = value
                else:
                    if np.ndim(value) != 0:
                        raise ValueError(
                            f"{fn}: {name} must be a scalar, got shape {np.shape(value)}; "
                            "batch hyperparameters with gradx.set_hyperparams under jax.vmap"
                        )
                    (injected if isinstance(value, jax.Array) else numbers)[name] = value
            given = {**numbers, **injected}
            for link in links:
                left, right = (
                    concrete_value(given.get(link.left)),
                    concrete_value(given.get(link.right)),
                )
                if left is not None and right is not None and not link.holds(left, right):
                    raise ValueError(link.message(fn, left, right))

            # Build the chain once now, so that errors in the static arguments surface at
            # construction rather than at init.
            # The numbers as fresh arrays: each value its own object, so a block's question
            # about one (is this ε > 0 for good?) names it (constants.py).
            sources = {n: _source(s, n, arrays.get(n, {})) for n, s in schedules.items()}
            sources.update({n: "injected" for n in injected})
            built = {**{n: np.array(v) for n, v in numbers.items()}, **injected, **first}
            relied: set[tuple[str, str]] = set()
            decide = decide_from_numbers(numbers, parsed)
            _build(factory, static, built, sources, decide, relied)
            owner_here = variant_state_class(owner, frozenset(relied))

            def as_array(name: str, value: Any, dtype: jnp.dtype) -> jax.Array:
                integer = parsed[name].integer if name in parsed else number_is_integer(name)
                return jnp.asarray(value, jnp.int32 if integer else dtype)

            def init(params: Any) -> HyperparamsState:
                check_arrays(fn, params, "params")
                params = as_arrays(params)
                check_inexact(fn, params, "params")
                dtype = hyperparam_dtype(params)
                stored = {**numbers, **in_state}
                hyperparams = {n: as_array(n, v, dtype) for n, v in stored.items()}
                zero = jnp.zeros([], jnp.int32)
                sources = {n: _source(s, n, hyperparams) for n, s in schedules.items()}
                scheduled = {
                    n: as_array(n, _evaluate(src, zero), dtype) for n, src in sources.items()
                }
                scheduled.update({n: as_array(n, v, dtype) for n, v in injected.items()})
                sources.update({n: "injected" for n in injected})
                values = {**_own(hyperparams), **scheduled}
                inner = _build(factory, static, values, sources, owner_here.facts)
                state = owner_here(
                    count=jnp.zeros([], jnp.int32),
                    hyperparams=hyperparams,
                    inner_state=inner.init(params),
                    scheduled=scheduled,
                )
                return shard_like_params(state, params)  # on a mesh: scalars replicated

            if injected:  # the values are part of this update: nothing to share
                update = _make_update(owner_here, factory, fn, static, schedules, injected)
            else:
                key = (owner_here, factory, fn, tuple(static.items()), tuple(schedules.items()))
                try:
                    update = _shared_update(*key)
                except TypeError:  # an unhashable static argument: no sharing for this one
                    update = _shared_update.__wrapped__(*key)
            if _elementwise(factory, static):
                ELEMENTWISE.add(update)
            BUILT[init] = (constructor, bound)
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


#: How each optimizer built by an @optimizer constructor was built, keyed by its ``init``
#: (the one function each call makes): ``(constructor, its bound arguments, defaults
#: applied)``. ``gradx.param_groups`` rebuilds the optimizer per group from it.
BUILT: weakref.WeakKeyDictionary[Callable[..., Any], tuple[Callable[..., Any], Any]] = (
    weakref.WeakKeyDictionary()
)


_PLAIN = (bool, int, float, complex, str, np.dtype, type, np.generic)


def plain_argument(v: Any) -> bool:
    """Whether a fixed argument treats every coordinate alike for sure: a number, a flag, a
    dtype, None, or an optimizer whose update does (lookahead's inner one)."""
    if isinstance(v, optax.GradientTransformation):
        return v.update in ELEMENTWISE
    return v is None or isinstance(v, _PLAIN)


def _elementwise(factory: Callable[..., Any], static: Mapping[str, Any]) -> bool:
    module = getattr(factory, "__module__", None) or ""
    return module.startswith("gradx.") and all(plain_argument(v) for v in static.values())


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


def _facts_text(cls: Any) -> str:
    return ", ".join(f"{n} {k[0]} {k[1]}" for n, k in sorted(cls.facts)) or "no constants"


def _own(hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer's own hyperparameters: the state's, less its schedules' numbers."""
    return {n: v for n, v in hyperparams.items() if "/" not in n}


def _source(schedule: Any, name: str, numbers: Mapping[str, Any]) -> Any:
    """What sets hyperparameter ``name``: a callable, or a gradx schedule's ``(spec, its
    numbers)`` read from ``numbers`` (keys ``name/<number>``)."""
    if not isinstance(schedule, ScheduleSpec):
        return schedule
    prefix = f"{name}/"
    local = {k[len(prefix) :]: v for k, v in numbers.items() if k.startswith(prefix)}
    return schedule, local


def _evaluate(source: Any, count: jax.Array) -> Any:
    if isinstance(source, tuple):
        spec, numbers = source
        return spec.evaluate(count, numbers)
    return source(count)


# What set each scheduled hyperparameter while an @optimizer builds its chain, by the
# identity of the value it passes to the factory: see schedule_of.
_SOURCES: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "gradx_schedule_sources", default=None
)


def schedule_of(value: Any) -> Callable[[jax.Array], Any] | None:
    """The schedule of the hyperparameter ``value`` an @optimizer passed to its factory, as
    a callable of the step count: a gradx schedule evaluated on the state's numbers
    (``h/<number>``, so set_hyperparams, sweep and vmap reach it), an optax schedule as
    given. None for a number, a value given from outside, and outside an optimizer. For a
    block that needs the schedule at another step than the optimizer's (Schedule-Free's
    averaging weights take γ at the step being taken)."""
    source = (_SOURCES.get() or {}).get(id(value))
    if source is None:
        return None
    return lambda count: _evaluate(source, count)


def _build(
    factory: Callable[..., Any],
    static: Mapping[str, Any],
    values: dict,
    sources: dict,
    facts: Any = frozenset(),
    relied: set | None = None,
) -> Any:
    """``factory(**static, **values)``, with what its blocks may ask about a value readable:
    the peak of a gradx schedule (``weight_decay_scaling="schedule"``), the schedule of a
    scheduled value (:func:`schedule_of`), and the facts fixed at construction
    (``constants.py``): ``facts`` as decided then, or, at construction, a ``decide(name,
    kind)`` whose yeses are added to ``relied``."""
    entries = {id(v): peak_entry(v, None) for v in values.values()}
    # a shared Python object (two hyperparameters given one constant): the schedule wins
    entries.update({id(values[n]): peak_entry(values[n], src) for n, src in sources.items()})
    decide = facts if callable(facts) else (lambda name, kind: (name, kind) in facts)
    names = {id(v): n for n, v in values.items()}
    own = {id(values[n]): src for n, src in sources.items() if not isinstance(src, str)}
    relied = set() if relied is None else relied
    token = _SOURCES.set(own)  # not the injected values: they come from outside
    try:
        with schedule_peaks(entries), built_from(names, decide, relied):
            return factory(**static, **values)
    finally:
        _SOURCES.reset(token)


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
    stored |= {
        f"{n}/{k}" for n, s in schedules.items() if isinstance(s, ScheduleSpec) for k in s.names
    }

    def update(
        updates: Any, state: HyperparamsState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, HyperparamsState]:
        if type(state) is not owner and getattr(type(state), "base", None) is owner.base:
            raise TypeError(
                f"{fn}: state must be the state this optimizer's init returned; it was built by "
                f"a {fn} given other constants ({_facts_text(type(state))}, where this one was "
                f"given {_facts_text(owner)}): each compiles its own program"
            )
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
        updates = as_arrays(updates)
        state = state._replace(
            count=as_arrays(state.count),
            hyperparams=as_arrays(state.hyperparams),
            scheduled=as_arrays(state.scheduled),
            inner_state=as_arrays(state.inner_state, numpy_only=True),
        )
        check_inexact(fn, updates, "gradients")
        scheduled = {}
        sources = {n: _source(s, n, state.hyperparams) for n, s in schedules.items()}
        for n, source in sources.items():
            value = _evaluate(source, state.count)
            check_schedule_shape(fn, n, value)
            scheduled[n] = jnp.asarray(value, state.scheduled[n].dtype)
        scheduled.update({n: jnp.asarray(v, state.scheduled[n].dtype) for n, v in injected.items()})
        sources.update({n: "injected" for n in injected})
        if RUNTIME_CHECKS["on"]:
            values = {**state.hyperparams, **scheduled}
            runtime_checks(fn, owner, state.count, values, schedules, injected)
        values = {**_own(state.hyperparams), **scheduled}
        built = _build(factory, static, values, sources, owner.facts)
        inner = optax.with_extra_args_support(built)
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


@gain_rule(_make_update)
def _optimizer_gain(ctx, cells, state, incoming):
    """An @optimizer: rebuild its chain from the values in the state, as its update does."""
    owner, factory, static, schedules, injected = (
        closure_value(cells, name, "optimizer")
        for name in ("owner", "factory", "static", "schedules", "injected")
    )
    hyperparams = as_arrays(state.hyperparams)
    sources = {n: _source(s, n, hyperparams) for n, s in schedules.items()}
    sources.update({n: "injected" for n in injected})
    values = {**_own(hyperparams), **as_arrays(state.scheduled)}
    inner = _build(factory, static, values, sources, owner.facts)
    gain, out = walk_gain(ctx, inner.update, state.inner_state, incoming)
    # Before the first step there is no last step: α_ef is 0.
    taken = in_gain_dtype(ctx, jnp.asarray(state.count) > 0)
    return Gain(gain.scale * taken, gain.tree), out
