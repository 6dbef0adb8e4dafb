"""Streamed data for ``fit``: batches from an iterable, run compiled in groups of S steps.

A stream is anything ``fit`` receives as ``data`` that is not a pytree of arrays:

* a callable ``data(epoch) -> iterable of batches``: called once per epoch with the epoch's
  index. The form to use for exact resume: a loader seeded by the epoch reproduces an
  epoch's batches after a restart.
* a re-iterable loader (a ``grain`` or ``torch`` DataLoader, a ``tf.data`` dataset turned to
  NumPy, any object with ``__iter__`` but no ``__next__``): iterated afresh every epoch.
* a one-shot iterator (a generator): it can feed one epoch, or an endless stream cut into
  epochs of ``steps_per_epoch`` batches.

Every batch is a pytree of NumPy or JAX arrays of one structure, with one leading batch axis
of length B (the first batch's, or ``batch_size``). **Short-batch policy**: a batch whose
leading axis is shorter than B (usually the last of an epoch) is dropped, and its examples
are counted in ``FitResult.dropped_per_epoch``, as the in-memory path drops the remainder of
its permutation; every step then has one shape, and the same gradient variance. Any other
change of structure, shape or dtype is an error naming the batch. With ``accumulate=A`` a step
is a window of A consecutive full batches; the full batches of an epoch that fill no last
window are dropped and counted as well, and ``steps_per_epoch`` counts windows.

Batches are stacked on the host into groups of S = ``steps_per_execution`` steps, each
batch's NumPy arrays copied into its group's host array as it is read (a loader may refill
one buffer for every batch, as Keras's and torch's loops allow: fit keeps no reference to
it; a jax.Array, immutable, is kept and stacked on the device); a group is one call of a
compiled ``lax.scan`` over the same ``step`` the in-memory path scans, so the two paths give
the same numbers for the same batches: bit for bit leaf by leaf (``flat=False``); with the
optimizer packed (fit's default for gradx's optimizers, see ``fit``'s ``flat``) XLA fuses the
two programs differently and a step may differ in its last bits. Calls are dispatched
asynchronously: while the device computes a group, the host reads, stacks and transfers the
next one (double buffering). A shorter last group is split into powers of two, so a run
compiles at most 1 + log2(S) group programs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx._training import accumulate as _accumulate
from gradx._training import averaging as _averaging
from gradx._training import identity as _identity
from gradx._training import mesh as _mesh
from gradx._training import step as _step


def is_stream(data: Any) -> bool:
    """Whether ``data`` is a stream of batches rather than a pytree of arrays."""
    if isinstance(data, (Mapping, list, tuple, np.ndarray, jax.Array)):
        return False
    return callable(data) or isinstance(data, Iterable)


def refuse(fn: str, data: Any) -> None:
    """A TypeError for a stream given to ``fn`` (sweep, search), which train on arrays in
    memory: a stream of batches is fit's alone."""
    if is_stream(data):
        raise TypeError(
            f"{fn}: data must be a pytree of arrays in memory (a leading example axis), got "
            f"a {type(data).__name__}: a stream of batches (an iterable, or a function of the "
            "epoch) is trained by gradx.fit only"
        )


def check_callable(fn: str, data: Any) -> None:
    """A callable ``data`` (not iterable) must take the epoch: ``data(epoch)``."""
    if not callable(data) or isinstance(data, Iterable):
        return
    try:
        signature = inspect.signature(data)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        signature.bind(0)
    except TypeError:
        name = getattr(data, "__name__", type(data).__name__)
        what = (
            "a function of no arguments"
            if not signature.parameters
            else f"a function that cannot be called with one argument, {name}{signature}"
        )
        raise TypeError(
            f"{fn}: a callable data must take the epoch: data(epoch) -> iterable of batches; "
            f"got {what}; pass data={name}() for one pass or data=lambda epoch: {name}()"
        ) from None


def check_epochs(fn: str, data: Any, epochs_to_run: int, steps_per_epoch: int | None) -> None:
    """A one-shot iterator can feed more than one epoch only when cut by steps_per_epoch."""
    if isinstance(data, Iterator) and steps_per_epoch is None and epochs_to_run > 1:
        raise ValueError(
            f"{fn}: data is a one-shot iterator (such as a generator), which can feed one "
            f"epoch, got epochs to run = {epochs_to_run}; pass a callable data(epoch) that "
            "returns a fresh iterator, a re-iterable loader, or steps_per_epoch= to cut an "
            "endless iterator into epochs"
        )


def epoch_iterator(fn: str, data: Any, epoch: int) -> Iterator[Any]:
    """The batches of one epoch (see the module docstring for the three forms)."""
    if isinstance(data, Iterator):
        return data
    source = data(epoch) if callable(data) and not isinstance(data, Iterable) else data
    if not isinstance(source, Iterable):
        raise ValueError(
            f"{fn}: data(epoch) must return an iterable of batches, got "
            f"{type(source).__name__} for epoch {epoch}"
        )
    return iter(source)


class Spec:
    """The batch structure every step must have: fixed by the first batch (or batch_size).

    ``recorded``: :meth:`describe` of the run a checkpoint resumes, which the first batch
    must match (a resumed run fed other batches is another run)."""

    def __init__(self, fn: str, batch_size: int | None):
        self.fn = fn
        self.batch_size = batch_size
        self.treedef = None
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[np.dtype] = []
        self.recorded: list[Any] | None = None

    def describe(self) -> list[Any] | None:
        """[batch size, structure, per-example shapes, dtypes] (JSON), None before a batch."""
        if self.treedef is None:
            return None
        shapes = [list(s) for s in self.shapes]
        return [self.batch_size, str(self.treedef), shapes, [str(d) for d in self.dtypes]]

    def admit(self, batch: Any, index: int, epoch: int) -> list[Any] | int:
        """The batch's leaves if it is a full batch, else the number of examples to drop."""
        leaves, treedef = jax.tree.flatten(batch)
        where = f"batch {index} of epoch {epoch}"
        if not leaves or not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
            leaves = [np.asarray(x) for x in leaves]
        if not leaves:
            raise ValueError(f"{self.fn}: data must yield pytrees of arrays, got {where} empty")
        lengths = {x.shape[0] if x.ndim else None for x in leaves}
        if None in lengths or len(lengths) != 1:
            shapes = jax.tree.unflatten(treedef, [tuple(x.shape) for x in leaves])
            raise ValueError(
                f"{self.fn}: data must yield arrays with one leading batch axis of the same "
                f"length, got shapes {shapes} in {where}"
            )
        (length,) = lengths
        if self.treedef is None:
            if self.batch_size is None:
                self.batch_size = length
            elif length > self.batch_size:
                raise ValueError(
                    f"{self.fn}: data must yield batches of batch_size={self.batch_size} "
                    f"examples, got {length} in {where}"
                )
            self.treedef = treedef
            self.shapes = [tuple(x.shape[1:]) for x in leaves]
            self.dtypes = [np.dtype(x.dtype) for x in leaves]
            if self.recorded is not None and self.describe() != self.recorded:
                size, structure, shapes, dtypes = self.recorded
                raise ValueError(
                    f"{self.fn}: data must yield the batches of the run it resumes (recorded "
                    f"in its checkpoint): {size} examples of structure {structure}, shapes "
                    f"{shapes} and dtypes {dtypes} per example; got {length} of "
                    f"{treedef}, {[list(s) for s in self.shapes]} and "
                    f"{[str(d) for d in self.dtypes]} in {where}"
                )
        got = (treedef, [tuple(x.shape[1:]) for x in leaves], [np.dtype(x.dtype) for x in leaves])
        if got != (self.treedef, self.shapes, self.dtypes) or length > self.batch_size:
            want = jax.tree.unflatten(
                self.treedef,
                [
                    f"{d}{(self.batch_size, *s)}"
                    for s, d in zip(self.shapes, self.dtypes, strict=True)
                ],
            )
            have = jax.tree.unflatten(
                treedef, [f"{np.dtype(x.dtype)}{tuple(x.shape)}" for x in leaves]
            )
            raise ValueError(
                f"{self.fn}: data must yield batches of one structure, shape and dtype "
                f"{want}, got {have} in {where}"
            )
        return leaves if length == self.batch_size else length


class _Group:
    """The full batches of one group, as they are admitted: each NumPy leaf copied at once into
    row i of a (rows, B, ...) host array allocated for the group (a loader may refill one
    buffer for every batch: the copy np.stack made when the group was full, made earlier),
    each jax.Array kept as it is (immutable) and stacked on the device. Onto a mesh every leaf
    goes to the host array, to be split as it is transferred."""

    def __init__(self, spec: Spec, rows: int, on_host: bool):
        self.spec, self.rows, self.on_host = spec, rows, on_host
        self.size = 0
        self.columns: list[Any] = []

    def add(self, leaves: list[Any]) -> None:
        if not self.columns:
            spec = self.spec
            self.columns = [
                []
                if isinstance(x, jax.Array) and not self.on_host
                else np.empty((self.rows, spec.batch_size, *shape), dtype)
                for x, shape, dtype in zip(leaves, spec.shapes, spec.dtypes, strict=True)
            ]
        for column, x in zip(self.columns, leaves, strict=True):
            if isinstance(column, list):
                column.append(x if isinstance(x, jax.Array) else np.array(x))
            else:
                column[self.size] = x
        self.size += 1

    def stacked(self, start: int, stop: int, put: Callable[[Any], Any]) -> Any:
        """Batches ``start`` to ``stop`` stacked (stop - start, B, ...) on the device."""
        leaves = [
            jnp.stack(c[start:stop]) if isinstance(c, list) else put(c[start:stop])
            for c in self.columns
        ]
        return jax.tree.unflatten(self.spec.treedef, leaves)


def _sizes(n: int, group: int) -> list[int]:
    """A full group, or a short one split into powers of two (few distinct programs)."""
    if n == group:
        return [n]
    return [1 << b for b in reversed(range(n.bit_length())) if n >> b & 1]


def groups(
    fn: str,
    it: Iterator[Any],
    spec: Spec,
    group: int,
    epoch: int,
    limit: int | None,
    counts: dict[str, int],
    put: Callable[[Any], Any] = jax.device_put,
    accumulate: int = 1,
) -> Iterator[Any]:
    """Stacked device groups of the epoch's full batches, ``accumulate`` (A) per step (a group
    of S steps stacks S·A batches); counts steps and dropped examples."""
    a = accumulate
    on_host = put is not jax.device_put
    pending: _Group | None = None
    index = 0
    while (
        limit is None or counts["steps"] * a + (0 if pending is None else pending.size) < limit * a
    ):
        try:
            batch = next(it)
        except StopIteration:
            break
        admitted = spec.admit(batch, index, epoch)
        index += 1
        if isinstance(admitted, int):
            counts["dropped"] += admitted
            continue
        if pending is None:  # a new array per group: the last one may be in transfer still
            steps = group if limit is None else min(group, limit - counts["steps"])
            pending = _Group(spec, steps * a, on_host)
        pending.add(admitted)
        if pending.size == group * a:
            counts["steps"] += group
            yield pending.stacked(0, group * a, put)
            pending = None
    if pending is None:
        return
    partial = pending.size % a  # a last window cut short by the end of the epoch: dropped
    if partial:
        counts["dropped"] += partial * spec.batch_size
        pending.size -= partial
    start = 0
    for size in _sizes(pending.size // a, group) if pending.size else ():
        counts["steps"] += size
        yield pending.stacked(start * a, (start + size) * a, put)
        start += size


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def _run_group(program: Any, params: Any, opt_state: Any, batches: Any):
    # On a mesh: each step's batch split over the data axis, params and state kept in place.
    step = _mesh.constrain_step(program.plan, _step.make_step("fit", program))
    batches = _accumulate.windows(program.accumulate, batches)  # (S·A, B, ...) → (S, A, B, ...)
    (params, opt_state), out = jax.lax.scan(step, (params, opt_state), batches)
    params, opt_state = _mesh.constrain_carry(program.plan, (params, opt_state))
    return params, opt_state, out


@functools.partial(jax.jit, static_argnums=0)
def _reduce_steps(program: Any, out: Any):
    return _step.reduce_steps(program, out)


def _reduce(program: Any, outs: list[Any]):
    # Concatenated in its own program first: fused into the mean, the concatenation would
    # change the order of the sum, and the epoch's loss would differ in its last bit from
    # the in-memory path's mean over one array of all the steps.
    out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
    return _reduce_steps(program, out)


def run_epoch_stream(
    program: Any,
    params: Any,
    opt_state: Any,
    data: Any,
    spec: Spec,
    group: int,
    epoch: int,
    steps_per_epoch: int | None,
    put: Callable[[Any], Any] = jax.device_put,
):
    """One streamed epoch: (params, opt_state, mean loss, extra history, steps, dropped)."""
    fn = "fit"
    counts = {"steps": 0, "dropped": 0}
    it = epoch_iterator(fn, data, epoch)
    outs = []
    source = groups(fn, it, spec, group, epoch, steps_per_epoch, counts, put, program.accumulate)
    following = next(source, None)
    while following is not None:
        current = following
        # Dispatch is asynchronous: the next group is read, stacked and transferred while
        # the device computes this one.
        params, opt_state, out = _run_group(program, params, opt_state, current)
        outs.append(out)
        following = next(source, None)
    if counts["steps"] == 0:
        a = program.accumulate
        raise ValueError(
            f"{fn}: data must yield at least "
            + (f"accumulate={a} full batches" if a > 1 else "one full batch")
            + (f" of {spec.batch_size} examples" if spec.batch_size else "")
            + f" each epoch, got {'too few' if a > 1 else 'none'} in epoch {epoch}"
            + (
                f" ({counts['dropped']} examples in short batches dropped)"
                if counts["dropped"]
                else ""
            )
        )
    if steps_per_epoch is not None and counts["steps"] < steps_per_epoch:
        raise ValueError(
            f"{fn}: data must yield steps_per_epoch={steps_per_epoch} "
            + (f"windows of accumulate={program.accumulate} " if program.accumulate > 1 else "")
            + f"full batches each epoch, got {counts['steps']} in epoch {epoch} (the iterator "
            "ran out)"
        )
    mean_loss, extra = _reduce(program, outs)
    return params, opt_state, mean_loss, extra, counts["steps"], counts["dropped"]


@functools.partial(jax.jit, static_argnums=(0, 1))
def run_eval(fn: str, eval_fn: Any, params: Any, eval_data: Any):
    """eval_fn at the end of a streamed epoch, compiled once."""
    from gradx._training.program import eval_metrics

    return eval_metrics(fn, eval_fn, params, eval_data)


def fit_stream(
    loss_fn: Any,
    params: Any,
    optimizer: Any,
    data: Any,
    *,
    batch_size: int | None,
    epochs: int,
    key: Any,
    eval_fn: Any,
    eval_data: Any,
    opt_state: Any,
    progress: bool,
    mesh: Any,
    shard_params: Any,
    has_aux: bool,
    skip_nonfinite: bool,
    callbacks: Any,
    checkpoint_dir: Any,
    checkpoint_every: int,
    resume: bool,
    initial_epoch: int,
    steps_per_epoch: int | None,
    steps_per_execution: int | None,
    flat: bool | None,
    overwrite: bool = False,
    accumulate: int = 1,
    ema: float | None = None,
    eval_average: bool = False,
):
    """``fit`` on streamed data (see the module docstring); same arguments and result
    (``accumulate`` and ``ema`` checked, ``eval_average``: fit's ``eval_on="ema"``)."""
    import optax

    from gradx._training import loop as _loop
    from gradx._training.fit import train_epochs
    from gradx._training.inputs import check_int, check_key
    from gradx._training.packing import start_optimizer
    from gradx._training.program import Program

    fn = "fit"
    check_callable(fn, data)
    plan = _mesh.fit_plan(fn, mesh, shard_params, params)
    epochs = check_int(fn, "epochs", epochs, 1)
    if batch_size is not None:
        batch_size = check_int(fn, "batch_size", batch_size, 1)
    if steps_per_epoch is not None:
        steps_per_epoch = check_int(fn, "steps_per_epoch", steps_per_epoch, 1)
    group = 16 if steps_per_execution is None else steps_per_execution
    group = check_int(fn, "steps_per_execution", group, 1)
    key = None if key is None else check_key(fn, key, None)
    if eval_fn is not None:
        if eval_data is None:
            raise ValueError(
                f"{fn}: eval_data must be given with eval_fn when data is a stream (there is "
                "no in-memory data to default to), got None"
            )
        eval_data = _mesh.place_eval(plan, jax.tree.map(jnp.asarray, eval_data))
    opts = _loop.options(
        fn, epochs=epochs, callbacks=callbacks, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, resume=resume, initial_epoch=initial_epoch,
        skip_nonfinite=skip_nonfinite,
    )  # fmt: skip
    check_epochs(fn, data, epochs - initial_epoch, steps_per_epoch)
    arguments = _identity.optimizer_arguments(optimizer) if checkpoint_dir is not None else None
    # Packed as the in-memory fit is: the same program, the same numbers.
    packing, optimizer, opt_state = start_optimizer(
        fn, flat, optimizer, params, opt_state, plan, False
    )
    holder, params, opt_state, plan = _averaging.place(plan, ema, params, opt_state)
    plan = _accumulate.window_plan(plan, accumulate)
    update = optax.with_extra_args_support(optimizer).update
    program = Program(
        loss_fn, update, None, None, 0, vmapped=False, plan=plan,
        has_aux=has_aux, skip_nonfinite=skip_nonfinite, accumulate=accumulate,
        eval_average=eval_average,
    )  # fmt: skip
    spec = Spec(fn, batch_size)
    put = jax.device_put if plan is None else functools.partial(_mesh.put_group, fn, plan)

    def run_epoch(epoch, params, opt_state):
        if spec.treedef is None:  # the first epoch run here: a resumed run's batches
            spec.recorded = counts["batches"]
        params, opt_state, loss, extra, steps, dropped = run_epoch_stream(
            program, params, opt_state, data, spec, group, epoch, steps_per_epoch, put
        )
        counts["batches"] = spec.describe()
        if eval_fn is not None:
            at = _averaging.eval_params(program, params, opt_state)  # the average, Schedule-Free: x
            extra = _step.merge(fn, extra, run_eval(fn, eval_fn, at, eval_data))
        return params, opt_state, loss, extra, steps, dropped

    counts = {"steps_per_epoch": 0, "dropped_per_epoch": 0, "batches": None}
    run_info = {"batch_size": batch_size, "steps_per_epoch": steps_per_epoch}
    run_info["optimizer arguments"] = arguments
    if eval_fn is not None:
        run_info["eval_data"] = eval_data
    run_info.update(_averaging.identity_extras(accumulate, ema))
    return train_epochs(
        run_epoch, params, opt_state, plan, key, epochs, opts, progress, counts, packing,
        overwrite=overwrite, run_info=run_info, holder=holder,
    )  # fmt: skip
