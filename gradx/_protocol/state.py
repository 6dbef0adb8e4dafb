""":class:`HyperparamsState`, the state of every optimizer declared with ``@gradx.optimizer``.

Each declaration gets its own subclass, registered by a name that is the same in every
process, so a state pickles and unpickles, and ``update`` can refuse a state built by another
optimizer.
"""

from __future__ import annotations

import hashlib
import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from gradx._protocol.constants import facts_spec, parse_facts, tightened
from gradx._protocol.rules import Relation, Rule


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


def declare_state_class(
    factory: Callable[..., Any],
    fn: str,
    rules: Mapping[str, Rule],
    relations: tuple[Relation, ...],
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
            "facts": frozenset(),  # see variant_state_class
        },
    )
    cls.base = cls
    _STATE_CLASSES[key] = cls
    return cls


def variant_state_class(
    base: type[HyperparamsState], facts: frozenset[tuple[str, str]]
) -> type[HyperparamsState]:
    """The state class of ``base``'s optimizer built with ``facts`` (see ``constants.py``):
    a subclass whose rules are tightened to them, registered for pickle as
    ``<base name>~<facts>``. No facts: ``base`` itself."""
    if not facts:
        return base
    key = f"{base.__qualname__[:-1]}~{facts_spec(facts)}]"
    if key in _STATE_CLASSES and _STATE_CLASSES[key].base is base:
        return _STATE_CLASSES[key]
    rules = dict(base.rules)
    for name, kind in facts:
        rules[name] = tightened(rules[name], name, kind)
    cls = type(
        "HyperparamsState",
        (base,),
        {
            "__slots__": (),
            "__module__": __name__,
            "__qualname__": key,
            "__doc__": base.__doc__,
            "rules": types.MappingProxyType(rules),
            "base": base,
            "facts": facts,
        },
    )
    _STATE_CLASSES[key] = cls
    return cls


def __getattr__(name: str) -> Any:
    """Serves the state class of each declared optimizer by its registered name (for pickle)."""
    if name.startswith(_STATE_PREFIX) and "~" in name and name not in _STATE_CLASSES:
        base_name, spec = name[:-1].split("~", 1)
        return variant_state_class(__getattr__(f"{base_name}]"), parse_facts(spec))
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
