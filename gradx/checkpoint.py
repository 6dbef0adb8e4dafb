"""Exact checkpoint and resume for :func:`gradx.fit`, with ``orbax-checkpoint``.

A checkpoint, written after every ``checkpoint_every`` epochs (and after the last one), holds
everything the next epoch depends on: the params, the optimizer state (any state: gradx's,
with its hyperparameters, lookahead's slow weights, rprop's step sizes, optax's), the moving
average of the params of ``fit(..., ema=)``, the number of epochs done and of steps taken,
the PRNG key, the history, and the counters of the callbacks that have some
(``get_state``). Resuming restores all of it and runs the next
epoch with the same shuffle (``fold_in(key, epoch)``), so an interrupted and resumed fit
equals the uninterrupted one bit for bit.

What a user must keep: the code that builds the loss and the optimizer. The state is
restored into the structure of ``optimizer.init(params)``, so the optimizer must be built
by the same construction code (its numbers, including a learning rate set by a callback,
come from the checkpoint, because gradx keeps them in the state); a state of another
structure is an error, never a silent mix. For streamed data, exact resume needs a stream
that can restart at an epoch: a callable ``data(epoch)``.

**One directory, one run.** A ``checkpoint_dir`` holds the checkpoints of one run (the
last two saves, one subfolder per epoch) and a lock file, ``.gradx.lock``. Each checkpoint
records which run wrote it: the classes of the optimizer state's nodes (momentum and
nesterov differ), the hyperparameters at the start of the run (before any callback changed
them; optax's optimizers keep none in their state, so for them the state's classes and
shapes are what is compared), the arguments the optimizer was built with (flags such as
``nesterov``, ``mask`` or ``state_dtype``, an inner optimizer's, and the values an optax
transformation or a schedule function holds in its closure; a function's code is not
compared), digests of the initial params and optimizer state, the
shapes and dtypes of the params and data (for streamed data: the batch size, structure,
shapes and dtypes of its batches, checked against the first batch after a resume),
``batch_size``, ``skip_nonfinite``, ``accumulate`` and ``ema`` (when they are on), the key
(saved with the state) and the callbacks that have counters (by class, ``monitor`` or
``name``, and their settings). ``epochs`` is not part of it: a resume with more epochs
extends the run; ``initial_epoch`` may be 0 or the run's own (the same call, run again,
resumes). Checkpoints written by gradx before this record (format 1) are refused.

- ``resume=True`` continues the newest checkpoint of *this* run, and refuses (a
  ``ValueError`` naming the first difference) a checkpoint of another run or of another
  format, never falling back to an older one of it. Callback counters are restored by name,
  so the callbacks may come in another order.
- A fresh fit (``resume=False``) into a directory that holds checkpoints refuses, naming
  the ways out: ``resume=True``, another directory, or ``overwrite=True``, which deletes
  them all before the first epoch (never one per save).
- A damaged checkpoint (its metadata unreadable, an array that orbax cannot read, or a
  checksum that differs: every array's SHA-256 and the metadata's are recorded when it is written
  and compared when it is read) is skipped on resume with a ``RuntimeWarning`` naming it and what is
  wrong, and moved to ``DIR/damaged/`` (never deleted); the newest intact one is used. If none is
  intact, the error names each. (With several processes, an array split over them is not
  checksummed.)
- The lock: fit holds an exclusive ``fcntl`` lock on ``.gradx.lock`` (one file per process
  index with several processes) from before it reads the directory to its end; the
  operating system releases it when the process dies, even by SIGKILL. A second fit writing the same
  directory meanwhile gets a ``RuntimeError`` naming the directory and the holder (its
  pid and host), instead of two runs mixing their files.

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

import hashlib
import os
import shutil
import socket
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx._training.identity import array_checksums, canon, describe_arrays, first_difference

_FORMAT = 2


LOCK = ".gradx.lock"
DAMAGED = "damaged"
"""The folder of a checkpoint directory a damaged checkpoint is moved to, as
``<epoch>-<time>``: set aside on resume, never deleted (``overwrite=True`` clears it)."""


def _orbax(fn: str):
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(
            f"{fn}: checkpoint_dir needs orbax-checkpoint, which is not installed; "
            "install it with `pip install orbax-checkpoint`"
        ) from None
    return ocp


def _key_parts(key: Any) -> tuple[Any, str | None]:
    if key is None:
        return None, None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), str(jax.random.key_impl(key))
    return jnp.asarray(key), None


def _arrays_difference(there: list, now: list, widened: tuple[str, ...] = ()) -> str | None:
    """The first difference of two :func:`describe_arrays` lists in words, or None. An int8
    moment's ``codes`` there where an ``absmax`` is now is the earlier int8 format
    (bitsandbytes' maps; fields ``codes``, ``scales``), and the note says so. Where
    it is an array of a dtype in ``widened`` there and float32 now, the note says why: gradx
    keeps the never-negative moments of float16 params (``widened`` ('float16',) for the
    optimizer state) and fit's moving average (('float16', 'bfloat16')) in float32, which
    earlier versions stored in the params' dtype."""
    if there == now:
        return None
    first = next(((a, b) for a, b in zip(there, now, strict=False) if a != b), None)
    if first is None:
        return f"{len(there)} vs {len(now)} arrays"
    a, b = first
    diff = f"{a} vs {b}"
    if a[0].endswith(".codes") and b[0] == a[0][: -len("codes")] + "absmax":
        diff += (
            " (an int8 moment of an earlier gradx, stored with other maps and per-block scales "
            "that this version cannot read: finish this run with the gradx version that wrote "
            "the checkpoint)"
        )
    if a[:2] == b[:2] and a[2] in widened and b[2] == "float32":
        diff += (
            f" (an earlier gradx stored this array in {a[2]}; it now keeps it in float32: "
            "finish this run with the gradx version that wrote the checkpoint, or, for an "
            f"optimizer state, resume it with that dtype given, e.g. nu_dtype=jnp.{a[2]})"
        )
    return diff


class Damaged(Exception):
    """A checkpoint that cannot be read back as it was written."""


class _Lock:
    """An exclusive ``fcntl`` lock on ``directory/.gradx.lock``, holding the holder's pid
    and host; the operating system releases it when the process dies."""

    def __init__(self, fn: str, directory: str):
        import fcntl

        index = jax.process_index()
        path = os.path.join(directory, LOCK if index == 0 else f"{LOCK}.{index}")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only directory: its lock file, if any, locks as well
            if not os.path.exists(path):
                raise
            self.fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise RuntimeError(
                f"{fn}: checkpoint_dir {directory} is in use by another fit ({holder}); two "
                "runs must not write one directory: wait for it to end or use another "
                "checkpoint_dir"
            ) from None
        try:  # who holds it, for the error of a second writer; a full disk may refuse
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class Checkpointer:
    """Saves and restores a fit's training state in ``directory`` (one subfolder per save),
    holding its lock from construction to :meth:`close`."""

    def __init__(self, fn: str, directory: Any, every: int, keep: int = 2):
        ocp = _orbax(fn)
        self.fn = fn
        self.ocp = ocp
        self.every = every
        self.directory = os.path.abspath(os.fspath(directory))
        self.identity: dict[str, Any] = {}
        os.makedirs(self.directory, exist_ok=True)
        self.lock = _Lock(fn, self.directory)
        try:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True
            )
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except BaseException:
            self.lock.release()
            raise

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
        callbacks: list[tuple[str, dict[str, Any]]],
        average: Any = None,
    ) -> None:
        """Writes the state after ``epochs_done`` epochs (synchronously: see the module doc).

        ``callbacks``: (name, counters) of the callbacks with counters; ``average``: the
        moving average of the params of fit's ``ema`` (its count, decay and params), or None."""
        ocp = self.ocp
        key_data, key_impl = _key_parts(key)
        arrays = {
            "params": jax.tree.leaves(params),
            "opt_state": jax.tree.leaves(opt_state),
        }
        if key_data is not None:
            arrays["key"] = key_data
        if average is not None:
            arrays["average"] = jax.tree.leaves(average)
        states = {str(i): c for i, (_, c) in enumerate(callbacks) if c}
        meta = {
            "format": _FORMAT,
            "identity": self.identity,
            "epochs_done": epochs_done,
            "step": step,
            "stopped": stopped,
            "key_impl": key_impl,
            "has_key": key_data is not None,
            "history": {k: [float(v) for v in vs] for k, vs in history.items()},
            "epoch_seconds": [float(s) for s in seconds],
            "params": describe_arrays(params),
            "opt_state": describe_arrays(opt_state),
            "callbacks": [name if c else None for name, c in callbacks],
            **({} if average is None else {"average": describe_arrays(average)}),
            "checksums": {"arrays": array_checksums(arrays), "callbacks": array_checksums(states)},
            **plan,
        }
        meta["digest"] = hashlib.sha256(canon(meta).encode()).hexdigest()
        items = {"arrays": ocp.args.StandardSave(arrays), "meta": ocp.args.JsonSave(meta)}
        if states:
            items["callbacks"] = ocp.args.StandardSave(states)
        self.manager.save(epochs_done, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def start(
        self, *, resume: bool, overwrite: bool, params: Any, opt_state: Any, key: Any,
        average: Any = None,
    ):  # fmt: skip
        """The checkpoint to resume (see :meth:`restore`), or None to start afresh; refuses
        a fresh start into a directory with checkpoints unless ``overwrite``."""
        fn, steps = self.fn, sorted(self.manager.all_steps())
        if overwrite:
            for step in steps:
                self.manager.delete(step)
            shutil.rmtree(os.path.join(self.directory, DAMAGED), ignore_errors=True)
            return None
        if steps and not resume:
            raise ValueError(
                f"{fn}: checkpoint_dir {self.directory} holds the checkpoints of epochs "
                f"{steps} of an earlier run, which a fresh fit would replace: pass "
                "resume=True to continue that run, use another checkpoint_dir, or pass "
                "overwrite=True to delete them and start afresh"
            )
        damaged = []
        for step in reversed(steps):
            try:
                restored = self.restore(step, params, opt_state, key, average)
            except Damaged as e:
                aside = self._set_aside(step)
                damaged.append(f"epoch {step}: {e}; moved to {aside}")
                warnings.warn(
                    f"{fn}: the checkpoint of epoch {step} in {self.directory} is damaged "
                    f"({e}); moved it to {aside} and resuming from an older one",
                    RuntimeWarning,
                    stacklevel=5,
                )
                continue
            return restored
        if damaged:
            raise ValueError(
                f"{fn}: checkpoint_dir {self.directory} holds no intact checkpoint to resume "
                f"({'; '.join(damaged)}); use another checkpoint_dir, or pass "
                "overwrite=True with resume=False to start afresh"
            )
        return None

    def _set_aside(self, step: int) -> str:
        """Moves a damaged checkpoint out of the run, into ``DIR/damaged/`` (never deleted:
        it may be inspected or repaired), so the run's next save of that epoch is a new one."""
        base = os.path.join(self.directory, DAMAGED, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(os.path.dirname(base), exist_ok=True)
        where, n = base, 1
        while os.path.exists(where):  # the same epoch damaged again within the second
            n += 1
            where = f"{base}-{n}"
        os.replace(os.path.join(self.directory, str(step)), where)
        self.manager.reload()
        return where

    def _meta(self, step: int, where: str) -> dict[str, Any]:
        ocp = self.ocp
        if not os.path.isdir(os.path.join(self.directory, str(step), "meta")):
            raise ValueError(
                f"{self.fn}: {where} must be a gradx fit checkpoint, got one without gradx's "
                "metadata (another program's checkpoint?); use another checkpoint_dir, or "
                "pass overwrite=True with resume=False to delete it"
            )
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = dict(meta["meta"])
        except Exception as e:
            raise Damaged(f"its metadata cannot be read: {type(e).__name__}: {e}") from None
        digest = meta.pop("digest", None)
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{self.fn}: {where} must be a gradx fit checkpoint of format {_FORMAT}, got "
                f"format {meta.get('format')!r} (another version of gradx, or another "
                "program); use another checkpoint_dir, or pass overwrite=True with "
                "resume=False to delete it"
            )
        if digest != hashlib.sha256(canon(meta).encode()).hexdigest():
            raise Damaged("its metadata's checksum differs from the one written")
        return meta

    def restore(
        self, step: int, params: Any, opt_state: Any, key: Any, average: Any = None
    ) -> dict[str, Any]:
        """The checkpoint of ``step``, restored into the structures of ``params`` and
        ``opt_state`` (and ``average``, fit's moving average, when not None); a ValueError
        for one of another run, :class:`Damaged` for a damaged one."""
        ocp, fn = self.ocp, self.fn
        where = f"the checkpoint of epoch {step} in {self.directory}"
        meta = self._meta(step, where)
        for name, tree, what, widened in (
            ("params", params, "params", ()),
            ("opt_state", opt_state, "optimizer state (optimizer.init(params))", ("float16",)),
        ):
            diff = _arrays_difference(meta[name], describe_arrays(tree), widened)
            if diff is not None:
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
        diff = first_difference(meta["identity"], self.identity)
        if diff is not None:
            raise ValueError(
                f"{fn}: {where} was written by another run: {diff}; resume with the same "
                "arguments, use another checkpoint_dir, or pass overwrite=True with "
                "resume=False to delete it and start afresh"
            )

        def abstract(x):
            return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), sharding=x.sharding)

        target = {
            "params": [abstract(x) for x in jax.tree.leaves(params)],
            "opt_state": [abstract(x) for x in jax.tree.leaves(opt_state)],
        }
        if key_data is not None:
            target["key"] = abstract(key_data)
        if average is not None:
            there = meta.get("average")
            if not there:
                raise ValueError(
                    f"{fn}: {where} must hold a moving average of the params like this run's "
                    "(ema=), got none; resume with the same arguments"
                )
            diff = _arrays_difference(there, describe_arrays(average), ("float16", "bfloat16"))
            if diff is not None:
                raise ValueError(
                    f"{fn}: {where} must hold a moving average of the params like this run's "
                    "(ema=), got another; resume with the same arguments. First difference "
                    f"(checkpoint vs now): {diff}"
                )
            target["average"] = [abstract(x) for x in jax.tree.leaves(average)]
        names = meta["callbacks"]
        items = {"arrays": ocp.args.StandardRestore(target)}
        if any(names):
            items["callbacks"] = ocp.args.StandardRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            raise Damaged(f"orbax cannot read it: {type(e).__name__}: {e}") from None
        arrays = restored["arrays"]
        states = restored["callbacks"] if any(names) else {}
        sums = meta["checksums"]
        for got, want, what in (
            (arrays, sums["arrays"], "an array"),
            (states, sums["callbacks"], "a callback's counters"),
        ):
            got = array_checksums(got)
            if len(got) != len(want) or any(
                a != b for a, b in zip(got, want, strict=True) if None not in (a, b)
            ):
                raise Damaged(f"{what} differs from what was written (checksum)")
        if key_data is not None and not np.array_equal(arrays["key"], key_data):
            raise ValueError(
                f"{fn}: key must be the key of the checkpointed run ({where}), got another one"
            )
        tree, trees = jax.tree.structure(average), ("params", "opt_state", "average")
        return {
            "params": jax.tree.unflatten(jax.tree.structure(params), arrays["params"]),
            "opt_state": jax.tree.unflatten(jax.tree.structure(opt_state), arrays["opt_state"]),
            "callbacks": {n: states[str(i)] for i, n in enumerate(names) if n is not None},
            "average": None if average is None else jax.tree.unflatten(tree, arrays["average"]),
            **{k: meta[k] for k in meta if k not in (*trees, "callbacks")},
        }

    def close(self) -> None:
        """Closes the checkpoint manager and releases the directory's lock."""
        try:
            self.manager.close()
        finally:
            self.lock.release()
