"""Times one jitted, donated Adam step per ``state_dtype`` on one float32 leaf, with optax's.

    python benchmarks/state_dtype.py [--n 16777216] [--repeats 21] [--min-time 0.2] [--hlo]

Rows: gradx.adam with float32 moments (``state_dtype=None``), bfloat16 moments (rounded to
nearest, and stochastically rounded), int8 moments (blockwise, bitsandbytes' maps), and
optax.adam with float32 and with bfloat16 first moments (``mu_dtype``). Each is

    step = jax.jit(lambda params, state, grads: ..., donate_argnums=(0, 1))

compiled and warmed up, then measured ``--repeats`` times (N back-to-back steps each, N so
that a measurement lasts about ``--min-time``), the rows interleaved in every repeat (the
order rotated from repeat to repeat) so that machine noise hits all alike. Reported: the
median time per step, its ratio to gradx's float32 step, and the state's bytes per parameter
from its leaves. ``--hlo`` adds, per row, the compiled program's fusions, copies and gathers
and its temporary bytes. A last table gives the state bytes per parameter of Adam on a
1M-parameter tree (1000×1000 + 1000 + 1000×3 + 3), measured from ``jax.eval_shape``.
"""

from __future__ import annotations

import argparse
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
}


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

    def run(self, grads: jax.Array, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.params, self.state = self.step(self.params, self.state, grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / steps

    def hlo(self, grads: jax.Array) -> str:
        compiled = self.step.lower(self.params, self.state, grads).compile()
        text = compiled.as_text()
        counts = {k: len(re.findall(rf"\s{k}\(", text)) for k in ("fusion", "copy", "gather")}
        temp = compiled.memory_analysis().temp_size_in_bytes
        return f"{counts['fusion']} | {counts['copy']} | {counts['gather']} | {temp / 2**20:.1f}"


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
    print("$ python benchmarks/state_dtype.py", shlex.join(sys.argv[1:] if argv is None else argv))
    print(f"jax {jax.__version__}, optax {optax.__version__}, device {jax.devices()[0]}")
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
    head = "| step | ms | × gradx float32 | state bytes / param | N |"
    rule = "|---|---|---|---|---|"
    if args.hlo:
        head += " fusions | copies | gathers | temp MiB |"
        rule += "---|---|---|---|"
    print(f"\none float32 leaf of {args.n:,} elements, medians of {args.repeats} repeats\n")
    print(head)
    print(rule)
    for label, side in sides.items():
        ms = statistics.median(times[label])
        row = f"| {label} | {ms * 1e3:.2f} | {ms / base:.2f} | {side.bytes_per_param:.3f} |"
        row += f" {steps[label]} |"
        if args.hlo:
            row += f" {side.hlo(grads)} |"
        print(row)
    print()
    print("\n".join(bytes_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
