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
matrices of the ``"matrix"`` and ``"factored"`` problems; the latter's params are ``"a", "b",
"c"``). Torch: all parameters in one param group, ``.grad`` set by hand, ``opt.step()``. Keras: two ``keras.Variable``s,
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
    # RAdam: ρ_t passes 5 near t = 6 for β₂ = 0.999 (both branches), near t = 3 for 0.99
    ("RAdam", {"lr": 0.1}),
    ("RAdam", {"lr": 0.1, "betas": [0.8, 0.99], "eps": 0.1, "weight_decay": 0.1}),
    ("RAdam", {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("Rprop", {}),
    ("Rprop", {"lr": 0.05, "etas": [0.3, 1.5], "step_sizes": [0.01, 0.2]}),
    # initial step size above the maximum: torch clamps it already on the first step
    ("Rprop", {"lr": 0.5, "step_sizes": [0.01, 0.2]}),
    # Adafactor (also on the "factored" problem: EXTRA_PROBLEMS)
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

# ---- param groups (torch_groups.json, replayed by tests/test_param_groups.py) ----
# (class, constructor kwargs, param groups). Each group's "params" is a regular expression over
# the parameter names ("a", "b"): gradx.compat.torch takes it as is, torch gets the tensors
# whose names it matches (re.search). A group's missing options take the constructor's.
TORCH_GROUP_CONFIGS = [
    (
        "AdamW",
        {"lr": 0.05, "weight_decay": 0.1},
        [{"params": "^a$", "lr": 0.1}, {"params": "b", "weight_decay": 0.0, "betas": [0.8, 0.99]}],
    ),
    (
        "SGD",
        {"lr": 0.1, "momentum": 0.9},
        [
            {"params": "a", "nesterov": True, "weight_decay": 0.1},
            {"params": "b", "lr": 0.05, "momentum": 0.0},
        ],
    ),
]
# ---- end of param groups configs ----
# Optimizers of matrices only (torch's Muon), recorded on problems.MATRIX_PROBLEMS.
TORCH_MATRIX_CONFIGS = [
    ("Muon", {}),
    ("Muon", {"lr": 0.02}),
    (
        "Muon",
        {"lr": 0.02, "nesterov": False, "weight_decay": 0.0, "adjust_lr_fn": "match_rms_adamw"},
    ),
    (
        "Muon",
        {
            "lr": 0.05,
            "momentum": 0.8,
            "ns_coefficients": [2.0, -1.5, 0.5],
            "ns_steps": 3,
            "eps": 0.5,
            "adjust_lr_fn": "original",
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
    ("Lion", {"learning_rate": 0.01}),
    ("Lion", {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.95, "weight_decay": 0.1}),
    ("Lamb", {"learning_rate": 0.1}),
    ("Lamb", {"learning_rate": 0.1, "epsilon": 0.1, "weight_decay": 0.1}),
    # options handled by the Keras base optimizer
    ("SGD", {"learning_rate": 0.1, "weight_decay": 0.1}),
    ("Adam", {"learning_rate": 0.1, "clipnorm": 0.5}),
    ("Adam", {"learning_rate": 0.1, "clipvalue": 0.05}),
    ("Adam", {"learning_rate": 0.1, "global_clipnorm": 0.5}),
    # Adafactor (also on the "factored" problem: EXTRA_PROBLEMS)
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
EXTRA_PROBLEMS = {"Adafactor": ("factored",)}


def problems_of(cls):
    return (*problems.PROBLEMS, *EXTRA_PROBLEMS.get(cls, ()))


# The parameters of the "stream", "quad" and "matrix" problems.
NAMES = ("a", "b")


def _torch_trajectory(opt, params, grad_fn):
    """Steps ``opt`` over ``params`` (name -> float64 tensor) ``problems.STEPS`` times, each
    ``.grad`` set by hand from ``grad_fn(k, current params)``; each name's values after every
    step, as nested lists."""
    import torch

    traj = {n: [] for n in params}
    for k in range(problems.STEPS):
        current = {n: p.detach().numpy().copy() for n, p in params.items()}
        grads = grad_fn(k, current)
        for n, p in params.items():
            p.grad = torch.tensor(grads[n], dtype=torch.float64)
        opt.step()
        for n, p in params.items():
            traj[n].append(p.detach().numpy().tolist())
    return traj


# ------------------------------------------------------------------ torch
def record_torch():
    import torch

    torch.set_default_dtype(torch.float64)
    records = []
    for cls, kwargs in TORCH_CONFIGS:
        for problem in problems_of(cls):
            params = {
                n: torch.tensor(x, dtype=torch.float64, requires_grad=True)
                for n, x in problems.params0(problem).items()
            }
            opt = getattr(torch.optim, cls)(list(params.values()), **_torch_options(kwargs))
            traj = _torch_trajectory(opt, params, problems.grad_fn(problem))
            records.append({"cls": cls, "kwargs": kwargs, "problem": problem, "trajectory": traj})
    return {"library": "torch", "version": torch.__version__, "records": records}


# ------------------------------------------------------------------ torch param groups
def _torch_options(options):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def record_torch_groups():
    """``TORCH_GROUP_CONFIGS``: torch's list-of-dicts param groups, one tensor per name."""
    import re

    import torch

    torch.set_default_dtype(torch.float64)
    records = []
    for cls, kwargs, groups in TORCH_GROUP_CONFIGS:
        for problem in problems.PROBLEMS:
            grad_fn = problems.grad_fn(problem)
            params = {
                n: torch.tensor(problems.PARAMS0[n], dtype=torch.float64, requires_grad=True)
                for n in NAMES
            }
            torch_groups = [
                {
                    **_torch_options({k: v for k, v in g.items() if k != "params"}),
                    "params": [params[n] for n in NAMES if re.search(g["params"], n)],
                }
                for g in groups
            ]
            opt = getattr(torch.optim, cls)(torch_groups, **_torch_options(kwargs))
            traj = _torch_trajectory(opt, params, grad_fn)
            records.append(
                {
                    "cls": cls,
                    "kwargs": kwargs,
                    "groups": groups,
                    "problem": problem,
                    "trajectory": traj,
                }
            )
    return {"library": "torch", "version": torch.__version__, "records": records}


def replay_groups(cls, kwargs, groups, problem):
    """The NumPy transcription of a param-groups record: each name steps with its group's
    options (the first group whose pattern matches it; missing options: the constructor's)."""
    import re

    grad_fn = problems.grad_fn(problem)
    steps, state = {}, {}
    for n in NAMES:
        group = next(g for g in groups if re.search(g["params"], n))
        init, steps[n] = REFERENCES["torch"][cls](
            {**kwargs, **{k: v for k, v in group.items() if k != "params"}}
        )
        state[n] = init()
    params = {n: problems.PARAMS0[n].copy() for n in NAMES}
    traj = {n: [] for n in NAMES}
    for k in range(problems.STEPS):
        grads = grad_fn(k, params)
        params = {n: steps[n](params[n], grads[n], state[n], k + 1) for n in NAMES}
        for n in NAMES:
            traj[n].append(params[n])
    return {n: np.array(v) for n, v in traj.items()}


def self_check_groups(data, tol=1e-10):
    worst = 0.0
    for rec in data["records"]:
        ref = replay_groups(rec["cls"], rec["kwargs"], rec["groups"], rec["problem"])
        diff = max(float(np.max(np.abs(ref[n] - np.array(rec["trajectory"][n])))) for n in NAMES)
        worst = max(worst, diff)
        flag = "" if diff <= tol else "   <-- MISMATCH"
        print(f"  groups {rec['cls']:8s} {rec['problem']:6s} max|diff|={diff:.2e}{flag}")
    print(f"  torch groups: worst max|diff| = {worst:.3e} over {len(data['records'])} records")
    return worst <= tol


def record_torch_matrices():
    """The records of ``TORCH_MATRIX_CONFIGS`` on the matrix problems (matrices as nested lists)."""
    import torch

    torch.set_default_dtype(torch.float64)
    records = []
    for cls, kwargs in TORCH_MATRIX_CONFIGS:
        for problem in problems.MATRIX_PROBLEMS:
            start = problems.params0(problem)
            params = {n: torch.tensor(start[n], requires_grad=True) for n in NAMES}
            opt = getattr(torch.optim, cls)([params[n] for n in NAMES], **_torch_options(kwargs))
            traj = _torch_trajectory(opt, params, problems.grad_fn(problem))
            records.append({"cls": cls, "kwargs": kwargs, "problem": problem, "trajectory": traj})
    return records


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


def _torch_radam(kw):
    lr, (b1, b2), eps = kw.get("lr", 1e-3), kw.get("betas", (0.9, 0.999)), kw.get("eps", 1e-8)
    wd, decoupled = kw.get("weight_decay", 0.0), kw.get("decoupled_weight_decay", False)
    rho_inf = 2 / (1 - b2) - 1

    def step(x, g, s, t):
        if decoupled:
            x = x * (1 - lr * wd)
        else:
            g = g + wd * x
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        m_hat = s["m"] / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho <= 5:
            return x - lr * m_hat
        r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return x - lr * m_hat * r * np.sqrt(1 - b2**t) / (np.sqrt(s["v"]) + eps)

    return dict, step


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


def _keras_lion(kw):
    lr, b1, b2 = kw.get("learning_rate", 1e-3), kw.get("beta_1", 0.9), kw.get("beta_2", 0.99)

    def step(x, g, s, t):
        m = s.get("m", 0.0)
        s["m"] = b2 * m + (1 - b2) * g
        return x - lr * np.sign(b1 * m + (1 - b1) * g)

    return dict, step


def _keras_lamb(kw):
    lr, b1, b2 = kw.get("learning_rate", 1e-3), kw.get("beta_1", 0.9), kw.get("beta_2", 0.999)
    eps = kw.get("epsilon", 1e-7)

    def step(x, g, s, t):  # x is already decayed by _keras_preprocess, as Keras's base does
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        u = (s["m"] / (1 - b1**t)) / (np.sqrt(s["v"] / (1 - b2**t)) + eps)
        w_norm, u_norm = np.linalg.norm(x), np.linalg.norm(u)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        return x - ratio * lr * u

    return dict, step


def _bf16(x):
    """``x`` rounded to bfloat16 through float32 (torch's double → bfloat16), as float32."""
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def _mm32(a, b):
    """a·b of bfloat16-valued matrices, accumulated in float32 over k in order (each
    product is exact in float32)."""
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in range(a.shape[1]):
        acc = acc + np.outer(a[:, k], b[k, :]).astype(np.float32)
    return acc


def _newton_schulz_bf16(m, coefficients, steps, eps):
    """Jordan's quintic Newton–Schulz iteration as torch 2.13 runs it: in bfloat16, each
    matmul accumulated in float32, and addmm's β·C + α·(A·B) rounded once to float32 (a fused
    multiply-add: computed here in float64, where the products of float32 numbers by
    bfloat16 ones are exact), then to bfloat16."""
    a, b, c = (float(np.float32(v)) for v in coefficients)
    x = _bf16(m)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    norm = _bf16(np.sqrt(np.sum(x.astype(np.float32) ** 2, dtype=np.float32)))
    x = _bf16(x / np.maximum(norm, _bf16(eps)))
    for _ in range(steps):
        gram = _bf16(_mm32(x, x.T)).astype(np.float64)
        poly = _bf16(b * gram + c * _mm32(gram, gram).astype(np.float64))
        x = _bf16(a * x.astype(np.float64) + _mm32(poly, x).astype(np.float64))
    return (x.T if tall else x).astype(np.float64)


def _torch_muon(kw):
    lr, wd, mu = kw.get("lr", 1e-3), kw.get("weight_decay", 0.1), kw.get("momentum", 0.95)
    nesterov, eps, steps = kw.get("nesterov", True), kw.get("eps", 1e-7), kw.get("ns_steps", 5)
    coefficients = kw.get("ns_coefficients", (3.4445, -4.7750, 2.0315))
    adjust = kw.get("adjust_lr_fn")

    def step(x, g, s, t):
        s["buf"] = mu * s.get("buf", 0.0) + (1 - mu) * g
        m = (1 - mu) * g + mu * s["buf"] if nesterov else s["buf"]
        rows, cols = x.shape
        if adjust == "match_rms_adamw":
            ratio = 0.2 * np.sqrt(max(rows, cols))
        else:
            ratio = np.sqrt(max(1, rows / cols))
        o = _newton_schulz_bf16(m, coefficients, steps, eps)
        return x * (1 - lr * wd) - lr * ratio * o

    return dict, step


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
        "Muon": _torch_muon,
        "SGD": _torch_sgd,
        "RMSprop": _torch_rmsprop,
        "Adagrad": _torch_adagrad,
        "Adadelta": _torch_adadelta,
        "Adam": _torch_adam,
        "AdamW": lambda kw: _torch_adam(kw, adamw=True),
        "Adamax": _torch_adamax,
        "NAdam": _torch_nadam,
        "RAdam": _torch_radam,
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
        "Lion": _keras_lion,
        "Lamb": _keras_lamb,
        "Adafactor": _keras_adafactor,
    },
}
KERAS_DEFAULT_WEIGHT_DECAY = {"AdamW": 0.004}
KERAS_DEFAULT_LR = {
    "SGD": 0.01, "Adam": 1e-3, "AdamW": 1e-3, "Lion": 1e-3, "Lamb": 1e-3,
    "Adafactor": 1e-3,
}


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
    outputs["torch"]["records"] += record_torch_matrices()
    ok = True
    for library, data in outputs.items():
        path = HERE / f"{library}.json"
        path.write_text(_dumps(data))
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(data['records'])} records)")
        ok &= self_check(data)
    # param groups: their own file and check
    groups = record_torch_groups()
    path = HERE / "torch_groups.json"
    path.write_text(_dumps(groups))
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(groups['records'])} records)")
    ok &= self_check_groups(groups)
    if not ok:
        raise SystemExit("self-check FAILED")


if __name__ == "__main__":
    main()
