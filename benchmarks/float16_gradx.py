"""gradx.compat.torch / gradx.compat.keras on the inputs recorded from torch and Keras
(float16 params, g = 1e-3 every step, lr = 1e-3, 300 steps), printed beside their runs:

    python benchmarks/float16_gradx.py

torch's and Keras's runs are the recorded tests/golden/float16_peers.json (its script,
record_float16.py, is beside it). The table of docs/conventions.md ("float16 params") comes
from this output.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradx
import gradx.compat.keras as K
import gradx.compat.torch as T

STEPS, LR, G = 300, 1e-3, 1e-3


def run(opt, dtype):
    p = jnp.zeros(4, dtype)
    state = opt.init(p)
    g = jnp.full(4, G, dtype)

    @jax.jit
    def step(p, state):
        u, state = opt.update(g, state, p)
        return optax.apply_updates(p, u), state

    thetas = [float(p[0])]
    for _ in range(STEPS):
        p, state = step(p, state)
        thetas.append(float(p[0]))
    thetas = np.asarray(thetas, np.float64)
    steps = np.diff(thetas)
    finite = np.isfinite(thetas)
    leaves = [
        (jax.tree_util.keystr(k), str(v.dtype), float(v.reshape(-1)[0]))
        for k, v in jax.tree_util.tree_leaves_with_path(gradx.decode_moments(state))
        if getattr(v, "shape", ()) == (4,)
    ]
    fs = steps[np.isfinite(steps)]
    return {
        "step1": float(steps[0]), "step300": float(steps[-1]), "theta300": float(thetas[-1]),
        "max_abs_step": float(np.max(np.abs(fs))) if fs.size else float("nan"),
        "first_nonfinite_step": None if finite.all() else int(np.argmin(finite)),
        "state": leaves,
        "thetas": [float(x) for x in thetas],
    }


TORCH = ["Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam"]
KERAS = ["Adam", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam"]
with open(pathlib.Path(__file__).parents[1] / "tests" / "golden" / "float16_peers.json") as f:
    peers = json.load(f)
out = {"torch": {}, "keras": {}}
print("versions:", peers["versions"], "jax", jax.__version__)
fmt = "{:7s} step1={:+.3e} step300={:+.3e} theta300={:+.4e} maxstep={:.3e} bad@{}"
for lib, mod, names, lr in (("torch", T, TORCH, "lr"), ("keras", K, KERAS, "learning_rate")):
    for n in names:
        runs = {
            "float16": run(getattr(mod, n)(**{lr: LR}), jnp.float16),
            "float16+state_dtype=float16": run(
                getattr(mod, n)(**{lr: LR}, state_dtype="float16"), jnp.float16),
            "float32": run(getattr(mod, n)(**{lr: LR}), jnp.float32),
        }
        out[lib][n] = runs
        print(f"== {lib}.{n}")
        for d in ("float16", "float32"):
            s = peers[lib][n][d]
            print("  peer  ", fmt.format(d, s["step1"], s["step300"], s["theta300"],
                                        s["max_abs_step"], s["first_nonfinite_step"]),
                  {k: v[0] for k, v in s["state"].items()})
        for d, s in runs.items():
            print("  gradx ", fmt.format(d[:7] + ("*" if "+" in d else ""), s["step1"],
                                        s["step300"], s["theta300"], s["max_abs_step"],
                                        s["first_nonfinite_step"]),
                  [(k, t) for k, t, _ in s["state"]])
print("(* = state_dtype='float16')")

# Where gradx with state_dtype="float16" and the peer's float16 run are the same, step by step.
for lib in ("torch", "keras"):
    for n in out[lib]:
        a = np.asarray(peers[lib][n]["float16"]["thetas"])
        b = np.asarray(out[lib][n]["float16+state_dtype=float16"]["thetas"])
        c = np.asarray(out[lib][n]["float16"]["thetas"])
        print(f"{lib}.{n}: state_dtype=float16 equals peer float16 on all 300 steps: "
              f"{bool(np.array_equal(a, b))}; default equals peer: {bool(np.array_equal(a, c))}")

# What the docs claim, checked: every default gradx run on float16 params is finite and ends
# within 3% of its float32 run (the spacing of float16 near θ moves it by up to 2%).
off = [
    f"{lib}.{n}"
    for lib in out
    for n, runs in out[lib].items()
    if runs["float16"]["first_nonfinite_step"] is not None
    or abs(runs["float16"]["theta300"] - runs["float32"]["theta300"])
    > 0.03 * abs(runs["float32"]["theta300"])
]
if off:
    raise SystemExit(f"float16 params stepped off their float32 run: {off}")
print("every default float16 run is finite and within 3% of its float32 run")
