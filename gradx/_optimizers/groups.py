"""Parameter groups by name: one optimizer, other values for the leaves a pattern names.

``param_groups(gradx.adamw(1e-3), no_decay=(r"(^|/)(bias|scale)$", {"weight_decay": 0.0}))``
rebuilds the optimizer once per group from the constructor and arguments it was built with
(recorded by ``@gradx.optimizer``, see ``gradx._protocol.declare.BUILT``), with the group's
values in place of the optimizer's. Each leaf of the params goes to the first group whose
pattern matches its key path (:func:`key_path`); the others form the group ``default``, run by
the optimizer itself. Each group's optimizer runs on the params with the other groups' leaves
masked out (``optax.transforms.MaskedNode``, as ``optax.partition`` does), so its state is the
state it would have alone on its leaves, and the group states sit side by side in a
:class:`ParamGroupsState`, whose values ``gradx.hyperparams`` keys ``'<group>/<name>'``.
:func:`grouped` is the machinery under it, shared with ``gradx.compat.torch``'s param groups.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.transforms import MaskedNode

from gradx._optimizers.scaling import FLAT_ACTIVE
from gradx._protocol.declare import BUILT
from gradx._protocol.gain import GAIN_FN, Gain, closure_value, gain_rule, walk_gain
from gradx._protocol.storage import salt_rounding_keys
from gradx._protocol.trees import (
    TreeMismatchError,
    as_arrays,
    check_arrays,
    params_like,
    unwrap_variables,
)

__all__ = ["ParamGroupsState", "grouped", "key_path", "param_groups"]

DEFAULT = "default"


class ParamGroupsState(NamedTuple):
    """State of :func:`gradx.param_groups`: each group's optimizer state, by group name.

    ``groups[name]`` is the state of that group's optimizer over the params with every other
    group's leaves replaced by ``optax.transforms.MaskedNode()`` (an empty node), as
    ``optax.partition`` keeps its states. The group ``default`` is there when some leaf
    matches no pattern. :func:`gradx.hyperparams` and :func:`gradx.set_hyperparams` key each
    group's values ``'<group>/<name>'`` (the field named by ``hyperparam_groups``).
    """

    groups: dict[str, Any]  # group name -> that group's optimizer state (masked params)

    hyperparam_groups = "groups"  # the field whose keys prefix the hyperparameters' names


def key_path(path: tuple[Any, ...]) -> str:
    """The string a group's pattern is matched against: the '/'-joined names of a leaf's key
    path (``jax.tree_util``'s entries): a dict key as ``str(key)``, an attribute (a dataclass
    or equinox field, a NamedTuple field) by its name, a list or tuple index as its decimal.
    ``{"layers": [{"w": ...}]}``'s leaf is ``"layers/0/w"``; the root leaf is ``""``."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:  # a custom node's key: its own string
            parts.append(str(entry).strip(".[]'\""))
    return "/".join(parts)


def _labels(fn: str, patterns: tuple, has_default: bool, tree: Any):
    """``(leaves, treedef, the group of each leaf)`` of ``tree``, by its leaves' key paths."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    labels, unmatched = [], []
    for path, _ in with_paths:
        where = key_path(path)
        name = next((n for n, pattern in patterns if pattern.search(where)), None)
        if name is None:
            unmatched.append(where)
        labels.append(DEFAULT if name is None else name)
    if unmatched and not has_default:
        raise ValueError(
            f"{fn}: every params leaf must be in a group, but no group's pattern matches "
            f"{_listed(unmatched)}; add a last group that takes the rest, e.g. "
            '{"params": r".*"}'
        )
    return [leaf for _, leaf in with_paths], treedef, labels


def _listed(paths: list[str], most: int = 8) -> str:
    shown = ", ".join(repr(p) for p in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _mask(treedef: Any, leaves: list[Any], labels: list[str], name: str) -> Any:
    kept = [x if label == name else MaskedNode() for x, label in zip(leaves, labels, strict=True)]
    return jax.tree.unflatten(treedef, kept)


def _refuse_flat(fn: str) -> None:
    if FLAT_ACTIVE.get():
        raise ValueError(
            f"{fn}: cannot run inside gradx.flat: the packed buffers have no key paths for the "
            "groups' patterns to match; run it leaf by leaf (gradx.fit does so by itself)"
        )


def _check_names(fn: str, names: list[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"{fn}: a group's name must be a non-empty string without '/', got {name!r}"
            )
        if name == DEFAULT:
            raise ValueError(
                f"{fn}: the group name 'default' is reserved for the leaves no pattern matches "
                "(run by the optimizer's own values); give the group another name"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"{fn}: group names must be distinct, got {names}")


def _compiled(fn: str, group: str, pattern: Any) -> re.Pattern:
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(
            f"{fn}: group {group!r}'s pattern must be a regular expression (a str), got "
            f"{type(pattern).__name__} {pattern!r}"
        )
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"{fn}: group {group!r}'s pattern {pattern!r} is not a regular expression: {e}"
        ) from None


def grouped(
    fn: str,
    groups: list[tuple[str, Any, optax.GradientTransformation]],
    default: optax.GradientTransformation | None,
) -> optax.GradientTransformationExtraArgs:
    """One transformation per group of leaves: ``groups`` is ``[(name, pattern, transformation),
    ...]`` (first match wins), ``default`` runs the leaves no pattern matches (None: such a
    leaf is an error). Errors are named after ``fn``."""
    _check_names(fn, [name for name, _, _ in groups])
    if not groups:
        raise ValueError(f"{fn}: give at least one group")
    patterns = tuple((name, _compiled(fn, name, pattern)) for name, pattern, _ in groups)
    txs = {name: optax.with_extra_args_support(tx) for name, _, tx in groups}
    if default is not None:
        txs[DEFAULT] = optax.with_extra_args_support(default)
    spec = (fn, patterns, tuple((name, tx.update) for name, tx in txs.items()))

    def init(params: Any) -> ParamGroupsState:
        _refuse_flat(fn)
        check_arrays(fn, params, "params")
        params = unwrap_variables(params)  # nnx: the key paths update will see (no /value)
        leaves, treedef, labels = _labels(fn, patterns, default is not None, as_arrays(params))
        empty = [name for name, _ in patterns if name not in labels]
        if empty:
            paths = [key_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
            raise ValueError(
                f"{fn}: group {empty[0]!r} takes no params leaf: its pattern "
                f"{dict(patterns)[empty[0]].pattern!r} matches none of the leaves' key paths "
                f"(or only leaves an earlier group took); the key paths are {_listed(paths)}"
            )
        states = {  # each group's rounding keys its own (storage.salt_rounding_keys)
            name: salt_rounding_keys(tx.init(_mask(treedef, leaves, labels, name)), name)
            for name, tx in txs.items()
            if name in labels
        }
        return ParamGroupsState(groups=states)

    try:
        update = _shared_update(*spec)
    except TypeError:  # an unhashable update function: no sharing for this one
        update = _shared_update.__wrapped__(*spec)
    return optax.GradientTransformationExtraArgs(init, update)


@functools.lru_cache(maxsize=256)
def _shared_update(fn: str, patterns: tuple, updates_by_group: tuple):
    """The update of :func:`grouped`, one per configuration: two groupings of optimizers
    that differ only in their numbers share it (the numbers are in the states)."""
    return _make_update(fn, patterns, updates_by_group)


def _make_update(fn: str, patterns: tuple, updates_by_group: tuple):
    has_default = any(name == DEFAULT for name, _ in updates_by_group)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, ParamGroupsState):
            raise TypeError(
                f"{fn}: state must be the ParamGroupsState this optimizer's init returned, got "
                f"a {type(state).__name__}; call its init"
            )
        _refuse_flat(fn)
        params = params_like(fn, updates, params)
        leaves, treedef, labels = _labels(fn, patterns, has_default, updates)
        present = {name for name, _ in updates_by_group if name in labels}
        if present != set(state.groups):
            raise TreeMismatchError(
                f"{fn}: the gradients' leaves fall in the groups {sorted(present)}, but the "
                f"state holds {sorted(state.groups)}; call init with params of the gradients' "
                "structure"
            )
        p_leaves = None if params is None else jax.tree.leaves(params)
        out: list[Any] = [None] * len(leaves)
        states = {}
        for name, group_update in updates_by_group:
            if name not in present:
                continue
            masked = None if params is None else _mask(treedef, p_leaves, labels, name)
            try:
                group_out, states[name] = group_update(
                    _mask(treedef, leaves, labels, name), state.groups[name], masked, **extra_args
                )
            except TreeMismatchError as e:
                raise TreeMismatchError(f"{fn}: group {name!r}: {e}") from None
            members = [i for i, label in enumerate(labels) if label == name]
            for i, leaf in zip(members, jax.tree.leaves(group_out), strict=True):
                out[i] = leaf
        return jax.tree.unflatten(treedef, out), ParamGroupsState(groups=states)

    return update


@gain_rule(_make_update)
def _groups_gain(ctx, cells, state, incoming):
    """Each group's α_ef on its own leaves: its optimizer's gain over its masked state."""
    fn = closure_value(cells, "fn", "param_groups")
    patterns = closure_value(cells, "patterns", "param_groups")
    updates_by_group = closure_value(cells, "updates_by_group", "param_groups")
    template = incoming if incoming is not None else ctx.params
    if template is None:
        raise ValueError(
            f"{GAIN_FN}: {fn} finds its groups by the params' key paths: pass params= (or grads=)"
        )
    has_default = any(name == DEFAULT for name, _ in updates_by_group)
    leaves, treedef, labels = _labels(fn, patterns, has_default, template)
    params = None if ctx.params is None else jax.tree.leaves(ctx.params)
    factors: list[Any] = [None] * len(leaves)
    outgoing: list[Any] | None = [None] * len(leaves)
    for name, group_update in updates_by_group:
        if name not in state.groups:
            continue
        sub = ctx._replace(params=None if params is None else _mask(treedef, params, labels, name))
        masked_in = None if incoming is None else _mask(treedef, leaves, labels, name)
        gain, out = walk_gain(sub, group_update, state.groups[name], masked_in)
        members = [i for i, label in enumerate(labels) if label == name]
        tree = [None] * len(members) if gain.tree is None else jax.tree.leaves(gain.tree)
        for i, f in zip(members, tree, strict=True):
            factors[i] = gain.scale if f is None else gain.scale * f
        if out is None or outgoing is None:
            outgoing = None
        else:
            for i, leaf in zip(members, jax.tree.leaves(out), strict=True):
                outgoing[i] = leaf
    unit = jnp.ones([], ctx.dtype)
    merged = None if outgoing is None else jax.tree.unflatten(treedef, outgoing)
    return Gain(unit, jax.tree.unflatten(treedef, factors)), merged


def _group_value(fn: str, group: str, value: Any) -> tuple[Any, Mapping[str, Any]]:
    """``(pattern, overrides)`` of a group given as that pair or as a bare pattern."""
    if isinstance(value, (str, re.Pattern)):
        return value, {}
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Mapping):
        if all(isinstance(k, str) for k in value[1]):
            return value
    raise TypeError(
        f"{fn}: group {group!r} must be (pattern, {{argument: value, ...}}) or a pattern, got "
        f"{value!r}"
    )


def param_groups(
    optimizer: optax.GradientTransformation, /, **groups: Any
) -> optax.GradientTransformationExtraArgs:
    """One optimizer, other values for the groups of params whose key paths a pattern names.

    For each params leaf i with key path string s_i (see below)::

        g(i) = the first group (in the order given) whose pattern p has re.search(p, s_i),
               else "default"
        u_i  = the step of optimizer_g(i) on leaf i

    where ``optimizer_g`` is ``optimizer`` rebuilt with group g's values in place of its own
    (``default``: ``optimizer`` itself; that group exists when some leaf matches no pattern).
    Each group's optimizer runs on its own leaves only and keeps its own state, so the result
    equals ``optax.partition`` of the separately built optimizers over the same labels (to
    float rounding: 1e-12 in float64 in the tests, adam, adamw and sgd with momentum), and a
    norm or a trust ratio is taken per group, as torch computes them per param group.

    The key path string of a leaf is the '/'-joined names of the keys on the way to it, as
    ``jax.tree_util`` lists them: a dict key as ``str(key)``, an attribute (a dataclass or
    equinox module field, a NamedTuple field) by its name, a list or tuple index as its
    decimal. ``{"layers": [{"w": ..., "bias": ...}]}`` has the leaves ``"layers/0/w"`` and
    ``"layers/0/bias"``; a flax linen Dense kernel is ``"params/Dense_0/kernel"``. So
    ``r"(^|/)(bias|scale)$"`` names every bias and norm scale, ``r"^embed/"`` a top-level
    module.

    The state is a :class:`ParamGroupsState`; :func:`gradx.hyperparams` keys each group's
    values ``'<group>/<name>'`` (``"embed/learning_rate"``, ``"default/learning_rate"``), and
    :func:`gradx.set_hyperparams` sets one group's values without touching the others' and
    without recompiling; so :func:`gradx.sweep` and :func:`gradx.search` tune one group's
    value by that key. A group's value may be a schedule, as for the optimizer.

    Args:
      optimizer: an optimizer built by a ``@gradx.optimizer`` constructor (``gradx.adamw(...)``,
        ``gradx.sgd(...)``, your own), which is rebuilt per group from its constructor and
        arguments. A chain, ``gradx.flat`` or a plain optax transformation is refused: put
        ``param_groups`` inside the chain (``optax.chain(optax.clip_by_global_norm(1.0),
        gradx.param_groups(...))``), or use ``optax.partition`` with optimizers built apart.
      **groups: ``name=(pattern, {argument: value, ...})``, or ``name=pattern`` for a group
        with the optimizer's own values (tuned apart later). ``pattern`` is a regular
        expression (a str or ``re.compile``'s result); the arguments are any of the
        constructor's (hyperparameters, and also flags such as ``nesterov``), each value
        checked by the constructor's own rules. The name ``default`` is reserved.

    Returns:
      An optax transformation whose state is a :class:`ParamGroupsState`.

    Raises:
      TypeError: ``optimizer`` is not built by a ``@gradx.optimizer`` constructor; a group is
        not a pattern or a (pattern, dict) pair.
      ValueError: at construction, a group named ``default`` or with a ``/``, a bad regular
        expression, an argument the constructor does not take, or a value its rules refuse
        (``param_groups: group 'no_decay': adamw: weight_decay must be >= 0, got -1.0``); at
        ``init``, a group that takes no params leaf (its pattern matches none, or only leaves
        an earlier group took). Inside ``gradx.flat``, which packs the leaves (their key paths
        are gone): ``gradx.fit`` runs it leaf by leaf.

    Note:
      This is torch's param groups (``torch.optim.AdamW([{"params": ..., "lr": 1e-4}, ...])``)
      with the groups named by patterns, since a JAX optimizer is built before it sees the
      params; ``gradx.compat.torch``'s classes take torch's list of dicts in that form. optax
      spells it ``optax.partition`` with one optimizer per label and a pytree of labels (its
      states look like these); for the common no-decay group alone, ``gradx.adamw(...,
      mask=...)`` also does it, in one state.

    Examples:
      >>> import jax.numpy as jnp, gradx
      >>> opt = gradx.param_groups(
      ...     gradx.adamw(1e-3, weight_decay=0.1),
      ...     no_decay=(r"(^|/)(bias|scale)$", {"weight_decay": 0.0}),
      ...     embed=(r"embed", {"learning_rate": 1e-4}),
      ... )
      >>> params = {"embed": jnp.ones((4, 2)), "dense": {"w": jnp.ones((2, 2)),
      ...           "bias": jnp.zeros(2)}}
      >>> state = opt.init(params)
      >>> sorted(gradx.hyperparams(state))[:3]
      ['default/b1', 'default/b2', 'default/eps']
      >>> round(float(gradx.hyperparams(state)["embed/learning_rate"]), 6)
      0.0001
      >>> state = gradx.set_hyperparams(state, **{"embed/learning_rate": 3e-4})
    """
    fn = "param_groups"
    built = BUILT.get(getattr(optimizer, "init", None))
    if not isinstance(optimizer, optax.GradientTransformation) or built is None:
        raise TypeError(
            f"{fn}: optimizer must be built by a @gradx.optimizer constructor (gradx.adamw(...), "
            f"gradx.sgd(...), your own), which it rebuilds per group, got a "
            f"{type(optimizer).__name__} that none built; for a chain put param_groups inside "
            "it, and for optimizers built apart use optax.partition"
        )
    constructor, bound = built
    name = constructor.__name__
    takes = list(bound.signature.parameters)
    spec = []
    for group, value in groups.items():
        _check_names(fn, [group])
        pattern, overrides = _group_value(fn, group, value)
        unknown = [k for k in overrides if k not in takes]
        if unknown:
            raise ValueError(
                f"{fn}: group {group!r} sets {unknown}, which {name} does not take; its "
                f"arguments are {takes}"
            )
        arguments = bound.signature.bind(*bound.args, **bound.kwargs)
        arguments.arguments.update(overrides)
        try:
            tx = constructor(*arguments.args, **arguments.kwargs)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{fn}: group {group!r}: {e}") from None
        spec.append((group, pattern, tx))
    return grouped(fn, spec, optimizer)
