"""Reading and writing hyperparameters in any state: :func:`hyperparams`, :func:`set_hyperparams`.

The state is walked for :class:`HyperparamsState` nodes (inside chains, ``flat``, lookahead,
optax's wrappers); each hyperparameter is addressed by its name, or by ``path/name`` where a
name occurs twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx._protocol.rules import concrete_value, is_number
from gradx._protocol.schedule import stored_relations, stored_rule
from gradx._protocol.state import HyperparamsState


def _children(node: Any) -> list[tuple[str, Any]] | None:
    """The named children of a container node of a state, or None for a leaf."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return list(zip(node._fields, node, strict=True))
    if isinstance(node, (tuple, list)):
        return [(str(i), child) for i, child in enumerate(node)]
    if isinstance(node, Mapping):
        return [(str(k), v) for k, v in node.items()]
    return None


def locate_hyperparams(state: Any) -> dict[str, list[tuple[tuple[str, ...], str, bool]]]:
    """name -> [(path to its HyperparamsState, name, is_scheduled), ...].

    Under a state class that names a field in its ``hyperparam_groups`` attribute (the state
    of ``gradx.param_groups``: a mapping from group name to that group's state), a name is
    keyed ``'<group>/<name>'``; the tuple keeps the name in the HyperparamsState.
    """
    found: dict[str, list[tuple[tuple[str, ...], str, bool]]] = {}

    def walk(node: Any, path: tuple[str, ...], prefix: str) -> None:
        if isinstance(node, HyperparamsState):
            for name in node.hyperparams:
                found.setdefault(prefix + name, []).append((path, name, False))
            for name in node.scheduled:
                found.setdefault(prefix + name, []).append((path, name, True))
            walk(node.inner_state, (*path, "inner_state"), prefix)
            return
        groups = getattr(type(node), "hyperparam_groups", None)
        for key, child in _children(node) or ():
            if key == groups:
                for group, sub in _children(child) or ():
                    walk(sub, (*path, key, group), f"{prefix}{group}/")
            else:
                walk(child, (*path, key), prefix)

    walk(state, (), "")
    return found


def hyperparam_keys(
    located: dict[str, list[tuple[tuple[str, ...], str, bool]]],
) -> dict[str, tuple[tuple[str, ...], str, bool]]:
    """Public key -> location (from locate_hyperparams): the bare name when unique, else
    'path/name'."""
    keys = {}
    for name, places in located.items():
        for path, own, scheduled in places:
            key = name if len(places) == 1 else "/".join((*path, own))
            keys[key] = (path, own, scheduled)
    return keys


def _get(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        node = dict(_children(node))[key]
    return node


def hyperparams(state: Any) -> dict[str, jax.Array]:
    """The hyperparameters in an optimizer state, by name.

    Names are the optimizer's argument names. A name that occurs more than once (two
    optimizers in one chain) is keyed by its path in the state, e.g. ``"0/learning_rate"``.
    Under :func:`gradx.param_groups` each group's values are keyed ``"<group>/<name>"``, e.g.
    ``"embed/learning_rate"``.
    A scheduled value is the one used at the last step (at step 0 before any update). The
    numbers of a :mod:`gradx.schedules` schedule for hyperparameter h are keyed
    ``h/<number>`` (``"learning_rate/peak_value"``), and are set like any other.

    Examples:
      >>> import jax.numpy as jnp, gradx
      >>> state = gradx.adam(1e-3).init({"w": jnp.zeros(2)})
      >>> sorted(gradx.hyperparams(state))
      ['b1', 'b2', 'eps', 'eps_root', 'learning_rate']
      >>> round(float(gradx.hyperparams(state)["learning_rate"]), 6)
      0.001
    """
    out = {}
    for key, (path, name, scheduled) in hyperparam_keys(locate_hyperparams(state)).items():
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
    class lists it, with the reason, in its ``outputs`` mapping; so is one that only ``init``
    reads (Adagrad's ``initial_accumulator_value``, RMSProp's ``initial_scale``: the state
    class's ``read_at_init``).

    Examples:
      >>> import jax.numpy as jnp, gradx
      >>> state = gradx.adam(1e-3).init({"w": jnp.zeros(2)})
      >>> state = gradx.set_hyperparams(state, learning_rate=1e-4)  # no recompilation
      >>> round(float(gradx.hyperparams(state)["learning_rate"]), 6)
      0.0001
    """
    located = locate_hyperparams(state)
    keys = hyperparam_keys(located)
    touched = set()
    for key, value in values.items():
        if key not in keys:
            if key in located:
                paths = ", ".join(repr(k) for k in keys if k.endswith(f"/{key}"))
                raise ValueError(
                    f"set_hyperparams: {key!r} occurs {len(located[key])} times in this "
                    f"state; address one by its path: {paths}"
                )
            raise ValueError(
                f"set_hyperparams: the state has no hyperparameter {key!r}; it has {sorted(keys)}"
            )
        path, name, scheduled = keys[key]
        owner = type(_get(state, path))
        output = getattr(owner, "outputs", {}).get(name)
        if output is not None:
            raise ValueError(f"set_hyperparams: {output}")
        if name in getattr(owner, "read_at_init", ()):
            raise ValueError(
                f"set_hyperparams: {key} is read once, when init fills the state with it, so a "
                f"value set now would change nothing; build the optimizer with {name}=... "
                "and init it again (a sweep over it: one fit per value)"
            )
        numbers = sorted(k for k in keys if k.startswith(f"{key}/"))
        if scheduled and numbers:
            raise ValueError(
                f"set_hyperparams: {key!r} follows a gradx schedule, which sets it at every "
                f"step; set its numbers instead: {', '.join(repr(k) for k in numbers)}"
            )
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
        rule = stored_rule(getattr(type(node), "rules", {}), name)
        if rule is not None:
            rule.check("set_hyperparams", key, value, old.dtype)
        if not isinstance(value, jax.core.Tracer) and not is_number(value):
            raise TypeError(f"set_hyperparams: {key} must be a number, got {value!r}")
        if not isinstance(value, jax.core.Tracer) and np.shape(value) not in ((), old.shape):
            # (a tracer under vmap has the shape of one point: () as well)
            rule_text = "" if rule is None else f" {rule.text}"
            raise ValueError(
                f"set_hyperparams: {key} must be a scalar{rule_text}, got {value!r} of shape "
                f"{np.shape(value)}; batch hyperparameters with gradx.set_hyperparams under "
                "jax.vmap"
            )
        state = _replace(state, path, name, value)
        touched.add(path)
    for path in touched:
        _check_relations(_get(state, path))
    return state


def _check_relations(node: HyperparamsState) -> None:
    """The relations of the owning optimizer between values set by hand, where concrete."""
    links = [(r.left, r.right, r) for r in getattr(type(node), "relations", ())]
    for left_name, right_name, link in links + stored_relations(node.hyperparams):
        if left_name in node.hyperparams and right_name in node.hyperparams:
            left = concrete_value(node.hyperparams[left_name])
            right = concrete_value(node.hyperparams[right_name])
            if left is not None and right is not None and not link.holds(left, right):
                raise ValueError(
                    f"set_hyperparams: {left_name} must be {link.op} {right_name} "
                    f"({right!s}), got {left!s}"
                )


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
