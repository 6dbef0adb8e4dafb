"""The comparison behind ``python -m gradx compare``, called as a function; no network."""

import gzip
import io
import re
import struct
import urllib.error

import numpy as np
import pytest

from gradx import _compare


def test_adam_reaches_95_percent_on_digits_within_the_default_budget(tmp_path, capsys):
    plot = tmp_path / "compare.png"
    assert _compare.main(["--optimizers", "adam", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "64-16-16-10 MLP (relu)" in out and "30 epochs, batch size 32" in out
    header = "optimizer  learning rate  final train loss  test accuracy  time/epoch"
    assert header in out
    row = re.search(r"^adam\s+(\S+)( \*)?\s+(\S+)\s+([\d.]+)%\s+([\d.]+) ms$", out, re.M)
    assert row, out
    assert float(row.group(4)) >= 95.0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">II", magic, len(array))
    if magic == 2051:
        header += struct.pack(">II", 28, 28)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


class _FakeServer:
    """Serves a tiny MNIST from memory in place of urllib's urlopen."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.files = {
            "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (120, 784)), 2051),
            "train-labels-idx1-ubyte.gz": _idx(np.arange(120) % 10, 2049),
            "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 784)), 2051),
            "t10k-labels-idx1-ubyte.gz": _idx(np.arange(20) % 10, 2049),
        }
        self.requested = []

    def __call__(self, url, timeout=None):
        self.requested.append(url)
        return io.BytesIO(self.files[url.rsplit("/", 1)[1]])


def test_mnist_is_downloaded_once_into_the_cache_and_uses_the_784_wide_network(
    tmp_path, monkeypatch, capsys
):
    server = _FakeServer()
    monkeypatch.setattr(_compare, "_urlopen", server)
    monkeypatch.setenv("GRADX_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--dataset", "mnist", "--epochs", "1", "--batch-size", "10"]
    args += ["--optimizers", "sgd", "--lrs", "0.1", "--plot", ""]
    assert _compare.main(args) == 0
    assert len(server.requested) == 4
    assert server.requested[0].startswith(_compare.MNIST_MIRRORS[0])
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(server.files)
    out = capsys.readouterr().out
    assert "mnist: 784-16-16-10 MLP" in out and "120 train / 20 test" in out
    assert _compare.main(args) == 0  # from the cache: no request
    assert len(server.requested) == 4


def test_mnist_offline_fails_with_a_clear_message(tmp_path, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_compare, "_urlopen", offline)
    monkeypatch.setenv("GRADX_MNIST_URL", "http://mnist.invalid/")
    cache = tmp_path / "cache"
    assert _compare.main(["--dataset", "mnist", "--cache-dir", str(cache)]) == 1
    err = capsys.readouterr().err
    assert "compare: could not download MNIST's train-images-idx3-ubyte.gz" in err
    assert "http://mnist.invalid/train-images-idx3-ubyte.gz (" in err
    assert "name resolution" in err and str(cache / "mnist") in err
    assert not (cache / "mnist").exists() or not any((cache / "mnist").iterdir())


def test_a_corrupt_cached_file_is_reported(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in _compare.MNIST_FILES.values():
        (folder / name).write_bytes(b"not gzip")
    assert _compare.main(["--dataset", "mnist", "--cache-dir", str(tmp_path)]) == 1
    assert "is not a valid MNIST file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--optimizers", "adam,nope"], "--optimizers: must be a comma-separated list of"),
        (["--epochs", "0"], "--epochs: must be an integer >= 1, got '0'"),
        (["--lrs", "0.1,-1"], "--lrs: must be a comma-separated list of numbers > 0"),
        (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(argv, match, capsys):
    assert _compare.main(argv) == 2
    assert match in capsys.readouterr().err


def test_the_learning_rate_is_chosen_by_validation_accuracy_then_loss():
    history = {
        "val_accuracy": np.array([[0.5, 0.9], [0.2, 0.95], [0.9, 0.95], [0.9, np.nan]]),
        "val_loss": np.array([[1.0, 0.3], [1.0, 0.2], [1.0, 0.1], [1.0, np.nan]]),
    }
    assert _compare._choose(history) == 2
