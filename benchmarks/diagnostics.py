"""What ``fit(diagnostics=True)`` costs: seconds per epoch of the digit network, on and off.

The seeds' digit network, 784-16-16-10 (ReLU, cross entropy from logits), on MNIST-shaped
synthetic data (the same as ``train_epoch.py``: N×784 float32, 10 classes, N = 60000 by
default), trained by ``gradx.fit`` with each optimizer and batch size below, once with
``diagnostics=False`` (the program compiled without them) and once with ``diagnostics=True``
(per step: ‖g‖, ‖u‖, ‖u‖/‖θ‖; per epoch: the 10/50/90% quantiles of α_ef over all
13,002 coordinates).

The two settings are run alternately, ``--repeats`` times each, every run ``--epochs`` epochs
after a compiled warm-up, so that noise on a shared machine hits both alike. Reported: the
median seconds per epoch of each side, their ratio, and the median of the paired ratios (each
repeat's "on" median over its "off" median).

    python benchmarks/diagnostics.py [--n 60000] [--repeats 5] [--epochs 3]
                                     [--optimizers momentum,adam] [--batch-sizes 32,128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from train_epoch import CLASSES, FEATURES, HIDDEN, synthetic

OPTIMIZERS = ("momentum", "adam")
BATCH_SIZES = (32, 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    import gradx
    from gradx import losses

    x_np, y_np = synthetic(args.n)
    data = (jnp.asarray(x_np), jnp.asarray(y_np))
    key = jax.random.key(0)

    params = []
    for k, (a, b) in zip(
        jax.random.split(jax.random.key(1), 3),
        [(FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)],
        strict=True,
    ):
        w = jax.random.normal(k, (a, b), jnp.float32) * np.sqrt(2 / a).astype(np.float32)
        params.append({"w": w, "b": jnp.zeros(b, jnp.float32)})

    def loss_fn(params, batch):
        x, y = batch
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        logits = x @ params[-1]["w"] + params[-1]["b"]
        return losses.categorical_cross_entropy(logits, y)

    def epochs(optimizer, batch, diagnostics):
        result = gradx.fit(
            loss_fn, params, optimizer, data, batch_size=batch, epochs=args.epochs + 1,
            key=key, progress=False, diagnostics=diagnostics,
        )  # fmt: skip
        return list(result.epoch_seconds[1:])  # the first epoch may compile or transfer

    print(f"# {' '.join(sys.argv)}")
    print(
        f"# jax {jax.__version__}, gradx {gradx.__version__}, device {jax.devices()[0]}, "
        f"N={args.n}, repeats={args.repeats}, epochs per run={args.epochs}"
    )
    print(f"{'optimizer':<10} {'B':>4} {'off_s':>8} {'on_s':>8} {'ratio':>7} {'paired':>7}")
    rows = []
    for name in args.optimizers.split(","):
        optimizer = gradx.OPTIMIZERS[name](0.01)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            off, on, paired = [], [], []
            for r in range(args.repeats):
                order = (False, True) if r % 2 == 0 else (True, False)
                times = {d: epochs(optimizer, batch, d) for d in order}
                off += times[False]
                on += times[True]
                paired.append(statistics.median(times[True]) / statistics.median(times[False]))
            row = {
                "optimizer": name,
                "batch_size": batch,
                "off_s": statistics.median(off),
                "on_s": statistics.median(on),
                "paired": statistics.median(paired),
            }
            row["ratio"] = row["on_s"] / row["off_s"]
            rows.append(row)
            print(
                f"{name:<10} {batch:>4} {row['off_s']:>8.3f} {row['on_s']:>8.3f} "
                f"{row['ratio']:>7.3f} {row['paired']:>7.3f}",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
