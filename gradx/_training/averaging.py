"""fit's weight averaging (``ema=d``): an exponential moving average of the params.

After every optimizer step t (a window with ``accumulate``; a step skipped by
``skip_nonfinite`` is no step), with θ_t the params after it::

    ema_1 = θ_1,   ema_t = d · ema_{t−1} + (1 − d) · θ_t   (t > 1)

Keras's convention (``use_ema=True, ema_momentum=d``: the momentum is 0 at the first step, so
the first average is the params after the first step), and torch's
``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))`` updated after each
``optimizer.step()`` (its first ``update_parameters`` copies the params, the others
``lerp`` by 1 − d: the same average up to rounding). Before the first step the average is the
initial params θ_0.

The average is one params-sized buffer (the params' shapes; each leaf kept in float32 at least,
a wider dtype as it is, so that a bfloat16 average still moves with d = 0.999: an
increment (1 − d)·(θ − ema) is often below half a bfloat16 ulp of the average, and an average
rounded back to bfloat16 every step would never change), plus a step count and d, which fit's
program carries next to the optimizer state (:class:`WithAverage`) so that it is updated in
place inside the compiled epoch, sharded like the params on a mesh, kept by
``skip_nonfinite`` like the state, and checkpointed with it. It is handed out in the params'
dtypes (:func:`handed_out`): as ``FitResult.ema_params``, and to ``eval_fn`` with
``eval_on="ema"``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._protocol.dtypes import at_least_float32, hyperparam_dtype
from gradx._tools.schedule_free_eval import evaluation_point, find_schedule_free
from gradx._training import mesh as _mesh
from gradx._training.inputs import fresh_copy


class Average(NamedTuple):
    """The moving average of the params (fit's, not an optimizer state)."""

    count: jax.Array  # shape=(), dtype=int32: the optimizer steps averaged so far
    decay: jax.Array  # shape=(), dtype=float32 or the params' wider float: d
    params: Any  # shape of each param, its dtype or float32 when narrower: the average


class WithAverage(NamedTuple):
    """What fit's program carries in the optimizer state's place when ``ema`` is on."""

    average: Average
    opt_state: Any


EVAL_ON = ("params", "ema")


def check_ema(fn: str, ema: Any) -> float | None:
    """``ema`` as a float in [0, 1], or None (off); a ValueError for anything else."""
    if ema is None:
        return None
    ok = isinstance(ema, (int, float, np.integer, np.floating)) and not isinstance(ema, bool)
    if not ok or not (math.isfinite(float(ema)) and 0 <= float(ema) <= 1):
        raise ValueError(
            f"{fn}: ema must be None (no average) or the decay d in [0, 1] of the moving "
            f"average of the params, e.g. 0.999, got {ema!r}"
        )
    return float(ema)


def check_eval_on(fn: str, eval_on: Any, ema: float | None, eval_fn: Any) -> bool:
    """Whether ``eval_fn`` evaluates the average (``eval_on="ema"``) rather than the params."""
    if not isinstance(eval_on, str) or eval_on not in EVAL_ON:
        raise ValueError(f"{fn}: eval_on must be one of {EVAL_ON}, got {eval_on!r}")
    if eval_on == "ema" and ema is None:
        raise ValueError(
            f"{fn}: eval_on='ema' evaluates the moving average of the params, which needs "
            "ema= (its decay, e.g. ema=0.999), got ema=None"
        )
    if eval_on == "ema" and eval_fn is None:
        raise ValueError(f"{fn}: eval_on='ema' needs an eval_fn to evaluate, got eval_fn=None")
    return eval_on == "ema"


def start(ema: float | None, params: Any) -> Average | None:
    """The average before the first step (the params, in float32 at least: copy them before
    donating, as a leaf of float32 or wider is the param itself), or None."""
    if ema is None:
        return None
    decay = jnp.asarray(ema, hyperparam_dtype(params))
    wide = jax.tree.map(at_least_float32, params)
    return Average(count=jnp.zeros((), jnp.int32), decay=decay, params=wide)


def handed_out(average: Average | None, params: Any) -> Any:
    """The average in the dtypes of ``params`` (what fit returns and evaluates), or None."""
    if average is None:
        return None
    return jax.tree.map(lambda a, p: a.astype(p.dtype), average.params, params)


def place(plan: Any, ema: float | None, params: Any, opt_state: Any) -> tuple:
    """(holder of the average, params, opt_state, plan) at the start of a fit: the three copied
    (the epoch program donates them), placed by the mesh plan (the average like the params),
    and the plan completed with the state's part (:func:`gradx._training.mesh.place_fit`)."""
    if ema is not None and find_schedule_free(opt_state):
        raise ValueError(
            f"fit: ema must be None with a Schedule-Free optimizer, got {ema!r}: it averages "
            "its iterates itself (FitResult.params is that average, x)"
        )
    params, opt_state, average = fresh_copy((params, opt_state, start(ema, params)))
    params, state, plan = _mesh.place_fit(plan, params, join(opt_state, average))
    opt_state, average = split(state)
    return Holder(average), params, opt_state, plan


def join(opt_state: Any, average: Average | None) -> Any:
    """The program's state: ``opt_state``, with the average beside it when there is one."""
    return opt_state if average is None else WithAverage(average, opt_state)


def split(state: Any) -> tuple[Any, Average | None]:
    """(optimizer state, average or None) of a program's state (see :func:`join`)."""
    if isinstance(state, WithAverage):
        return state.opt_state, state.average
    return state, None


def advance(average: Average | None, params: Any) -> Average | None:
    """The average after a step that gave ``params`` (see the module docstring)."""
    if average is None:
        return None
    first = average.count == 0

    def leaf(a: jax.Array, p: jax.Array) -> jax.Array:  # a: the average, already wide
        d = average.decay.astype(a.dtype)
        p = p.astype(a.dtype)
        return jnp.where(first, p, d * a + (1 - d) * p)

    return Average(
        count=optax.safe_int32_increment(average.count),
        decay=average.decay,
        params=jax.tree.map(leaf, average.params, params),
    )


def eval_params(program: Any, params: Any, state: Any) -> Any:
    """The params ``eval_fn`` sees at the end of an epoch: the average with ``eval_on="ema"``,
    else the params (Schedule-Free: its average x, from y and z)."""
    opt_state, average = split(state)
    if getattr(program, "eval_average", False):
        return handed_out(average, params)
    return evaluation_point(opt_state, params)


def identity_extras(accumulate: int, ema: float | None) -> dict[str, Any]:
    """What ``accumulate`` and ``ema`` add to a checkpointed run's identity (nothing when off,
    so that the checkpoints of runs without them stay resumable)."""
    extras: dict[str, Any] = {}
    if accumulate > 1:
        extras["accumulate"] = accumulate
    if ema is not None:
        extras["ema"] = ema
    return extras


class Holder:
    """The average between two epochs (None without ``ema``), for fit's loop and checkpoints."""

    def __init__(self, average: Average | None):
        self.average = average


def carried(run_epoch: Any, holder: Holder) -> Any:
    """fit's ``run_epoch(epoch, params, opt_state)`` for a program whose state is
    ``join(opt_state, average)``: the loop keeps the optimizer state, the holder the average."""
    if holder.average is None:
        return run_epoch

    def run(epoch: int, params: Any, opt_state: Any):
        params, state, *rest = run_epoch(epoch, params, join(opt_state, holder.average))
        opt_state, holder.average = split(state)
        return (params, opt_state, *rest)

    return run
