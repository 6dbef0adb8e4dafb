"""Run-time checks of traced hyperparameters, switched on by :func:`gradx.check_hyperparams`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx._protocol.schedule import stored_relations, stored_rule
from gradx._protocol.state import HyperparamsState

RUNTIME_CHECKS = {"on": False}


class _Switch:
    def __init__(self, enabled: bool) -> None:
        self.previous = RUNTIME_CHECKS["on"]
        RUNTIME_CHECKS["on"] = enabled

    def __enter__(self) -> _Switch:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        RUNTIME_CHECKS["on"] = self.previous


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


def runtime_checks(
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
        rule = stored_rule(owner.rules, name)
        checkify.check(
            rule.holds_traced(value),
            f"{fn}: {what} must be {rule.text}, got {{value}}",
            value=value,
            step=count,
        )
    links = [(r.left, r.right, r) for r in owner.relations]
    for left_name, right_name, relation in links + stored_relations(values):
        if left_name in values and right_name in values:
            left, right = values[left_name], values[right_name]
            checkify.check(
                jnp.all(relation.holds(left, right)),
                f"{fn}: {left_name} must be {relation.op} {right_name} ({{right}}), "
                "got {left} at step {step}",
                left=left,
                right=right,
                step=count,
            )
