"""Facts fixed when an optimizer is built: what a hyperparameter given as a number rules out.

A hyperparameter lives in the state as data, so the compiled update must work for any value
its rule allows. Two facts about a number given at construction save work in every leaf:

* ``">0"``: a denominator's ε given > 0 can never let the denominator reach 0, so
  ``precondition`` compiles no zero guard (a compare and a select per leaf);
* ``"=0"``: an ε_root given as 0 adds nothing, so ``rms`` and ``rss`` compile no addition.

A block asks with :func:`positive_by_construction` / :func:`zero_by_construction` while
``@gradx.optimizer`` builds its chain; a yes is recorded, and the optimizer's state class is
then a variant whose rule for that name is tightened (:func:`tightened`: ``eps > 0``,
``eps_root`` = 0), so ``set_hyperparams``, ``sweep``, ``search`` and the run-time checks
refuse a value the compiled program cannot take. An optimizer built with ε = 0 keeps the
guard and accepts every ε ≥ 0. ``> 0`` is decided on the number as float32 stores it, inside
an optimizer or outside: an ε > 0 that rounds to 0 there (1e-50) or to a subnormal (1e-40,
which XLA flushes to 0) keeps the guard, as ε = 0 does, so its step is never 0/0. A value the
context cannot name gets a no: the safe program.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from gradx._protocol.rules import Rule

POSITIVE, ZERO = ">0", "=0"

# While an @optimizer builds its chain: (name by id of the value passed, decide(name, kind),
# the facts relied on so far).
_CONTEXT: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "gradx_built_constants", default=None
)


@contextlib.contextmanager
def built_from(
    names: Mapping[int, str], decide: Callable[[str, str], bool], relied: set
) -> Iterator[None]:
    token = _CONTEXT.set((names, decide, relied))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _holds(number: Any, kind: str) -> bool:
    return number > 0 if kind == POSITIVE else number == 0


def _normal(number: Any, dtype: Any) -> bool:
    """Whether ``number`` > 0 stays > 0 in ``dtype``: it rounds to a normal number there (XLA
    flushes a subnormal to 0, so ε = 1e-40 in float32 is a 0 denominator)."""
    if not np.issubdtype(dtype, np.floating):
        return True
    with np.errstate(under="ignore"):
        return bool(np.asarray(number).astype(dtype) >= np.finfo(dtype).tiny)


def _fact(value: Any, kind: str) -> bool:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        # a number written in the chain: fixed; > 0 only if it stays so in float32
        return bool(_holds(value, kind)) and (kind != POSITIVE or _normal(value, np.float32))
    context = _CONTEXT.get()
    if context is None:
        return False
    names, decide, relied = context
    name = names.get(id(value))
    if name is None or not decide(name, kind):
        return False
    relied.add((name, kind))
    return True


def positive_by_construction(value: Any) -> bool:
    """Whether ``value`` (a block's number) is > 0 for good: a Python number > 0, or a
    hyperparameter its optimizer was built with as a number > 0 (then held > 0 by its rule)."""
    return _fact(value, POSITIVE)


def zero_by_construction(value: Any) -> bool:
    """Whether ``value`` is 0 for good: a Python 0, or a hyperparameter its optimizer was
    built with as 0 (then held at 0 by its rule)."""
    return _fact(value, ZERO)


def decide_from_numbers(given: Mapping[str, Any], rules: Mapping[str, Rule]):
    """At construction: a fact holds for a hyperparameter given as a number for which it holds,
    where its rule can be tightened to it (``>= 0`` to ``> 0``; a set holding 0 to 0). ``> 0``
    is decided on the number as stored (float32, as every rule is checked at construction):
    one that rounds to 0 or to a subnormal there is not > 0 for good."""

    def decide(name: str, kind: str) -> bool:
        if name not in given or name not in rules:
            return False
        rule = rules[name]
        if kind == POSITIVE and not (rule.low == 0 and rule.low_closed):
            return False
        if kind == ZERO and not rule.holds(np.zeros(())):
            return False
        if not _holds(float(np.asarray(given[name])), kind):
            return False
        return kind != POSITIVE or _normal(given[name], rule.storage_dtype())

    return decide


def tightened(rule: Rule, name: str, kind: str) -> Rule:
    """``rule`` with the fact ``kind`` added, its text saying why."""
    if kind == POSITIVE:
        bound = "> 0" if rule.high == math.inf else f"{rule.text[3:]} and > 0"
        return dataclasses.replace(
            rule,
            text=f"{bound} (the optimizer was built with {name} > 0 and compiled without a "
            f"zero-denominator guard; build it with {name}=0 to use 0)",
            low_closed=False,
        )
    return dataclasses.replace(
        rule,
        text=f"0 (the optimizer was built with {name}=0, a constant of its program; build it "
        f"with {name} > 0 to set it)",
        low=0.0,
        high=0.0,
        low_closed=True,
        high_closed=True,
    )


def parse_facts(spec: str) -> frozenset[tuple[str, str]]:
    """The facts of a state-class name suffix, ``"eps>0,eps_root=0"``."""
    out = set()
    for item in spec.split(","):
        for kind in (POSITIVE, ZERO):
            if item.endswith(kind):
                out.add((item[: -len(kind)], kind))
    return frozenset(out)


def facts_spec(facts: frozenset[tuple[str, str]]) -> str:
    return ",".join(sorted(f"{name}{kind}" for name, kind in facts))
