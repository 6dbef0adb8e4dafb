"""The table and the plot of ``python -m gradx compare``."""

from __future__ import annotations

import argparse
import math
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from gradx._cli.data import CompareError

SELECT_EPOCHS = 5  # the learning rate is scored by its mean validation accuracy over these


TIE_SE = 1.5  # rates within this many standard errors of the best score count as tied


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


def plot_path(text: str) -> str:
    """``--plot``'s argparse type: the path the plot is written to, checked before any work.

    '' stays '' (no plot); a path without an extension gets ``.png`` (what matplotlib would
    write); a directory, or an extension matplotlib cannot write, is refused. Without
    matplotlib the extension is not checked (the plot itself says what to install).
    """
    if not text:
        return text
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be a file path, not a directory, got {text!r}")
    path = text if os.path.splitext(text)[1][1:] else text.rstrip(".") + ".png"
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return path
    kinds = sorted(FigureCanvasBase.get_supported_filetypes())
    extension = os.path.splitext(path)[1][1:].lower()
    if extension not in kinds:
        raise argparse.ArgumentTypeError(
            f"must end in a file type matplotlib writes (.{', .'.join(kinds)}), got {text!r}"
        )
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"must be a file path, not a directory, got {path!r}")
    return path


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise CompareError(f"compare: --plot: cannot write {str(path)!r} ({e})") from None
