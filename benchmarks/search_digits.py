"""Grid vs random search vs successive halving vs PBT on the digits network (gradx.search).

The network and data of ``python -m gradx compare``: 64-16-16-10 ReLU on scikit-learn's
8×8 digits, trained on the ``sub`` split and scored on the ``val`` split (the test split is
used once per method, below). Adam, minibatches of 32, ``--epochs`` (27) epochs.

1. **Random vs grid, same budget.** Four hyperparameters of Adam: learning_rate
   log-uniform on [1e-4, 1e-1), b1 uniform on [0.5, 0.99), b2 uniform on [0.9, 0.9999),
   eps log-uniform on [1e-10, 1e-1). Random search draws ``--samples`` (81) points; the grid
   has 3 values per axis (the centres of three equal cells, in log scale for the log axes),
   3⁴ = 81 points, one ``gradx.sweep``. The grid tries 3 learning rates, random search 81.
2. **Successive halving vs full random search on the same 81 samples** (the same key draws
   the same points): η = 3, rungs after 1, 3 and 9 epochs (81 → 27 → 9 → 3 members).
3. **PBT vs the best fixed learning rate.** 16 learning rates log-spaced on [1e-4, 1e-1)
   (b1, b2, eps at Adam's defaults) in one ``gradx.sweep``, against PBT over the learning
   rate with 16 members (log-uniform start on the same range, exploit every 3 epochs, the
   worst quarter copies the best quarter, ×0.8/×1.25, resampling with probability 0.25).

Each method's chosen configuration (PBT: its discovered schedule, replayed with
``SearchResult.replay``) is then retrained by ``gradx.fit`` on the whole training set and
scored on the test set, as ``compare`` does. Every method is run with ``--seeds`` keys (the
shuffles, the samples and PBT's draws; the initial weights are the same); the table gives the
mean and the range over the seeds, and the median seconds of a search over the seeds after the
first (whose time includes compiling the programs).

    python benchmarks/search_digits.py [--seeds 10] [--epochs 27] [--plot docs/search.png]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import numpy as np

import gradx
from gradx._cli import compare as _compare
from gradx._cli import data as _data
from gradx.search_space import loguniform, uniform

SPACE = {
    "learning_rate": loguniform(1e-4, 1e-1),
    "b1": uniform(0.5, 0.99),
    "b2": uniform(0.9, 0.9999),
    "eps": loguniform(1e-10, 1e-1),
}


def grid_axes(per_axis: int) -> dict[str, np.ndarray]:
    """The centres of ``per_axis`` equal cells of each axis of SPACE (log axes in log)."""
    centres = (np.arange(per_axis) + 0.5) / per_axis
    axes = {}
    for name, dist in SPACE.items():
        lo, hi = dist.low, dist.high
        if dist.log:
            axes[name] = np.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * centres)
        else:
            axes[name] = lo + (hi - lo) * centres
    return {n: a.astype(np.float32) for n, a in axes.items()}


def setup(seed: int = 0):
    data = _data.make_dataset("digits", _data.default_cache_dir())
    loss_fn, select_eval, final_eval = _compare._functions("relu")
    params = _compare.init_mlp(jax.random.key(seed), (64, 16, 16, 10), "relu")
    return data, loss_fn, select_eval, final_eval, params


def test_accuracy(setup_, values, epochs, key, schedule=None):
    """Retrains ``values`` (or replays a PBT schedule) on the training set; test accuracy."""
    data, loss_fn, _, final_eval, params = setup_
    kw = dict(batch_size=32, key=key, eval_fn=final_eval, progress=False,
              eval_data=(tuple(data.train), tuple(data.test)))  # fmt: skip
    if schedule is not None:
        result, member = schedule
        run = result.replay(member, loss_fn, params, gradx.adam(1e-3), tuple(data.train), **kw)
    else:
        run = gradx.fit(loss_fn, params, gradx.adam(**values), tuple(data.train),
                        epochs=epochs, **kw)  # fmt: skip
    return float(run.history["test_accuracy"][-1])


def one_seed(setup_, seed: int, epochs: int, samples: int) -> dict:
    data, loss_fn, select_eval, _, params = setup_
    key = jax.random.key(1000 + seed)
    kw = dict(batch_size=32, epochs=epochs, key=key, eval_fn=select_eval,
              eval_data=tuple(data.val), progress=False)  # fmt: skip
    search_kw = dict(kw, metric="val_accuracy", mode="max")
    out = {}

    def record(name, run, best, seconds, values, schedule=None):
        out[name] = {
            "val_accuracy": best.score,
            "values": values,
            "model_epochs": int(getattr(run, "model_epochs", 0)) or int(len(run) * epochs),
            "seconds": seconds,
            "test_accuracy": test_accuracy(setup_, values, epochs, key, schedule),
            "history": run.history["val_accuracy"],
        }

    t0 = time.perf_counter()
    per_axis = round(samples ** (1 / len(SPACE)))
    grid = gradx.sweep(
        loss_fn, params, gradx.adam(1e-3), tuple(data.sub), grid_axes(per_axis), **kw
    )
    best = grid.best("val_accuracy", "max")
    record("grid", grid, best, time.perf_counter() - t0, best.values)
    out["grid"]["grid"] = {n: v.tolist() for n, v in grid.grid.items()}

    for method, extra in (("random", {}), ("halving", {"eta": 3, "min_epochs": 1})):
        t0 = time.perf_counter()
        run = gradx.search(loss_fn, params, gradx.adam(1e-3), tuple(data.sub), SPACE, method=method,
                           num_samples=samples, **extra, **search_kw)  # fmt: skip
        best = run.best("val_accuracy", "max")
        record(method, run, best, time.perf_counter() - t0, best.values)
        out[method]["samples"] = {n: v.tolist() for n, v in run.samples.items()}
        out[method]["population"] = run.population.tolist()

    lrs = np.logspace(-4, -1, 16, endpoint=False, dtype=np.float32)
    t0 = time.perf_counter()
    fixed = gradx.sweep(loss_fn, params, gradx.adam(1e-3), tuple(data.sub), {"learning_rate": lrs},
                        **kw)  # fmt: skip
    best = fixed.best("val_accuracy", "max")
    record("fixed_lr", fixed, best, time.perf_counter() - t0, best.values)

    t0 = time.perf_counter()
    pbt = gradx.search(loss_fn, params, gradx.adam(1e-3), tuple(data.sub),
                       {"learning_rate": SPACE["learning_rate"]}, method="pbt", num_samples=16,
                       ready=3, **search_kw)  # fmt: skip
    best = pbt.best("val_accuracy", "max")
    record("pbt", pbt, best, time.perf_counter() - t0, best.values, schedule=(pbt, best.index))
    out["pbt"]["trajectory"] = pbt.trajectory["learning_rate"].tolist()
    out["pbt"]["schedule"] = [
        (s.start, s.stop, s.values["learning_rate"]) for s in pbt.schedule(best.index)
    ]
    out["fixed_lr"]["history_best"] = fixed.history["val_accuracy"][
        fixed.best("val_accuracy", "max").index
    ].tolist()
    return out


ROWS = (
    ("grid", "grid 3⁴, 4 hyperparameters"),
    ("random", "random search, 4 hyperparameters"),
    ("halving", "successive halving (η = 3), same samples"),
    ("fixed_lr", "best fixed learning rate (16-point grid)"),
    ("pbt", "PBT over the learning rate, 16 members"),
)


def table(runs: list[dict]) -> str:
    lines = [
        "| method | model-epochs | best val accuracy % | test accuracy % (retrained) | seconds |",
        "|---|---:|---:|---:|---:|",
    ]

    def cell(values, pct=True):
        v = np.asarray(values) * (100 if pct else 1)
        fmt = "{:.1f}" if pct else "{:.0f}"
        if len(v) == 1:
            return fmt.format(v[0])
        return f"{fmt.format(v.mean())} ({fmt.format(v.min())}–{fmt.format(v.max())})"

    for key, label in ROWS:
        rows = [r[key] for r in runs]
        lines.append(
            f"| {label} | {rows[0]['model_epochs']} | {cell([r['val_accuracy'] for r in rows])} | "
            f"{cell([r['test_accuracy'] for r in rows])} | "
            f"{np.median([r['seconds'] for r in rows[1:] or rows]):.1f} |"
        )
    return "\n".join(lines)


def plot(run: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    g, r = run["grid"], run["random"]
    ax.scatter(r["samples"]["learning_rate"], r["history"][:, -1], s=14, label="random (81 lrs)")
    ax.scatter(g["grid"]["learning_rate"], g["history"][:, -1], s=14, marker="x",
               label="grid 3⁴ (3 lrs)")  # fmt: skip
    ax.set(xscale="log", xlabel="learning rate", ylabel="final val accuracy",
           title="random vs grid: 81 runs each, 4 hyperparameters", ylim=(0, 1))  # fmt: skip
    ax.legend()

    ax = axes[0, 1]
    h = run["halving"]["history"]
    epochs = np.arange(1, h.shape[1] + 1)
    for row in h:
        ax.plot(epochs, row, lw=0.7, color="C1" if np.isfinite(row[-1]) else "0.6")
    ax.set(xscale="log", xlabel="epoch", ylabel="val accuracy", ylim=(0, 1),
           title=f"successive halving: {run['halving']['model_epochs']} model-epochs "
           f"(random: {run['random']['model_epochs']})")  # fmt: skip

    ax = axes[1, 0]
    traj = np.asarray(run["pbt"]["trajectory"])
    for row in traj:
        ax.step(epochs, row, where="post", lw=0.7, color="0.6")
    sched = run["pbt"]["schedule"]
    xs = [s[0] + 1 for s in sched] + [sched[-1][1]]
    ax.step(xs, [s[2] for s in sched] + [sched[-1][2]], where="post", color="C3", lw=2,
            label="the best member's schedule")  # fmt: skip
    ax.axhline(run["fixed_lr"]["values"]["learning_rate"], color="C0", ls="--",
               label="best fixed learning rate")  # fmt: skip
    ax.set(yscale="log", xlabel="epoch", ylabel="learning rate",
           title="PBT: learning-rate trajectories of 16 members")  # fmt: skip
    ax.legend()

    ax = axes[1, 1]
    p = run["pbt"]["history"]
    ax.plot(epochs, np.nanmax(p, axis=0), color="C3", label="PBT, best member at each epoch")
    ax.plot(epochs, np.nanmedian(p, axis=0), color="C3", ls=":", label="PBT, population median")
    ax.plot(epochs, run["fixed_lr"]["history_best"], color="C0", ls="--",
            label="best fixed learning rate")  # fmt: skip
    ax.set(xlabel="epoch", ylabel="val accuracy", ylim=(0.8, 1.0),
           title="PBT vs the best fixed learning rate")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--samples", type=int, default=81)
    parser.add_argument("--plot", default=None, help="write the figure (seed 0) here")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args()
    setup_ = setup()
    runs = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        runs.append(one_seed(setup_, seed, args.epochs, args.samples))
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(table(runs))
    for key, _ in ROWS:
        print(key, [
            {n: float(f"{v:.3g}") for n, v in r[key]["values"].items()} for r in runs
        ])  # fmt: skip
    if args.plot:
        plot(runs[0], args.plot)
    if args.json:

        def plain(x):
            if isinstance(x, np.ndarray):
                return x.tolist()
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            return x

        with open(args.json, "w") as f:
            json.dump(plain(runs), f)


if __name__ == "__main__":
    main()
