"""The epoch loop of ``fit``: history, warnings, callbacks, checkpoints and resume.

The compiled work of an epoch is a function ``run(epoch, params, opt_state) -> (params,
opt_state, loss, metrics, steps, dropped)`` (the in-memory program or the streamed groups);
everything here happens on the host between two epochs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gradx import callbacks as _callbacks
from gradx._training import averaging as _averaging
from gradx._training import identity as _identity
from gradx._training.inputs import check_int, fresh_copy, mismatch


@dataclasses.dataclass(frozen=True)
class Options:
    """fit's arguments for long runs, checked."""

    callbacks: tuple[Any, ...] = ()
    checkpoint_dir: Any = None
    checkpoint_every: int = 1
    resume: bool = False
    initial_epoch: int = 0
    skip_nonfinite: bool = False


def options(
    fn: str,
    *,
    epochs: int,
    callbacks: Sequence[Any] | None,
    checkpoint_dir: Any,
    checkpoint_every: int,
    resume: bool,
    initial_epoch: int,
    skip_nonfinite: bool,
) -> Options:
    initial_epoch = check_int(fn, "initial_epoch", initial_epoch, 0)
    if initial_epoch >= epochs:
        raise ValueError(
            f"{fn}: initial_epoch must be < epochs (epochs is the index to stop at, as in "
            f"Keras: initial_epoch=2, epochs=4 runs epochs 2 and 3), got initial_epoch="
            f"{initial_epoch} with epochs={epochs}"
        )
    checkpoint_every = check_int(fn, "checkpoint_every", checkpoint_every, 1)
    if resume and checkpoint_dir is None:
        raise ValueError(f"{fn}: resume=True needs checkpoint_dir, got checkpoint_dir=None")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"{fn}: checkpoint_dir must be a directory's path (a str or os.PathLike) or None, "
            f"got {checkpoint_dir!r}"
        )
    if callbacks is not None and (
        isinstance(callbacks, (str, type)) or not isinstance(callbacks, Iterable)
        or callable(callbacks) or hasattr(callbacks, "on_epoch_end")
    ):  # fmt: skip
        raise TypeError(
            f"{fn}: callbacks must be a list of callbacks (callbacks=[...]), got {callbacks!r}"
        )
    callbacks = () if callbacks is None else tuple(callbacks)
    for cb in callbacks:
        if isinstance(cb, type):  # the class, as in callbacks=[EarlyStopping]
            raise TypeError(
                f"{fn}: callbacks must be functions (epoch, logs, params, opt_state) or "
                f"callback objects, got the class {cb.__name__}; instantiate it: "
                f"{cb.__name__}(...)"
            )
        if not (callable(cb) or hasattr(cb, "on_epoch_end")):
            raise ValueError(
                f"{fn}: callbacks must be functions (epoch, logs, params, opt_state) or "
                f"gradx.callbacks.Callback objects, got {cb!r}"
            )
    return Options(
        callbacks, checkpoint_dir, checkpoint_every, resume, initial_epoch, skip_nonfinite
    )


@jax.jit
def _finite(tree: Any) -> jax.Array:
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def _all_finite(params: Any) -> bool:
    """Whether every params array is finite: one compiled reduction, one bool to the host."""
    return bool(_finite(params))


def _hook(cb: Any, name: str) -> Callable[..., Any] | None:
    if name == "on_epoch_end" and not hasattr(cb, "on_epoch_end"):
        return cb  # a plain function
    return getattr(cb, name, None)


def _apply(fn: str, cb: Any, action: Any, params: Any, opt_state: Any) -> tuple[Any, Any, bool]:
    """``action`` applied to (params, opt_state), each checked against the one it replaces.

    What it replaces them with is copied: the next epoch's program donates them, and the
    callback may have returned arrays that its caller keeps, or one array in two places."""
    if action is None:
        return params, opt_state, False
    if not isinstance(action, _callbacks.Action):
        raise ValueError(
            f"{fn}: a callback must return None or gradx.callbacks.Action, got {action!r}"
        )
    for name, new, old in (
        ("params", action.params, params),
        ("opt_state", action.opt_state, opt_state),
    ):
        diff = None if new is None else mismatch(new, old)
        if diff is not None:
            raise ValueError(
                f"{fn}: callback {cb!r} returned Action({name}=...), which must match the "
                f"structure, shapes and dtypes of the {name} it replaces; first difference "
                f"(returned vs current): {diff}"
            )
    new_params, new_state = fresh_copy((action.params, action.opt_state))  # None: no leaves
    params = params if action.params is None else new_params
    opt_state = opt_state if action.opt_state is None else new_state
    return params, opt_state, bool(action.stop)


def run(
    fn: str,
    run_epoch: Callable[[int, Any, Any], tuple],
    params: Any,
    opt_state: Any,
    *,
    key: Any,
    epochs: int,
    opts: Options,
    bar_factory: Callable[[int], Any],
    postfix: Callable[[float, dict[str, float]], dict[str, str]],
    counts: dict[str, Any],
    view: Any = None,
    overwrite: bool = False,
    run_info: dict[str, Any] | None = None,
    average: Any = None,
) -> tuple[Any, Any, dict[str, list[float]], list[float], int, int]:
    """The epochs ``opts.initial_epoch`` (or the checkpoint's) to ``epochs - 1``.

    ``view``: when the epochs run a packed optimizer (:class:`gradx._tools.flat_packing.Packing`),
    its ``unpack``/``pack`` give callbacks and checkpoints the state in the user's layout.
    ``overwrite``: fit's argument (see :mod:`gradx.checkpoint`); ``run_info``: what else tells this
    run from another in a checkpoint (``*data``: described by shape and dtype). ``average``:
    a :class:`gradx._training.averaging.Holder` whose average (fit's ``ema``), kept up to date
    by ``run_epoch``, is checkpointed and restored with the params.

    Returns (params, opt_state, history, epoch seconds, steps per epoch, dropped per epoch).
    """
    history: dict[str, list[float]] = {"loss": []}
    seconds: list[float] = []
    step_count, stopped, start = 0, False, opts.initial_epoch
    counts["initial_epoch"] = opts.initial_epoch  # recorded: see _check_resume
    for cb in opts.callbacks:
        hook = _hook(cb, "on_train_begin")
        if hook is not None:
            hook()
    checkpointer = _open(fn, opts, overwrite)
    try:
        if checkpointer is not None:
            template = opt_state if view is None else view.unpack(opt_state)
            checkpointer.identity = _identity.identity(
                params, template, opts.callbacks,
                {**(run_info or {}), "skip_nonfinite": opts.skip_nonfinite},
            )  # fmt: skip
            restored = checkpointer.start(
                resume=opts.resume, overwrite=overwrite, params=params, opt_state=template,
                key=key, average=None if average is None else average.average,
            )  # fmt: skip
            if restored is not None:
                _check_resume(fn, restored, epochs, opts)
                params, opt_state = restored["params"], restored["opt_state"]
                if restored.get("average") is not None:
                    average.average = restored["average"]
                if view is not None:
                    opt_state = view.pack(opt_state)
                history = {k: list(v) for k, v in restored["history"].items()}
                seconds = list(restored["epoch_seconds"])
                start, step_count = restored["epochs_done"], restored["step"]
                stopped = restored["stopped"]
                for name in counts:  # those an older checkpoint lacks keep this run's
                    if name in restored:
                        counts[name] = restored[name]
                names = _identity.callback_names(opts.callbacks)
                for cb, name in zip(opts.callbacks, names, strict=True):
                    if name in restored["callbacks"]:
                        cb.set_state(restored["callbacks"][name])
        params, opt_state, history, seconds = _epochs(
            fn, run_epoch, params, opt_state, key, epochs, opts, bar_factory, postfix,
            checkpointer, history, seconds, start, step_count, stopped, counts, view, average,
        )  # fmt: skip
    finally:
        if checkpointer is not None:
            checkpointer.close()
    for cb in opts.callbacks:
        hook = _hook(cb, "on_train_end")
        if hook is not None:
            params, opt_state, _ = _call(fn, cb, view, params, opt_state, hook, average=average)
    return (
        params,
        opt_state,
        history,
        seconds,
        counts["steps_per_epoch"],
        counts["dropped_per_epoch"],
    )


def _open(fn: str, opts: Options, overwrite: bool) -> Any:
    """The checkpointer of ``opts.checkpoint_dir`` (holding its lock), or None."""
    if opts.checkpoint_dir is None:
        if overwrite:
            raise ValueError(f"{fn}: overwrite=True needs checkpoint_dir, got checkpoint_dir=None")
        return None
    if overwrite and opts.resume:
        raise ValueError(
            f"{fn}: overwrite=True deletes the checkpoints to start afresh and resume=True "
            "continues from them: pass one of them, got both"
        )
    from gradx.checkpoint import Checkpointer

    return Checkpointer(fn, opts.checkpoint_dir, opts.checkpoint_every)


def _check_resume(fn: str, restored: dict[str, Any], epochs: int, opts: Options) -> None:
    # The checkpoint sets the epoch. 0, or the epoch its run started at (so that the same
    # call, run again after a crash, resumes); a checkpoint from before gradx recorded it
    # was started at 0.
    started = restored.get("initial_epoch", 0)
    if opts.initial_epoch not in (0, started):
        raise ValueError(
            f"{fn}: initial_epoch must be 0 or {started} (the epoch the checkpoint's run "
            f"started at) when resume=True finds a checkpoint, which sets the epoch; got "
            f"{opts.initial_epoch}"
        )
    if restored["epochs_done"] > epochs:
        raise ValueError(
            f"{fn}: epochs must be >= the {restored['epochs_done']} epochs of the "
            f"checkpoint to resume, got {epochs}"
        )


def _layout_free(cb: Any, opt_state: Any) -> bool:
    """Whether ``cb`` gets the packed state as it is: gradx's own callbacks read only the
    hyperparameters (set_hyperparams finds them in any layout) and the params, except an
    EarlyStopping that keeps the state (Schedule-Free's), which checkpoints hold in the
    optimizer's own layout. A subclass may read more."""
    if type(cb) is _callbacks.EarlyStopping:
        return not cb.keeps_state(opt_state)
    return type(cb) is _callbacks.ReduceLROnPlateau


def _gets_average(cb: Any, average: Any) -> bool:
    """Whether ``cb`` gets fit's average beside the state (``WithAverage``): an EarlyStopping
    restoring the best epoch's model, which includes its average."""
    return (
        isinstance(cb, _callbacks.EarlyStopping)
        and cb.restore_best_weights
        and average is not None
        and average.average is not None
    )


def _rebuilt(tree: Any) -> Any:
    """``tree`` with new containers around the same arrays: a callback that changes a dict
    of it in place (``state.hyperparams[...] = ...``) changes nothing in fit."""
    return jax.tree.map(lambda x: x, tree)


def _call(fn: str, cb: Any, view: Any, params: Any, opt_state: Any, hook, *args: Any, average=None):
    """``hook(*args, params, state)`` with the state in the user's layout (fresh containers
    in every layout: in-place changes are ignored), and its action applied: (params,
    opt_state, stop). ``average``: fit's :class:`gradx._training.averaging.Holder`, whose
    average an EarlyStopping restoring the best weights gets beside the state, and may
    replace."""
    packed = view is not None and not _layout_free(cb, opt_state)
    given = view.unpack(opt_state) if packed else _rebuilt(opt_state)
    joined = _gets_average(cb, average)
    if joined:
        given = _averaging.join(given, average.average)
    action = hook(*args, _rebuilt(params), given)
    params, new, stop = _apply(fn, cb, action, params, given)
    if action is None or action.opt_state is None:
        return params, opt_state, stop
    if joined:
        new, average.average = _averaging.split(new)
    return params, (view.pack(new) if packed else new), stop


def _epochs(
    fn, run_epoch, params, opt_state, key, epochs, opts, bar_factory, postfix,
    checkpointer, history, seconds, start, step_count, stopped, counts, view, average=None,
):  # fmt: skip
    warned = False
    if checkpointer is not None:
        from gradx._training.identity import callback_names

        names = callback_names(opts.callbacks)
    bar = bar_factory(max(epochs - start, 0)) if not stopped else None
    try:
        for epoch in range(start, epochs):
            if stopped:
                break
            t0 = time.perf_counter()
            params, opt_state, loss, metrics, steps, dropped = run_epoch(epoch, params, opt_state)
            loss, metrics = float(loss), {k: float(v) for k, v in metrics.items()}
            seconds.append(time.perf_counter() - t0)
            counts["steps_per_epoch"], counts["dropped_per_epoch"] = steps, dropped
            step_count += steps
            history["loss"].append(loss)
            for name, value in metrics.items():
                history.setdefault(name, []).append(value)
            if not (warned or opts.skip_nonfinite or math.isfinite(loss)):
                warnings.warn(
                    f"{fn}: the training loss of epoch {epoch} is {loss} (non-finite); "
                    "pass skip_nonfinite=True to skip the steps whose loss or gradients are "
                    "not finite",
                    RuntimeWarning,
                    stacklevel=4,
                )
                warned = True
            if not (warned or opts.skip_nonfinite or _all_finite(params)):
                warnings.warn(
                    f"{fn}: the params after epoch {epoch} are not finite, though its mean "
                    f"training loss is {loss} (a non-finite gradient or update in a late "
                    "step); pass skip_nonfinite=True to skip the steps whose loss or "
                    "gradients are not finite",
                    RuntimeWarning,
                    stacklevel=4,
                )
                warned = True
            if bar is not None:
                bar.set_postfix(postfix(loss, metrics), refresh=False)
                bar.update()
            logs = {"loss": loss, **metrics}
            for cb in opts.callbacks:
                hook = _hook(cb, "on_epoch_end")
                params, opt_state, stop = _call(
                    fn, cb, view, params, opt_state, hook, epoch, dict(logs), average=average
                )
                stopped = stopped or stop
            if checkpointer is not None and checkpointer.due(
                epoch + 1, last=stopped or epoch + 1 == epochs
            ):
                checkpointer.save(
                    epochs_done=epoch + 1,
                    step=step_count,
                    params=params,
                    opt_state=opt_state if view is None else view.unpack(opt_state),
                    key=key,
                    history=history,
                    seconds=seconds,
                    stopped=stopped,
                    plan=dict(counts),
                    average=None if average is None else average.average,
                    callbacks=[
                        (name, cb.get_state())
                        for cb, name in zip(opts.callbacks, names, strict=True)
                        if name is not None
                    ],
                )
    finally:
        if bar is not None:
            bar.close()
    return params, opt_state, history, seconds
