"""Seconds per training epoch: gradx.fit vs a Python loop vs torch.optim; sweep vs sequential.

The seeds' digit network, 784-16-16-10 (ReLU, cross entropy from logits), on MNIST-shaped
synthetic data (N×784 float32 inputs, 10 classes; N = 60000 by default), trained with heavy-ball
momentum (lr 0.01, μ 0.9) in every contender:

* ``gradx.fit``: one compiled program per epoch (``lax.scan`` over the minibatches).
* ``python loop``: the optax-tutorial loop: a jitted step per minibatch, called from Python,
  with each minibatch cut from NumPy arrays on the host (``x[idx]``) as a data loader does.
* ``python loop, device data``: the same loop with the data already on the device and the
  minibatch gathered there (no host-to-device copy per step).
* ``torch.optim``: ``nn.Sequential`` + ``torch.optim.SGD(momentum=0.9)``, a minibatch loop over
  ``torch.randperm``. It runs when ``import torch`` works, or in another interpreter given by
  ``--torch-python`` (torch is not a gradx dependency); otherwise it is skipped.
* ``gradx.sweep`` over 8 learning rates (one vmapped program) vs 8 sequential ``gradx.fit``
  runs (which share one compiled program: the learning rate lives in the state).

Each figure is the median over ``--repeats`` epochs after one warm-up epoch (which compiles).

    python benchmarks/train_epoch.py [--n 60000] [--repeats 3] [--torch-python PATH] [--no-torch]

It prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FEATURES, HIDDEN, CLASSES = 784, 16, 10
LR, MOMENTUM = 0.01, 0.9
SWEEP_LRS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def synthetic(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    w = rng.standard_normal((FEATURES, CLASSES), dtype=np.float32)
    y = np.argmax(x @ w, axis=1).astype(np.int32)  # learnable labels
    return x, y


# ----------------------------------------------------------------------------- torch


def bench_torch(n: int, batch_sizes: list[int], repeats: int) -> dict[str, float]:
    import torch

    x_np, y_np = synthetic(n)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np).long()
    out = {}
    for batch in batch_sizes:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, CLASSES),
        )
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            order = torch.randperm(n)
            for i in range(n // batch):
                idx = order[i * batch : (i + 1) * batch]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
            times.append(time.perf_counter() - start)
        out[str(batch)] = statistics.median(times[1:])
    out["version"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    return out


def torch_figures(args) -> dict[str, float] | None:
    if args.no_torch:
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        if not args.torch_python:
            return None
        command = [args.torch_python, __file__, "--torch-only", "--n", str(args.n)]
        command += ["--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"torch run failed, skipped:\n{done.stderr}", file=sys.stderr)
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])
    return bench_torch(args.n, BATCH_SIZES, args.repeats)


BATCH_SIZES = [32, 128]


# ----------------------------------------------------------------------------- jax


def bench_jax(n: int, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import gradx
    from gradx import losses

    x_np, y_np = synthetic(n)
    data = (jnp.asarray(x_np), jnp.asarray(y_np))
    key = jax.random.key(0)

    def init(key):
        params = []
        for k, (a, b) in zip(
            jax.random.split(key, 3),
            [(FEATURES, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)],
            strict=True,
        ):
            w = jax.random.normal(k, (a, b), jnp.float32) * np.sqrt(2 / a).astype(np.float32)
            params.append({"w": w, "b": jnp.zeros(b, jnp.float32)})
        return params

    def loss_fn(params, batch):
        x, y = batch
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        logits = x @ params[-1]["w"] + params[-1]["b"]
        return losses.categorical_cross_entropy(logits, y)

    params = init(jax.random.key(1))
    optimizer = gradx.momentum(LR, momentum=MOMENTUM)
    out: dict[str, float] = {}

    def median_epoch(seconds):
        return statistics.median(seconds[1:])

    for batch in BATCH_SIZES:
        fit = gradx.fit(
            loss_fn, params, optimizer, data, batch_size=batch, epochs=repeats + 1, key=key,
            progress=False,
        )  # fmt: skip
        out[f"fit/{batch}"] = median_epoch(list(fit.epoch_seconds))

        @jax.jit
        def step(params, opt_state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        for variant in ("host", "device"):
            p = jax.tree.map(jnp.copy, params)
            s = optimizer.init(p)
            rng = np.random.default_rng(0)
            times = []
            for _ in range(repeats + 1):
                start = time.perf_counter()
                order = rng.permutation(n)
                for i in range(n // batch):
                    idx = order[i * batch : (i + 1) * batch]
                    if variant == "host":
                        b = (x_np[idx], y_np[idx])
                    else:
                        b = (data[0][idx], data[1][idx])
                    p, s, loss = step(p, s, b)
                loss.block_until_ready()
                times.append(time.perf_counter() - start)
            out[f"loop-{variant}/{batch}"] = median_epoch(times)

    batch = 128
    start = time.perf_counter()
    swept = gradx.sweep(
        loss_fn, params, optimizer, data, {"learning_rate": np.asarray(SWEEP_LRS, np.float32)},
        batch_size=batch, epochs=repeats + 1, key=key, progress=False,
    )  # fmt: skip
    out["sweep/total"] = time.perf_counter() - start
    out["sweep/epoch"] = median_epoch(list(swept.epoch_seconds[0]))
    start = time.perf_counter()
    per_epoch = 0.0
    for lr in SWEEP_LRS:
        one = gradx.fit(
            loss_fn, params, gradx.momentum(lr, momentum=MOMENTUM), data, batch_size=batch,
            epochs=repeats + 1, key=key, progress=False,
        )  # fmt: skip
        per_epoch += median_epoch(list(one.epoch_seconds))
    out["sequential/total"] = time.perf_counter() - start
    out["sequential/epoch"] = per_epoch
    out["jax"] = jax.__version__
    out["device"] = str(jax.devices()[0])
    return out


# ----------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60000, help="examples (default 60000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (median)")
    parser.add_argument("--torch-python", help="a Python with torch, if this one has none")
    parser.add_argument("--no-torch", action="store_true", help="skip torch even if present")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_only:
        print(json.dumps(bench_torch(args.n, BATCH_SIZES, args.repeats)))
        return 0

    command = "python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]])
    jax_figures = bench_jax(args.n, args.repeats)
    torch_result = torch_figures(args)

    print(f"$ {command}")
    print(
        f"MNIST-shaped synthetic data {args.n}×{FEATURES}, MLP 784-16-16-10 (relu), momentum "
        f"SGD; median of {args.repeats} epochs after a warm-up; jax {jax_figures['jax']} on "
        f"{jax_figures['device']}, {os.cpu_count()} CPU cores"
        + (
            f"; torch {torch_result['version']} ({torch_result['threads']} threads)"
            if torch_result
            else "; torch not available (skipped)"
        )
    )
    print()
    rows = [("contender", "batch", "s/epoch", "vs gradx.fit")]
    for batch in BATCH_SIZES:
        fit = jax_figures[f"fit/{batch}"]
        contenders = [
            ("gradx.fit", fit),
            ("python loop (host batches)", jax_figures[f"loop-host/{batch}"]),
            ("python loop (device data)", jax_figures[f"loop-device/{batch}"]),
        ]
        if torch_result:
            contenders.append(("torch.optim loop", torch_result[str(batch)]))
        for name, seconds in contenders:
            rows.append((name, str(batch), f"{seconds:.3f}", f"{seconds / fit:.1f}×"))
    seq, swp = jax_figures["sequential/epoch"], jax_figures["sweep/epoch"]
    rows.append(("8 sequential gradx.fit", "128", f"{seq:.3f}", ""))
    rows.append(("gradx.sweep, 8 lrs", "128", f"{swp:.3f}", f"{seq / swp:.1f}× faster"))
    for i, r in enumerate(rows):
        print("| " + " | ".join(r) + " |")
        if i == 0:
            print("|---|---:|---:|---:|")
    print()
    print(
        f"wall time incl. compilation: sweep {jax_figures['sweep/total']:.1f} s, "
        f"8 sequential fits {jax_figures['sequential/total']:.1f} s "
        f"({jax_figures['sequential/total'] / jax_figures['sweep/total']:.1f}×)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
