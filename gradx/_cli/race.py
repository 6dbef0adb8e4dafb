"""The race behind ``python -m gradx race``: every optimizer on classic 2-D problems.

Learning rates are chosen fairly: for each optimizer and problem, one jitted program runs a
log-spaced grid of learning rates side by side (``vmap`` over states whose ``learning_rate``
is batched, one ``lax.scan`` over the steps), and the race keeps the learning rate that
*settles* within the tolerance in the fewest steps. "Settles at step t" means f(θ_s) − f* ≤ tol
for every s ≥ t up to the end of the run, so a run that only passes through the tolerance on
its way elsewhere (oscillating, circling or diverging) does not count as converged. Ties, and
optimizers that never settle, are decided by the lowest final loss; a run whose final loss is
NaN or infinite is never chosen.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradx


@dataclasses.dataclass(frozen=True)
class Problem:
    """A 2-D test problem: a loss of ``p = (x, y)``, a start, and where the minima are."""

    name: str  # the key for --problems
    title: str
    loss: Callable[[Any], Any]  # works on (2,) and, for contours, on (2, H, W) arrays
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    f_min: float
    window: tuple[tuple[float, float], tuple[float, float]]  # (x range, y range) for --plot


_ANGLE = math.pi / 6


_COS, _SIN = math.cos(_ANGLE), math.sin(_ANGLE)


_CENTER = (1.0, 1.0)


def rotated_quadratic(p: Any) -> Any:
    """½(u² + 100·v²) in axes (u, v) rotated by 30° about (1, 1): condition number 100.

    Rotated so that per-coordinate step sizes (Adagrad, RMSProp, Adam) cannot simply undo the
    ill-conditioning, as they could for an axis-aligned ellipse; centred off the origin so that
    weight decay, which pulls towards the origin, gets no free ride.
    """
    dx, dy = p[0] - _CENTER[0], p[1] - _CENTER[1]
    u = _COS * dx + _SIN * dy
    v = -_SIN * dx + _COS * dy
    return 0.5 * (u**2 + 100.0 * v**2)


def rosenbrock(p: Any) -> Any:
    """(1 − x)² + 100·(y − x²)²; minimum 0 at (1, 1) at the end of a curved, flat valley."""
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def beale(p: Any) -> Any:
    """(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²; minimum 0 at (3, 0.5)."""
    x, y = p[0], p[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


PROBLEMS: dict[str, Problem] = {
    problem.name: problem
    for problem in [
        Problem(
            "quadratic",
            "Ill-conditioned quadratic (κ = 100, rotated 30°)",
            rotated_quadratic,
            start=(-3.0, -0.5),
            minima=(_CENTER,),
            f_min=0.0,
            window=((-4.0, 6.0), (-2.5, 4.5)),
        ),
        Problem(
            "rosenbrock",
            "Rosenbrock",
            rosenbrock,
            start=(-1.2, 1.0),
            minima=((1.0, 1.0),),
            f_min=0.0,
            window=((-2.0, 2.0), (-1.0, 3.0)),
        ),
        # Beale rather than Himmelblau: one global minimum, so "steps to tolerance" always
        # means reaching the same point; and its gradient spans orders of magnitude between
        # the steep walls (y³ terms) and the flat valley floor, which separates fixed-step
        # methods from adaptive ones where the other two problems do less.
        Problem(
            "beale",
            "Beale",
            beale,
            start=(1.0, 1.5),
            minima=((3.0, 0.5),),
            f_min=0.0,
            window=((-1.5, 4.5), (-2.0, 3.0)),
        ),
    ]
}


#: The default learning-rate grid: 1e-5 to 100, four points per decade.
LR_GRID = (1e-5, 100.0, 29)


@dataclasses.dataclass(frozen=True)
class Runs:
    """The trajectories of one optimizer on one problem, one row per learning rate."""

    learning_rates: np.ndarray  # (K,)
    path: np.ndarray  # (K, steps + 1, 2): θ_0 ... θ_steps
    loss: np.ndarray  # (K, steps + 1): f(θ_t) − f*


def run_grid(
    opt: optax.GradientTransformation,
    problem: Problem,
    learning_rates: Sequence[float],
    steps: int,
) -> Runs:
    """Runs ``opt`` from ``problem.start`` once per learning rate, in one vmapped program.

    The learning rates are batched into the optimizer state with ``gradx.set_hyperparams``,
    so the whole grid is one ``jit(vmap(lax.scan))``. The loss is passed as ``value=`` for
    optimizers that use it (and ignored by the others).
    """
    opt = optax.with_extra_args_support(opt)
    x0 = jnp.asarray(problem.start, jnp.float32)
    value_and_grad = jax.value_and_grad(problem.loss)

    def one(lr: jax.Array) -> tuple[jax.Array, jax.Array]:
        state = gradx.set_hyperparams(opt.init(x0), learning_rate=lr)

        def step(carry, _):
            x, state = carry
            f, g = value_and_grad(x)
            updates, state = opt.update(g, state, x, value=f)
            return (optax.apply_updates(x, updates), state), (x, f)

        (x, _), (xs, fs) = jax.lax.scan(step, (x0, state), length=steps)
        path = jnp.concatenate([xs, x[None]])
        loss = jnp.concatenate([fs, problem.loss(x)[None]]) - problem.f_min
        return path, loss

    lrs = np.asarray(learning_rates, np.float32)
    path, loss = jax.jit(jax.vmap(one))(lrs)
    return Runs(lrs, np.asarray(path), np.asarray(loss))


@dataclasses.dataclass(frozen=True)
class Result:
    """The learning rate a race chose for one optimizer on one problem, and how it did."""

    optimizer: str
    learning_rate: float | None  # None: every run diverged
    steps: int | None  # steps to settle within tol; None: never
    final_loss: float  # f(θ_steps) − f*; NaN when every run diverged
    at_edge: bool  # the chosen learning rate is an end of the grid
    path: np.ndarray | None  # (steps + 1, 2) at the chosen learning rate


def steps_to_tolerance(loss: np.ndarray, tol: float) -> np.ndarray:
    """Per row of ``loss`` (K, T+1), the first t with loss[t:] ≤ tol throughout; -1: never."""
    within = loss <= tol  # NaN compares False
    settled = np.logical_and.accumulate(within[:, ::-1], axis=1)[:, ::-1]
    return np.where(settled.any(axis=1), settled.argmax(axis=1), -1)


def choose(runs: Runs, tol: float) -> int | None:
    """The index of the learning rate the race keeps, or None when every run diverged.

    Fewest steps to settle within ``tol``; ties and never-settling runs go to the lowest final
    loss. Runs whose final loss is not finite are never chosen.
    """
    final = runs.loss[:, -1]
    steps = steps_to_tolerance(runs.loss, tol)
    finite = np.isfinite(final)
    if not finite.any():
        return None
    never = np.iinfo(np.int64).max
    key_steps = np.where(steps >= 0, steps, never)
    # lexsort sorts by the last key first; non-finite runs go last and are rejected below.
    order = np.lexsort((np.where(finite, final, np.inf), key_steps, ~finite))
    return int(order[0])


def race_one(
    name: str,
    opt: optax.GradientTransformation,
    problem: Problem,
    learning_rates: Sequence[float],
    steps: int,
    tol: float,
) -> Result:
    """Runs the grid for one optimizer on one problem and keeps the best learning rate."""
    runs = run_grid(opt, problem, learning_rates, steps)
    best = choose(runs, tol)
    if best is None:
        return Result(name, None, None, math.nan, False, None)
    settle = int(steps_to_tolerance(runs.loss[best : best + 1], tol)[0])
    return Result(
        optimizer=name,
        learning_rate=float(runs.learning_rates[best]),
        steps=settle if settle >= 0 else None,
        final_loss=float(runs.loss[best, -1]),
        at_edge=best in (0, len(runs.learning_rates) - 1),
        path=runs.path[best],
    )


def contestant(name: str, make: Callable[..., Any]) -> tuple[Any, str | None]:
    """``(optimizer, None)`` when ``make(learning_rate)`` alone builds a raceable optimizer,
    else ``(None, why not)``."""
    try:
        parameters = list(inspect.signature(make).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    if parameters and parameters[0].name != "learning_rate":
        return None, f"a wrapper: its first argument is {parameters[0].name!r}, not learning_rate"
    required = [
        p.name
        for p in parameters[1:]
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if required:
        return None, f"needs more than a learning rate: {', '.join(required)}"
    try:
        opt = make(1e-3)
        keys = gradx.hyperparams(opt.init(jnp.zeros(2, jnp.float32)))
    except Exception as e:  # any reason it cannot be built is a reason to skip it
        return None, f"cannot be built from a learning rate alone: {type(e).__name__}: {e}"
    if "learning_rate" not in keys:
        return None, f"no single 'learning_rate' in its state (it has {sorted(keys)})"
    return opt, None


def format_table(problem: Problem, results: Sequence[Result], steps: int, tol: float) -> str:
    """One problem's table, fastest first."""

    def rank(r: Result) -> tuple:
        final = r.final_loss if math.isfinite(r.final_loss) else math.inf
        return (r.steps is None, r.steps or 0, final)

    x0 = ", ".join(f"{c:g}" for c in problem.start)
    lines = [
        f"{problem.title} from ({x0}): steps until f − f* stays ≤ {tol:g} (of {steps})",
        f"  {'optimizer':<22} {'lr':>9}  {'steps':>6}  {'final loss':>10}",
    ]
    for r in sorted(results, key=rank):
        lr = "—" if r.learning_rate is None else f"{r.learning_rate:.2e}"
        mark = "*" if r.at_edge else " "
        settled = "—" if r.steps is None else str(r.steps)
        lines.append(f"  {r.optimizer:<22} {lr:>9}{mark} {settled:>6}  {r.final_loss:>10.2e}")
    if any(r.at_edge for r in results):
        lines.append("  * the chosen lr is an end of the grid: widen it with --lr-grid")
    return "\n".join(lines)


def plot(
    problems: Sequence[Problem],
    results: dict[str, list[Result]],
    out: str,
) -> None:
    """Draws each problem's trajectories, at their chosen lr, over log-spaced loss contours.

    Needs matplotlib, imported here so that the rest of gradx does not.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    entries = max(len(results[p.name]) for p in problems) + 2  # + start and minimum
    fig = Figure(figsize=(6.0 * len(problems), 5.0 + 0.17 * math.ceil(entries / 2)))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(1, len(problems), squeeze=False)[0]
    for ax, problem in zip(axes, problems, strict=True):
        (x_lo, x_hi), (y_lo, y_hi) = problem.window
        gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, 300), np.linspace(y_lo, y_hi, 300))
        z = np.asarray(problem.loss(np.stack([gx, gy]))) - problem.f_min
        floor = max(float(np.min(z[z > 0])), float(np.max(z)) * 1e-12)
        levels = np.logspace(np.log10(floor), np.log10(float(np.max(z))), 25)
        ax.contour(
            gx,
            gy,
            np.maximum(z, floor),
            levels=levels,
            norm=LogNorm(),
            cmap="viridis",
            linewidths=0.6,
            alpha=0.6,
        )
        rows = [r for r in results[problem.name] if r.path is not None]
        colors = _colors(len(rows))
        for r, color in zip(rows, colors, strict=True):
            settled = "—" if r.steps is None else r.steps
            label = f"{r.optimizer} (lr {r.learning_rate:.1e}, {settled} steps)"
            ax.plot(r.path[:, 0], r.path[:, 1], "-", color=color, lw=1.2, label=label)
            ax.plot(r.path[-1, 0], r.path[-1, 1], "o", color=color, ms=3)
        ax.plot(*problem.start, "ks", ms=6, label="start")
        mx, my = zip(*problem.minima, strict=True)
        ax.plot(mx, my, "r*", ms=14, mec="k", label="minimum")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_title(problem.title)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    try:
        fig.savefig(out, dpi=110)
    except (OSError, ValueError) as e:
        raise PlotError(str(e)) from None


class PlotError(RuntimeError):
    """The plot could not be written (a bad path or file type); the command says why."""


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    # tab20's even entries are ten distinct colours, its odd entries their light twins.
    cmap = colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return [cmap(order[i % 20]) for i in range(n)]
