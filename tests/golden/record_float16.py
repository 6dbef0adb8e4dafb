"""torch.optim and Keras 3 on float16 params, g = 1e-3 every step, lr = 1e-3, 300 steps.

The output, ``float16_peers.json`` next to this file, is committed: benchmarks/float16_gradx.py
reads it and runs gradx's compat classes on the same inputs (the table of docs/conventions.md,
"float16 params"). Re-run only to re-record, from the repository root, in a virtualenv with
torch and Keras 3 (neither is a gradx dependency; recorded with torch 2.13.0+cpu and Keras
3.15.1 on its torch backend; see record.py for the install line):

    KERAS_BACKEND=torch /tmp/golden-venv/bin/python tests/golden/record_float16.py
"""
import json
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras
import numpy as np
import torch

STEPS, LR, G = 300, 1e-3, 1e-3
TORCH = ["Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam"]
KERAS = ["Adam", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam"]


def summarise(thetas, states):
    thetas = np.asarray(thetas, np.float64)
    steps = np.diff(thetas)
    finite = np.isfinite(thetas)
    first_bad = int(np.argmin(finite)) if not finite.all() else None
    fs = steps[np.isfinite(steps)]
    return {
        "step1": float(steps[0]),
        "step300": float(steps[-1]),
        "theta300": float(thetas[-1]),
        "max_abs_step": float(np.max(np.abs(fs))) if fs.size else float("nan"),
        "first_nonfinite_step": first_bad,
        "state": states,
        "thetas": [float(x) for x in thetas],
    }


def run_torch(name, dtype):
    p = torch.zeros(4, dtype=dtype, requires_grad=True)
    opt = getattr(torch.optim, name)([p], lr=LR)
    thetas = [float(p.detach()[0])]
    for _ in range(STEPS):
        p.grad = torch.full_like(p, G)
        opt.step()
        thetas.append(float(p.detach()[0]))
    st = {k: [str(v.dtype).replace("torch.", ""), float(v.reshape(-1)[0])]
          for k, v in opt.state[p].items() if torch.is_tensor(v) and k != "step"}
    return summarise(thetas, st)


def run_keras(name, dtype):
    v = keras.Variable(np.zeros(4, dtype), dtype=dtype, name="w")
    opt = getattr(keras.optimizers, name)(learning_rate=LR)
    opt.build([v])
    thetas = [float(keras.ops.convert_to_numpy(v)[0])]
    g = keras.ops.convert_to_tensor(np.full(4, G, dtype))
    for _ in range(STEPS):
        opt.apply_gradients([(g, v)])
        thetas.append(float(keras.ops.convert_to_numpy(v)[0]))
    st = {}
    for var in opt.variables:
        if tuple(var.shape) == (4,):
            st[var.path.split("/")[-1]] = [str(var.dtype),
                                           float(keras.ops.convert_to_numpy(var)[0])]
    return summarise(thetas, st)


out = {"versions": {"torch": torch.__version__, "keras": keras.__version__,
                    "keras_backend": keras.backend.backend()},
       "torch": {}, "keras": {}}
for n in TORCH:
    out["torch"][n] = {d: run_torch(n, getattr(torch, d)) for d in ("float16", "float32")}
for n in KERAS:
    out["keras"][n] = {d: run_keras(n, d) for d in ("float16", "float32")}
with open(pathlib.Path(__file__).with_name("float16_peers.json"), "w") as f:
    json.dump(out, f, indent=1)
for lib in ("torch", "keras"):
    for n, r in out[lib].items():
        for d, s in r.items():
            print(f"{lib:5s} {n:8s} {d:7s} step1={s['step1']:+.3e} step300={s['step300']:+.3e} "
                  f"theta300={s['theta300']:+.4e} maxstep={s['max_abs_step']:.3e} "
                  f"bad@{s['first_nonfinite_step']} state={s['state']}")
