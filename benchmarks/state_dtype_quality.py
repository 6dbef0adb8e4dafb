"""Test accuracy of Adam per ``state_dtype`` on MNIST-sized data: do 8- and 16-bit moments
train as well as float32 ones at that scale?

    python benchmarks/state_dtype_quality.py [--data synthetic|mnist] [--epochs 20]
                                             [--seeds 3] [--batch-size 128] [--n-train 60000]
                                             [--optimizer adam|lion|sgd] [--lr 1e-3]

An MLP 784-256-256-10 (ReLU, He init; 269,322 params, every weight matrix and the 256-wide
biases stored as int8 blocks under ``state_dtype="int8"``) trained with
``gradx.fit(..., gradx.adam(1e-3, **policy))`` for each policy (float32, bfloat16, bfloat16
with stochastic rounding, int8) and seed, on the same shuffles per seed; ``--optimizer``
trains with ``gradx.lion(lr)`` or ``gradx.sgd(lr, 0.99)`` instead (slow averages: Lion's m
decays by 0.99 a step, as does SGD's momentum buffer). Reported per
policy: the final test accuracy of each seed, their mean, and the difference from float32's
mean in points, and the final training loss.

``--data mnist`` reads MNIST from gradx's cache (``python -m gradx compare --data mnist``
downloads it once; offline, a clear error). ``--data synthetic`` (the default, offline) is
MNIST's shape made by scikit-learn: ``make_classification`` with 70,000 samples (60,000 to
train, 10,000 to test), 784 features of which 64 informative, 10 classes of 2 clusters each
3.0 apart (``class_sep``), 1% of the labels flipped; standardised with the training set's
statistics. Its float32 MLP reaches about 96.7% test accuracy in 20 epochs, about where an
MLP lands on MNIST. The network is ``python -m gradx compare``'s MLP at these sizes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradx
from gradx._cli.compare import init_mlp, mlp
from gradx._cli.data import CompareError, default_cache_dir, make_dataset
from gradx.losses import categorical_cross_entropy

POLICIES: dict[str, dict[str, Any]] = {
    "float32": {},
    "bfloat16": {"state_dtype": "bfloat16"},
    "bfloat16 + SR": {"state_dtype": "bfloat16", "stochastic_rounding": True},
    "int8": {"state_dtype": "int8"},
}
SIZES = (784, 256, 256, 10)
# --optimizer: (its name in the report, a builder from the learning rate and the policy)
OPTIMIZERS: dict[str, tuple[str, Any]] = {
    "adam": ("Adam", lambda lr, **kw: gradx.adam(lr, **kw)),
    "lion": ("Lion", lambda lr, **kw: gradx.lion(lr, **kw)),
    "sgd": ("SGD with momentum 0.99", lambda lr, **kw: gradx.sgd(lr, 0.99, **kw)),
}


def synthetic(n_train: int) -> tuple[Any, Any]:
    from sklearn.datasets import make_classification

    n_test = min(10_000, max(n_train // 6, 100))  # MNIST's 10,000 at its 60,000
    x, y = make_classification(
        n_samples=n_train + n_test,
        n_features=784,
        n_informative=64,
        n_redundant=0,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=3.0,
        flip_y=0.01,
        random_state=0,
    )
    x = x.astype(np.float32)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    x = (x - mean) / np.where(std > 0, std, 1)
    y = y.astype(np.int32)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def mnist(n_train: int) -> tuple[Any, Any]:
    data = make_dataset("mnist", default_cache_dir())
    return (data.train.x[:n_train], data.train.y[:n_train]), (data.test.x, data.test.y)


def loss_fn(params: Any, batch: Any) -> jax.Array:
    x, y = batch
    return categorical_cross_entropy(mlp(params, x, "relu"), y)


def eval_fn(params: Any, data: Any) -> dict[str, jax.Array]:
    x, y = data
    return {"test_accuracy": jnp.mean(jnp.argmax(mlp(params, x, "relu"), -1) == y)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("synthetic", "mnist"), default="synthetic")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=60_000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    args = parser.parse_args(argv)
    for name in ("epochs", "seeds", "batch_size", "n_train"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    shown = shlex.join(sys.argv[1:] if argv is None else argv)
    print("$ python benchmarks/state_dtype_quality.py", shown)
    print(f"jax {jax.__version__}, device {jax.devices()[0]}")
    start = time.perf_counter()
    try:
        train, test = synthetic(args.n_train) if args.data == "synthetic" else mnist(args.n_train)
    except CompareError as e:  # MNIST not cached and no network: say so, no traceback
        parser.exit(2, f"state_dtype_quality.py: {e}\n")
    n_features = train[0].shape[1]
    print(f"{args.data}: {len(train[1]):,} train, {len(test[1]):,} test, {n_features} features")
    rule, build = OPTIMIZERS[args.optimizer]
    results = {}
    for name, kw in POLICIES.items():
        runs = [
            gradx.fit(
                loss_fn,
                init_mlp(jax.random.key(seed), SIZES, "relu"),
                build(args.lr, **kw),
                train,
                batch_size=args.batch_size,
                epochs=args.epochs,
                key=jax.random.key(100 + seed),
                eval_fn=eval_fn,
                eval_data=test,
                progress=False,
            ).history
            for seed in range(args.seeds)
        ]
        accuracy = np.array([float(h["test_accuracy"][-1]) for h in runs])
        loss = np.array([float(h["loss"][-1]) for h in runs])
        results[name] = accuracy, loss
    ref = results["float32"][0].mean()
    print(f"\n{args.epochs} epochs, batch {args.batch_size}, {rule} lr {args.lr}, MLP {SIZES}")
    print(f"{args.seeds} seeds, {time.perf_counter() - start:.0f} s in all\n")
    print("| state | test accuracy per seed | mean | vs float32 | final training loss (mean) |")
    print("|---|---|---:|---:|---:|")
    for name, (accuracy, loss) in results.items():
        seeds = " ".join(f"{a:.4f}" for a in accuracy)
        diff = 100 * (accuracy.mean() - ref)
        print(f"| {name} | {seeds} | {accuracy.mean():.4f} | {diff:+.2f} pt | {loss.mean():.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
