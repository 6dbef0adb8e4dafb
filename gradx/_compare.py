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
import gzip
import itertools
import math
import os
import pathlib
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradx
from gradx import losses

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
SELECT_EPOCHS = 5  # the learning rate is scored by its mean validation accuracy over these
TIE_SE = 1.5  # rates within this many standard errors of the best score count as tied

MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

# The opener, a module attribute so tests can replace it (no network in tests).
_urlopen = urllib.request.urlopen


class CompareError(RuntimeError):
    """A failure the command reports in one line (no traceback)."""


# ----------------------------------------------------------------------------- data


class Split(NamedTuple):
    x: np.ndarray  # (n, features), float32
    y: np.ndarray  # (n,), int32 class indices


class Dataset(NamedTuple):
    """Four splits: ``sub`` and ``val`` choose the learning rate (``sub`` ∪ ``val`` =
    ``train``); ``train`` and ``test`` score it. Each pair is standardised with the
    statistics of the split it trains on."""

    sub: Split
    val: Split
    train: Split
    test: Split


def _standardize(fit_on: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    mean = fit_on.mean(axis=0)
    std = fit_on.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant pixels (digit borders) stay 0
    return [((a - mean) / std).astype(np.float32) for a in arrays]


def load_digits() -> tuple[Split, Split]:
    """scikit-learn's bundled 8×8 digits: (train, test), test = 20% stratified, seed 0."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise CompareError(
            "compare: the digits dataset needs scikit-learn; pip install 'gradx[examples]'"
        ) from None
    x, y = sk_load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return Split(x_train, y_train.astype(np.int32)), Split(x_test, y_test.astype(np.int32))


def default_cache_dir() -> pathlib.Path:
    """``$GRADX_CACHE_DIR``, else ``~/.cache/gradx``."""
    env = os.environ.get("GRADX_CACHE_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "gradx"


def _download(name: str, target: pathlib.Path, mirrors: Sequence[str]) -> None:
    errors = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        try:
            with _urlopen(url, timeout=60) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            errors.append(f"{url} ({reason})")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(payload)
        os.replace(tmp.name, target)  # atomic: no half-written file in the cache
        return
    raise CompareError(
        f"compare: could not download MNIST's {name}; tried {'; '.join(errors)}. "
        f"Connect to the internet, or put the four MNIST files ({', '.join(MNIST_FILES.values())}) "
        f"in {target.parent} and run again."
    )


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
        got, count = struct.unpack(">II", raw[:8])
        if got != magic:
            raise ValueError(f"magic number {got}, expected {magic}")
        if magic == 2051:
            rows, cols = struct.unpack(">II", raw[8:16])
            return np.frombuffer(raw, np.uint8, count * rows * cols, 16).reshape(count, -1)
        return np.frombuffer(raw, np.uint8, count, 8)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise CompareError(
            f"compare: {path} is not a valid MNIST file ({e}); delete it and run again"
        ) from None


def load_mnist(cache_dir: pathlib.Path) -> tuple[Split, Split]:
    """MNIST (train 60000, test 10000), downloaded once into ``cache_dir / 'mnist'``."""
    folder = cache_dir / "mnist"
    env = os.environ.get("GRADX_MNIST_URL")
    mirrors = (env,) if env else MNIST_MIRRORS
    arrays = {}
    for key, name in MNIST_FILES.items():
        path = folder / name
        if not path.exists():
            print(f"downloading {name} into {folder}", file=sys.stderr)
            _download(name, path, mirrors)
        arrays[key] = _read_idx(path, 2051 if key.startswith("x") else 2049)
    return (
        Split(arrays["x_train"].astype(np.float32) / 255, arrays["y_train"].astype(np.int32)),
        Split(arrays["x_test"].astype(np.float32) / 255, arrays["y_test"].astype(np.int32)),
    )


def make_dataset(name: str, cache_dir: pathlib.Path) -> Dataset:
    """The four splits of ``name`` ('digits' or 'mnist'), standardised."""
    if name == "digits":
        train, test = load_digits()
        from sklearn.model_selection import train_test_split

        x_sub, x_val, y_sub, y_val = train_test_split(
            train.x, train.y, test_size=0.2, random_state=0, stratify=train.y
        )
    else:
        train, test = load_mnist(cache_dir)
        n_val = len(train.y) // 6  # the last 10000 of 60000
        x_sub, x_val = train.x[:-n_val], train.x[-n_val:]
        y_sub, y_val = train.y[:-n_val], train.y[-n_val:]
    x_sub, x_val = _standardize(x_sub, x_sub, x_val)
    x_train, x_test = _standardize(train.x, train.x, test.x)
    return Dataset(
        Split(x_sub, y_sub), Split(x_val, y_val), Split(x_train, train.y), Split(x_test, test.y)
    )


# ----------------------------------------------------------------------------- the network


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


# ----------------------------------------------------------------------------- the race


class Row(NamedTuple):
    name: str
    learning_rate: float
    at_edge: bool  # the chosen rate is the smallest or largest of the grid
    train_loss: float  # on the whole training set, at the final params
    test_accuracy: float
    first_epoch_seconds: float  # the first epoch, compilation included
    seconds_per_epoch: float  # median over the later epochs; NaN with a single epoch
    history: dict[str, np.ndarray]
    tied: tuple[float, float] = (math.nan, math.nan)  # smallest and largest tied rate


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


def format_table(rows: Sequence[Row]) -> str:
    """The results as an aligned text table, best test accuracy first."""
    header = (
        "optimizer",
        "learning rate",
        "tied rates",
        "final train loss",
        "test accuracy",
        "first epoch",
        "time/epoch",
    )
    lines = []
    for r in sorted(rows, key=lambda r: (-r.test_accuracy, r.train_loss)):
        lo, hi = r.tied
        lines.append(
            (
                r.name,
                f"{r.learning_rate:.3g}" + (" *" if r.at_edge else ""),
                f"{lo:.3g}" if lo == hi else f"{lo:.3g}..{hi:.3g}",
                f"{r.train_loss:.3g}",
                f"{100 * r.test_accuracy:.2f}%",
                f"{1000 * r.first_epoch_seconds:.0f} ms",
                "—" if math.isnan(r.seconds_per_epoch) else f"{1000 * r.seconds_per_epoch:.1f} ms",
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    out = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]
    window = min(SELECT_EPOCHS, *(len(r.history["train_loss"]) for r in rows))
    out.append(
        f"tied rates: mean validation accuracy over the last {window} epoch(s) within "
        f"{TIE_SE:g} standard\n  errors of the best; the middle tied rate is the learning rate"
    )
    out.append(
        "first epoch: compilation included; time/epoch: median of the later epochs"
        + (" (— with one epoch)" if any(math.isnan(r.seconds_per_epoch) for r in rows) else "")
    )
    if any(r.at_edge for r in rows):
        out.append("* the chosen learning rate is at the edge of the grid; widen it with --lrs")
    return "\n".join(out)


def plot(rows: Sequence[Row], path: pathlib.Path, title: str) -> None:
    """Training loss and test accuracy per epoch, one line per optimizer, into a PNG."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CompareError(
            "compare: the plot needs matplotlib; pip install 'gradx[examples]' or pass --plot ''"
        ) from None
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    loss_ax, acc_ax = figure.subplots(1, 2)
    for i, r in enumerate(rows):
        epochs = np.arange(1, len(r.history["train_loss"]) + 1)
        style = {"label": f"{r.name} (lr {r.learning_rate:.3g})", "color": f"C{i % 10}"}
        style["linestyle"] = ("-", "--", ":")[i // 10 % 3]  # ten colours, then new dashes
        loss_ax.plot(epochs, r.history["train_loss"], **style)
        acc_ax.plot(epochs, 100 * r.history["test_accuracy"], **style)
    loss_ax.set(xlabel="epoch", ylabel="training loss (cross entropy)", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    acc_ax.legend(fontsize="small", ncol=2)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    names = list(gradx.OPTIMIZERS)

    def optimizer_list(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in gradx.OPTIMIZERS]
        if not chosen or unknown:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of {', '.join(names)}, got {text!r}"
            )
        return list(dict.fromkeys(chosen))

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
        default="compare.png",
        help="PNG path for the convergence plot, '' for none (default: %(default)s)",
    )
    p.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=None,
        help="where MNIST is kept (default: $GRADX_CACHE_DIR or ~/.cache/gradx)",
    )
    p.add_argument(
        "--seed",
        type=int,
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
