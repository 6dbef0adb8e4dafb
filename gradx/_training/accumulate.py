"""fit's gradient accumulation (``accumulate=A``): A micro-batches of B examples per step.

A step takes a *window* of A micro-batches, stacked on a leading axis of length A (a window
of the in-memory path is A consecutive minibatches of the epoch's permutation; of a stream,
A consecutive full batches). Its loss, aux and gradient are the means over the window::

    ℓ = (1/A) Σₐ ℓₐ,   g = (1/A) Σₐ ∂ℓₐ/∂θ,   all at the same θ

summed by a ``lax.scan`` in one params-sized buffer (the gradient sum) and divided once. For a
loss that is a mean over its batch, ℓₐ = (1/B) Σᵢ ℓᵢ, this is the loss and gradient of the
window's A·B examples as one batch, so ``batch_size=B, accumulate=A`` equals ``batch_size=A·B``
on the same key (the same permutation, cut the same way) to float rounding; a loss that sums
over its batch gets 1/A of the big batch's.

**Partial windows**: an epoch whose minibatches (or full streamed batches) do not fill a last
window drops them, and counts their examples in ``dropped_per_epoch``, as the remainder of a
permutation is dropped: every step averages exactly A micro-batches, so no step divides a sum
of fewer by A (the error of the common implementations that do), and the in-memory epoch drops
the N mod A·B examples that ``batch_size=A·B`` drops.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def check_accumulate(fn: str, accumulate: Any) -> int:
    """``accumulate`` as an int >= 1, or a ValueError naming the rule and the value."""
    if (
        isinstance(accumulate, bool)
        or not isinstance(accumulate, (int, np.integer))
        or accumulate < 1
    ):
        raise ValueError(
            f"{fn}: accumulate must be an integer >= 1 (the micro-batches averaged per "
            f"optimizer step), got {accumulate!r}"
        )
    return int(accumulate)


def check_full_batch(fn: str, accumulate: int, batch_size: Any) -> None:
    """In memory, full batch (``batch_size=None``) is one step on all N: nothing to accumulate."""
    if accumulate > 1 and batch_size is None:
        raise ValueError(
            f"{fn}: accumulate={accumulate} needs a batch_size (batch_size=None is one "
            "full-batch step per epoch, with nothing to accumulate); pass batch_size=B for "
            f"steps of {accumulate} micro-batches of B examples"
        )


def window_counts(fn: str, steps: int, dropped: int, batch_size: int, accumulate: int):
    """(optimizer steps, dropped examples) of an in-memory epoch of ``steps`` minibatches of
    ``batch_size`` (``dropped`` left over): the minibatches that fill no window are dropped."""
    if accumulate == 1:
        return steps, dropped
    windows = steps // accumulate
    if windows == 0:
        raise ValueError(
            f"{fn}: batch_size × accumulate must be at most the number of examples, "
            f"{steps * batch_size + dropped}, for one step per epoch, got {batch_size} × "
            f"{accumulate} = {batch_size * accumulate}"
        )
    return windows, dropped + (steps % accumulate) * batch_size


def window_plan(plan: Any, accumulate: int) -> Any:
    """A fit plan whose batch sharding splits axis 1 of a window (A, B, ...) over the data axis,
    so each micro-batch is split as a batch is without accumulation."""
    if plan is None or plan.batch is None or accumulate == 1:
        return plan
    axis = plan.mesh.axis_names[0]
    return dataclasses.replace(plan, batch=NamedSharding(plan.mesh, P(None, axis)))


def windows(accumulate: int, stacked: Any) -> Any:
    """Stacked batches (S·A, B, ...) as S windows (S, A, B, ...), inside a compiled program."""
    if accumulate == 1:
        return stacked
    return jax.tree.map(lambda x: x.reshape(-1, accumulate, *x.shape[1:]), stacked)


def value_and_grad(loss: Any, accumulate: int):
    """``(params, batch) -> ((value, aux), grads)`` of ``loss`` (which returns ``(value, aux)``).

    With ``accumulate`` A > 1 the batch is a window (leading axis A) and the result is the mean
    over its micro-batches (see the module docstring): one scan, whose carry is the sum of the
    values, aux and gradients.
    """
    grad_fn = jax.value_and_grad(loss, has_aux=True)
    if accumulate == 1:
        return grad_fn

    def windowed(params: Any, window: Any):
        def micro(total, batch):
            out = grad_fn(params, batch)
            return jax.tree.map(jnp.add, total, out), None

        first = jax.tree.map(lambda x: x[0], window)
        shapes = jax.eval_shape(grad_fn, params, first)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total, _ = jax.lax.scan(micro, zeros, window)
        return jax.tree.map(lambda t: t / jnp.asarray(accumulate, t.dtype), total)

    return windowed
