"""The data of ``python -m gradx compare``: the digits (offline) and MNIST (downloaded once)."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

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
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                tmp.write(payload)
            os.replace(tmp.name, target)  # atomic: no half-written file in the cache
        except OSError as e:
            raise CompareError(
                f"compare: --cache-dir: cannot write MNIST into {str(target.parent)!r} ({e}); "
                "pass a writable directory"
            ) from None
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
