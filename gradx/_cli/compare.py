"""``python -m gradx compare``: every optimizer trains the seeds' digit network, fairly.

The network is seed 004's 784-16-16-10 multilayer perceptron; on scikit-learn's bundled
8×8 digits (the default, offline) its input layer is 64 wide: 64-16-16-10. Hidden
activations are ReLU by default (``--activation`` picks any of seed 001's sigmoid, tanh,
relu, elu from ``jax.nn``): with only 16 units per layer and a fixed budget of a few dozen
epochs, sigmoid units saturate and turn the race into a race out of the plateau, which
plain SGD loses at any learning rate; ReLU lets every optimizer reach a useful accuracy, so
the table compares optimizers rather than their luck with saturation. Inputs are
standardised with the training set's per-feature mean and standard deviation.

Fairness: every optimizer gets the same budget (epochs, batch size, shuffles, initial
weights) and its own best learning rate, chosen by ``gradx.sweep`` over one log-spaced grid
(all learning rates in one vmapped program), trained on a training split and scored on a
held-out validation split. The chosen rate is then retrained by ``gradx.fit`` on the whole
training set and scored on the test set, which no choice ever saw.

The choice is made robust to noise (see :func:`choose`): each rate is scored by its mean
validation accuracy over the last epochs; every rate within ``TIE_SE`` standard errors of
the best score counts as tied with it, and the middle of the tied rates is taken. Training
at a good learning rate is chaotic: a change in the last bit of one weight, or another CPU's
rounding, moves the final accuracies by a few validation examples, and picking the single
highest one then picks a different rate on another machine. The tied range is printed, so
a reader sees which rates the data cannot tell apart.

Splits: digits, 1797 images: 20% test (stratified, fixed seed 0), then 20% of the rest for
validation. MNIST (``--dataset mnist``, downloaded once into ``--cache-dir``, default
``$GRADX_CACHE_DIR`` or ``~/.cache/gradx``): its 10000 test images, and the last 10000 of
its 60000 training images for validation.
"""

from __future__ import annotations

import argparse
import itertools
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradx
from gradx import losses
from gradx._cli.data import CompareError, Dataset, default_cache_dir, make_dataset
from gradx._cli.report import SELECT_EPOCHS, TIE_SE, Row, format_table, plot, plot_path

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jax.nn.tanh,
    "elu": jax.nn.elu,
}


DEFAULT_EPOCHS = {"digits": 30, "mnist": 10}


DEFAULT_LEARNING_RATES = tuple(float(x) for x in np.logspace(-4, 0.5, 10))  # 1e-4 ... 3.16


HIDDEN = (16, 16)


CLASSES = 10


def init_mlp(key: jax.Array, sizes: Sequence[int], activation: str) -> list[dict[str, jax.Array]]:
    """Weights N(0, gain/fan_in) (He for relu/elu, Glorot-like for sigmoid/tanh), biases 0."""
    gain = 2.0 if activation in ("relu", "elu") else 1.0
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, (fan_in, fan_out) in zip(keys, itertools.pairwise(sizes), strict=True):
        w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) * math.sqrt(gain / fan_in)
        params.append({"w": w, "b": jnp.zeros(fan_out, jnp.float32)})
    return params


def mlp(params: list[dict[str, jax.Array]], x: jax.Array, activation: str) -> jax.Array:
    """Logits of the MLP: activation after every layer but the last."""
    act = ACTIVATIONS[activation]

    def dense(layer, x):
        h = x @ layer["w"]
        return h + layer["b"].reshape((1,) * (h.ndim - 1) + layer["b"].shape)  # explicit rank

    for layer in params[:-1]:
        x = act(dense(layer, x))
    return dense(params[-1], x)


def _functions(activation: str):
    def loss_fn(params, batch):
        x, y = batch
        return losses.categorical_cross_entropy(mlp(params, x, activation), y)

    def scores(params, split):
        x, y = split
        logits = mlp(params, x, activation)
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1).astype(y.dtype) == y).astype(logits.dtype))
        return losses.categorical_cross_entropy(logits, y), accuracy

    def select_eval(params, val):
        loss, accuracy = scores(params, val)
        return {"val_loss": loss, "val_accuracy": accuracy}

    def final_eval(params, data):
        train, test = data
        train_loss, _ = scores(params, train)
        test_loss, test_accuracy = scores(params, test)
        return {"train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_accuracy}

    return loss_fn, select_eval, final_eval


def _learning_rate_key(name: str, state: Any) -> str:
    keys = [k for k in gradx.hyperparams(state) if k.split("/")[-1] == "learning_rate"]
    if len(keys) != 1:
        raise CompareError(
            f"compare: optimizer {name!r} must have one hyperparameter named learning_rate in "
            f"its state, got {sorted(gradx.hyperparams(state))}"
        )
    return keys[0]


class Choice(NamedTuple):
    """The learning rate :func:`choose` picked, as a grid index, and the tied indices."""

    index: int  # -1 when every rate diverged
    tied: tuple[int, ...]


def choose(history: dict[str, np.ndarray], n_val: int) -> Choice:
    """The grid point to keep, chosen so that float noise cannot change it easily.

    Each point k is scored by its mean validation accuracy over the last ``SELECT_EPOCHS``
    epochs, a_k. Accuracy on ``n_val`` examples has a standard error of about
    √(a(1 − a)/n_val), so points with a_k ≥ a_best − ``TIE_SE``·SE(a_best) are statistically
    tied with the best; of the tied points (in grid order) the middle one is taken, the lower
    middle for an even count. Points with a non-finite validation loss or accuracy in those
    epochs (diverged runs) are never chosen.

    Args:
      history: ``{"val_accuracy": (K, epochs), "val_loss": (K, epochs)}``, K grid points in
        increasing learning-rate order.
      n_val: the number of validation examples.

    Returns:
      ``Choice(index, tied)``; ``index`` is -1 and ``tied`` empty if every point diverged.
    """
    window = slice(-min(SELECT_EPOCHS, history["val_accuracy"].shape[1]), None)
    accuracy = np.asarray(history["val_accuracy"][:, window], np.float64)
    loss = np.asarray(history["val_loss"][:, window], np.float64)
    ok = np.isfinite(accuracy).all(axis=1) & np.isfinite(loss).all(axis=1)
    if not ok.any():
        return Choice(-1, ())
    score = np.where(ok, accuracy.mean(axis=1), -np.inf)
    best = score.max()
    standard_error = math.sqrt(best * (1 - best) / n_val)
    tied = np.flatnonzero(score >= best - TIE_SE * standard_error)
    return Choice(int(tied[(len(tied) - 1) // 2]), tuple(int(t) for t in tied))


def race_one(
    name: str,
    data: Dataset,
    *,
    activation: str,
    epochs: int,
    batch_size: int,
    learning_rates: Sequence[float],
    seed: int,
    progress: bool,
) -> Row:
    """Chooses ``name``'s learning rate on the validation split, then trains and tests it."""
    constructor = gradx.OPTIMIZERS[name]
    learning_rates = sorted(learning_rates)  # choose() takes the middle of a tied range
    loss_fn, select_eval, final_eval = _functions(activation)
    init_key, shuffle_key = jax.random.split(jax.random.key(seed))
    features = data.sub.x.shape[1]
    params = init_mlp(init_key, (features, *HIDDEN, CLASSES), activation)
    optimizer = constructor(learning_rates[0])
    lr_key = _learning_rate_key(name, optimizer.init(params))

    swept = gradx.sweep(
        loss_fn,
        params,
        optimizer,
        tuple(data.sub),
        {lr_key: np.asarray(learning_rates, np.float32)},
        batch_size=batch_size,
        epochs=epochs,
        key=shuffle_key,
        eval_fn=select_eval,
        eval_data=tuple(data.val),
        progress=progress,
    )
    index, tied = choose(swept.history, len(data.val.y))
    if index < 0:
        raise CompareError(f"compare: {name} diverged at every learning rate {learning_rates}")
    lr = float(learning_rates[index])

    result = gradx.fit(
        loss_fn,
        params,
        constructor(lr),
        tuple(data.train),
        batch_size=batch_size,
        epochs=epochs,
        key=shuffle_key,
        eval_fn=final_eval,
        eval_data=(tuple(data.train), tuple(data.test)),
        progress=progress,
    )
    return Row(
        name=name,
        learning_rate=lr,
        at_edge=index in (0, len(learning_rates) - 1),
        train_loss=float(result.history["train_loss"][-1]),
        test_accuracy=float(result.history["test_accuracy"][-1]),
        first_epoch_seconds=float(result.epoch_seconds[0]),
        seconds_per_epoch=(float(np.median(result.epoch_seconds[1:])) if epochs > 1 else math.nan),
        history=result.history,
        tied=(float(learning_rates[tied[0]]), float(learning_rates[tied[-1]])),
    )


def _parser() -> argparse.ArgumentParser:
    names = list(gradx.OPTIMIZERS)

    def optimizer_list(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = list(dict.fromkeys(n for n in chosen if n not in gradx.OPTIMIZERS))
        if unknown:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of optimizers, got {text!r}: unknown "
                f"{', '.join(map(repr, unknown))}; choose from {', '.join(names)}"
            )
        if not chosen:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of {', '.join(names)}, got {text!r}"
            )
        return list(dict.fromkeys(chosen))

    def seed(text: str) -> int:
        # jax.random.key keeps 32 bits: larger seeds alias smaller ones, or overflow.
        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value < 2**32:
            raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text!r}")
        return value

    def positive_int(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
        return int(text)

    def rates(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of numbers > 0, got {text!r}"
            )
        return sorted(set(values))

    p = argparse.ArgumentParser(
        prog="python -m gradx compare",
        description="Train the course's digit network (a 16-16 hidden-layer MLP, "
        "docs/seeds.md) with every gradx optimizer under one budget, each at its own learning "
        "rate, chosen by gradx.sweep on a validation split; print a table (test accuracy, "
        "final training loss, time per epoch) and draw a convergence plot.",
    )
    p.add_argument(
        "--dataset",
        choices=("digits", "mnist"),
        default="digits",
        help="digits: scikit-learn's bundled 8x8 digits, offline, 64-16-16-10; mnist: "
        "downloaded once into --cache-dir, 784-16-16-10 (default: %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=positive_int,
        help="epochs of every run, selection and final (default: 30 for digits, 10 for mnist)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="minibatch size of every run, selection and final (default: %(default)s)",
    )
    p.add_argument(
        "--optimizers",
        type=optimizer_list,
        default=names,
        help="comma-separated optimizers to compare (default: all: " + ",".join(names) + ")",
    )
    p.add_argument(
        "--activation",
        choices=tuple(ACTIVATIONS),
        default="relu",
        help="hidden-layer activation (default: %(default)s)",
    )
    p.add_argument(
        "--lrs",
        type=rates,
        default=list(DEFAULT_LEARNING_RATES),
        help="learning-rate grid (default: 10 points log-spaced from 1e-4 to 3.16)",
    )
    p.add_argument(
        "--plot",
        type=plot_path,
        default="compare.png",
        help="path of the convergence plot (.png is added when it has no extension), '' for "
        "none (default: %(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=None,
        help="where MNIST is kept (default: $GRADX_CACHE_DIR or ~/.cache/gradx)",
    )
    p.add_argument(
        "--seed",
        type=seed,
        default=0,
        help="seed of the initial weights and of the minibatch shuffles, the same for every "
        "optimizer (default: %(default)s)",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar per run")
    return p


def main(argv: list[str]) -> int:
    """Runs the comparison; returns the exit status (0 ok, 1 failure, 2 bad arguments)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage or the help
        return int(e.code or 0)
    epochs = args.epochs or DEFAULT_EPOCHS[args.dataset]
    cache_dir = args.cache_dir or default_cache_dir()
    try:
        data = make_dataset(args.dataset, cache_dir)
        if args.batch_size > len(data.sub.y):
            raise CompareError(
                f"compare: --batch-size must be <= {len(data.sub.y)} (the training "
                f"examples left after the validation split), got {args.batch_size}"
            )
        features = data.sub.x.shape[1]
        print(
            f"{args.dataset}: {features}-{HIDDEN[0]}-{HIDDEN[1]}-{CLASSES} MLP "
            f"({args.activation}), "
            f"{len(data.train.y)} train / {len(data.test.y)} test, learning rate chosen on "
            f"{len(data.val.y)} validation examples; {epochs} epochs, batch size "
            f"{args.batch_size}, {len(args.lrs)} learning rates "
            f"{args.lrs[0]:.3g}..{args.lrs[-1]:.3g}",
            flush=True,
        )
        rows = []
        for name in args.optimizers:
            start = time.perf_counter()
            row = race_one(
                name,
                data,
                activation=args.activation,
                epochs=epochs,
                batch_size=args.batch_size,
                learning_rates=args.lrs,
                seed=args.seed,
                progress=args.progress,
            )
            rows.append(row)
            print(
                f"  {name:<16} lr {row.learning_rate:<8.3g} test accuracy "
                f"{100 * row.test_accuracy:6.2f}%  ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
        print()
        print(format_table(rows))
        if args.plot:
            path = pathlib.Path(args.plot)
            title = (
                f"{args.dataset}, {features}-16-16-10 {args.activation} MLP, "
                f"batch {args.batch_size}, each optimizer at its best learning rate"
            )
            plot(rows, path, title)
            print(f"\nconvergence plot: {path}")
    except CompareError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0
