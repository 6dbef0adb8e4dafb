"""Exact checkpoint and resume for :func:`gradx.fit`, with ``orbax-checkpoint``.

A checkpoint, written after every ``checkpoint_every`` epochs (and after the last one), holds
everything the next epoch depends on: the params, the optimizer state (any state: gradx's,
with its hyperparameters, lookahead's slow weights, rprop's step sizes, optax's), the number
of epochs done and of steps taken, the PRNG key, the history, and the counters of the
callbacks that have some (``get_state``). Resuming restores all of it and runs the next
epoch with the same shuffle (``fold_in(key, epoch)``), so an interrupted and resumed fit
equals the uninterrupted one bit for bit.

What a user must keep: the code that builds the loss and the optimizer. The state is
restored into the structure of ``optimizer.init(params)``, so the optimizer must be built
by the same construction code (its numbers, including a learning rate set by a callback,
come from the checkpoint, because gradx keeps them in the state); a state of another
structure is an error, never a silent mix. For streamed data, exact resume needs a stream
that can restart at an epoch: a callable ``data(epoch)``.

Outside ``fit``, restore a state with a target: ``ocp.args.StandardRestore(opt.init(params))``
(or its abstract version), which gives back the state's own classes. Restored without one,
orbax gives dicts (a NamedTuple by its field names) and lists (tuples, in order, such as an
``optax.chain`` of any length); every gradx state's fields are in sorted order, so
``jax.tree.unflatten(jax.tree.structure(opt.init(params)), jax.tree.leaves(raw))`` rebuilds
the state exactly, since ``jax.tree.leaves`` takes a dict's keys in sorted order. That recipe
is not safe beyond gradx's states: optax's wrappers with unsorted fields (``MultiSteps``,
``apply_if_finite``) and params in a dict with integer keys (orbax stores them as strings, so
"10" comes before "2") rebuild wrongly; restore those with a target.

orbax-checkpoint is optional (``pip install orbax-checkpoint``); it is imported only when a
``checkpoint_dir`` is given.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_FORMAT = 1


def _orbax(fn: str):
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(
            f"{fn}: checkpoint_dir needs orbax-checkpoint, which is not installed; "
            "install it with `pip install orbax-checkpoint`"
        ) from None
    return ocp


def _describe(tree: Any) -> list[list[Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(path), list(np.shape(x)), str(jnp.result_type(x))]
        for path, x in leaves
    ]


def _key_parts(key: Any) -> tuple[Any, str | None]:
    if key is None:
        return None, None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), str(jax.random.key_impl(key))
    return jnp.asarray(key), None


class Checkpointer:
    """Saves and restores a fit's training state in ``directory`` (one subfolder per save)."""

    def __init__(self, fn: str, directory: Any, every: int, keep: int = 2):
        ocp = _orbax(fn)
        self.fn = fn
        self.ocp = ocp
        self.every = every
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def due(self, epochs_done: int, last: bool) -> bool:
        return last or epochs_done % self.every == 0

    def save(
        self,
        *,
        epochs_done: int,
        step: int,
        params: Any,
        opt_state: Any,
        key: Any,
        history: dict[str, list[float]],
        seconds: list[float],
        stopped: bool,
        plan: dict[str, Any],
        callbacks: list[dict[str, Any]],
    ) -> None:
        """Writes the state after ``epochs_done`` epochs (synchronously: see the module doc)."""
        ocp = self.ocp
        key_data, key_impl = _key_parts(key)
        arrays = {
            "params": jax.tree.leaves(params),
            "opt_state": jax.tree.leaves(opt_state),
        }
        if key_data is not None:
            arrays["key"] = key_data
        meta = {
            "format": _FORMAT,
            "epochs_done": epochs_done,
            "step": step,
            "stopped": stopped,
            "key_impl": key_impl,
            "has_key": key_data is not None,
            "history": {k: [float(v) for v in vs] for k, vs in history.items()},
            "epoch_seconds": [float(s) for s in seconds],
            "params": _describe(params),
            "opt_state": _describe(opt_state),
            "callbacks": [bool(c) for c in callbacks],
            **plan,
        }
        items = {"arrays": ocp.args.StandardSave(arrays), "meta": ocp.args.JsonSave(meta)}
        if any(callbacks):
            states = {str(i): c for i, c in enumerate(callbacks) if c}
            items["callbacks"] = ocp.args.StandardSave(states)
        self.manager.save(epochs_done, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def restore(self, params: Any, opt_state: Any, key: Any) -> dict[str, Any] | None:
        """The latest checkpoint, restored into the structures of ``params`` and ``opt_state``.

        Returns None when the directory holds no checkpoint (a first run).
        """
        ocp, fn = self.ocp, self.fn
        latest = self.manager.latest_step()
        if latest is None:
            return None
        where = f"the checkpoint of epoch {latest} in {self.directory}"
        meta = self.manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta["meta"]
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{fn}: {where} must be a gradx fit checkpoint, got another format")
        for name, tree, what in (
            ("params", params, "params"),
            ("opt_state", opt_state, "optimizer state (optimizer.init(params))"),
        ):
            want = _describe(tree)
            if meta[name] != want:
                diff = next(
                    (f"{a} vs {b}" for a, b in zip(meta[name], want, strict=False) if a != b),
                    f"{len(meta[name])} vs {len(want)} arrays",
                )
                raise ValueError(
                    f"{fn}: {where} must match the structure, shapes and dtypes of the "
                    f"{what}; build the model and the optimizer with the same code as the "
                    f"checkpointed run. First difference (checkpoint vs now): {diff}"
                )
        key_data, key_impl = _key_parts(key)
        if meta["has_key"] != (key_data is not None) or meta["key_impl"] != key_impl:
            raise ValueError(
                f"{fn}: key must be the key of the checkpointed run ({where}), got {key!r}"
            )

        def abstract(x):
            return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), sharding=x.sharding)

        target = {
            "params": [abstract(x) for x in jax.tree.leaves(params)],
            "opt_state": [abstract(x) for x in jax.tree.leaves(opt_state)],
        }
        if key_data is not None:
            target["key"] = abstract(key_data)
        items = {"arrays": ocp.args.StandardRestore(target)}
        if any(meta["callbacks"]):
            items["callbacks"] = ocp.args.StandardRestore()
        restored = self.manager.restore(latest, args=ocp.args.Composite(**items))
        arrays = restored["arrays"]
        if key_data is not None and not np.array_equal(arrays["key"], key_data):
            raise ValueError(
                f"{fn}: key must be the key of the checkpointed run ({where}), got another one"
            )
        callbacks = restored["callbacks"] if any(meta["callbacks"]) else {}
        return {
            "params": jax.tree.unflatten(jax.tree.structure(params), arrays["params"]),
            "opt_state": jax.tree.unflatten(jax.tree.structure(opt_state), arrays["opt_state"]),
            "callbacks": [
                callbacks.get(str(i)) if has else None for i, has in enumerate(meta["callbacks"])
            ],
            **{k: meta[k] for k in meta if k not in ("params", "opt_state", "callbacks")},
        }

    def close(self) -> None:
        self.manager.close()
