"""Record golden parameter trajectories from torch.optim and keras.optimizers.

The output, ``torch.json`` and ``keras.json`` next to this file, is committed. The test suite only
reads the JSON (and ``problems.py``); torch and keras are never dependencies of gradx or of its
tests. Re-run this script only to re-record, from the repository root, in a separate virtualenv
outside the repository::

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install torch==2.13.0 keras==3.15.1 jax jaxlib numpy
    KERAS_BACKEND=jax /tmp/golden-venv/bin/python tests/golden/record.py

(``torch==2.13.0`` resolves to the CPU wheel; do not install torch without the pin.) Everything runs
in float64: torch tensors are float64, Keras runs on the JAX backend with ``jax_enable_x64`` and
``floatx="float64"``.

JSON format, one file per library::

    {"library": "torch", "version": "2.13.0+cpu", "records": [
        {"cls": "Adam", "kwargs": {...}, "problem": "stream" | "quad",
         "trajectory": {"a": [[3 floats] x STEPS], "b": [[2 floats] x STEPS]}}, ...]}

``kwargs`` are exactly the constructor keyword arguments given to the peer (tuples written as
lists); ``trajectory[k]`` holds the parameters after step ``k + 1`` (nested lists for the
``"matrix"`` problem's matrix and 3-D tensor; its params are ``"a", "b", "c"``). Torch: both parameters in one
param group, ``.grad`` set by hand, ``opt.step()``. Keras: two ``keras.Variable``s,
``opt.apply_gradients``.

After recording, :func:`self_check` replays every record with an independent NumPy transcription
of the update rules in ``docs/conventions.md`` (see ``REFERENCES``) and prints the maximum
absolute difference per record; it fails if any difference exceeds ``1e-10`` (``1e-7`` for
Keras's Adafactor, whose means Keras computes in float32: see ``TOLERANCES``).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import problems  # noqa: E402

# ------------------------------------------------------------------ configurations
# (class name, constructor kwargs). Lists stand for tuples (torch ``betas``, ``etas``, ...).
TORCH_CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1, "momentum": 0.5, "maximize": True}),
    ("RMSprop", {}),
    (
        "RMSprop",
        {
            "lr": 0.01,
            "alpha": 0.9,
            "eps": 0.1,
            "centered": True,
            "momentum": 0.5,
            "weight_decay": 0.1,
        },
    ),
    ("Adagrad", {}),
    (
        "Adagrad",
        {
            "lr": 0.1,
            "lr_decay": 0.05,
            "initial_accumulator_value": 0.1,
            "eps": 0.1,
            "weight_decay": 0.1,
        },
    ),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-3, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.1}),
    ("Adam", {"lr": 0.1, "betas": [0.8, 0.99], "eps": 0.1, "amsgrad": True}),
    ("Adam", {"lr": 0.1, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {"lr": 0.1}),
    ("AdamW", {"lr": 0.1, "weight_decay": 0.1, "amsgrad": True}),
    ("Adamax", {}),
    ("Adamax", {"lr": 0.1, "eps": 0.1, "weight_decay": 0.1}),
    ("NAdam", {"lr": 0.1}),
    ("NAdam", {"lr": 0.1, "momentum_decay": 1.0}),
    ("NAdam", {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("Rprop", {}),
    ("Rprop", {"lr": 0.05, "etas": [0.3, 1.5], "step_sizes": [0.01, 0.2]}),
    # initial step size above the maximum: torch clamps it already on the first step
    ("Rprop", {"lr": 0.5, "step_sizes": [0.01, 0.2]}),
    # Adafactor (also on the "matrix" problem: EXTRA_PROBLEMS)
    ("Adafactor", {}),
    (
        "Adafactor",
        {
            "lr": 0.05,
            "beta2_decay": -0.5,
            "eps": [1e-4, 1e-2],
            "d": 2.0,
            "weight_decay": 0.1,
            "maximize": True,
        },
    ),
]

KERAS_CONFIGS = [
    ("SGD", {"learning_rate": 0.1}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True}),
    ("RMSprop", {}),
    (
        "RMSprop",
        {"learning_rate": 0.01, "rho": 0.8, "epsilon": 0.1, "centered": True, "momentum": 0.5},
    ),
    ("Adagrad", {}),
    ("Adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.2, "epsilon": 0.1}),
    ("Adadelta", {}),
    ("Adadelta", {"learning_rate": 1.0, "rho": 0.9, "epsilon": 1e-6}),
    ("Adam", {}),
    (
        "Adam",
        {"learning_rate": 0.1, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 0.1, "amsgrad": True},
    ),
    ("AdamW", {}),
    ("AdamW", {"learning_rate": 0.1, "weight_decay": 0.1}),
    ("Adamax", {}),
    ("Adamax", {"learning_rate": 0.1, "epsilon": 0.1}),
    ("Nadam", {}),
    ("Nadam", {"learning_rate": 0.1, "epsilon": 0.1}),
    # options handled by the Keras base optimizer
    ("SGD", {"learning_rate": 0.1, "weight_decay": 0.1}),
    ("Adam", {"learning_rate": 0.1, "clipnorm": 0.5}),
    ("Adam", {"learning_rate": 0.1, "clipvalue": 0.05}),
    ("Adam", {"learning_rate": 0.1, "global_clipnorm": 0.5}),
    # Adafactor (also on the "matrix" problem: EXTRA_PROBLEMS)
    ("Adafactor", {}),
    (
        "Adafactor",
        {
            "learning_rate": 0.05,
            "beta_2_decay": -0.5,
            "epsilon_1": 1e-20,
            "epsilon_2": 1e-2,
            "clip_threshold": 0.5,
            "relative_step": False,
            "weight_decay": 0.1,
        },
    ),
]

# Classes recorded on more problems than problems.PROBLEMS: those that factor matrices.
EXTRA_PROBLEMS = {"Adafactor": ("matrix",)}


def problems_of(cls):
    return (*problems.PROBLEMS, *EXTRA_PROBLEMS.get(cls, ()))


# ------------------------------------------------------------------ torch
def record_torch():
    import torch

    torch.set_default_dtype(torch.float64)
    records = []
    for cls, kwargs in TORCH_CONFIGS:
        call_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        for problem in problems_of(cls):
            grad_fn = problems.grad_fn(problem)
            params = {
                n: torch.tensor(x, dtype=torch.float64, requires_grad=True)
                for n, x in problems.params0(problem).items()
            }
            opt = getattr(torch.optim, cls)(list(params.values()), **call_kwargs)
            traj = {n: [] for n in params}
            for k in range(problems.STEPS):
                current = {n: p.detach().numpy().copy() for n, p in params.items()}
                grads = grad_fn(k, current)
                for n, p in params.items():
                    p.grad = torch.tensor(grads[n], dtype=torch.float64)
                opt.step()
                for n, p in params.items():
                    traj[n].append(p.detach().numpy().tolist())
            records.append({"cls": cls, "kwargs": kwargs, "problem": problem, "trajectory": traj})
    return {"library": "torch", "version": torch.__version__, "records": records}


# ------------------------------------------------------------------ keras
def record_keras():
    if os.environ.get("KERAS_BACKEND") != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax")
    import jax

    jax.config.update("jax_enable_x64", True)
    import keras

    keras.config.set_floatx("float64")
    assert keras.backend.backend() == "jax"
    records = []
    for cls, kwargs in KERAS_CONFIGS:
        for problem in problems_of(cls):
            grad_fn = problems.grad_fn(problem)
            variables = {
                n: keras.Variable(x, dtype="float64", name=n)
                for n, x in problems.params0(problem).items()
            }
            opt = getattr(keras.optimizers, cls)(**kwargs)
            traj = {n: [] for n in variables}
            for k in range(problems.STEPS):
                current = {n: np.asarray(v.numpy(), dtype=np.float64) for n, v in variables.items()}
                grads = grad_fn(k, current)
                opt.apply_gradients(
                    [
                        (keras.ops.convert_to_tensor(grads[n], dtype="float64"), v)
                        for n, v in variables.items()
                    ]
                )
                for n, v in variables.items():
                    value = np.asarray(v.numpy())
                    assert value.dtype == np.float64, value.dtype
                    traj[n].append(value.tolist())
            records.append({"cls": cls, "kwargs": kwargs, "problem": problem, "trajectory": traj})
    return {
        "library": "keras",
        "version": keras.__version__,
        "backend": f"jax {jax.__version__}",
        "records": records,
    }


# ------------------------------------------------------------------ NumPy transcriptions
# Each reference is ``f(kwargs) -> (init(x) -> state, step(x, g, state, t) -> x)`` acting on one
# float64 array; t = 1, 2, ... . Keras's base-optimizer options (clipping, decoupled weight decay)
# act across parameters and are handled in :func:`replay`.


def _torch_sgd(kw):
    lr, mu = kw.get("lr", 1e-3), kw.get("momentum", 0.0)
    damp, wd = kw.get("dampening", 0.0), kw.get("weight_decay", 0.0)
    nesterov, maximize = kw.get("nesterov", False), kw.get("maximize", False)

    def step(x, g, s, t):
        g = -g if maximize else g
        g = g + wd * x
        if mu:
            s["buf"] = g.copy() if t == 1 else mu * s["buf"] + (1 - damp) * g
            g = g + mu * s["buf"] if nesterov else s["buf"]
        return x - lr * g

    return dict, step


def _torch_rmsprop(kw):
    lr, alpha, eps = kw.get("lr", 1e-2), kw.get("alpha", 0.99), kw.get("eps", 1e-8)
    wd, mu, centered = (
        kw.get("weight_decay", 0.0),
        kw.get("momentum", 0.0),
        kw.get("centered", False),
    )

    def step(x, g, s, t):
        g = g + wd * x
        s["v"] = alpha * s.get("v", 0.0) + (1 - alpha) * g * g
        if centered:
            s["a"] = s.get("a", 0.0) + (1 - alpha) * (g - s.get("a", 0.0))
            den = np.sqrt(s["v"] - s["a"] ** 2) + eps
        else:
            den = np.sqrt(s["v"]) + eps
        if mu:
            s["buf"] = mu * s.get("buf", 0.0) + g / den
            return x - lr * s["buf"]
        return x - lr * g / den

    return dict, step


def _torch_adagrad(kw):
    lr, lr_decay, eps = kw.get("lr", 1e-2), kw.get("lr_decay", 0.0), kw.get("eps", 1e-10)
    g0, wd = kw.get("initial_accumulator_value", 0.0), kw.get("weight_decay", 0.0)

    def step(x, g, s, t):
        g = g + wd * x
        clr = lr / (1 + (t - 1) * lr_decay)
        s["G"] = s.get("G", g0) + g * g
        return x - clr * g / (np.sqrt(s["G"]) + eps)

    return dict, step


def _adadelta(lr, rho, eps, wd=0.0):
    def step(x, g, s, t):
        g = g + wd * x
        s["Eg"] = rho * s.get("Eg", 0.0) + (1 - rho) * g * g
        d = np.sqrt(s.get("Ed", 0.0) + eps) / np.sqrt(s["Eg"] + eps) * g
        s["Ed"] = rho * s.get("Ed", 0.0) + (1 - rho) * d * d
        return x - lr * d

    return dict, step


def _torch_adadelta(kw):
    return _adadelta(
        kw.get("lr", 1.0), kw.get("rho", 0.9), kw.get("eps", 1e-6), kw.get("weight_decay", 0.0)
    )


def _torch_adam(kw, adamw=False):
    lr, (b1, b2), eps = kw.get("lr", 1e-3), kw.get("betas", (0.9, 0.999)), kw.get("eps", 1e-8)
    wd, amsgrad = kw.get("weight_decay", 1e-2 if adamw else 0.0), kw.get("amsgrad", False)
    decoupled = adamw or kw.get("decoupled_weight_decay", False)

    def step(x, g, s, t):
        if decoupled:
            x = x * (1 - lr * wd)
        else:
            g = g + wd * x
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        v = s["v"]
        if amsgrad:
            v = s["vmax"] = np.maximum(s.get("vmax", 0.0), s["v"])
        den = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
        return x - lr / (1 - b1**t) * s["m"] / den

    return dict, step


def _torch_adamax(kw):
    lr, (b1, b2), eps = kw.get("lr", 2e-3), kw.get("betas", (0.9, 0.999)), kw.get("eps", 1e-8)
    wd = kw.get("weight_decay", 0.0)

    def step(x, g, s, t):
        g = g + wd * x
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["u"] = np.maximum(b2 * s.get("u", 0.0), np.abs(g) + eps)
        return x - lr / (1 - b1**t) * s["m"] / s["u"]

    return dict, step


def _nadam(lr, b1, b2, eps, psi, wd=0.0, decoupled=False):
    def mu(t):
        return b1 * (1 - 0.5 * 0.96 ** (t * psi))

    def step(x, g, s, t):
        if decoupled:
            x = x * (1 - lr * wd)
        else:
            g = g + wd * x
        prod = np.prod([mu(i) for i in range(1, t + 1)])
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        den = np.sqrt(s["v"] / (1 - b2**t)) + eps
        mhat = (1 - mu(t)) / (1 - prod) * g + mu(t + 1) / (1 - prod * mu(t + 1)) * s["m"]
        return x - lr * mhat / den

    return dict, step


def _torch_nadam(kw):
    b1, b2 = kw.get("betas", (0.9, 0.999))
    return _nadam(
        kw.get("lr", 2e-3),
        b1,
        b2,
        kw.get("eps", 1e-8),
        kw.get("momentum_decay", 4e-3),
        kw.get("weight_decay", 0.0),
        kw.get("decoupled_weight_decay", False),
    )


def _torch_rprop(kw):
    lr, (eta_m, eta_p) = kw.get("lr", 1e-2), kw.get("etas", (0.5, 1.2))
    smin, smax = kw.get("step_sizes", (1e-6, 50))

    def step(x, g, s, t):
        sign = np.sign(g * s.get("prev", 0.0))
        factor = np.where(sign > 0, eta_p, np.where(sign < 0, eta_m, 1.0))
        s["step"] = np.clip(s.get("step", np.full_like(x, lr)) * factor, smin, smax)
        g = np.where(sign < 0, 0.0, g)
        s["prev"] = g
        return x - np.sign(g) * s["step"]

    return dict, step


def _keras_sgd(kw):
    lr, mu, nesterov = (
        kw.get("learning_rate", 0.01),
        kw.get("momentum", 0.0),
        kw.get("nesterov", False),
    )

    def step(x, g, s, t):
        if not mu:
            return x - lr * g
        s["m"] = mu * s.get("m", 0.0) - lr * g
        return x + (mu * s["m"] - lr * g if nesterov else s["m"])

    return dict, step


def _keras_rmsprop(kw):
    lr, rho, eps = kw.get("learning_rate", 1e-3), kw.get("rho", 0.9), kw.get("epsilon", 1e-7)
    mu, centered = kw.get("momentum", 0.0), kw.get("centered", False)

    def step(x, g, s, t):
        s["v"] = rho * s.get("v", 0.0) + (1 - rho) * g * g
        if centered:
            s["a"] = rho * s.get("a", 0.0) + (1 - rho) * g
            inc = lr * g / np.sqrt(s["v"] - s["a"] ** 2 + eps)
        else:
            inc = lr * g / np.sqrt(s["v"] + eps)
        if mu:
            s["mom"] = mu * s.get("mom", 0.0) + inc
            return x - s["mom"]
        return x - inc

    return dict, step


def _keras_adagrad(kw):
    lr, g0 = kw.get("learning_rate", 1e-3), kw.get("initial_accumulator_value", 0.1)
    eps = kw.get("epsilon", 1e-7)

    def step(x, g, s, t):
        s["G"] = s.get("G", g0) + g * g
        return x - lr * g / np.sqrt(s["G"] + eps)

    return dict, step


def _keras_adadelta(kw):
    return _adadelta(kw.get("learning_rate", 1e-3), kw.get("rho", 0.95), kw.get("epsilon", 1e-7))


def _keras_adam(kw):
    lr, b1, b2 = kw.get("learning_rate", 1e-3), kw.get("beta_1", 0.9), kw.get("beta_2", 0.999)
    eps, amsgrad = kw.get("epsilon", 1e-7), kw.get("amsgrad", False)

    def step(x, g, s, t):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        v = s["v"]
        if amsgrad:
            v = s["vhat"] = np.maximum(s.get("vhat", 0.0), s["v"])
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        return x - alpha * s["m"] / (np.sqrt(v) + eps)

    return dict, step


def _keras_adamax(kw):
    lr, b1, b2 = kw.get("learning_rate", 1e-3), kw.get("beta_1", 0.9), kw.get("beta_2", 0.999)
    eps = kw.get("epsilon", 1e-7)

    def step(x, g, s, t):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["u"] = np.maximum(b2 * s.get("u", 0.0), np.abs(g))
        return x - lr * s["m"] / ((1 - b1**t) * (s["u"] + eps))

    return dict, step


def _keras_nadam(kw):
    return _nadam(
        kw.get("learning_rate", 1e-3),
        kw.get("beta_1", 0.9),
        kw.get("beta_2", 0.999),
        kw.get("epsilon", 1e-7),
        psi=1.0,
    )


def _torch_adafactor(kw):
    lr, tau, (eps1, eps2) = (
        kw.get("lr", 1e-2),
        kw.get("beta2_decay", -0.8),
        kw.get("eps", [None, 1e-3]),
    )
    eps1 = np.finfo(np.float64).eps if eps1 is None else eps1
    d, wd, maximize = kw.get("d", 1.0), kw.get("weight_decay", 0.0), kw.get("maximize", False)

    def step(x, g, s, t):
        g = -g if maximize else g
        beta = 1 - t**tau
        if x.ndim >= 2:  # the last two axes factored, ε₁ a floor of mean(R) and of √V̂
            s["R"] = beta * s.get("R", 0.0) + (1 - beta) * np.mean(g * g, axis=-1)
            s["C"] = beta * s.get("C", 0.0) + (1 - beta) * np.mean(g * g, axis=-2)
            den = np.maximum(np.mean(s["R"], axis=-1), eps1)[..., None, None]
            v = s["R"][..., :, None] * s["C"][..., None, :] / den
        else:
            v = s["v"] = beta * s.get("v", 0.0) + (1 - beta) * g * g
        u = g / np.maximum(np.sqrt(v), eps1)
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / d)
        alpha = min(lr, 1 / np.sqrt(t)) * max(eps2, np.sqrt(np.mean(x * x)))
        return x * (1 - lr * wd) - alpha * u

    return dict, step


def _keras_adafactor(kw):
    lr, c = kw.get("learning_rate", 1e-3), kw.get("beta_2_decay", -0.8)
    eps1, eps2 = kw.get("epsilon_1", 1e-30), kw.get("epsilon_2", 1e-3)
    d = kw.get("clip_threshold", 1.0)  # relative_step: no effect on the numbers

    def step(x, g, s, t):
        beta = 1 - t**c
        sq = g * g + eps1
        if x.ndim >= 2:  # the last two axes factored
            s["r"] = beta * s.get("r", 0.0) + (1 - beta) * np.mean(sq, axis=-1)
            s["c"] = beta * s.get("c", 0.0) + (1 - beta) * np.mean(sq, axis=-2)
            row = s["r"] / np.mean(s["r"], axis=-1, keepdims=True)
            v = row[..., :, None] * s["c"][..., None, :]
        else:
            v = s["v"] = beta * s.get("v", 0.0) + (1 - beta) * sq
        u = g / np.sqrt(v)
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / d)
        return x - min(lr, 1 / np.sqrt(t)) * max(eps2, np.sqrt(np.mean(x * x))) * u

    return dict, step


REFERENCES = {
    "torch": {
        "SGD": _torch_sgd,
        "RMSprop": _torch_rmsprop,
        "Adagrad": _torch_adagrad,
        "Adadelta": _torch_adadelta,
        "Adam": _torch_adam,
        "AdamW": lambda kw: _torch_adam(kw, adamw=True),
        "Adamax": _torch_adamax,
        "NAdam": _torch_nadam,
        "Rprop": _torch_rprop,
        "Adafactor": _torch_adafactor,
    },
    "keras": {
        "SGD": _keras_sgd,
        "RMSprop": _keras_rmsprop,
        "Adagrad": _keras_adagrad,
        "Adadelta": _keras_adadelta,
        "Adam": _keras_adam,
        "AdamW": _keras_adam,
        "Adamax": _keras_adamax,
        "Nadam": _keras_nadam,
        "Adafactor": _keras_adafactor,
    },
}
KERAS_DEFAULT_WEIGHT_DECAY = {"AdamW": 0.004}
KERAS_DEFAULT_LR = {"SGD": 0.01, "Adam": 1e-3, "AdamW": 1e-3, "Adafactor": 1e-3}


def _keras_preprocess(cls, kw, params, grads):
    """Keras base optimizer: clip the gradients, then ``x -= x·wd·lr`` (before ``update_step``)."""
    if kw.get("clipnorm"):
        c = kw["clipnorm"]
        grads = {n: g * c / max(np.sqrt(np.sum(g * g)), c) for n, g in grads.items()}
    elif kw.get("global_clipnorm"):
        c = kw["global_clipnorm"]
        norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
        grads = {n: g * (c * min(1 / norm, 1 / c)) for n, g in grads.items()}
    elif kw.get("clipvalue"):
        c = kw["clipvalue"]
        grads = {n: np.clip(g, -c, c) for n, g in grads.items()}
    wd = kw.get("weight_decay", KERAS_DEFAULT_WEIGHT_DECAY.get(cls))
    if wd:
        lr = kw.get("learning_rate", KERAS_DEFAULT_LR[cls])
        params = {n: x - x * wd * lr for n, x in params.items()}
    return params, grads


def replay(library, cls, kwargs, problem):
    """Trajectory of the NumPy transcription, in the JSON layout."""
    init, step = REFERENCES[library][cls](kwargs)
    grad_fn = problems.grad_fn(problem)
    params = problems.params0(problem)
    state = {n: init() for n in params}
    traj = {n: [] for n in params}
    for k in range(problems.STEPS):
        grads = grad_fn(k, params)
        if library == "keras":
            params, grads = _keras_preprocess(cls, kwargs, params, grads)
        params = {n: step(params[n], grads[n], state[n], k + 1) for n in params}
        for n in params:
            traj[n].append(params[n])
    return {n: np.array(v) for n, v in traj.items()}


# Keras 3.15.1's ops.mean (JAX backend) computes in float32 even for float64 tensors (its
# result_type("float64", "float32") is float32): Adafactor's means, and so its trajectories,
# carry float32's rounding (1e-8 here), which this float64 transcription does not copy.
TOLERANCES = {("keras", "Adafactor"): 1e-7}


def self_check(data, tol=1e-10):
    worst, ok = 0.0, True
    for rec in data["records"]:
        rec_tol = TOLERANCES.get((data["library"], rec["cls"]), tol)
        ref = replay(data["library"], rec["cls"], rec["kwargs"], rec["problem"])
        names, start = rec["trajectory"], problems.params0(rec["problem"])
        diff = max(float(np.max(np.abs(ref[n] - np.array(rec["trajectory"][n])))) for n in names)
        moved = max(
            float(np.max(np.abs(np.array(rec["trajectory"][n][-1]) - start[n]))) for n in names
        )
        worst, ok = max(worst, diff), ok and diff <= rec_tol
        flag = "" if diff <= rec_tol else "   <-- MISMATCH"
        print(
            f"  {data['library']:5s} {rec['cls']:8s} {rec['problem']:6s} "
            f"max|diff|={diff:.2e} moved={moved:.3g} {json.dumps(rec['kwargs'])}{flag}"
        )
    print(f"  {data['library']}: worst max|diff| = {worst:.3e} over {len(data['records'])} records")
    return ok


def _dumps(data):
    """JSON with one record per line (valid JSON, readable diffs, full float precision)."""
    head = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in data.items() if k != "records"]
    body = ",\n".join("  " + json.dumps(rec) for rec in data["records"])
    return "{\n" + "\n".join(head) + '\n "records": [\n' + body + "\n ]\n}\n"


def main():
    outputs = {"torch": record_torch(), "keras": record_keras()}
    ok = True
    for library, data in outputs.items():
        path = HERE / f"{library}.json"
        path.write_text(_dumps(data))
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(data['records'])} records)")
        ok &= self_check(data)
    if not ok:
        raise SystemExit("self-check FAILED")


if __name__ == "__main__":
    main()
