"""Seconds per epoch of gradx.fit on 1, 2, 4 and 8 devices, data-parallel and FSDP.

Two networks, trained with Adam (lr 1e-3), minibatches of ``--batch`` (128) examples:

* ``digits``: the seeds' network 64-16-16-10 (ReLU) on scikit-learn's 1,437 training digits;
* ``wide``: 784-1024-1024-10 (ReLU) on ``--n`` (4096) random MNIST-shaped examples.

Modes: ``dp`` (``fit(mesh=mesh)``: batch split over the devices, params and state
replicated) and ``fsdp`` (``fit(mesh=mesh, shard_params=gradx.fsdp(mesh))``: every matrix and
its Adam moments split along the largest axis as well).

Each device count runs in its own interpreter, since the device count is fixed when jax is
imported; on a CPU machine the devices are simulated with
``XLA_FLAGS=--xla_force_host_platform_device_count=D``. **Simulated CPU devices share the same
cores**, so on a CPU the table measures the partitioning's overhead (collectives, smaller
kernels), not a speed-up; run it on a machine with several accelerators for that. Each figure
is the median over ``--epochs`` epochs after one warm-up epoch (which compiles).

    python benchmarks/scaling.py [--devices 1,2,4,8] [--epochs 3] [--n 4096] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def run_one(devices: int, epochs: int, n: int, batch: int) -> list[dict]:
    """In this interpreter, with ``devices`` devices: one row per (network, mode)."""
    import statistics

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import gradx
    from gradx._cli import compare as _compare
    from gradx._cli import data as _data

    assert jax.device_count() >= devices, (jax.device_count(), devices)
    mesh = jax.make_mesh(
        (devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.devices()[:devices],
    )  # fmt: skip

    def loss_fn(params, batch):
        x, y = batch
        logits = _compare.mlp(params, x, "relu")
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    train, _ = _data.load_digits()
    x_digits = _data._standardize(train.x, train.x)[0]
    rng = np.random.default_rng(0)
    problems = {
        "digits 64-16-16-10": ((64, 16, 16, 10), (x_digits, train.y)),
        "wide 784-1024-1024-10": (
            (784, 1024, 1024, 10),
            (
                rng.normal(size=(n, 784)).astype(np.float32),
                rng.integers(0, 10, size=n).astype(np.int32),
            ),
        ),
    }
    rows = []
    for name, (sizes, data) in problems.items():
        params = _compare.init_mlp(jax.random.key(0), sizes, "relu")
        for mode in ("dp", "fsdp"):
            shard = gradx.fsdp(mesh) if mode == "fsdp" else None
            result = gradx.fit(
                loss_fn, params, gradx.adam(1e-3), data, batch_size=batch, epochs=epochs + 1,
                key=jax.random.key(1), mesh=mesh, shard_params=shard, progress=False,
            )  # fmt: skip
            seconds = statistics.median(result.epoch_seconds[1:])
            rows.append(
                {
                    "network": name,
                    "mode": mode,
                    "devices": devices,
                    "epoch_s": seconds,
                    "steps": result.steps_per_epoch,
                    "final_loss": float(result.history["loss"][-1]),
                }
            )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.epochs, args.n, args.batch)))
        return 0
    rows = []
    for d in (int(x) for x in args.devices.split(",")):
        env = dict(os.environ)
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={d}".strip()
        cmd = [sys.executable, __file__, "--child", str(d), "--epochs", str(args.epochs)]
        cmd += ["--n", str(args.n), "--batch", str(args.batch)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            sys.stderr.write(out.stderr[-3000:])
            return out.returncode
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    base = {
        (r["network"], r["mode"]): r["epoch_s"] for r in rows if r["devices"] == rows[0]["devices"]
    }
    print("| network | mode | devices | steps/epoch | epoch s | vs first | final loss |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["network"], r["mode"], r["devices"])):
        ratio = r["epoch_s"] / base[(r["network"], r["mode"])]
        print(
            f"| {r['network']} | {r['mode']} | {r['devices']} | {r['steps']} | "
            f"{r['epoch_s']:.3f} | {ratio:.2f}× | {r['final_loss']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
