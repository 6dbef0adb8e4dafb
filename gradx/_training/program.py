"""The epoch program: one compiled ``lax.scan`` over the minibatches of one epoch."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradx._tools import effective_lr as _effective_lr
from gradx._training import averaging as _averaging
from gradx._training import mesh as _mesh
from gradx._training import step as _step

LossFn = Callable[[Any, Any], jax.Array]


EvalFn = Callable[[Any, Any], "jax.Array | Mapping[str, jax.Array]"]


class Program(NamedTuple):
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
    diagnostics: bool = (
        False  # record norms and α_ef quantiles per epoch (gradx._tools.effective_lr)
    )
    accumulate: int = 1  # micro-batches per step (gradx._training.accumulate)
    eval_average: bool = False  # eval_fn sees the params' moving average (fit's eval_on="ema")
    caller: str = "fit"  # the function the user called, named in the step's errors


def eval_metrics(fn: str, eval_fn: EvalFn, params: Any, eval_data: Any) -> dict[str, jax.Array]:
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


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _draw_minibatches(key, epoch, n: int, steps: int, batch_size: int, window: int) -> jax.Array:
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    if window > 1:  # the first steps·A·B examples, as batch_size=A·B cuts them
        return order[: steps * window * batch_size].reshape(steps, window, batch_size)
    return order[: steps * batch_size].reshape(steps, batch_size)


def minibatch_indices(program: Program, key, epoch: int, data) -> jax.Array | None:
    """The example indices of each step of ``epoch``, shape (steps, B): the permutation
    ``jax.random.permutation(fold_in(key, epoch), N)`` cut into ⌊N/B⌋ rows (None for full
    batch); with ``accumulate`` A > 1, (steps, A, B), the rows of ⌊N/(A·B)⌋ windows. A program
    of its own, compiled once per (N, steps, B, A) in a process and shared by every fit, sweep
    and search (inside the epoch program it cost every new epoch program
    about 0.25 s of compile time on CPU, a third of a small model's first epoch)."""
    if program.batch_size is None:
        return None
    n = jax.tree.leaves(data)[0].shape[0]
    return _draw_minibatches(
        key, jnp.int32(epoch), n, program.steps, program.batch_size, program.accumulate
    )


def _epoch(program: Program, params, opt_state, data, eval_data, batches):
    """One epoch of one model: returns (params, opt_state, mean loss, metrics).

    ``batches``: the example indices of each step (:func:`minibatch_indices`), None for full
    batch."""
    fn = program.caller
    step = _step.make_step(fn, program._replace(diagnostics=False))  # as the streamed path's
    step = _mesh.constrain_step(program.plan, step)  # on a mesh: batch split, carry put
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
    params, opt_state = _mesh.constrain_carry(program.plan, (params, opt_state))
    if last is not None:  # the epoch's last step: its norms and α_ef
        inner = _averaging.split(opt_state)[0]
        extra = _effective_lr.epoch_diagnostics(fn, program.update_fn, inner, *last, extra)
    at = _averaging.eval_params(program, params, opt_state)  # the average, or Schedule-Free x
    metrics = {} if program.eval_fn is None else eval_metrics(fn, program.eval_fn, at, eval_data)
    return params, opt_state, mean_loss, _step.merge(fn, extra, metrics)


def _diagnosed(plan: Any, step: Callable[..., Any]) -> Callable[..., Any]:
    """A diagnostics step (returning the carry ``(params, opt_state, last)``) with the mesh
    constraints of :func:`gradx._training.mesh.constrain_step` on its batch and its carry."""

    def constrained(carry, batch):
        (params, opt_state, last), out = step(carry, _mesh.constrain_batch(plan, batch))
        return (*_mesh.constrain_carry(plan, (params, opt_state)), last), out

    return constrained


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(1, 2))
def run_epoch_program(program: Program, params, opt_state, data, eval_data, batches):
    if program.vmapped:
        # One model per grid point: params and state carry the leading grid axis; data
        # and minibatches are shared, so every point sees the same minibatches.
        one = functools.partial(_epoch, program)
        return jax.vmap(one, in_axes=(0, 0, None, None, None))(
            params, opt_state, data, eval_data, batches
        )
    return _epoch(program, params, opt_state, data, eval_data, batches)
