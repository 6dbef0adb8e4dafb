"""Records torch.nn.functional's loss values and gradients into ``losses.json``.

Run with a Python that has torch (not a gradx dependency)::

    python3 -m venv /tmp/torch-venv
    /tmp/torch-venv/bin/pip install torch==2.13.0 numpy
    /tmp/torch-venv/bin/python tests/golden/record_losses.py

Every case stores its inputs, gradx's function and keyword arguments, torch's value, and
torch's gradients with respect to the predictions (and the targets where torch defines a
finite one). Everything is float64. ``tests/test_losses.py`` reads the JSON; it never
imports torch.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

OUT = pathlib.Path(__file__).with_name("losses.json")
rng = np.random.default_rng(0)


def _t(x, grad=False, dtype=torch.float64):
    return torch.tensor(np.asarray(x), dtype=dtype, requires_grad=grad)


def case(name, fn, torch_fn, p, y, kwargs=None, grad_targets=False, integer_targets=False):
    tp = _t(p, grad=True)
    ty = _t(y, dtype=torch.int64) if integer_targets else _t(y, grad=grad_targets)
    value = torch_fn(tp, ty)
    value.backward()
    out = {
        "name": name,
        "fn": fn,
        "kwargs": kwargs or {},
        "predictions": np.asarray(p, np.float64).tolist(),
        "targets": np.asarray(y).tolist(),
        "targets_dtype": "int64" if integer_targets else "float64",
        "value": value.item(),
        "grad_predictions": tp.grad.numpy().tolist(),
    }
    if grad_targets:
        out["grad_targets"] = ty.grad.numpy().tolist()
    return out


def soft(shape):
    x = rng.random(shape)
    return x / x.sum(-1, keepdims=True)


def main() -> None:
    cases = []
    # --- mse / mae
    p, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    cases.append(case("mse", "mse", F.mse_loss, p, y, grad_targets=True))
    cases.append(case("mse_scalar", "mse", F.mse_loss, 1.5, -0.25, grad_targets=True))
    cases.append(case("mae", "mae", F.l1_loss, p, y, grad_targets=True))
    p_tie = np.array([[1.0, 2.0, -3.0], [0.0, 0.5, 4.0]])
    y_tie = np.array([[1.0, 0.0, -3.0], [0.0, 1.5, 4.0]])  # four ties: gradient 0 there
    cases.append(case("mae_ties", "mae", F.l1_loss, p_tie, y_tie, grad_targets=True))

    # --- binary cross entropy on probabilities
    p = rng.uniform(0.01, 0.99, size=(4, 3))
    y = rng.random((4, 3))
    cases.append(
        case("bce_soft", "binary_cross_entropy", F.binary_cross_entropy, p, y, grad_targets=True)
    )
    y_hard = (rng.random((4, 3)) > 0.5).astype(np.float64)
    cases.append(case("bce_hard", "binary_cross_entropy", F.binary_cross_entropy, p, y_hard))
    # exact 0 and 1: log clamped at -100, gradient (p - y) / max(p (1 - p), 1e-12)
    p_edge = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 1e-16, 0.3])
    y_edge = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.7])
    cases.append(case("bce_edges", "binary_cross_entropy", F.binary_cross_entropy, p_edge, y_edge))

    # --- binary cross entropy on logits, including saturated logits
    z = rng.normal(scale=3.0, size=(4, 3))
    cases.append(
        case(
            "bce_logits",
            "binary_cross_entropy",
            F.binary_cross_entropy_with_logits,
            z,
            y,
            {"from_logits": True},
            grad_targets=True,
        )
    )
    z_big = np.array([-800.0, -50.0, -1.0, 0.0, 1.0, 50.0, 800.0, 40.0])
    y_big = np.array([1.0, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0])
    cases.append(
        case(
            "bce_logits_saturated",
            "binary_cross_entropy",
            F.binary_cross_entropy_with_logits,
            z_big,
            y_big,
            {"from_logits": True},
        )
    )

    # --- categorical cross entropy on logits: indices, one-hot, soft, smoothing, large logits
    z = rng.normal(scale=2.0, size=(6, 4))
    labels = rng.integers(0, 4, size=6)
    onehot = np.eye(4)[labels]
    cce = "categorical_cross_entropy"
    cases.append(case("cce_indices", cce, F.cross_entropy, z, labels, integer_targets=True))
    cases.append(case("cce_onehot", cce, F.cross_entropy, z, onehot))
    y_soft = soft((6, 4))
    cases.append(case("cce_soft", cce, F.cross_entropy, z, y_soft, grad_targets=True))
    smooth = lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1)
    cases.append(
        case(
            "cce_indices_smoothing",
            cce,
            smooth,
            z,
            labels,
            {"label_smoothing": 0.1},
            integer_targets=True,
        )
    )
    cases.append(case("cce_soft_smoothing", cce, smooth, z, y_soft, {"label_smoothing": 0.1}))
    z_big = np.array([[1000.0, 0.0, -1000.0], [-500.0, 500.0, 0.0], [0.0, 0.0, 0.0]])
    cases.append(
        case(
            "cce_large_logits",
            cce,
            F.cross_entropy,
            z_big,
            np.array([2, 1, 0]),
            integer_targets=True,
        )
    )

    # --- categorical cross entropy on probabilities (torch: nll_loss of log p)
    p = soft((6, 4))
    nll = lambda a, b: F.nll_loss(torch.log(a), b)
    cases.append(
        case("cce_probs_indices", cce, nll, p, labels, {"from_logits": False}, integer_targets=True)
    )
    soft_nll = lambda a, b: -(b * torch.log(a)).sum(-1).mean()
    cases.append(case("cce_probs_soft", cce, soft_nll, p, y_soft, {"from_logits": False}))

    OUT.write_text(
        json.dumps({"torch": torch.__version__, "dtype": "float64", "cases": cases}, indent=1)
        + "\n"
    )
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
