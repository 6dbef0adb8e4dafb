"""One training step, shared by the in-memory epoch and the streamed groups of ``fit``.

Both paths scan the same ``step`` function, so given the same batches they compute the same
numbers (bit for bit leaf by leaf; packed, to the last bits of a step); they differ only in
where a step's batch comes from (gathered from the data on the device, or stacked from a
stream on the host).

A step returns ``(loss, aux, ok)`` per step: ``aux`` is the ``{name: scalar}`` of a
``has_aux`` loss (empty otherwise), the loss and each aux value as float32 at least (a bool
or int8 aux is averaged as a number); ``ok`` is False for a step skipped by
``skip_nonfinite``. :func:`reduce_steps` turns the stacked per-step outputs into an epoch's
mean loss and its extra history entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradx._protocol.dtypes import at_least_float32
from gradx._training import accumulate as _accumulate
from gradx._training import averaging as _averaging

#: History names that fit writes itself; an aux output or a metric may not take them.
RESERVED = ("loss", "skipped")


def _is_scalar(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and x.shape == ()


def _describe(out: Any) -> str:
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        return f"shape {tuple(out.shape)}"
    if isinstance(out, tuple):
        return f"a tuple of {len(out)}"
    return f"a {type(out).__name__}"


def checked_loss(fn: str, loss_fn: Any, has_aux: bool):
    """``loss_fn`` with its output checked at trace time, before any JAX error can occur; the
    loss and each aux value are returned as float32 at least, so that they are averaged over
    the steps (and an accumulated window) as numbers (a bool summed as an OR, an int8
    wrapped)."""

    def loss(params, batch):
        out = loss_fn(params, batch)
        if not has_aux:
            if not _is_scalar(out):
                hint = ""
                if isinstance(out, tuple) and len(out) == 2:  # has_aux is fit's alone
                    hint = "; it returns (loss, aux): " + (
                        "pass has_aux=True" if fn == "fit" else "return the loss alone"
                    )
                raise ValueError(f"{fn}: loss_fn must return a scalar, got {_describe(out)}{hint}")
            return at_least_float32(out), {}
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"{fn}: loss_fn must return (loss, aux) with has_aux=True, got {_describe(out)}"
            )
        value, aux = out
        if not _is_scalar(value):
            raise ValueError(f"{fn}: loss_fn must return a scalar loss, got {_describe(value)}")
        if not isinstance(aux, Mapping):
            raise ValueError(
                f"{fn}: loss_fn's aux must be a dict of scalars, got {type(aux).__name__}"
            )
        for name, v in aux.items():
            if name in RESERVED:
                raise ValueError(
                    f"{fn}: loss_fn's aux must not use the name {name!r} (fit writes it), got it"
                )
            if not _is_scalar(v):
                raise ValueError(
                    f"{fn}: loss_fn's aux must be a dict of scalars, got {_describe(v)} "
                    f"for {name!r}"
                )
        return at_least_float32(value), {name: at_least_float32(v) for name, v in aux.items()}

    return loss


def _all_finite(loss: jax.Array, grads: Any) -> jax.Array:
    ok = jnp.isfinite(loss)
    for g in jax.tree.leaves(grads):
        ok = ok & jnp.all(jnp.isfinite(g))
    return ok


def make_step(fn: str, program: Any):
    """``step((params, opt_state), batch) -> ((params, opt_state), (loss, aux, ok))``.

    ``program`` gives ``loss_fn``, ``update_fn`` and the flags ``has_aux``, ``skip_nonfinite`` and
    ``diagnostics`` (read with defaults, so a program without the flags is plain); with its
    ``accumulate`` A > 1 a step's batch is a window of A micro-batches
    (:mod:`gradx._training.accumulate`). A state ``WithAverage`` (fit's ``ema``) has its average
    advanced after the update (:mod:`gradx._training.averaging`). With
    ``diagnostics`` (the last step of an epoch) the step returns the carry ``(params, opt_state,
    (grads, params, updates))``: its gradient, the params it was taken at and its update (0 if
    skipped), which :func:`gradx._tools.effective_lr.epoch_diagnostics` reads.
    """
    has_aux = getattr(program, "has_aux", False)
    skip = getattr(program, "skip_nonfinite", False)
    diagnostics = getattr(program, "diagnostics", False)
    loss = checked_loss(fn, program.loss_fn, has_aux)
    value_and_grad = _accumulate.value_and_grad(loss, getattr(program, "accumulate", 1))

    def step(carry, batch):
        params, opt_state = carry
        inner, average = _averaging.split(opt_state)
        (value, aux), grads = value_and_grad(params, batch)
        updates, new_inner = program.update_fn(grads, inner, params, value=value)
        new_params = optax.apply_updates(params, updates)
        new_state = _averaging.join(new_inner, _averaging.advance(average, new_params))
        if diagnostics:
            steps = jax.tree.map(lambda u, p: jnp.asarray(u).astype(p.dtype), updates, params)
        if not skip:
            last = ((grads, params, steps),) if diagnostics else ()
            return (new_params, new_state, *last), (value, aux, jnp.bool_(True))
        ok = _all_finite(value, grads)
        keep = lambda new, old: jnp.where(ok, new, old)  # exact: a select, no arithmetic
        new_params = jax.tree.map(keep, new_params, params)
        new_state = jax.tree.map(keep, new_state, opt_state)
        if diagnostics:
            steps = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), steps)
        last = ((grads, params, steps),) if diagnostics else ()
        return (new_params, new_state, *last), (value, aux, ok)

    return step


def reduce_steps(program: Any, outputs: Any, stacked: bool = True):
    """(mean loss, {aux means, "skipped"}) of an epoch's per-step outputs.

    ``stacked``: the outputs carry a leading step axis (False for the single full-batch step,
    whose loss is returned as it is). With ``skip_nonfinite`` the means are over the steps
    taken (NaN when every step was skipped) and ``"skipped"`` counts the others.
    """
    value, aux, ok = outputs
    extra: dict[str, jax.Array] = {}
    if not stacked:
        value, aux, ok = value[None], {k: v[None] for k, v in aux.items()}, ok[None]
        if not getattr(program, "skip_nonfinite", False):
            return value[0], {k: v[0] for k, v in aux.items()}
    if getattr(program, "skip_nonfinite", False):
        taken = jnp.sum(ok.astype(jnp.int32))

        def mean(x):
            total = jnp.sum(jnp.where(ok, x, jnp.zeros_like(x)))
            return total / taken.astype(x.dtype)

        extra = {k: mean(v) for k, v in aux.items()}
        extra["skipped"] = ok.shape[0] - taken
        return mean(value), extra
    return jnp.mean(value), {k: jnp.mean(v) for k, v in aux.items()}


def merge(fn: str, extra: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The history entries of an epoch besides the loss: aux means, skips, eval metrics."""
    for name in metrics:
        if name in extra:
            raise ValueError(
                f"{fn}: eval_fn must not return a metric named {name!r} (loss_fn's aux or fit "
                "already writes it), got one"
            )
    return {**extra, **metrics}
