"""Times one jitted update + apply of gradx and of optax for the same rule, in the same run.

    python benchmarks/update_step.py [--repeats 7] [--min-time 0.2] [--cases big,many]
                                     [--only adam,sgd] [--hlo DIR] [--flat] [--torch-fused]

For each case (one 16M-parameter float32 leaf; 1,000 leaves of 1,000; with
``--cases transformer``, a transformer-shaped tree of 192 leaves, 85M params) and each pair of the
table ``PAIRS`` whose gradx optimizer exists, it builds

    step = jax.jit(lambda params, state, grads: ..., donate_argnums=(0, 1))

for gradx and for optax, checks on a small tree that both produce the same params over a few
steps, then warms up and takes ``--repeats`` measurements of N back-to-back steps each
(N so that one measurement lasts about ``--min-time`` seconds), alternating which of the two
goes first, and reports the median time per step of each and their ratio. When ``import
torch`` works it also times the nearest ``torch.optim`` optimizer (an extra column).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

import gradx

LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Pair:
    """One rule, as gradx builds it and as optax (and, optionally, torch) builds it."""

    label: str
    gradx_name: str  # the row joins when gradx has this attribute
    gradx_kwargs: dict[str, Any]
    optax_make: Callable[[float], optax.GradientTransformation]
    torch_make: Callable[[Any, float], Any] | None = None  # (torch params, lr) -> optimizer


# --torch-fused: the optimizers that have a fused CPU kernel in torch use it.
TORCH_FUSED = {"on": False, "names": ("Adam", "AdamW", "SGD", "Adagrad")}


def _torch(name: str, **kwargs: Any) -> Callable[[Any, float], Any]:
    def make(params: Any, lr: float) -> Any:
        import torch

        extra = {"fused": True} if TORCH_FUSED["on"] and name in TORCH_FUSED["names"] else {}
        return getattr(torch.optim, name)(params, lr=lr, **kwargs, **extra)

    return make


# A rule joins the benchmark by adding a row; rows whose gradx optimizer does not exist yet are
# skipped. The keyword arguments make both sides the same rule where the defaults differ.
PAIRS = [
    Pair("sgd", "sgd", {}, optax.sgd, _torch("SGD")),
    Pair(
        "momentum",
        "momentum",
        {"momentum": 0.9},
        lambda lr: optax.sgd(lr, momentum=0.9),
        _torch("SGD", momentum=0.9),
    ),
    Pair(
        "nesterov",
        "nesterov",
        {"momentum": 0.9},
        lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
        _torch("SGD", momentum=0.9, nesterov=True),
    ),
    Pair(
        "ema_momentum(bias_correction)",
        "ema_momentum",
        {"beta": 0.9, "bias_correction": True},
        lambda lr: optax.chain(optax.ema(0.9, debias=True), optax.scale(-lr)),
    ),
    Pair("adam", "adam", {}, optax.adam, _torch("Adam")),
    Pair(
        "rmsprop",
        "rmsprop",
        {"decay": 0.9, "eps": 1e-8},  # gradx's default: eps outside the root
        lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-8, eps_in_sqrt=False),
        _torch("RMSprop", alpha=0.9, eps=1e-8),
    ),
    Pair(
        "adagrad",
        "adagrad",
        # optax puts eps inside the root: the same rule is gradx's eps_in_sqrt=True.
        {"eps": 1e-8, "initial_accumulator_value": 0.0, "eps_in_sqrt": True},
        lambda lr: optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-8),
        _torch("Adagrad", eps=1e-8),
    ),
    Pair(
        "adadelta",
        "adadelta",
        {"rho": 0.9, "eps": 1e-6},
        lambda lr: optax.adadelta(lr, rho=0.9, eps=1e-6),
        _torch("Adadelta", rho=0.9, eps=1e-6),
    ),
    Pair("adamax", "adamax", {}, optax.adamax, _torch("Adamax")),
    Pair(
        "amsgrad(max of v̂)",
        "amsgrad",
        {"max_of": "v_hat"},  # optax's convention; torch's is the max of the raw v
        optax.amsgrad,
        _torch("Adam", amsgrad=True),
    ),
    Pair(
        "nadam(μ_t = β₁)",
        "nadam",
        {"momentum_decay": None},  # optax's constant momentum; torch's NAdam uses Dozat's μ_t
        optax.nadam,
        _torch("NAdam"),
    ),
    Pair(
        "adamw",
        "adamw",
        {"weight_decay": 1e-2},
        lambda lr: optax.adamw(lr, weight_decay=1e-2),
        _torch("AdamW", weight_decay=1e-2),
    ),
    Pair(
        "schedule_free_adamw(warmup)",
        "schedule_free_adamw",
        {"warmup_steps": 100},
        lambda lr: optax.contrib.schedule_free_adamw(lr, warmup_steps=100),
    ),
]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    title: str
    shapes: tuple[tuple[int, ...], ...]


def transformer_shapes(blocks: int = 12, d: int = 768) -> tuple[tuple[int, ...], ...]:
    """A GPT-2-small-shaped tree without embeddings: per block q, k, v, o (d×d) and their
    biases, two layer norms (scale and bias), the MLP (d×4d, 4d×d) and its biases: 16 leaves,
    7.1M params; 12 blocks: 192 leaves, 85M float32 params."""
    one = [(d, d), (d,)] * 4 + [(d,)] * 4 + [(d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return tuple(one * blocks)


CASES = {
    "big": Case("big", "1 leaf of 16M (2^24) float32", ((1 << 24,),)),
    "many": Case("many", "1,000 leaves of 1,000 float32", ((1000,),) * 1000),
    "transformer": Case(
        "transformer",
        "transformer-shaped: 12 blocks, 192 leaves, 85M float32",
        transformer_shapes(),
    ),
}


# ----------------------------------------------------------------------------- programs


def make_step(opt: optax.GradientTransformation) -> Callable[..., Any]:
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def tree(shapes: tuple[tuple[int, ...], ...], seed: int, scale: float) -> list[jax.Array]:
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [scale * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes, strict=True)]


def same_rule(gradx_opt: Any, optax_opt: Any, steps: int = 5) -> float:
    """The largest difference between the params gradx and optax produce over a few steps.

    Run with a learning rate of 0.1, so that a different rule shows as a difference far
    above float32 rounding.
    """
    shapes = ((1000,), (10, 10))
    worst = 0.0
    params = {"gradx": tree(shapes, 0, 1.0), "optax": tree(shapes, 0, 1.0)}
    opts = {"gradx": gradx_opt, "optax": optax_opt}
    states = {k: opts[k].init(params[k]) for k in opts}
    for t in range(steps):
        grads = tree(shapes, 100 + t, 1.0)
        for k in opts:
            updates, states[k] = opts[k].update(grads, states[k], params[k])
            params[k] = optax.apply_updates(params[k], updates)
        for a, b in zip(params["gradx"], params["optax"], strict=True):
            worst = max(worst, float(jnp.max(jnp.abs(a - b))))
    return worst


@dataclasses.dataclass
class Side:
    """One contestant's compiled step and the buffers it threads through."""

    step: Callable[..., Any]
    params: Any
    state: Any

    def run(self, grads: Any, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.params, self.state = self.step(self.params, self.state, grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / n


class TorchSide:
    """The nearest torch.optim optimizer on the same shapes (params with .grad set)."""

    def __init__(self, make: Callable[[Any, float], Any], shapes: tuple[tuple[int, ...], ...]):
        import torch

        self.params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p in self.params:
            p.grad = torch.randn(p.shape) * 1e-3
        self.opt = make(self.params, LR)

    def run(self, grads: Any, n: int) -> float:
        del grads
        start = time.perf_counter()
        for _ in range(n):
            self.opt.step()
        return (time.perf_counter() - start) / n


def measure(sides: dict[str, Any], grads: Any, repeats: int, min_time: float) -> dict:
    """Median seconds per step of each side, measured interleaved, and the per-repeat ratios."""
    for side in sides.values():  # compile and warm up
        side.run(grads, 2)
    one = min(side.run(grads, 1) for side in sides.values())
    n = max(1, min(1000, math.ceil(min_time / max(one, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(sides[name].run(grads, n))
    ratios = [g / o for g, o in zip(times["gradx"], times["optax"], strict=True)]
    return {
        "n": n,
        "median": {name: statistics.median(t) for name, t in times.items()},
        "ratios": ratios,
        "paired": {
            name: statistics.median(a / o for a, o in zip(t, times["optax"], strict=True))
            for name, t in times.items()
        },
    }


# ----------------------------------------------------------------------------- HLO


_OP = re.compile(r"^\s*(?:ROOT\s+)?%\S+ = (\w+)\[([\d,]*)\](?:\{[\d,]*\})? ([a-z-]+)\(")
_FREE = {"parameter", "broadcast", "constant", "fusion", "tuple", "bitcast", "copy"}


def hlo_summary(text: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[int, dict[str, int], int]:
    """What the compiled step does per element and per step, read off its optimized HLO.

    Returns (elementwise ops per element, {op: count} per element, scalar fusions): the ops
    on arrays of the leaves' shape inside fusions (broadcasts, parameters and constants
    excluded), divided by the number of leaves; and the fusions that compute a scalar (count
    increments, bias corrections), each one more kernel launch per step.
    """
    leaf_dims = {",".join(map(str, s)) for s in shapes}
    ops: dict[str, int] = {}
    scalar_fusions = 0
    for line in text.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        _, dims, op = m.groups()
        if op == "fusion" and dims == "" and "ENTRY" not in line:
            scalar_fusions += 1
        if dims in leaf_dims and op not in _FREE:
            ops[op] = ops.get(op, 0) + 1
    per_element = {k: v // len(shapes) for k, v in sorted(ops.items())}
    return sum(per_element.values()), per_element, scalar_fusions


def dump_hlo(directory: pathlib.Path, tag: str, step: Any, *args: Any) -> str:
    """Writes the compiled HLO of ``step`` on ``args``; returns it."""
    text = step.lower(*args).compile().as_text()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{tag}.hlo.txt").write_text(text)
    return text


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="measurements per side (7)")
    parser.add_argument(
        "--min-time", type=float, default=0.2, help="seconds one measurement lasts (0.2)"
    )
    parser.add_argument("--cases", default="big,many", help=f"of {','.join(CASES)}")
    parser.add_argument("--only", default=None, help="pair labels or gradx names, a,b")
    parser.add_argument("--no-torch", action="store_true", help="skip torch even if present")
    parser.add_argument("--hlo", type=pathlib.Path, help="write the compiled HLO of each side")
    parser.add_argument(
        "--flat", action="store_true", help="also time gradx.flat(optimizer) (a column)"
    )
    parser.add_argument(
        "--torch-fused", action="store_true", help="torch's fused kernel where it has one"
    )
    args = parser.parse_args(argv)
    TORCH_FUSED["on"] = args.torch_fused

    try:
        if args.no_torch:
            raise ImportError
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None

    device = jax.devices()[0]
    print("$ python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    print(
        f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, optax {optax.__version__}, "
        f"gradx {gradx.__version__}"
        + (f", torch {torch_version}" if torch_version else ", torch not installed")
    )
    print(
        f"device: {device.platform} {device.device_kind} ({len(jax.devices())} device(s)), "
        f"{os.cpu_count()} CPU cores; median of {args.repeats} x N steps per side, interleaved"
    )

    only = set(args.only.split(",")) if args.only else None
    pairs = []
    for pair in PAIRS:
        if only and pair.label not in only and pair.gradx_name not in only:
            continue
        make = getattr(gradx, pair.gradx_name, None)
        if make is None:
            print(f"  (no gradx.{pair.gradx_name} yet: {pair.label} skipped)")
            continue
        pairs.append((pair, make))

    worst_ratio = 0.0
    for case_name in args.cases.split(","):
        case = CASES[case_name]
        print(f"\n{case.title}")
        header = (
            f"  {'rule':<30} {'gradx_ms':>9} {'optax_ms':>9} {'ratio':>6} {'paired':>6}"
            f"  {'per-repeat':>11}"
        )
        header += f" {'flat_ms':>9} {'(paired)':>8}" if args.flat else ""
        header += f" {'torch_ms':>9} {'(paired)':>8}" if torch_version else ""
        print(header + "   N  same rule")
        grads = tree(case.shapes, 1, 1e-3)
        for pair, make in pairs:
            gradx_opt = make(LR, **pair.gradx_kwargs)
            optax_opt = pair.optax_make(LR)
            diff = same_rule(make(0.1, **pair.gradx_kwargs), pair.optax_make(0.1))
            sides: dict[str, Any] = {}
            for name, opt in (("gradx", gradx_opt), ("optax", optax_opt)):
                params = tree(case.shapes, 0, 1.0)
                sides[name] = Side(make_step(opt), params, opt.init(params))
            if args.flat:
                flat_opt = gradx.flat(make(LR, **pair.gradx_kwargs))
                params = tree(case.shapes, 0, 1.0)
                sides["flat"] = Side(make_step(flat_opt), params, flat_opt.init(params))
            hlo_line = None
            if args.hlo:
                summaries = {}
                for name, side in sides.items():
                    tag = f"{case.name}_{pair.gradx_name}_{name}"
                    text = dump_hlo(args.hlo, tag, side.step, side.params, side.state, grads)
                    summaries[name] = hlo_summary(text, case.shapes)
                (gn, gops, gs), (on, oops, os_) = summaries["gradx"], summaries["optax"]
                extra = {k: gops.get(k, 0) - oops.get(k, 0) for k in {*gops, *oops}}
                extra_text = ", ".join(f"{v:+d} {k}" for k, v in sorted(extra.items()) if v)
                hlo_line = (
                    f"      HLO: {gn} vs {on} elementwise ops per element"
                    f" ({extra_text or 'the same ops'}); {gs} vs {os_} scalar fusions per step"
                )
            if torch_version and pair.torch_make:
                sides["torch"] = TorchSide(pair.torch_make, case.shapes)
            result = measure(sides, grads, args.repeats, args.min_time)
            med = result["median"]
            ratio = med["gradx"] / med["optax"]
            worst_ratio = max(worst_ratio, ratio)
            lo, hi = min(result["ratios"]), max(result["ratios"])
            paired = statistics.median(result["ratios"])
            line = (
                f"  {pair.label:<30} {1e3 * med['gradx']:>9.3f} {1e3 * med['optax']:>9.3f} "
                f"{ratio:>6.3f} {paired:>6.3f}  {lo:>5.2f}-{hi:<5.2f}"
            )
            for extra in ("flat", "torch") if args.flat else ("torch",):
                if extra == "torch" and not torch_version:
                    continue
                if extra in med:
                    line += f" {1e3 * med[extra]:>9.3f} {result['paired'][extra]:>7.2f}×"
                else:
                    line += f" {'—':>9} {'':>8}"
            same = "yes" if diff <= 1e-5 else f"NO ({diff:.1e})"
            print(f"{line} {result['n']:>3}  {same}  (max |Δθ| {diff:.0e})")
            if hlo_line:
                print(hlo_line)
            sys.stdout.flush()
            del sides
    print(f"\nworst gradx/optax ratio: {worst_ratio:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
