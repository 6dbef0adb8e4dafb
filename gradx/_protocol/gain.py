"""Gains: the factor each block multiplies the current gradient by, and their registry.

A block's *gain rule* ``(ctx, cells, state, incoming) -> (gain, outgoing)`` reads the block's
numbers from the variables its ``update`` closes over (``cells``) and its statistics from its
state after the last step. Rules are registered with :func:`gain_rule` beside their blocks,
keyed by the factory object, and found from an ``update`` function by its code object, so a
block may move or be renamed without breaking :func:`gradx.effective_learning_rate`.
:func:`walk_gain` multiplies the gains along a chain (optax's ``chain``,
``with_extra_args_support`` and ``identity`` have their rules here).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradx._protocol.dtypes import abs_sq

GAIN_FN = "effective_learning_rate"


class Gain(NamedTuple):
    """A block's factor on the current gradient: ``scale`` (a scalar) times ``tree``.

    ``tree`` is None (the factor is the same for every coordinate) or a pytree like the
    params, whose leaves broadcast against the params' leaves.
    """

    scale: jax.Array
    tree: Any = None


class GainContext(NamedTuple):
    dtype: Any  # the dtype every gain is computed in
    params: Any  # the params at the last step (or None)


def in_gain_dtype(ctx: GainContext, x: Any) -> jax.Array:
    return jnp.asarray(x).astype(ctx.dtype)


def unit_gain(ctx: GainContext) -> Gain:
    return Gain(jnp.ones([], ctx.dtype))


def gain_product(a: Gain, b: Gain) -> Gain:
    if a.tree is None:
        tree = b.tree
    elif b.tree is None:
        tree = a.tree
    else:
        tree = jax.tree.map(jnp.multiply, a.tree, b.tree)
    return Gain(a.scale * b.scale, tree)


def nonzero_divisor(x: jax.Array) -> jax.Array:
    """``x`` with 0 replaced by 1: a divisor that is 0 only in a state no step produced."""
    return jnp.where(x == 0, jnp.ones_like(x), x)


def steps_taken(ctx: GainContext, count: jax.Array) -> jax.Array:
    """t = max(count, 1) in the gain dtype (count 0 is the state before any step)."""
    return in_gain_dtype(ctx, jnp.maximum(count, 1))


def closure_cells(fn: Callable[..., Any]) -> dict[str, Any]:
    """The variables an ``update`` function closes over, by name: the block's numbers."""
    names = getattr(getattr(fn, "__code__", None), "co_freevars", ())
    out = {}
    for name, cell in zip(names, getattr(fn, "__closure__", None) or (), strict=True):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    return out


def _codes(factory: Callable[..., Any]) -> list[types.CodeType]:
    """The code of ``factory`` and of every function defined inside it, at any depth: the
    ``update`` functions it makes share one of these code objects, whatever their names."""
    code = getattr(inspect.unwrap(factory), "__code__", None)
    found, stack = [], [code] if code is not None else []
    while stack:
        code = stack.pop()
        found.append(code)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return found


def block_name(fn: Callable[..., Any]) -> str:
    """``"package's factory (module:factory)"`` of an update function made inside a factory."""
    qualname = getattr(fn, "__qualname__", repr(fn)).split(".<locals>.")[0]
    module = getattr(fn, "__module__", None) or "?"
    return f"{module.split('.')[0]}'s {qualname} ({module}:{qualname})"


def closure_value(cells: dict[str, Any], name: str, block: str) -> Any:
    if name not in cells:
        raise TypeError(
            f"{GAIN_FN}: the {block} block no longer keeps {name!r} where gradx's gain rule reads "
            "it; the block and its gain rule have drifted apart"
        )
    return cells[name]


# Each rule: (ctx, cells, state, incoming) -> (gain, outgoing). ``incoming`` is the tree the
# block received at the last step when it is known (the gradient, for a first block given
# ``grads=``), else None; ``outgoing`` is what the block emitted, when the rule can say.
_Rule = Callable[[GainContext, dict[str, Any], Any, Any], tuple[Gain, Any]]


# Both registries are keyed by the code objects of the factories' inner functions (see
# _codes): an ``update`` is found by its ``__code__``, so a block may move or be renamed.
_RULES: dict[types.CodeType, _Rule] = {}


DENOMINATORS: dict[types.CodeType, Callable[[GainContext, dict[str, Any], Any], Any]] = {}


def _registrar(registry: dict[types.CodeType, Any], factories: tuple[Callable[..., Any], ...]):
    def register(fn):
        for factory in factories:
            for code in _codes(factory):
                registry[code] = fn
        return fn

    return register


def gain_rule(*factories: Callable[..., Any]):
    """Registers a gain rule for the blocks that ``factories`` build (by object, not name)."""
    return _registrar(_RULES, factories)


def denominator_gain_rule(*factories: Callable[..., Any]):
    """Registers the denominator of ``precondition`` that ``factories`` build."""
    return _registrar(DENOMINATORS, factories)


def walk_gain(ctx: GainContext, update: Callable[..., Any], state: Any, incoming: Any):
    rule = _RULES.get(getattr(update, "__code__", None))
    if rule is None:
        raise TypeError(
            f"{GAIN_FN}: the block {block_name(update)} has no gain rule, so its factor on the "
            "current gradient is unknown. gradx's optimizers and blocks all have one (e.g. "
            "gradx.adam in place of optax.adam); a chain is supported when every block in it is"
        )
    return rule(ctx, closure_cells(update), state, incoming)


def needs_incoming(block: str, incoming: Any) -> None:
    if incoming is None:
        raise ValueError(
            f"{GAIN_FN}: the {block} block's gain depends on the gradient it received at the last "
            "step: pass grads= (the gradient of that step; with weight decay before the block, "
            "params= too, the params it was taken at)"
        )


@gain_rule(optax.chain)
def _chain_gain(ctx, cells, state, incoming):
    gain = unit_gain(ctx)
    for update, s in zip(closure_value(cells, "update_fns", "chain"), state, strict=True):
        block_gain, incoming = walk_gain(ctx, update, s, incoming)
        gain = gain_product(gain, block_gain)
    return gain, incoming


@gain_rule(optax.with_extra_args_support)
def _extra_args_gain(ctx, cells, state, incoming):
    return walk_gain(
        ctx, closure_value(cells, "tx", "with_extra_args_support").update, state, incoming
    )


@gain_rule(optax.identity)
def _identity_gain(ctx, cells, state, incoming):
    return unit_gain(ctx), incoming


def scaled(ctx: GainContext, incoming: Any, factors: Any) -> Any:
    return jax.tree.map(lambda g, c: g * c.astype(g.dtype), incoming, factors)


def global_norm(ctx: GainContext, leaves: list[Any]) -> jax.Array:
    return jnp.sqrt(
        sum((jnp.sum(in_gain_dtype(ctx, abs_sq(g))) for g in leaves), jnp.zeros([], ctx.dtype))
    )


def debiased_gain(x: jax.Array, correction: Any) -> jax.Array:
    return x / nonzero_divisor(correction)
