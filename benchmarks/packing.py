"""Where packing pays: fit and sweep steps, packed / leaf by leaf, in the same run.

    python benchmarks/packing.py [--leaves 200] [--sizes 16,64,256,1024,4096]
                                 [--points fit,1,4,16] [--steps 1000] [--epochs 5] [--rounds 3]

The params are ``--leaves`` vectors of n elements (n from ``--sizes``); the loss is
Σᵢ s·⟨θᵢ, θᵢ⟩ with s the minibatch's mean, so the optimizer (Adam) is most of a step's work.
For each ``--points`` value the program is ``gradx.fit`` ("fit") or a ``gradx.sweep`` over that
many learning rates at once (one vmapped program of K points). The packed side is
``gradx.flat(adam, max_leaf_size=None)`` (every leaf packed, whatever fit's own rule would
do), the other ``adam``; both with ``flat=False`` (a flat optimizer runs as it is).

Each round runs both sides, in alternating order; a side's step time is its fastest epoch
after the first (divided by ``--steps``), its first epoch includes the compilation. A row
shows the median over rounds of the ratios packed / leaf by leaf. This is the worst case
for packing: the optimizer is nearly all of a step.

``--digits`` instead times a real sweep: the digits network (64-16-16-10, 6 leaves of at
most 1,024 elements), Adam, an 81-point grid (3 values each of learning_rate, b1, b2, eps)
in one vmapped program, 27 epochs of 28 steps, as fit's default packs it and with
``flat=False``; ``--rounds`` runs of each, alternating, a fresh ``loss_fn`` each (no
program reuse), medians.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import gradx


def run(points: str, flat: bool, leaves: int, n: int, steps: int, epochs: int):
    """(first epoch s, fastest later epoch per step µs) of one side."""
    params = {f"w{i:04d}": jnp.full((n,), 0.01 * (i + 1), jnp.float32) for i in range(leaves)}
    data = jnp.linspace(-1.0, 1.0, 4 * steps, dtype=jnp.float32)[:, None]

    def loss(p, batch):
        s = batch.mean()
        return sum(jnp.vdot(v, v) * s for v in jax.tree.leaves(p))

    adam = gradx.adam(1e-3)
    opt = gradx.flat(adam, max_leaf_size=None) if flat else adam
    common = dict(batch_size=4, epochs=epochs, key=jax.random.key(0), progress=False)
    if points == "fit":
        r = gradx.fit(loss, params, opt, data, flat=False, **common)
        seconds = r.epoch_seconds
    else:
        lrs = np.geomspace(1e-4, 1e-2, int(points)).astype(np.float32)
        r = gradx.sweep(loss, params, opt, data, {"learning_rate": lrs}, flat=False, **common)
        seconds = r.epoch_seconds[0]
    return float(seconds[0]), float(np.min(seconds[1:])) / steps * 1e6


def digits(rounds: int) -> None:
    from sklearn.datasets import load_digits

    from gradx.losses import categorical_cross_entropy

    x, y = load_digits(return_X_y=True)
    x = ((x - x.mean(0)) / np.maximum(x.std(0), 1.0)).astype(np.float32)[:919]
    data = (x, y.astype(np.int32)[:919])
    sizes = (64, 16, 16, 10)
    keys = jax.random.split(jax.random.key(0), 3)
    params = [
        {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    f32 = lambda *v: np.asarray(v, np.float32)
    grid = {"learning_rate": f32(1e-4, 3e-3, 1e-1), "b1": f32(0.5, 0.9, 0.99),
            "b2": f32(0.9, 0.99, 0.999), "eps": f32(1e-8, 1e-6, 1e-4)}  # fmt: skip
    times: dict[bool | None, list[tuple[float, float, float]]] = {None: [], False: []}
    for r in range(rounds):
        for flat in (None, False) if r % 2 == 0 else (False, None):

            def loss_fn(p, batch):
                h = batch[0]
                for layer in p[:-1]:
                    h = jax.nn.relu(h @ layer["w"] + layer["b"])
                return categorical_cross_entropy(h @ p[-1]["w"] + p[-1]["b"], batch[1])

            t = time.perf_counter()
            out = gradx.sweep(
                loss_fn,
                params,
                gradx.adam(1e-3),
                data,
                grid,
                batch_size=32,
                epochs=27,
                key=jax.random.key(1),
                progress=False,
                flat=flat,
            )
            e = out.epoch_seconds[0]
            times[flat].append((time.perf_counter() - t, e[0], float(np.median(e[1:]))))
    print("| digits, 81-point sweep | total s | first epoch s | later epoch ms |")
    print("|---|---:|---:|---:|")
    for flat, name in [(None, "packed (default)"), (False, "flat=False")]:
        total, first, later = (statistics.median(v) for v in zip(*times[flat], strict=True))
        print(f"| {name} | {total:.2f} | {first:.2f} | {later * 1e3:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=200)
    parser.add_argument("--sizes", default="16,64,256,1024,4096")
    parser.add_argument("--points", default="fit,1,4,16", help="'fit' or sweep widths K")
    parser.add_argument("--steps", type=int, default=1000, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--digits", action="store_true", help="the digits sweep instead")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (the first compiles), got {args.epochs}")
    sizes = [int(s) for s in args.sizes.split(",")]
    print("$ python " + shlex.join(sys.argv))
    if args.digits:
        return digits(args.rounds)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.leaves} leaves, Adam")
    print("| program | n | K·n | step packed / leaf | packed step µs | first epoch packed / leaf |")
    print("|---|---:|---:|---:|---:|---:|")
    for points in args.points.split(","):
        k = 1 if points == "fit" else int(points)
        for n in sizes:
            step_ratios, first_ratios, packed_steps = [], [], []
            for r in range(args.rounds):
                order = (True, False) if r % 2 == 0 else (False, True)
                out = {f: run(points, f, args.leaves, n, args.steps, args.epochs) for f in order}
                step_ratios.append(out[True][1] / out[False][1])
                first_ratios.append(out[True][0] / out[False][0])
                packed_steps.append(out[True][1])
            name = "fit" if points == "fit" else f"sweep K={k}"
            print(
                f"| {name} | {n} | {k * n} | {statistics.median(step_ratios):.2f}× "
                f"({min(step_ratios):.2f}–{max(step_ratios):.2f}) | "
                f"{statistics.median(packed_steps):.0f} | {statistics.median(first_ratios):.2f}× |",
                flush=True,
            )


if __name__ == "__main__":
    main()
