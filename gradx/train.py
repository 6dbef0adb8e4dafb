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

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx import _core, _flat, _gain, _loop, _sharding, _step, _stream
from gradx._core import hyperparams, set_hyperparams
from gradx._loop import _check_int
from gradx.callbacks import ReduceLROnPlateau, metric_mode

__all__ = ["BestPoint", "FitResult", "SweepResult", "fit", "sweep"]

LossFn = Callable[[Any, Any], jax.Array]
EvalFn = Callable[[Any, Any], "jax.Array | Mapping[str, jax.Array]"]


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      params: the trained params.
      opt_state: the optimizer state after the last step.
      history: ``"loss"``: shape ``(epochs,)``, the mean of the minibatch losses of each
        epoch (each at the params before its step, as Keras reports it); one more entry of
        shape ``(epochs,)`` per metric of ``eval_fn``, evaluated at the end of each epoch.
      epoch_seconds: shape ``(epochs,)``, wall time of each epoch (the first includes the
        compilation, unless the program was already compiled).
      steps_per_epoch: ⌊N/B⌋ (1 for full batch).
      dropped_per_epoch: N mod B examples left out of each epoch's permutation.
    """

    params: Any
    opt_state: Any
    history: dict[str, np.ndarray]
    epoch_seconds: np.ndarray
    steps_per_epoch: int
    dropped_per_epoch: int


class BestPoint(NamedTuple):
    """The best grid point of a sweep: its index, its hyperparameters and its score."""

    index: int
    values: dict[str, float]
    score: float


def _best_point(
    fn: str,
    history: Mapping[str, np.ndarray],
    metric: str,
    mode: str,
    values: Mapping[str, np.ndarray],
    none_finite: str,
) -> BestPoint:
    """The row of ``history[metric]`` (shape ``(K, epochs)``) with the best final value.

    NaN and infinite values never win; ties go to the first row. ``values``: ``{name:
    (K,)}``, the hyperparameters reported for each row. ``none_finite`` ends the error when
    no row has a finite final value.
    """
    if metric not in history:
        raise ValueError(f"{fn}: metric must be one of {sorted(history)}, got {metric!r}")
    mode = metric_mode(fn, metric, mode)
    final = np.asarray(history[metric][:, -1], np.float64)
    finite = np.isfinite(final)
    if not finite.any():
        raise ValueError(f"{fn}: history[{metric!r}] must have a finite final value {none_finite}")
    scores = np.where(finite, final if mode == "min" else -final, np.inf)
    index = int(np.argmin(scores))
    return BestPoint(
        index, {name: float(v[index]) for name, v in values.items()}, float(final[index])
    )


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` returns: K trained models, one per grid point, stacked.

    Attributes:
      params: the trained params, every leaf with a leading axis of length K.
      opt_state: the optimizer states, leading axis K.
      history: like :attr:`FitResult.history`, every entry of shape ``(K, epochs)``.
      grid: each swept hyperparameter's value at each point, shape ``(K,)``. Points are the
        Cartesian product of the grid's arrays, the first name varying slowest.
      epoch_seconds: shape ``(chunks, epochs)``, wall time of each chunk's epochs.
      steps_per_epoch, dropped_per_epoch: as in :class:`FitResult`.
    """

    params: Any
    opt_state: Any
    history: dict[str, np.ndarray]
    grid: dict[str, np.ndarray]
    epoch_seconds: np.ndarray
    steps_per_epoch: int
    dropped_per_epoch: int

    def __len__(self) -> int:
        return len(next(iter(self.grid.values())))

    def best(self, metric: str = "loss", mode: str = "auto") -> BestPoint:
        """The point with the best final-epoch value of ``history[metric]``.

        Args:
          metric: a key of :attr:`history` (``"loss"``, or a metric of ``eval_fn``).
          mode: ``"min"``, ``"max"``, or ``"auto"``: read from the name by
            :func:`gradx.callbacks.metric_mode` (``"max"`` for accuracy-like names such as
            ``"val_acc"``, ``"min"`` for loss-like ones such as ``"loss"``; any other name,
            such as fit's ``"eval"``, is refused).

        Returns:
          ``BestPoint(index, values, score)``. Points whose value is NaN or infinite (a
          diverged run) never win; ties go to the first point.
        """
        return _best_point(
            "SweepResult.best",
            self.history,
            metric,
            mode,
            self.grid,
            "at some point, got none (every run diverged)",
        )

    def point(self, index: int) -> FitResult:
        """Grid point ``index`` as a :class:`FitResult` (the run ``fit`` would have made)."""
        if not -len(self) <= index < len(self):
            raise ValueError(f"SweepResult.point: index must be in [0, {len(self)}), got {index}")
        take = functools.partial(jax.tree.map, lambda x: x[index])
        return FitResult(
            params=take(self.params),
            opt_state=take(self.opt_state),
            history={k: v[index] for k, v in self.history.items()},
            epoch_seconds=self.epoch_seconds.sum(axis=0) / self.epoch_seconds.shape[0],
            steps_per_epoch=self.steps_per_epoch,
            dropped_per_epoch=self.dropped_per_epoch,
        )


# ----------------------------------------------------------------------------- the program


class _Program(NamedTuple):
    """The static part of an epoch program: the functions (by identity) and the shapes.

    A gradx optimizer's ``update`` depends only on its static configuration (its numbers are
    in the state), so ``gradx.sgd(0.1)`` and ``gradx.sgd(0.3)`` share one update function and
    one compiled epoch; optax optimizers close over their numbers and compile per value.
    """

    loss_fn: LossFn
    update_fn: Callable[..., Any]
    eval_fn: EvalFn | None
    batch_size: int | None
    steps: int
    vmapped: bool
    plan: Any = None  # _sharding.Plan: where the arrays live on a mesh (None: one device)
    has_aux: bool = False  # loss_fn returns (loss, {name: scalar})
    skip_nonfinite: bool = False  # steps with a non-finite loss or gradient change nothing
    diagnostics: bool = False  # record norms and α_ef quantiles per epoch (gradx._gain)


def _metrics(fn: str, eval_fn: EvalFn, params: Any, eval_data: Any) -> dict[str, jax.Array]:
    out = eval_fn(params, eval_data)
    out = dict(out) if isinstance(out, Mapping) else {"eval": out}
    for name, value in out.items():
        if name == "loss":
            raise ValueError(
                f"{fn}: eval_fn must not return a metric named 'loss' (that is the training "
                "loss), got one; name it e.g. 'eval_loss'"
            )
        if jnp.shape(value) != ():
            raise ValueError(
                f"{fn}: eval_fn must return scalars, got shape {jnp.shape(value)} for {name!r}"
            )
    return out


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _draw_minibatches(key, epoch, n: int, steps: int, batch_size: int) -> jax.Array:
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return order[: steps * batch_size].reshape(steps, batch_size)


def _minibatches(program: _Program, key, epoch: int, data) -> jax.Array | None:
    """The example indices of each step of ``epoch``, shape (steps, B): the permutation
    ``jax.random.permutation(fold_in(key, epoch), N)`` cut into ⌊N/B⌋ rows (None for full
    batch). A program of its own, compiled once per (N, steps, B) in a process and shared by
    every fit, sweep and search (inside the epoch program it cost every new epoch program
    about 0.25 s of compile time on CPU, a third of a small model's first epoch)."""
    if program.batch_size is None:
        return None
    n = jax.tree.leaves(data)[0].shape[0]
    return _draw_minibatches(key, jnp.int32(epoch), n, program.steps, program.batch_size)


def _epoch(program: _Program, params, opt_state, data, eval_data, batches):
    """One epoch of one model: returns (params, opt_state, mean loss, metrics).

    ``batches``: the example indices of each step (:func:`_minibatches`), None for full
    batch."""
    fn = "sweep" if program.vmapped else "fit"
    step = _step.make_step(fn, program._replace(diagnostics=False))  # as the streamed path's
    step = _sharding.constrain_step(program.plan, step)  # on a mesh: batch split, carry put
    # With diagnostics, the epoch's last step runs after the scan and also returns its
    # (grads, params, updates): the other steps pay nothing (a carry of them costs ~10%).
    last_step = _diagnosed(program.plan, _step.make_step(fn, program))
    last = None

    def gather(indices):
        return jax.tree.map(lambda x: x.at[indices].get(mode="promise_in_bounds"), data)

    def indexed(carry, indices):
        return step(carry, gather(indices))

    if program.batch_size is None:
        if program.diagnostics:
            (params, opt_state, last), out = last_step((params, opt_state), data)
        else:
            (params, opt_state), out = step((params, opt_state), data)
        mean_loss, extra = _step.reduce_steps(program, out, stacked=False)
    else:
        if program.diagnostics:
            carry, head = jax.lax.scan(indexed, (params, opt_state), batches[:-1])
            (params, opt_state, last), tail = last_step(carry, gather(batches[-1]))
            out = jax.tree.map(lambda h, t: jnp.concatenate([h, t[None]]), head, tail)
        else:
            (params, opt_state), out = jax.lax.scan(indexed, (params, opt_state), batches)
        mean_loss, extra = _step.reduce_steps(program, out)
    params, opt_state = _sharding.constrain_carry(program.plan, (params, opt_state))
    if last is not None:  # the epoch's last step: its norms and α_ef
        extra = _gain.epoch_diagnostics(fn, program.update_fn, opt_state, *last, extra)
    metrics = {} if program.eval_fn is None else _metrics(fn, program.eval_fn, params, eval_data)
    return params, opt_state, mean_loss, _step.merge(fn, extra, metrics)


def _diagnosed(plan: Any, step: Callable[..., Any]) -> Callable[..., Any]:
    """A diagnostics step (returning the carry ``(params, opt_state, last)``) with the mesh
    constraints of :func:`gradx._sharding.constrain_step` on its batch and its carry."""

    def constrained(carry, batch):
        (params, opt_state, last), out = step(carry, _sharding.constrain_batch(plan, batch))
        return (*_sharding.constrain_carry(plan, (params, opt_state)), last), out

    return constrained


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def _run_epoch(program: _Program, params, opt_state, data, eval_data, batches):
    if program.vmapped:
        # One model per grid point: params and state carry the leading grid axis; data
        # and minibatches are shared, so every point sees the same minibatches.
        one = functools.partial(_epoch, program)
        return jax.vmap(one, in_axes=(0, 0, None, None, None))(
            params, opt_state, data, eval_data, batches
        )
    return _epoch(program, params, opt_state, data, eval_data, batches)


# ----------------------------------------------------------------------------- checks


def _check_flag(fn: str, name: str, value: Any) -> bool:
    _core._check_flag(fn, name, value, "bool")  # the optimizers' check: bool("false") is True
    return bool(value)


def _check_optimizer(fn: str, optimizer: Any) -> None:
    """Raises a TypeError naming the fix unless ``optimizer`` has ``init`` and ``update``."""
    if callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None)):
        return
    want = f"{fn}: optimizer must be an optax GradientTransformation such as gradx.adam(1e-3)"
    if isinstance(optimizer, str):
        raise TypeError(
            f"{want}, got the string {optimizer!r} (gradx.OPTIMIZERS[{optimizer!r}]"
            "(learning_rate) builds one by name)"
        )
    if callable(optimizer):  # a constructor, not called: gradx.adam, optax.sgd
        import gradx

        name = getattr(optimizer, "__name__", None) or type(optimizer).__name__
        owner = next((m for m in (gradx, optax) if getattr(m, name, None) is optimizer), None)
        label = name if owner is None else f"{owner.__name__}.{name}"
        raise TypeError(f"{want}, got the function {label}; call it: {label}(1e-3)")
    raise TypeError(f"{want}, got {optimizer!r}, which has no init and update methods")


_LIST_OF_BATCHES = (
    "{fn}: data must be a pytree of arrays with one leading example axis (a tuple or dict, "
    "e.g. (x, y)), got a list of {count} pytrees, which reads as a list of batches; to "
    "train on them in memory, join them: jax.tree.map(lambda *xs: np.concatenate(xs), "
    "*batches)"
)


def _prepare_data(fn: str, name: str, data: Any) -> tuple[Any, int]:
    # A top-level list of pytrees (tuples, dicts) is a list of batches, not one pytree: as
    # arrays, its leaves would all be examples and loss_fn would see the list. A list of
    # arrays ([x, y], Keras's multi-input form) stays in-memory data.
    if isinstance(data, list) and data and all(isinstance(x, (tuple, list, Mapping)) for x in data):
        message = _LIST_OF_BATCHES.format(fn=fn, count=len(data))
        if fn == "fit":
            message += "; to stream them batch by batch, pass data=lambda epoch: batches"
        raise ValueError(message)
    leaves, treedef = jax.tree.flatten(data)
    if not leaves:
        raise ValueError(f"{fn}: {name} must be a pytree of arrays, got one with no leaves")
    arrays = [jnp.asarray(x) for x in leaves]
    lengths = [a.shape[0] if a.ndim else None for a in arrays]
    if None in lengths or len(set(lengths)) != 1 or lengths[0] == 0:
        shapes = jax.tree.unflatten(treedef, [a.shape for a in arrays])
        raise ValueError(
            f"{fn}: {name} must be arrays with one leading example axis of the same nonzero "
            f"length, got shapes {shapes}"
        )
    return jax.tree.unflatten(treedef, arrays), lengths[0]


def _plan(fn: str, n: int, batch_size: int | None) -> tuple[int, int]:
    if batch_size is None:
        return 1, 0
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"{fn}: batch_size must be None or an integer >= 1, got {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"{fn}: batch_size must be None or an integer in [1, {n}] (the number of "
            f"examples), got {batch_size}"
        )
    return n // batch_size, n % batch_size


def _check_key(fn: str, key: Any, batch_size: int | None) -> Any:
    if key is None:
        if batch_size is None:
            return jax.random.key(0)  # full batch: never used
        raise ValueError(
            f"{fn}: key must be a JAX PRNG key (e.g. jax.random.key(0)) to shuffle "
            f"minibatches, got None"
        )
    is_typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    is_raw = isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32
    if not (is_typed or is_raw) or key.shape not in ((), (2,)):
        raise ValueError(
            f"{fn}: key must be a JAX PRNG key (jax.random.key(0) or jax.random.PRNGKey(0)), "
            f"got {key!r}"
        )
    return key


def _copy(tree: Any) -> Any:
    # The epoch program donates params and state; never hand it the caller's own buffers.
    # (A transfer, in place: an eager jnp.array copy compiles a program per leaf shape, about
    # 10 ms each on CPU.)
    return jax.device_put(tree, may_alias=False)


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        return None
    return tqdm(total=total, desc=desc, unit="epoch", leave=True)


def _postfix(loss: float, metrics: Mapping[str, float]) -> dict[str, str]:
    return {"loss": f"{loss:.4g}", **{k: f"{v:.4g}" for k, v in metrics.items()}}


# ----------------------------------------------------------------------------- fit


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
    steps_per_execution: int = 16,
    flat: bool | None = None,
    overwrite: bool = False,
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
        ``"eval"``; the name ``"loss"`` is reserved for the training loss.
      eval_data: any pytree passed to ``eval_fn``; defaults to ``data``.
      opt_state: a state to start from instead of ``optimizer.init(params)``, e.g. one with
        hyperparameters set by ``gradx.set_hyperparams``, or the state of an earlier fit.
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
        callbacks; more ``epochs`` extend the run); skips a damaged one with a warning and
        resumes from the newest intact one.
      initial_epoch: the index of the first epoch to run, as in Keras: ``epochs`` is the
        index to stop at, and epoch e shuffles with ``fold_in(key, e)``, so
        ``fit(..., epochs=2)`` then ``fit(result.params, opt_state=result.opt_state,
        initial_epoch=2, epochs=4)`` equals ``fit(..., epochs=4)``.
      steps_per_epoch: streamed data only: take this many batches per epoch (needed to
        cut a one-shot iterator into several epochs).
      steps_per_execution: streamed data only: S, the steps run per compiled call (one
        ``lax.scan`` over S stacked batches), >= 1.
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
        time.
      overwrite: with ``checkpoint_dir`` and ``resume=False``: delete the checkpoints it
        holds before the first epoch, instead of refusing to start.

    Streamed data: ``data`` may also be an iterable of batches (a generator, a loader, or a
    callable ``data(epoch)`` returning one: it must take the epoch, so a generator function
    ``gen`` of no arguments is passed as ``gen()`` or ``lambda epoch: gen()``); see
    :mod:`gradx._stream` for what an epoch is, and the short-batch policy (a batch smaller
    than B is dropped and counted in ``dropped_per_epoch``). Then ``batch_size`` is None
    (B is the first batch's size) or B, ``key`` may be None, ``eval_fn`` needs
    ``eval_data``, and ``steps_per_epoch`` and ``dropped_per_epoch`` of the result are the
    last epoch's.

    Returns:
      A :class:`FitResult` with ``params``, ``opt_state``, ``history``, ``epoch_seconds``,
      ``steps_per_epoch`` and ``dropped_per_epoch``.
    """
    _check_optimizer("fit", optimizer)
    if _stream.is_stream(data) and diagnostics:
        raise ValueError(
            "fit: diagnostics=True works with in-memory data (arrays), got a stream of batches"
        )
    has_aux = _check_flag("fit", "has_aux", has_aux)
    skip_nonfinite = _check_flag("fit", "skip_nonfinite", skip_nonfinite)
    resume = _check_flag("fit", "resume", resume)
    overwrite = _check_flag("fit", "overwrite", overwrite)
    if _stream.is_stream(data):
        return _stream.fit_stream(
            loss_fn, params, optimizer, data, batch_size=batch_size, epochs=epochs, key=key,
            eval_fn=eval_fn, eval_data=eval_data, opt_state=opt_state, progress=progress,
            mesh=mesh, shard_params=shard_params, has_aux=has_aux,
            skip_nonfinite=skip_nonfinite, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, resume=resume, initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch, steps_per_execution=steps_per_execution,
            flat=flat, overwrite=overwrite,
        )  # fmt: skip
    if steps_per_epoch is not None:
        raise ValueError(
            f"fit: steps_per_epoch is for streamed data (in memory it is N // batch_size), "
            f"got {steps_per_epoch!r}"
        )
    data, n = _prepare_data("fit", "data", data)
    plan, data, n = _sharding.plan_data("fit", mesh, shard_params, params, data, batch_size)
    epochs = _check_int("fit", "epochs", epochs, 1)
    steps, dropped = _plan("fit", n, batch_size)
    key = _check_key("fit", key, batch_size)
    if eval_fn is not None:
        eval_data = data if eval_data is None else jax.tree.map(jnp.asarray, eval_data)
    diagnostics = _check_flag("fit", "diagnostics", diagnostics)
    packing, optimizer, opt_state = _start(
        "fit", flat, optimizer, params, opt_state, plan, diagnostics
    )
    params, opt_state = _copy((params, opt_state))
    params, opt_state, plan = _sharding.place_fit(plan, params, opt_state)
    eval_data = _sharding.place_eval(plan, eval_data)
    update = optax.with_extra_args_support(optimizer).update
    program = _Program(
        loss_fn, update, eval_fn, batch_size, steps, vmapped=False, plan=plan,
        has_aux=has_aux, skip_nonfinite=skip_nonfinite, diagnostics=diagnostics,
    )  # fmt: skip
    opts = _loop.options(
        "fit", epochs=epochs, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, resume=resume, initial_epoch=initial_epoch,
        skip_nonfinite=skip_nonfinite,
    )  # fmt: skip

    def run_epoch(epoch, params, opt_state):
        batches = _minibatches(program, key, epoch, data)
        params, opt_state, loss, metrics = _run_epoch(
            program, params, opt_state, data, eval_data, batches
        )
        return params, opt_state, loss, metrics, steps, dropped

    counts = {"steps_per_epoch": steps, "dropped_per_epoch": dropped}
    run_info = {"data": data, "batch_size": batch_size, "eval_data": eval_data}
    return _train(
        run_epoch, params, opt_state, plan, key, epochs, opts, progress, counts, packing,
        overwrite=overwrite, run_info=run_info,
    )  # fmt: skip


def _start(fn: str, flat, optimizer, params, opt_state, plan, diagnostics: bool):
    """``(packing, the optimizer to run, its starting state)`` for fit, its streamed path,
    sweep and search: ``optimizer`` packed (:func:`_packing`) when it is, and ``opt_state``
    (the user's, in the optimizer's own layout) packed for it, or its init."""
    if flat is not None:
        flat = _check_flag(fn, "flat", flat)
    packing = _packing(fn, flat, optimizer, params, plan, diagnostics)
    if packing is not None:  # the same numbers, packed: see gradx.flat
        optimizer = packing.optimizer
        if opt_state is not None:
            opt_state = packing.pack(opt_state, fn)
    if opt_state is None:
        opt_state = optimizer.init(params)
    return packing, optimizer, opt_state


def _packing(fn: str, flat: bool | None, optimizer, params, plan, diagnostics: bool):
    """How fit (or sweep, or search) runs ``optimizer`` packed (:func:`gradx._flat.packing`),
    or None: with ``flat=None`` when it can and it pays off, never with ``flat=False``;
    ``flat=True`` raises where it cannot. ``plan``: the mesh plan (or mesh), None on one device."""
    if flat is False:
        return None
    if _flat.is_flat(optimizer):
        return None  # packed already: the user's layout is the packed one
    if plan is not None:
        why = "on a mesh each leaf keeps its own sharding: fit runs leaf by leaf"
    elif diagnostics:
        why = "diagnostics=True reads the state leaf by leaf"
    else:
        packing, why = _flat.packing(optimizer, params)
        if packing is not None:
            return packing
    if flat:
        raise ValueError(f"{fn}: flat=True cannot run this optimizer packed: {why}")
    return None


def _train(
    run_epoch, params, opt_state, plan, key, epochs, opts, progress, counts, packing=None,
    *, overwrite=False, run_info=None,
) -> FitResult:  # fmt: skip
    """fit's epochs (in memory or streamed): the host loop, then the result on the user's mesh.

    ``run_epoch(epoch, params, opt_state)`` returns ``(params, opt_state, loss, metrics,
    steps, dropped)``; ``counts`` are the steps and dropped examples reported if no epoch runs.
    With ``packing`` (:class:`gradx._flat.Packing`) the epochs run the packed optimizer, and
    callbacks, checkpoints and the result see the state in the user's layout.
    """
    for cb in opts.callbacks:  # before the first epoch, not at the first plateau
        if isinstance(cb, ReduceLROnPlateau):
            cb.check_state("fit", opt_state)
    params, opt_state, history, seconds, steps, dropped = _loop.run(
        "fit", run_epoch, params, opt_state, key=key, epochs=epochs, opts=opts,
        bar_factory=lambda total: _progress(progress, total, "fit"), postfix=_postfix,
        counts=counts, view=packing, overwrite=overwrite, run_info=run_info,
    )  # fmt: skip
    if packing is not None:
        opt_state = packing.unpack(opt_state)
    params, opt_state = _sharding.to_user_mesh(plan, (params, opt_state))
    return FitResult(
        params=params,
        opt_state=opt_state,
        history={k: np.asarray(v) for k, v in history.items()},
        epoch_seconds=np.asarray(seconds),
        steps_per_epoch=steps,
        dropped_per_epoch=dropped,
    )


# ----------------------------------------------------------------------------- sweep


def _grid_points(fn: str, grid: Mapping[str, Any], state: Any) -> dict[str, np.ndarray]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(
            f"{fn}: grid must be a non-empty dict of hyperparameter name -> 1-D array, got {grid!r}"
        )
    known = hyperparams(state)
    axes = {}
    for name, values in grid.items():
        if name not in known:
            raise ValueError(
                f"{fn}: grid keys must be hyperparameters of the optimizer's state "
                f"{sorted(known)} (gradx.hyperparams), got {name!r}; sweep needs an optimizer "
                "that keeps its hyperparameters in its state, such as any gradx optimizer"
            )
        array = np.asarray(values)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(
                f"{fn}: grid[{name!r}] must be a non-empty 1-D array, got shape {array.shape}"
            )
        for i, value in enumerate(array):  # the optimizer's own rule for each concrete value
            try:
                set_hyperparams(state, **{name: value.item()})
            except (ValueError, TypeError) as e:
                error = _rule_error(fn, e, {name: f"grid[{name!r}]"}, f" (at index {i})")
                if error is None:
                    error = ValueError(
                        f"{fn}: grid[{name!r}] must hold values the optimizer's state can take, "
                        f"got {value.item()!r} at index {i}: {e}"
                    )
                raise error from None
        axes[name] = array
    mesh = np.meshgrid(*axes.values(), indexing="ij")
    return {name: m.reshape(-1) for name, m in zip(axes, mesh, strict=True)}


def _rule_error(fn: str, error: Exception, where: Mapping[str, str], at: str) -> Exception | None:
    """``error``, raised by ``set_hyperparams`` for a value breaking the optimizer's rule for
    one of the names in ``where``, told as ``fn``'s about that argument: ``"sweep:
    grid['learning_rate'] must be >= 0, got -1.0 (at index 2)"``; None for another error."""
    text = str(error)
    for name, label in where.items():
        own = f"set_hyperparams: {name} must be "
        if text.startswith(own):
            return type(error)(f"{fn}: {label} must be {text[len(own) :]}{at}")
    return None


def sweep(
    loss_fn: LossFn,
    params: Any,
    optimizer: optax.GradientTransformation,
    data: Any,
    grid: Mapping[str, Any],
    *,
    batch_size: int | None,
    epochs: int,
    key: jax.Array | None,
    chunk_size: int | None = None,
    eval_fn: EvalFn | None = None,
    eval_data: Any = None,
    opt_state: Any = None,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    diagnostics: bool = False,
    flat: bool | None = None,
) -> SweepResult:
    """Trains one model per point of a hyperparameter grid, many at once, under ``vmap``.

    ``grid`` maps hyperparameter names (as in ``gradx.hyperparams(state)``) to 1-D arrays;
    their Cartesian product, K points, is swept. Every point starts from the same params
    and state; only its hyperparameters differ, written into the state with
    ``gradx.set_hyperparams`` under ``jax.vmap``, so the optimizer's ``update`` runs batched
    over the K states in one program. All points see the same shuffles (the same ``key``),
    so their histories are comparable, and point k equals ``fit`` with that point's values
    up to float32 rounding: a batched program rounds differently from an unbatched one. In a
    stable run the two agree to about 1e-5 relative (tested at small learning rates over a few
    epochs); at a learning rate where training is chaotic the difference grows until the two
    runs are unrelated (Adam at 0.1 on the digits network: final losses 0.156 and 0.060), as
    any float change, such as another CPU, would make them.

    The progress bar shows the point with the lowest training loss in the last epoch, its
    index and its eval metrics.

    The K points are trained ``chunk_size`` at a time (all at once by default): memory
    grows with the chunk, not with K. The last chunk is padded by repeating its last point,
    so every chunk runs the same compiled program; padded results are discarded.

    Args:
      loss_fn, params, optimizer, data, batch_size, epochs, key, eval_fn, eval_data,
      opt_state, progress: as in :func:`fit`.
      grid: ``{name: 1-D array}``; each value must satisfy the optimizer's rule for it.
      chunk_size: grid points trained together, >= 1, or None for all K.
      mesh: a ``jax.sharding.Mesh``: each chunk's grid axis is split over all its devices
        (population parallel; data replicated). ``chunk_size`` must then be a multiple of
        the device count D; by default one chunk of K rounded up to a multiple of D,
        padded as the last chunk is. One process only.
      diagnostics: record per epoch and per point the norms and α_ef quantiles, as in
        :func:`fit` (each history entry of shape ``(K, epochs)``).
      flat: run the optimizer packed, as :func:`fit` does (same rule, same default; off
        with ``mesh``); the returned ``opt_state`` is in the optimizer's own layout.

    Returns:
      A :class:`SweepResult`: params, states and histories with a leading axis of length K,
      the grid values per point, and ``best(metric, mode)`` to pick a point.
    """
    fn = "sweep"
    _check_optimizer(fn, optimizer)
    data, n = _prepare_data(fn, "data", data)
    epochs = _check_int(fn, "epochs", epochs, 1)
    steps, dropped = _plan(fn, n, batch_size)
    key = _check_key(fn, key, batch_size)
    if eval_fn is not None:
        eval_data = data if eval_data is None else jax.tree.map(jnp.asarray, eval_data)
    diagnostics = _check_flag(fn, "diagnostics", diagnostics)
    packing, optimizer, state0 = _start(fn, flat, optimizer, params, opt_state, mesh, diagnostics)
    points = _grid_points(fn, grid, state0)
    k = len(next(iter(points.values())))
    chunk = k if chunk_size is None else min(_check_int(fn, "chunk_size", chunk_size, 1), k)
    plan, chunk = _sharding.sweep_plan(fn, mesh, chunk, chunk_size, k)
    data, eval_data = _sharding.place_eval(plan, data), _sharding.place_eval(plan, eval_data)
    chunks = math.ceil(k / chunk)
    update = optax.with_extra_args_support(optimizer).update
    program = _Program(
        loss_fn, update, eval_fn, batch_size, steps, vmapped=True, diagnostics=diagnostics,
    )  # fmt: skip
    dtypes = {name: hyperparams(state0)[name].dtype for name in points}

    def start(values):
        # Fresh buffers for every chunk: the epoch program donates them.
        batched_state = jax.vmap(lambda v: set_hyperparams(state0, **v))(values)
        batched_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (chunk, *jnp.shape(x))), params)
        return _copy((batched_params, batched_state))

    results, seconds = [], []
    history: dict[str, list[np.ndarray]] = {}
    bar = _progress(progress, chunks * epochs, "sweep")
    try:
        for c in range(chunks):
            index = np.minimum(np.arange(c * chunk, (c + 1) * chunk), k - 1)  # pad: repeat
            values = {name: jnp.asarray(v[index], dtypes[name]) for name, v in points.items()}
            p, s = _sharding.place_grid(plan, start(values))
            chunk_history: dict[str, list[np.ndarray]] = {"loss": []}
            chunk_seconds = []
            for epoch in range(epochs):
                t0 = time.perf_counter()
                batches = _minibatches(program, key, epoch, data)
                p, s, loss, metrics = _run_epoch(program, p, s, data, eval_data, batches)
                loss = np.asarray(loss)
                metrics = {name: np.asarray(v) for name, v in metrics.items()}
                chunk_seconds.append(time.perf_counter() - t0)
                chunk_history["loss"].append(loss)
                for name, v in metrics.items():
                    chunk_history.setdefault(name, []).append(v)
                if bar is not None:
                    # One point, the lowest finite training loss, with its own metrics (each
                    # metric's min over the grid could be another point's, e.g. the worst
                    # accuracy); ties and padding go to the first point.
                    i = int(np.argmin(np.where(np.isfinite(loss), loss, np.inf)))
                    shown = _postfix(float(loss[i]), {n: float(v[i]) for n, v in metrics.items()})
                    bar.set_postfix({"point": str(int(index[i])), **shown}, refresh=False)
                    bar.update()
            used = min(chunk, k - c * chunk)
            results.append(jax.tree.map(lambda x, used=used: x[:used], (p, s)))
            for name, rows in chunk_history.items():
                history.setdefault(name, []).append(np.stack(rows, axis=1)[:used])
            seconds.append(chunk_seconds)
    finally:
        if bar is not None:
            bar.close()
    params_out, state_out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *results)
    if packing is not None:
        state_out = packing.unpack(state_out, batch_dims=1)
    params_out, state_out = _sharding.to_user_mesh(plan, (params_out, state_out))
    return SweepResult(
        params=params_out,
        opt_state=state_out,
        history={name: np.concatenate(parts) for name, parts in history.items()},
        grid=points,
        epoch_seconds=np.asarray(seconds),
        steps_per_epoch=steps,
        dropped_per_epoch=dropped,
    )
