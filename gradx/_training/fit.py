"""Training loops: ``fit`` one model, ``sweep`` one model per point of a hyperparameter grid.

The data regimes of the seeds are one argument, ``batch_size``:

* ``None``: full-batch gradient descent, one step per epoch on all N examples (seed 001's
  ∂J/∂θ = (1/N) Σᵢ ∂ℓᵢ/∂θ); the data is not shuffled, the order cannot matter.
* ``1``: stochastic gradient descent, N steps per epoch on one example each (seed 004's ∇L_s).
* ``B``: minibatch SGD, ⌊N/B⌋ steps per epoch on B examples each (seed 004's ∇L_b).

Every epoch draws a fresh permutation of the N examples,
``jax.random.permutation(jax.random.fold_in(key, epoch), N)``, and cuts it into ⌊N/B⌋
minibatches. **Remainder policy**: the last N mod B examples of each permutation are
dropped, so every step sees a batch of exactly B examples (one compiled step shape, and
each step's gradient has the same variance σ²/B, as in seed 001's noise-ball analysis).
Because the permutation changes every epoch, a dropped example is dropped only in that
epoch. :class:`FitResult` reports ``steps_per_epoch`` and ``dropped_per_epoch``; choose B
dividing N to drop nothing.

**Gradient accumulation** (``accumulate=A``): a step averages A consecutive minibatches (a
window, see ``gradx._training.accumulate``), so ⌊N/(A·B)⌋ steps run per epoch and the
N mod A·B examples left over are dropped, the same as ``batch_size=A·B`` drops.

Data is any pytree of arrays with one leading example axis of length N (``(x, y)``,
``{"image": x, "label": y}``, ...). ``loss_fn(params, batch)`` always receives a batch with
that leading axis, of length B (length 1 for SGD, N for full batch).

Compilation: one program per epoch: a ``lax.scan`` over the minibatches, with params and
optimizer state donated so each epoch updates them in place. The program is cached by the
shapes and by what the functions compute: two gradx optimizers built by the same constructor
with different numbers (``gradx.sgd(0.1)``, ``gradx.sgd(0.3)``) share one compiled program,
because their numbers live in the state. (optax's optimizers close over their numbers, so
each new value is a new program.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from gradx._tools.schedule_free_eval import evaluation_point
from gradx._training import accumulate as _accumulate
from gradx._training import averaging as _averaging
from gradx._training import identity as _identity
from gradx._training import loop as _loop
from gradx._training import mesh as _mesh
from gradx._training import stream as _stream
from gradx._training.inputs import (
    check_eval,
    check_flag,
    check_function,
    check_int,
    check_key,
    check_opt_state,
    check_optimizer,
    prepare_data,
    steps_and_dropped,
)
from gradx._training.packing import start_optimizer
from gradx._training.program import EvalFn, LossFn, Program, minibatch_indices, run_epoch_program
from gradx._training.results import FitResult
from gradx.callbacks import ReduceLROnPlateau


def progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        return None
    return tqdm(total=total, desc=desc, unit="epoch", leave=True)


def progress_postfix(loss: float, metrics: Mapping[str, float]) -> dict[str, str]:
    return {"loss": f"{loss:.4g}", **{k: f"{v:.4g}" for k, v in metrics.items()}}


def fit(
    loss_fn: LossFn,
    params: Any,
    optimizer: optax.GradientTransformation,
    data: Any,
    *,
    batch_size: int | None,
    epochs: int,
    key: jax.Array | None,
    eval_fn: EvalFn | None = None,
    eval_data: Any = None,
    opt_state: Any = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    shard_params: Any = None,
    has_aux: bool = False,
    skip_nonfinite: bool = False,
    diagnostics: bool = False,
    callbacks: Sequence[Any] | None = None,
    checkpoint_dir: Any = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    steps_per_execution: int | None = None,
    flat: bool | None = None,
    overwrite: bool = False,
    accumulate: int = 1,
    ema: float | None = None,
    eval_on: str = "params",
) -> FitResult:
    """Trains ``params`` on ``data`` for ``epochs`` epochs; one compiled program per epoch.

    Each step, on a minibatch b of B examples::

        ℓ, g = value_and_grad(loss_fn)(θ, b)
        u, s = optimizer.update(g, s, θ, value=ℓ)
        θ ← θ + u

    ``value=ℓ`` is the loss at the params where g was taken, for loss-aware transforms
    (lookahead with a fitted step, line searches, reduce-on-plateau); optimizers that take
    no extra arguments never see it. See the module docstring for the data regimes, the
    per-epoch shuffle and the remainder policy (the last N mod B examples of each epoch's
    permutation are dropped).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; ``batch`` has the structure of ``data``
        and a leading axis of length B.
      params: the initial params, any pytree of arrays. They are copied, not consumed.
      optimizer: any optax transformation (gradx or optax), built: ``gradx.adam(1e-3)``
        (``gradx.adam`` or ``"adam"`` is refused; ``gradx.OPTIMIZERS[name]`` builds by name).
      data: pytree of arrays with a leading example axis of length N: a tuple ``(x, y)``,
        a dict, or a list of arrays ``[x1, x2]`` (Keras's multi-input form). A list whose
        elements are all tuples, lists or dicts, ``[(x, y), (x, y), ...]``, reads as a list
        of batches and is refused (as one pytree its leaves would all be examples and
        ``loss_fn`` would see the list): join them into one pytree, or stream them with
        ``data=lambda epoch: batches``.
      batch_size: ``None`` (full batch), 1 (SGD) or B in [1, N] (minibatch).
      epochs: number of passes over the data, >= 1.
      key: JAX PRNG key for the shuffles; epoch e uses ``fold_in(key, e)``. May be None
        only with ``batch_size=None``.
      eval_fn: optional ``eval_fn(params, eval_data) -> scalar or {name: scalar}``, run at
        the end of each epoch inside the epoch's program. A scalar is recorded as
        ``"eval"``; the name ``"loss"`` is reserved for the training loss. With a
        Schedule-Free optimizer (``gradx.schedule_free_adamw``, its state anywhere in the
        optimizer's) it sees the average x, ``gradx.schedule_free_eval_params(opt_state,
        params)``, not the params y the gradients are taken at.
      eval_data: any pytree of numeric arrays passed to ``eval_fn``; defaults to ``data``.
      opt_state: a state to start from instead of ``optimizer.init(params)``, with its
        structure, shapes and dtypes, e.g. one with hyperparameters set by
        ``gradx.set_hyperparams``, or the state of an earlier fit.
      progress: show a tqdm progress bar advancing once per epoch, with the loss and metrics.
      mesh: a ``jax.sharding.Mesh`` to train data-parallel on: every minibatch is split
        over the mesh's first axis (B must be divisible by its size) and the gradient is
        all-reduced by the partitioner. Params and state are replicated unless
        ``shard_params`` says otherwise; state leaves follow their params, scalars are
        replicated. With several processes (``jax.distributed.initialize``) each passes
        its own examples as ``data``: the data is their concatenation in process order.
        Results come back on ``mesh``. Same numbers as on one device (to rounding).
      shard_params: with ``mesh``: a pytree of ``PartitionSpec`` (or None) with the
        structure of params, or ``rule(path, shape) -> PartitionSpec``, e.g.
        ``gradx.fsdp(mesh)`` (every matrix split along its largest divisible axis).
      has_aux: ``loss_fn`` returns ``(loss, aux)``, aux a dict of scalars; each is averaged
        over the epoch's steps into ``history[name]``, like the loss.
      skip_nonfinite: skip every step whose loss or gradients are not finite: its params
        and optimizer state stay as they were (any optimizer). ``history["skipped"]``
        counts the skipped steps; the epoch's loss (and aux) is the mean over the steps
        taken. Without it, the first epoch whose loss is not finite warns, once.
      diagnostics: also record, per epoch, inside the epoch's program (no extra transfer),
        of the epoch's *last* step: ``history["grad_norm"]``, ``["update_norm"]`` and
        ``["update_ratio"]``, the global L2 norms ‖g‖, ‖u‖ and ‖u‖/‖θ‖ (θ after the step, so
        params starting at 0 give a finite ratio), and ``history["alpha_q10"]``,
        ``["alpha_q50"]``, ``["alpha_q90"]``, the 10/50/90% quantiles over all coordinates
        of the effective learning rate α_ef (:func:`gradx.effective_learning_rate`, which
        must know the optimizer: gradx's do, a bare optax one is refused). The last step
        runs after the scan of the others, which pay nothing (if ``skip_nonfinite`` skipped
        it, its gradient norm shows why and its update is 0). Off, the program is the one
        compiled without it. In-memory data only.
      callbacks: functions ``(epoch, logs, params, opt_state)`` or
        :class:`gradx.callbacks.Callback` objects (``EarlyStopping``,
        ``ReduceLROnPlateau``), called after each epoch; they may change the params or the
        state, by returning an ``Action`` checked against them (in-place changes are
        ignored), and stop training (see :mod:`gradx.callbacks`).
        ``EarlyStopping(restore_best_weights=True)`` returns the model its monitor scored:
        the best epoch's params, with ``ema`` its average (``ema_params``) too, with a
        Schedule-Free optimizer its state too (so that ``params`` is the x it scored).
      checkpoint_dir: a directory to write checkpoints to with orbax-checkpoint (params,
        state, epoch, step, key, history, callback counters; see
        :mod:`gradx.checkpoint`), after every ``checkpoint_every`` epochs and the last. It
        holds one run's checkpoints (each records which run wrote it, with checksums) and
        a lock file: while fit runs, another fit writing it gets an error. A fresh fit
        into a directory holding checkpoints refuses unless ``overwrite=True``.
      checkpoint_every: epochs between checkpoints, >= 1.
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if there is one
        (else start afresh); the result is the uninterrupted run's, bit for bit. The
        returned history includes the checkpointed epochs. Refuses a checkpoint of another
        run (another optimizer, hyperparameters, data, batch size, key, initial params or
        callbacks; more ``epochs`` extend the run); skips a damaged one with a warning,
        moves it to ``checkpoint_dir/damaged/`` (never deleted) and resumes from the newest
        intact one.
      initial_epoch: the index of the first epoch to run, as in Keras: ``epochs`` is the
        index to stop at, and epoch e shuffles with ``fold_in(key, e)``, so
        ``fit(..., epochs=2)`` then ``fit(result.train_params, opt_state=result.opt_state,
        initial_epoch=2, epochs=4)`` equals ``fit(..., epochs=4)`` (``train_params`` is
        ``params`` except with Schedule-Free).
      steps_per_epoch: streamed data only: take this many batches per epoch (needed to
        cut a one-shot iterator into several epochs); with ``accumulate=A``, this many steps
        of A batches.
      steps_per_execution: streamed data only: S, the steps run per compiled call (one
        ``lax.scan`` over S stacked batches), >= 1; ``None`` (default): 16.
      flat: run the optimizer packed, as :func:`gradx.flat` does: its moments in a few
        buffers per dtype instead of one array per leaf, so a step is a few kernels instead
        of a few per leaf. ``None`` (default): whenever it can and there is something to
        pack: a gradx optimizer built from numbers and flags (gradx's own, without a
        weight-decay ``mask``; ``lookahead`` of one), params with at least two leaves of one
        dtype of at most 1,024 elements on one device, no ``mesh``, no ``diagnostics``;
        bigger leaves keep buffers of their own (in the scanned epoch, packing them costs
        more passes over memory than it saves in kernels: 1.3× per step at 2,048 elements on
        CPU). ``False``: never; ``True``: raise where it cannot. The numbers are the
        per-leaf ones (bit for bit in 22 of the 23 rows of the optimizer table, within 3
        ulps in the other), and ``opt_state`` (given and returned), callbacks that read the
        state and checkpoints see the optimizer's own layout (moved on the host, once per
        fit and per use). On CPU the digits network's first epoch (6 leaves, Adam) takes
        about 0.7× the time of the leaf-by-leaf one; 200 leaves of 512 step in 0.77× the
        time. int8 moments (``state_dtype="int8"``) run leaf by leaf (their blocks are a
        leaf's); bfloat16 moments rounded stochastically run packed, with other draws.
      overwrite: with ``checkpoint_dir`` and ``resume=False``: delete the checkpoints it
        holds before the first epoch, instead of refusing to start.
      accumulate: A >= 1, gradient accumulation: each optimizer step averages the loss and
        gradient of A micro-batches of ``batch_size`` examples, all taken at the same params
        (one scan whose carry is one params-sized gradient sum), so B=8 with A=4 equals
        ``batch_size=32`` on the same key (the same shuffle) to float rounding, for any
        optimizer, *provided the loss is a mean over its batch* (a summed loss gets 1/A of the
        big batch's). A step is a window of A micro-batches everywhere: the optimizer's step
        count, ``steps_per_epoch`` (argument and result), ``history["skipped"]`` (a window
        with any non-finite micro-batch is skipped whole), callbacks and ``diagnostics`` (the
        last window's mean gradient). The minibatches (or full streamed batches) of an epoch
        that do not fill a last window are dropped and counted in ``dropped_per_epoch``, never
        averaged over fewer than A: in memory an epoch drops the N mod A·B examples that
        ``batch_size=A·B`` drops. Windows never span two epochs, so checkpoints and resume
        stay exact. Needs a ``batch_size`` in memory.
      ema: None, or the decay d in [0, 1] of an exponential moving average of the params,
        updated after every optimizer step (one per window) inside the compiled epoch:
        ``ema ← d·ema + (1−d)·θ``, the first step copying θ (Keras's ``use_ema=True,
        ema_momentum=d``, whose momentum is 0 at the first step, and torch's
        ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))`` updated after each
        step: the same average, to rounding); a step skipped by ``skip_nonfinite`` leaves it
        as it is. It is one params-sized buffer (the params' dtypes, computed in float32 at
        least), sharded like the params on a mesh, checkpointed and resumed exactly, and
        returned as ``FitResult.ema_params``; the params and the state are the optimizer's
        own, as without it. Unlike Keras, fit never overwrites the params with the average
        (no ``ema_overwrite_frequency``, no overwrite at the end): use ``ema_params``. A fit
        continued with ``initial_epoch`` starts its average afresh from the params it is
        given (``resume=True`` continues one). A Schedule-Free optimizer, which averages
        its iterates itself (``params`` is that average), refuses it.
      eval_on: ``"params"`` (default, as Keras evaluates during ``fit`` with ``use_ema``):
        ``eval_fn`` evaluates the trained params; ``"ema"``: it evaluates the moving average
        instead (needs ``ema`` and ``eval_fn``), so its metrics, callbacks monitoring them and
        the progress bar follow the average.

    Streamed data: ``data`` may also be an iterable of batches (a generator, a loader, or a
    callable ``data(epoch)`` returning one: it must take the epoch, so a generator function
    ``gen`` of no arguments is passed as ``gen()`` or ``lambda epoch: gen()``); see
    ``gradx._training.stream`` for what an epoch is, and the short-batch policy (a batch smaller
    than B is dropped and counted in ``dropped_per_epoch``). Then ``batch_size`` is None
    (B is the first batch's size) or B, ``key`` may be None, ``eval_fn`` needs
    ``eval_data``, and ``steps_per_epoch`` and ``dropped_per_epoch`` of the result are the
    last epoch's.

    Returns:
      A :class:`FitResult` with ``params``, ``opt_state``, ``history``, ``epoch_seconds``,
      ``steps_per_epoch``, ``dropped_per_epoch``, ``ema_params`` and ``train_params``. With a
      Schedule-Free optimizer ``params`` is the average x (where it evaluates, as ``eval_fn`` saw
      it) and ``train_params`` the y training continues from; checkpoints hold y and the state,
      so a resumed run is the uninterrupted one. Otherwise the two are the same params.

    Examples:
      Fit y = 3x with a 1×1 linear model:

      >>> import jax, jax.numpy as jnp, gradx
      >>> x = jnp.linspace(-1.0, 1.0, 32)[:, None]
      >>> y = 3.0 * x
      >>> def loss_fn(params, batch):
      ...     xb, yb = batch
      ...     return gradx.losses.mse(xb @ params["w"], yb)
      >>> result = gradx.fit(
      ...     loss_fn, {"w": jnp.zeros((1, 1))}, gradx.adam(0.1), (x, y),
      ...     batch_size=8, epochs=20, key=jax.random.key(0), progress=False,
      ... )
      >>> result.history["loss"].shape, result.steps_per_epoch
      ((20,), 4)
      >>> round(float(result.params["w"][0, 0]), 1)
      3.0
    """
    check_function("fit", "loss_fn", loss_fn)
    check_optimizer("fit", optimizer)
    eval_data = check_eval("fit", eval_fn, eval_data, None)
    opt_state = check_opt_state("fit", optimizer, params, opt_state)
    if _stream.is_stream(data) and diagnostics:
        raise ValueError(
            "fit: diagnostics=True works with in-memory data (arrays), got a stream of batches"
        )
    progress = check_flag("fit", "progress", progress)
    has_aux = check_flag("fit", "has_aux", has_aux)
    skip_nonfinite = check_flag("fit", "skip_nonfinite", skip_nonfinite)
    resume = check_flag("fit", "resume", resume)
    overwrite = check_flag("fit", "overwrite", overwrite)
    accumulate = _accumulate.check_accumulate("fit", accumulate)
    ema = _averaging.check_ema("fit", ema)
    eval_average = _averaging.check_eval_on("fit", eval_on, ema, eval_fn)
    if _stream.is_stream(data):
        return _stream.fit_stream(
            loss_fn, params, optimizer, data, batch_size=batch_size, epochs=epochs, key=key,
            eval_fn=eval_fn, eval_data=eval_data, opt_state=opt_state, progress=progress,
            mesh=mesh, shard_params=shard_params, has_aux=has_aux,
            skip_nonfinite=skip_nonfinite, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, resume=resume, initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch, steps_per_execution=steps_per_execution,
            flat=flat, overwrite=overwrite, accumulate=accumulate, ema=ema,
            eval_average=eval_average,
        )  # fmt: skip
    if steps_per_epoch is not None:
        raise ValueError(
            f"fit: steps_per_epoch is for streamed data (in memory it is N // batch_size), "
            f"got {steps_per_epoch!r}"
        )
    if steps_per_execution is not None:
        raise ValueError(
            "fit: steps_per_execution is for streamed data (in memory an epoch is one "
            f"compiled call), got {steps_per_execution!r}"
        )
    data, n = prepare_data("fit", "data", data)
    plan, data, n = _mesh.plan_data("fit", mesh, shard_params, params, data, batch_size)
    epochs = check_int("fit", "epochs", epochs, 1)
    _accumulate.check_full_batch("fit", accumulate, batch_size)
    steps, dropped = steps_and_dropped("fit", n, batch_size)
    steps, dropped = _accumulate.window_counts("fit", steps, dropped, batch_size, accumulate)
    key = check_key("fit", key, batch_size)
    if eval_fn is not None:
        eval_data = data if eval_data is None else eval_data  # arrays: check_eval above
    diagnostics = check_flag("fit", "diagnostics", diagnostics)
    arguments = _identity.optimizer_arguments(optimizer) if checkpoint_dir is not None else None
    packing, optimizer, opt_state = start_optimizer(
        "fit", flat, optimizer, params, opt_state, plan, diagnostics
    )
    holder, params, opt_state, plan = _averaging.place(plan, ema, params, opt_state)
    plan = _accumulate.window_plan(plan, accumulate)
    eval_data = _mesh.place_eval(plan, eval_data)
    update = optax.with_extra_args_support(optimizer).update
    program = Program(
        loss_fn, update, eval_fn, batch_size, steps, vmapped=False, plan=plan,
        has_aux=has_aux, skip_nonfinite=skip_nonfinite, diagnostics=diagnostics,
        accumulate=accumulate, eval_average=eval_average,
    )  # fmt: skip
    opts = _loop.options(
        "fit", epochs=epochs, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, resume=resume, initial_epoch=initial_epoch,
        skip_nonfinite=skip_nonfinite,
    )  # fmt: skip

    def run_epoch(epoch, params, opt_state):
        batches = minibatch_indices(program, key, epoch, data)
        params, opt_state, loss, metrics = run_epoch_program(
            program, params, opt_state, data, eval_data, batches
        )
        return params, opt_state, loss, metrics, steps, dropped

    counts = {"steps_per_epoch": steps, "dropped_per_epoch": dropped}
    run_info = {"data": data, "batch_size": batch_size, "eval_data": eval_data}
    run_info["optimizer arguments"] = arguments
    run_info.update(_averaging.identity_extras(accumulate, ema))
    return train_epochs(
        run_epoch, params, opt_state, plan, key, epochs, opts, progress, counts, packing,
        overwrite=overwrite, run_info=run_info, holder=holder,
    )  # fmt: skip


def train_epochs(
    run_epoch, params, opt_state, plan, key, epochs, opts, progress, counts, packing=None,
    *, overwrite=False, run_info=None, holder=None,
) -> FitResult:  # fmt: skip
    """fit's epochs (in memory or streamed): the host loop, then the result on the user's mesh.

    ``run_epoch(epoch, params, opt_state)`` returns ``(params, opt_state, loss, metrics, steps,
    dropped)``; ``counts`` are the steps and dropped examples reported if no epoch runs. With
    ``packing`` (:class:`gradx._tools.flat_packing.Packing`) the epochs run the packed optimizer,
    and callbacks, checkpoints and the result see the state in the user's layout. With a
    ``holder`` of an average (:class:`gradx._training.averaging.Holder`) ``run_epoch`` is
    given and returns the optimizer state alone, and the holder keeps the average.
    """
    holder = _averaging.Holder(None) if holder is None else holder
    run_epoch = _averaging.carried(run_epoch, holder)
    for cb in opts.callbacks:  # before the first epoch, not at the first plateau
        if isinstance(cb, ReduceLROnPlateau):
            cb.check_state("fit", opt_state)
    params, opt_state, history, seconds, steps, dropped = _loop.run(
        "fit", run_epoch, params, opt_state, key=key, epochs=epochs, opts=opts,
        bar_factory=lambda total: progress_bar(progress, total, "fit"), postfix=progress_postfix,
        counts=counts, view=packing, overwrite=overwrite, run_info=run_info, average=holder,
    )  # fmt: skip
    if packing is not None:
        opt_state = packing.unpack(opt_state)
    ema_params = _averaging.handed_out(holder.average, params)
    params, opt_state, ema_params = _mesh.to_user_mesh(plan, (params, opt_state, ema_params))
    return FitResult(
        params=evaluation_point(opt_state, params),  # Schedule-Free: x, from y and z
        opt_state=opt_state,
        history={k: np.asarray(v) for k, v in history.items()},
        epoch_seconds=np.asarray(seconds),
        steps_per_epoch=steps,
        dropped_per_epoch=dropped,
        ema_params=ema_params,
        train_params=params,
    )
