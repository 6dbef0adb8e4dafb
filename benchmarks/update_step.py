"""Times one jitted update + apply of gradx and of optax for the same rule, in the same run.

    python benchmarks/update_step.py [--repeats 7] [--min-time 0.2] [--cases big,many]
                                     [--only adam,sgd] [--hlo DIR] [--flat] [--torch-fused]

For each case (one 16M-parameter float32 leaf; 1,000 leaves of 1,000; with
``--cases transformer``, a transformer-shaped tree of 192 leaves, 85M params; ``transformer2``,
its first 2 blocks, for Muon on a CPU; ``LxN``: L leaves of N, e.g. ``10x100`` for a smoke
run) and each pair of the table ``PAIRS`` whose gradx optimizer exists, it builds

    step = jax.jit(lambda params, state, grads: ..., donate_argnums=(0, 1))

for gradx and for optax, checks on a small tree that both produce the same params over a few
steps, then warms up and takes ``--repeats`` measurements of N back-to-back steps each
(N so that one measurement lasts about ``--min-time`` seconds), alternating which of the two
goes first, and reports the median time per step of each and their ratio. When ``import
torch`` works it also times the nearest ``torch.optim`` optimizer (an extra column).

Against the memory limit: each row also gives the bytes the rule must move per parameter
(read the params, the gradient and the state, write the params and the state: 28 for float32
Adam), counted from the dtypes and sizes of the state ``jax.eval_shape`` gives for the
optimizer's ``init``; the bandwidth that implies at gradx's measured step time; the
bandwidth of a donated, jitted triad x ← x + a·y over one float32 array of the case's size
(12 bytes an element), measured interleaved with the two sides in every row; and each side's
implied bandwidth as a fraction of the triad's (1.0: as fast as streaming allows).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
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
from _hlo import dump_hlo, hlo_summary  # benchmarks/_hlo.py, beside this script

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
    same_tol: float = 1e-5  # the largest |Δθ| between the two sides that counts as one rule
    target: bool = True  # False: gradx stores the state otherwise; a figure, not held to 1.05


# --torch-fused: the optimizers that have a fused CPU kernel in torch use it.
TORCH_FUSED = {"on": False, "names": ("Adam", "AdamW", "SGD", "Adagrad")}


def _torch(name: str, **kwargs: Any) -> Callable[[Any, float], Any]:
    def make(params: Any, lr: float) -> Any:
        import torch

        extra = {"fused": True} if TORCH_FUSED["on"] and name in TORCH_FUSED["names"] else {}
        return getattr(torch.optim, name)(params, lr=lr, **kwargs, **extra)

    return make


# A rule joins the benchmark by adding a row: Pair(label, gradx name, gradx kwargs, optax twin
# as a function of the learning rate, optionally torch's); rows whose gradx optimizer does not
# exist yet are skipped. The keyword arguments make both sides the same rule where the
# defaults differ.
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
        "adam(μ bfloat16)",
        "adam",
        {"mu_dtype": "bfloat16"},
        lambda lr: optax.adam(lr, mu_dtype=jnp.bfloat16),
        # gradx's step reads m as stored (rounded to bfloat16), optax's before rounding: over
        # the 5 checking steps at lr 0.1, |Δθ| ≈ 3e-3 (docs/guides/porting.md).
        same_tol=1e-2,
    ),
    # The moments stored in 16 and 8 bits (state_dtype), against optax's float32 Adam: the
    # bytes a step must move fall from 28 to 20 (bfloat16) and about 16 (int8) per param.
    # Over the 5 checking steps at lr 0.1 the stored moments' rounding moves θ by up to ~2e-2.
    *(
        Pair(f"adam(state {d})", "adam", {"state_dtype": d}, optax.adam, None, 5e-2, False)
        for d in ("bfloat16", "int8")
    ),
    # Newton–Schulz on the matrices, Adam on the rest; torch's Muon takes matrices only: no
    # torch column. Not coordinate-wise: gradx.flat refuses it (no flat column).
    Pair("muon", "muon", {}, lambda lr: optax.contrib.muon(lr)),
    # torch's Adafactor is another rule (min(γ, 1/√t), ε₁ a floor, every matrix factored)
    Pair("adafactor", "adafactor", {}, optax.adafactor, _torch("Adafactor")),
    # the newer optimizers, each against its optax twin with optax's defaults
    Pair("lion", "lion", {}, optax.lion),
    Pair("lamb", "lamb", {}, optax.lamb),
    Pair("radam", "radam", {}, optax.radam, _torch("RAdam")),
    Pair("adopt", "adopt", {}, lambda lr: optax.contrib.adopt(lr)),
    Pair("schedule_free_sgd", "schedule_free_sgd", {}, optax.contrib.schedule_free_sgd),
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


def case_of(name: str) -> Case:
    """A case of ``CASES`` by name, or ``LxN``: L float32 leaves of N."""
    if name in CASES:
        return CASES[name]
    leaves, _, size = name.partition("x")
    if not (leaves.isdigit() and size.isdigit()):
        raise SystemExit(f"update_step.py: --cases takes {', '.join(CASES)} or LxN, not {name!r}")
    title = f"{int(leaves):,} lea{'f' if leaves == '1' else 'ves'} of {int(size):,} float32"
    return Case(name, title, ((int(size),),) * int(leaves))


CASES = {
    "big": Case("big", "1 leaf of 16M (2^24) float32", ((1 << 24,),)),
    "many": Case("many", "1,000 leaves of 1,000 float32", ((1000,),) * 1000),
    "transformer": Case(
        "transformer",
        "transformer-shaped: 12 blocks, 192 leaves, 85M float32",
        transformer_shapes(),
    ),
    # Muon's Newton–Schulz costs ~1.6 TFLOP per step of the 12 blocks: 2 blocks on a CPU
    "transformer2": Case(
        "transformer2",
        "transformer-shaped: 2 blocks, 32 leaves, 14M float32",
        transformer_shapes(blocks=2),
    ),
}


# ----------------------------------------------------------------------------- programs


def make_step(opt: optax.GradientTransformation, donate: Any = (0, 1)) -> Callable[..., Any]:
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=donate)


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
    steps_of = {k: make_step(opts[k], donate=()) for k in opts}  # jitted: one compile each
    for t in range(steps):
        grads = tree(shapes, 100 + t, 1.0)
        for k in opts:
            params[k], states[k] = steps_of[k](params[k], states[k], grads)
        for a, b in zip(params["gradx"], params["optax"], strict=True):
            worst = max(worst, float(jnp.max(jnp.abs(a - b))))
    return worst


def moved_bytes(opt: optax.GradientTransformation, shapes: tuple[tuple[int, ...], ...]) -> float:
    """Bytes per parameter one step must move at least: read the params, the gradient and the
    state, write the params and the state; the state's dtypes and sizes are those
    ``jax.eval_shape`` gives for ``opt.init`` (its scalars count too, a few bytes a step)."""
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    state = jax.eval_shape(opt.init, params)

    def size(tree: Any) -> int:
        return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

    return (3 * size(params) + 2 * size(state)) / sum(math.prod(s) for s in shapes)


TRIAD_BYTES = 12  # x ← x + a·y: read x and y, write x (float32)


class StreamSide:
    """The streaming limit: a donated, jitted triad x ← x + a·y over one float32 array."""

    def __init__(self, n: int):
        self.step = jax.jit(lambda x, y: x + jnp.float32(1e-6) * y, donate_argnums=0)
        self.x, self.y = tree(((n,),), 2, 1.0)[0], tree(((n,),), 3, 1.0)[0]

    def run(self, grads: Any, n: int) -> float:
        del grads
        start = time.perf_counter()
        for _ in range(n):
            self.x = self.step(self.x, self.y)
        jax.block_until_ready(self.x)
        return (time.perf_counter() - start) / n


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


# ----------------------------------------------------------------------------- main


def hlo_line(args: Any, case: Case, pair: Pair, sides: dict[str, Any], grads: Any) -> str:
    """Dumps each side's HLO to ``--hlo`` and compares gradx's with optax's in one line."""
    summaries = {}
    for name, side in sides.items():
        tag = f"{case.name}_{pair.gradx_name}_{name}"
        text = dump_hlo(args.hlo, tag, side.step, side.params, side.state, grads)
        summaries[name] = hlo_summary(text, case.shapes)
    (gn, gops, gs, gc), (on, oops, os_, oc) = summaries["gradx"], summaries["optax"]
    extra = {k: gops.get(k, 0) - oops.get(k, 0) for k in {*gops, *oops}}
    extra_text = ", ".join(f"{v:+d} {k}" for k, v in sorted(extra.items()) if v)
    return (
        f"- {pair.label}, HLO: {gn} vs {on} elementwise ops per element"
        f" ({extra_text or 'the same ops'}); {gs} vs {os_} scalar fusions,"
        f" {gc} vs {oc} leaf copies per step"
    )


def columns(flat: bool, torch: bool) -> list[str]:
    cols = ["rule", "gradx ms", "optax ms", "ratio", "paired", "per-repeat"]
    cols += ["flat ms (paired)"] * flat + ["torch ms (paired)"] * torch
    return [*cols, "B/param", "GB/s", "triad GB/s", "of limit", "optax of limit", "N", "same"]


def run_pair(args: Any, case: Case, pair: Pair, make: Any, grads: Any, torch: bool):
    """Times one row: (its markdown line, gradx/optax, the HLO line or None)."""
    gradx_opt, optax_opt = make(LR, **pair.gradx_kwargs), pair.optax_make(LR)
    diff = same_rule(make(0.1, **pair.gradx_kwargs), pair.optax_make(0.1))
    sides: dict[str, Any] = {}
    for name, opt in (("gradx", gradx_opt), ("optax", optax_opt)):
        params = tree(case.shapes, 0, 1.0)
        sides[name] = Side(make_step(opt), params, opt.init(params))
    if args.flat:
        flat_opt = gradx.flat(make(LR, **pair.gradx_kwargs))
        params = tree(case.shapes, 0, 1.0)
        try:
            sides["flat"] = Side(make_step(flat_opt), params, flat_opt.init(params))
        except ValueError:  # refused packed (muon: each matrix as a whole)
            pass
    hlo = hlo_line(args, case, pair, sides, grads) if args.hlo else None
    if torch and pair.torch_make:
        sides["torch"] = TorchSide(pair.torch_make, case.shapes)
    n_params = sum(math.prod(s) for s in case.shapes)
    sides["stream"] = StreamSide(n_params)
    result = measure(sides, grads, args.repeats, args.min_time)
    med = result["median"]
    ratio = med["gradx"] / med["optax"]
    per_param = moved_bytes(gradx_opt, case.shapes)
    moved, stream = per_param * n_params, TRIAD_BYTES * n_params / med["stream"]
    cells = [pair.label, f"{1e3 * med['gradx']:.3f}", f"{1e3 * med['optax']:.3f}"]
    cells += [f"{ratio:.3f}", f"{statistics.median(result['ratios']):.3f}"]
    cells.append(f"{min(result['ratios']):.2f}-{max(result['ratios']):.2f}")
    for extra in ("flat",) * args.flat + ("torch",) * torch:
        have = extra in med
        cells.append(f"{1e3 * med[extra]:.3f} ({result['paired'][extra]:.2f}×)" if have else "—")
    cells += [f"{per_param:.1f}", f"{moved / med['gradx'] / 1e9:.1f}", f"{stream / 1e9:.1f}"]
    cells += [f"{moved / med[k] / stream:.2f}" for k in ("gradx", "optax")]
    same = "yes" if diff <= pair.same_tol else "NO"
    cells += [str(result["n"]), f"{same} ({diff:.0e})"]
    return "| " + " | ".join(cells) + " |", ratio, hlo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="measurements per side (7)")
    parser.add_argument(
        "--min-time", type=float, default=0.2, help="seconds one measurement lasts (0.2)"
    )
    parser.add_argument("--cases", default="big,many", help=f"of {','.join(CASES)}, or LxN")
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
    cases = [case_of(name) for name in args.cases.split(",")]

    try:
        if args.no_torch:
            raise ImportError
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None

    def emit(*lines: str) -> None:  # the output is markdown: tables, one per case
        print(*lines, sep="\n", flush=True)

    device = jax.devices()[0]
    emit(
        "$ python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, optax {optax.__version__}, "
        f"gradx {gradx.__version__}"
        + (f", torch {torch_version}" if torch_version else ", torch not installed"),
        f"device: {device.platform} {device.device_kind} ({len(jax.devices())} device(s)), "
        f"{os.cpu_count()} CPU cores; median of {args.repeats} x N steps per side, interleaved",
    )

    only = set(args.only.split(",")) if args.only else None
    pairs = []
    for pair in PAIRS:
        if only and pair.label not in only and pair.gradx_name not in only:
            continue
        make = getattr(gradx, pair.gradx_name, None)
        if make is None:
            emit(f"(no gradx.{pair.gradx_name} yet: {pair.label} skipped)")
            continue
        pairs.append((pair, make))

    ratios = []
    for case in cases:
        cols = columns(args.flat, bool(torch_version))
        emit("", f"### {case.title}", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|")
        grads, hlo_lines = tree(case.shapes, 1, 1e-3), []
        for pair, make in pairs:
            line, ratio, hlo = run_pair(args, case, pair, make, grads, bool(torch_version))
            emit(line)
            ratios += [ratio] if pair.target else []
            hlo_lines += [hlo] if hlo else []
        if hlo_lines:
            emit("", *hlo_lines)
    emit(
        "",
        f"worst gradx/optax ratio: {max(ratios, default=0.0):.3f} (target <= 1.05; rows that "
        "store the state in fewer bits are figures, not held to it)",
    )
    state_bytes_table(pairs, cases, emit)
    return 0


def state_bytes_table(pairs: list, cases: list[Case], emit: Any) -> None:
    """The bytes of each side's optimizer state (from jax.eval_shape: nothing is allocated),
    and of gradx's hyperparameters in it (a few scalars)."""
    emit("", "### optimizer state bytes", "")
    emit("| case | rule | gradx B | of which hyperparameters | optax B | difference |")
    emit("|---|---|---:|---:|---:|---:|")
    for case in cases:
        params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in case.shapes]
        for pair, make in pairs:
            ours = jax.eval_shape(make(LR, **pair.gradx_kwargs).init, params)
            theirs = jax.eval_shape(pair.optax_make(LR).init, params)
            hyper = nbytes((ours.hyperparams, ours.scheduled, ours.count))
            a, b = nbytes(ours), nbytes(theirs)
            emit(f"| {case.name} | {pair.label} | {a:,} | {hyper} | {b:,} | {a - hyper - b:+,} |")


def nbytes(tree_: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree_))


if __name__ == "__main__":
    sys.exit(main())
