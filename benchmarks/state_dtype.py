"""Times one jitted, donated Adam step per ``state_dtype`` on one float32 leaf, with optax's.

    python benchmarks/state_dtype.py [--n 16777216] [--repeats 21] [--min-time 0.2] [--hlo]

Rows: gradx.adam with float32 moments (``state_dtype=None``), bfloat16 moments (rounded to
nearest, and stochastically rounded), int8 moments (blockwise, 8-bit floating-point maps,
each block's absmax taken in one pass from the old codes and the gradient), optax.adam with
float32 and with bfloat16 first moments (``mu_dtype``), and blockwise int8 written the
direct way: Adam in plain JAX with linear int8 moments (one multiply to encode or decode;
``--n`` a multiple of 256) and each block's absmax taken from the new moments as computed,
to show what XLA makes of that reduction. Each is

    step = jax.jit(lambda params, state, grads: ..., donate_argnums=(0, 1))

compiled and warmed up, then measured ``--repeats`` times (N back-to-back steps each, N so
that a measurement lasts about ``--min-time``), the rows interleaved in every repeat (the
order rotated from repeat to repeat) so that machine noise hits all alike. Reported: the
median time per step, its ratio to gradx's float32 step, the state's bytes per parameter
from its leaves, and the process's minor page faults per step (``getrusage``; each is a
4 KiB page the kernel maps and zeroes because XLA's CPU runtime allocates a step's large
temporaries afresh: see the header's malloc settings). ``--hlo`` adds, per row, the
compiled program's fusions, copies and gathers and its temporary bytes. A last table gives
the state bytes per parameter of Adam on a 1M-parameter tree (1000×1000 + 1000 + 1000×3
+ 3), measured from ``jax.eval_shape``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

try:
    import resource
except ImportError:  # Windows has no resource module: no fault counts
    resource = None  # type: ignore[assignment]

import gradx

LR = 1e-3
ROWS: dict[str, Any] = {
    "gradx float32": lambda: gradx.adam(LR),
    "gradx bfloat16": lambda: gradx.adam(LR, state_dtype="bfloat16"),
    "gradx bfloat16 + SR": lambda: gradx.adam(
        LR, state_dtype="bfloat16", stochastic_rounding=True
    ),
    "gradx int8": lambda: gradx.adam(LR, state_dtype="int8"),
    "optax float32": lambda: optax.adam(LR),
    "optax mu bfloat16": lambda: optax.adam(LR, mu_dtype=jnp.bfloat16),
    "plain JAX linear int8, direct absmax": lambda: linear_int8_adam(LR),
}


def linear_int8_adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Any:
    """Blockwise int8 Adam with exact absmax scales, in the fewest operations: m and v in
    blocks of 256, each stored as round(127·x/absmax) with its float32 absmax; decoded,
    updated in float32 and re-encoded every step. Not a usable optimizer (a linear map rounds
    small v to 0): it times the absmax reduction over the new moments written the direct
    way, which XLA's CPU backend runs as separate passes over a float32 copy of them
    (gradx's int8 blocks take it from the old codes and the gradient instead)."""

    def encode(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        blocks = x.reshape(-1, 256)
        top = jnp.maximum(jnp.max(blocks, axis=1), -jnp.min(blocks, axis=1))
        scale = 127 / jnp.where(top > 0, top, 1)
        return jnp.round(blocks * scale[:, None]).astype(jnp.int8), top

    def decode(codes: jax.Array, top: jax.Array) -> jax.Array:
        return (codes.astype(jnp.float32) * (top / 127)[:, None]).reshape(-1)

    def init(params: jax.Array) -> Any:
        return (jnp.zeros([], jnp.int32), *(encode(jnp.zeros_like(params)) for _ in "mv"))

    def update(g: jax.Array, state: Any, params: Any = None) -> Any:
        count, m, v = state
        count = count + 1
        m = b1 * decode(*m) + (1 - b1) * g
        v = b2 * decode(*v) + (1 - b2) * g * g
        t = count.astype(jnp.float32)
        step = -lr * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
        return step, (count, encode(m), encode(v))

    return optax.GradientTransformation(init, update)


def make_step(opt: optax.GradientTransformation) -> Any:
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


class Side:
    """One row: its step, its params and state (donated and replaced at every call)."""

    def __init__(self, make: Any, n: int):
        self.opt = make()
        self.step = make_step(self.opt)
        self.params = jnp.zeros(n, jnp.float32) + 0.5
        self.state = self.opt.init(self.params)
        size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.state))
        self.bytes_per_param = size / n
        self.faults: list[float] = []  # minor page faults per step, one entry per run

    def run(self, grads: jax.Array, steps: int) -> float:
        faults = minor_faults()
        start = time.perf_counter()
        for _ in range(steps):
            self.params, self.state = self.step(self.params, self.state, grads)
        jax.block_until_ready((self.params, self.state))
        elapsed = time.perf_counter() - start
        self.faults.append((minor_faults() - faults) / steps)
        return elapsed / steps

    def hlo(self, grads: jax.Array) -> str:
        compiled = self.step.lower(self.params, self.state, grads).compile()
        text = compiled.as_text()
        counts = {k: len(re.findall(rf"\s{k}\(", text)) for k in ("fusion", "copy", "gather")}
        temp = compiled.memory_analysis().temp_size_in_bytes
        return f"{counts['fusion']} | {counts['copy']} | {counts['gather']} | {temp / 2**20:.1f}"


def minor_faults() -> float:
    """The process's minor page faults so far (all threads), or nan where unknown."""
    return float("nan") if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def malloc_settings() -> str:
    """The environment that decides how glibc serves XLA's temporaries, as it was set."""
    keys = sorted(k for k in os.environ if k == "GLIBC_TUNABLES" or k.startswith("MALLOC_"))
    return " ".join(f"{k}={os.environ[k]}" for k in keys) or "none (glibc's defaults)"


def bytes_table() -> list[str]:
    shapes = {"w1": (1000, 1000), "b1": (1000,), "w2": (1000, 3), "b2": (3,)}
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    n = sum(int(np.prod(s)) for s in shapes.values())
    lines = ["| Adam, state_dtype | state bytes / param (1,004,003 params) |", "|---|---|"]
    policies = {
        "None (float32)": {},
        '"bfloat16"': {"state_dtype": "bfloat16"},
        '"bfloat16", stochastic_rounding=True': {
            "state_dtype": "bfloat16",
            "stochastic_rounding": True,
        },
        '"int8"': {"state_dtype": "int8"},
    }
    for label, kw in policies.items():
        state = jax.eval_shape(gradx.adam(LR, **kw).init, params)
        size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        lines.append(f"| {label} | {size / n:.4f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16 * 2**20, help="elements of the leaf")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--hlo", action="store_true", help="fusions, copies, gathers, temp")
    args = parser.parse_args(argv)
    if args.n <= 0 or args.n % 256:
        parser.error(f"--n must be a positive multiple of 256 (the int8 blocks), got {args.n}")
    print("$ python benchmarks/state_dtype.py", shlex.join(sys.argv[1:] if argv is None else argv))
    print(f"jax {jax.__version__}, optax {optax.__version__}, device {jax.devices()[0]}")
    print(f"malloc settings: {malloc_settings()}")
    grads = jnp.asarray(np.random.default_rng(0).normal(size=args.n), jnp.float32) * 1e-2
    sides = {label: Side(make, args.n) for label, make in ROWS.items()}
    steps = {}
    for label, side in sides.items():  # compile, warm up, pick N
        side.run(grads, 2)
        once = side.run(grads, 3)
        steps[label] = max(1, int(args.min_time / max(once, 1e-6)))
    times: dict[str, list[float]] = {label: [] for label in sides}
    labels = list(sides)
    for r in range(args.repeats):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            times[label].append(sides[label].run(grads, steps[label]))
    base = statistics.median(times["gradx float32"])
    head = "| step | ms | × gradx float32 | state bytes / param | page faults / step | N |"
    rule = "|---|---|---|---|---|---|"
    if args.hlo:
        head += " fusions | copies | gathers | temp MiB |"
        rule += "---|---|---|---|"
    print(f"\none float32 leaf of {args.n:,} elements, medians of {args.repeats} repeats\n")
    print(head)
    print(rule)
    for label, side in sides.items():
        ms = statistics.median(times[label])
        row = f"| {label} | {ms * 1e3:.2f} | {ms / base:.2f} | {side.bytes_per_param:.3f} |"
        row += f" {statistics.median(side.faults):,.0f} | {steps[label]} |"
        if args.hlo:
            row += f" {side.hlo(grads)} |"
        print(row)
    print()
    print("\n".join(bytes_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
