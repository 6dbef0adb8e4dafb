"""Trace and compile time of one jitted update + apply: gradx, gradx.flat and optax, same run.

    python benchmarks/compile_time.py [--quick] [--rules adam,momentum,rmsprop]
                                      [--leaves 10,100,1000,4000]
                                      [--shapes uniform|distinct|transformer|gpt2]
                                      [--repeats 5] [--compile-repeats 3] [--inject]
                                      [--skip-step] [--skip-mlp] [--skip-fit]
                                      [--muon-blocks 12]

For every rule and number of leaves L it builds, for each side, a fresh

    step = jax.jit(lambda params, state, grads: ..., donate_argnums=(0, 1))  # update + apply

and times ``step.lower(...)`` (tracing and lowering to StableHLO: "trace") and
``.compile()`` (XLA: "compile") separately, ``--compile-repeats`` times per side (medians; the
ratio is that of the medians of trace + compile). Functions are new closures every time and
no persistent compilation cache is configured, so nothing is reused; the sides are compiled
in alternating order (the order flips between repeats and between sizes). With ``--inject``
a fourth side is optax with its hyperparameters as runtime values in its state
(``optax.inject_hyperparams``), as gradx keeps them for every optimizer. Each row also counts
the instructions of each side's optimized HLO (fused computations included): XLA's compile
time follows that count, which does not move with the machine's load. Then it times the
compiled steps, interleaved, ``--repeats`` measurements each (median; ``paired`` is the median
of the per-repeat ratios flat/optax and gradx/optax).

Leaves (``--shapes``): ``uniform``: every leaf has shape (1000,), so XLA compiles one kernel
for all leaves of optax and of per-leaf gradx (it deduplicates identical fused kernels);
``distinct``: leaf i has shape (1000 + i,), every kernel is a new one, as in a model whose
leaves all differ; ``transformer``: the leaves of transformer blocks with d = 128 (16 a block:
q, k, v, o and the MLP's two matrices, all factored by Adafactor, and their vectors), for
``--rules adafactor`` (which has no flat column: ``gradx.flat`` refuses its per-leaf blocks).
``gpt2``: ``update_step.py``'s GPT-2-small-shaped blocks, L/16 of them (``--leaves 192``:
12 blocks, 85M params; compare ``--rules schedule_free_adamw``).

It also times a 50-layer MLP train step (value_and_grad + Adam update + apply; 100 leaves;
medians of ``--compile-repeats``)
and the first ``gradx.fit`` epoch of the digits network (64-16-16-10, Adam, batch 32; packed
by default, and with ``flat=False``) against the optax-tutorial loop's first epoch (jitted
step per minibatch, host batches); both include compilation. One fit and one loop run first
to warm what a process compiles once for all (JAX's helpers, and fit's shuffle program for
N = 1437: 0.2-0.25 s, once per process and N). ``--quick`` skips the 4,000-leaf size.
With ``--muon-blocks B`` it also traces and compiles ``gradx.muon`` and ``optax.contrib.muon``
on update_step.py's transformer-shaped tree of B blocks (shapes only, nothing runs).
With ``--cache-dir DIR`` JAX's persistent compilation cache is on: run it twice, and the
second run's first epochs reuse the programs the first run compiled (``gradx.fit`` and
``gradx.sweep`` programs are found by their HLO).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

import gradx

LR = 1e-3

# optax.adafactor's arguments that decide shapes or Python branches (not runtime values).
ADAFACTOR_STATIC = (
    "min_dim_size_to_factor",
    "multiply_by_parameter_scale",
    "factored",
    "dtype_momentum",
    "decay_offset",
)

def _distinct_leaves(opt: Any) -> Any:
    """``opt`` whose init copies every leaf: optax's schedule_free state keeps the injected
    b1 array itself, which the donating step would donate twice."""
    return optax.GradientTransformationExtraArgs(
        lambda params: jax.tree.map(jnp.copy, opt.init(params)), opt.update
    )


# gradx, optax, and optax with its hyperparameters as runtime values in the state
# (optax.inject_hyperparams: what gradx does for every optimizer).
RULES: dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]] = {
    "adam": (
        lambda: gradx.adam(LR),
        lambda: optax.adam(LR),
        lambda: optax.inject_hyperparams(optax.adam)(
            learning_rate=LR, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0
        ),
    ),
    "momentum": (
        lambda: gradx.momentum(LR, momentum=0.9),
        lambda: optax.sgd(LR, momentum=0.9),
        lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=LR, momentum=0.9),
    ),
    "rmsprop": (
        lambda: gradx.rmsprop(LR, decay=0.9, eps=1e-8),
        lambda: optax.rmsprop(LR, decay=0.9, eps=1e-8, eps_in_sqrt=False),
        lambda: optax.inject_hyperparams(optax.rmsprop, static_args=("eps_in_sqrt",))(
            learning_rate=LR, decay=0.9, eps=1e-8, eps_in_sqrt=False
        ),
    ),
    "adafactor": (  # use with --shapes transformer: vectors are not factored
        lambda: gradx.adafactor(LR),
        lambda: optax.adafactor(LR),
        lambda: optax.inject_hyperparams(optax.adafactor, static_args=ADAFACTOR_STATIC)(
            learning_rate=LR
        ),
    ),
    "schedule_free_adamw": (
        lambda: gradx.schedule_free_adamw(LR, warmup_steps=100),
        lambda: optax.contrib.schedule_free_adamw(LR, warmup_steps=100),
        lambda: _distinct_leaves(
            optax.inject_hyperparams(
                optax.contrib.schedule_free_adamw, static_args=("warmup_steps",)
            )(learning_rate=LR, warmup_steps=100)
        ),
    ),
    "lion": (
        lambda: gradx.lion(LR),
        lambda: optax.lion(LR),
        lambda: optax.inject_hyperparams(optax.lion)(learning_rate=LR),
    ),
    "lamb": (
        lambda: gradx.lamb(LR),
        lambda: optax.lamb(LR),
        lambda: optax.inject_hyperparams(optax.lamb)(learning_rate=LR),
    ),
    "radam": (
        lambda: gradx.radam(LR),
        lambda: optax.radam(LR),
        lambda: optax.inject_hyperparams(optax.radam)(learning_rate=LR),
    ),
    "adopt": (
        lambda: gradx.adopt(LR),
        lambda: optax.contrib.adopt(LR),
        lambda: optax.inject_hyperparams(optax.contrib.adopt)(learning_rate=LR),
    ),
    "schedule_free_sgd": (
        lambda: gradx.schedule_free_sgd(LR),
        lambda: optax.contrib.schedule_free_sgd(LR),
        lambda: _distinct_leaves(
            optax.inject_hyperparams(optax.contrib.schedule_free_sgd)(learning_rate=LR)
        ),
    ),
}

# Rules whose blocks work per leaf, so that gradx.flat refuses them: no flat column.
NO_FLAT = {"adafactor", "lamb"}  # lamb: its trust ratio is a norm per leaf


def sides_for(rule: str, inject: bool = False) -> dict[str, Callable[[], Any]]:
    make_gradx, make_optax, make_inject = RULES[rule]
    sides = {"gradx": make_gradx, "flat": lambda: gradx.flat(make_gradx()), "optax": make_optax}
    if rule in NO_FLAT:
        del sides["flat"]
    return {**sides, "inject": make_inject} if inject else sides


def shapes_of(n: int, kind: str) -> list[tuple[int, ...]]:
    if kind == "uniform":
        return [(1000,)] * n
    if kind == "transformer":  # blocks of 16 leaves, d = 128: every matrix factored
        d = 128
        one = [(d, d), (d,)] * 4 + [(d,)] * 4 + [(d, 4 * d), (4 * d,), (4 * d, d), (d,)]
        return (one * math.ceil(n / len(one)))[:n]
    if kind == "gpt2":  # update_step.py's GPT-2-small blocks, 16 leaves each
        from update_step import transformer_shapes as gpt2_shapes

        return list(gpt2_shapes(blocks=max(1, n // 16)))
    return [(1000 + i,) for i in range(n)]


def make_step(opt: Any) -> Callable[..., Any]:
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


def instructions(compiled: Any) -> int:
    """HLO instructions in the optimized program, fused computations included: XLA's compile
    time grows with this count, and unlike a time it does not move with the machine's load."""
    return sum(
        1 for line in compiled.as_text().splitlines() if re.match(r"\s+(ROOT )?%?\S+ = ", line)
    )


def trace_compile(jitted: Any, *args: Any) -> tuple[float, float, Any]:
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, compiled


class Stepper:
    def __init__(self, compiled: Any, params: Any, state: Any):
        self.compiled, self.params, self.state = compiled, params, state

    def run(self, grads: Any, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            self.params, self.state = self.compiled(self.params, self.state, grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / n


def interleaved(steppers: dict[str, Stepper], grads: Any, repeats: int, min_time: float):
    for s in steppers.values():
        s.run(grads, 2)
    one = min(s.run(grads, 1) for s in steppers.values())
    n = max(1, min(1000, math.ceil(min_time / max(one, 1e-9))))
    times: dict[str, list[float]] = {k: [] for k in steppers}
    names = list(steppers)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(steppers[name].run(grads, n))
    return times


def update_table(args: argparse.Namespace) -> None:
    shape = {
        "uniform": "(1000,)",
        "distinct": "(1000 + i,)",
        "transformer": "of transformer blocks, d = 128 (q, k, v, o, MLP, biases, norms)",
        "gpt2": "of GPT-2-small blocks (16 leaves each: 12 blocks are 192 leaves, 85M)",
    }[args.shapes]
    print(
        f"\n### One update + apply, leaves {shape}"
        "\n\nseconds: trace / compile; step: median ms (paired ratio to optax)\n"
    )
    inject = (
        (" inject trace / compile |", " gradx/inject |", "---|---:|")
        if args.inject
        else ("", "", "")
    )
    print(
        "| rule | leaves | gradx trace / compile | flat trace / compile | optax trace / compile "
        f"|{inject[0]} gradx/optax (trace+compile) | flat/optax |{inject[1]} HLO instructions "
        "gradx / flat / optax | gradx step ms | flat step ms | optax step ms |"
    )
    print(f"|---|---:|---|---|---|{inject[2]}---:|---:|---|---|---|---:|")
    flip = False
    for rule in args.rules.split(","):
        for n in [int(x) for x in args.leaves.split(",")]:
            shapes = shapes_of(n, args.shapes)
            keys = jax.random.split(jax.random.key(0), n)
            grads = [1e-3 * jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]
            makers = sides_for(rule, args.inject)
            order = list(makers)[::-1] if flip else list(makers)
            flip = not flip
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in order}
            steppers, count = {}, {}
            for r in range(args.compile_repeats):
                for name in order if r % 2 == 0 else order[::-1]:
                    opt = makers[name]()
                    params = [jnp.ones(s, jnp.float32) for s in shapes]
                    state = opt.init(params)
                    t, c, compiled = trace_compile(make_step(opt), params, state, grads)
                    samples[name].append((t, c))
                    steppers[name] = Stepper(compiled, params, state)
                    count[name] = instructions(compiled)
            tc = {
                k: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v))
                for k, v in samples.items()
            }
            total = {k: statistics.median(t + c for t, c in v) for k, v in samples.items()}
            if args.skip_step:
                step_text = ["—", "—", "—"]
            else:
                times = interleaved(steppers, grads, args.repeats, args.min_time)
                med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
                paired = {
                    k: statistics.median(
                        a / b for a, b in zip(times[k], times["optax"], strict=True)
                    )
                    for k in ("gradx", "flat")
                    if k in times
                }
                step_text = [
                    f"{med['gradx']:.3f} ({paired['gradx']:.2f}×)",
                    f"{med['flat']:.3f} ({paired['flat']:.2f}×)" if "flat" in med else "—",
                    f"{med['optax']:.3f}",
                ]
            del steppers
            injected = (
                (
                    f" {tc['inject'][0]:.2f} / {tc['inject'][1]:.2f} |",
                    f" {total['gradx'] / total['inject']:.2f}× |",
                )
                if args.inject
                else ("", "")
            )
            flat = "flat" in tc
            print(
                f"| {rule} | {n} | {tc['gradx'][0]:.2f} / {tc['gradx'][1]:.2f} "
                + (f"| {tc['flat'][0]:.2f} / {tc['flat'][1]:.2f} " if flat else "| — ")
                + f"| {tc['optax'][0]:.2f} / {tc['optax'][1]:.2f} |{injected[0]}"
                f" {total['gradx'] / total['optax']:.2f}× | "
                + (f"{total['flat'] / total['optax']:.2f}× " if flat else "— ")
                + f"|{injected[1]} {count['gradx']} / {count.get('flat', '—')} / {count['optax']} "
                f"| {' | '.join(step_text)} |"
            )
            sys.stdout.flush()


# ----------------------------------------------------------------------------- MLP


def mlp_table(args: argparse.Namespace) -> None:
    layers, width, batch = 50, 64, 32
    key = jax.random.key(1)
    params = []
    for i in range(layers):
        key, k = jax.random.split(key)
        params.append(
            {
                "w": jax.random.normal(k, (width, width)) / math.sqrt(width),
                "b": jnp.zeros((width,)) + 0.01 * i,
            }
        )
    x = jax.random.normal(key, (batch, width))

    def make(opt: Any) -> Callable[..., Any]:
        def loss(p: Any) -> jax.Array:
            h = x
            for layer in p:
                h = jnp.tanh(h @ layer["w"] + layer["b"])
            return jnp.mean(h**2)

        def step(p: Any, s: Any) -> tuple[Any, Any, jax.Array]:
            value, g = jax.value_and_grad(loss)(p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, value

        return jax.jit(step, donate_argnums=(0, 1))

    print("\n### 50-layer MLP train step (width 64, 100 leaves, Adam): trace / compile s\n")
    print("| side | trace s | compile s | total vs optax |")
    print("|---|---:|---:|---:|")
    sides = sides_for("adam")
    order = ["optax", "gradx", "flat"]
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in order}
    for r in range(args.compile_repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            opt = sides[name]()
            p = jax.tree.map(jnp.copy, params)
            t, c, _ = trace_compile(make(opt), p, opt.init(p))
            samples[name].append((t, c))
    total = {k: statistics.median(t + c for t, c in v) for k, v in samples.items()}
    for name in ("gradx", "flat", "optax"):
        t = statistics.median(t for t, _ in samples[name])
        c = statistics.median(c for _, c in samples[name])
        print(f"| {name} | {t:.2f} | {c:.2f} | {total[name] / total['optax']:.2f}× |")


# ----------------------------------------------------------------------------- Muon


def transformer_shapes(blocks: int, d: int = 768) -> list[tuple[int, ...]]:
    """update_step.py's transformer-shaped tree: per block q, k, v, o (d×d) and biases, two
    layer norms, the MLP (d×4d, 4d×d) and its biases (16 leaves, 7.1M params)."""
    one = [(d, d), (d,)] * 4 + [(d,)] * 4 + [(d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return one * blocks


def muon_table(args: argparse.Namespace) -> None:
    """Trace and compile of one update + apply of gradx.muon and optax.contrib.muon on the
    transformer-shaped tree (shapes only: nothing is allocated or run)."""
    import optax.contrib

    shapes = transformer_shapes(args.muon_blocks)
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    makers = {"gradx": lambda: gradx.muon(LR), "optax": lambda: optax.contrib.muon(LR)}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in makers}
    count = {}
    for r in range(args.compile_repeats):
        for name in list(makers) if r % 2 == 0 else list(makers)[::-1]:
            opt = makers[name]()
            state = jax.eval_shape(opt.init, params)
            t, c, compiled = trace_compile(make_step(opt), params, state, params)
            samples[name].append((t, c))
            count[name] = instructions(compiled)
    total = {k: statistics.median(t + c for t, c in v) for k, v in samples.items()}
    leaves = len(shapes)
    print(
        f"\n### Muon, transformer-shaped tree ({args.muon_blocks} blocks, {leaves} leaves, "
        f"{sum(math.prod(s) for s in shapes) / 1e6:.1f}M float32): trace / compile s, "
        f"median of {args.compile_repeats}\n"
    )
    print("| side | trace s | compile s | total vs optax | HLO instructions |")
    print("|---|---:|---:|---:|---:|")
    for name, v in samples.items():
        t, c = statistics.median(t for t, _ in v), statistics.median(c for _, c in v)
        print(
            f"| {name} | {t:.2f} | {c:.2f} | {total[name] / total['optax']:.2f}× | {count[name]} |"
        )


# ----------------------------------------------------------------------------- fit


def digits_data(n: int = 1437) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 64), dtype=np.float32)
    w = rng.standard_normal((64, 10), dtype=np.float32)
    return x, np.argmax(x @ w, axis=1).astype(np.int32)


def digits_params() -> list[dict[str, jax.Array]]:
    sizes = [64, 16, 16, 10]
    key = jax.random.key(0)
    out = []
    for a, b in itertools.pairwise(sizes):
        key, k = jax.random.split(key)
        out.append({"w": jax.random.normal(k, (a, b)) / math.sqrt(a), "b": jnp.zeros((b,))})
    return out


def make_loss() -> Callable[[Any, Any], jax.Array]:
    def loss_fn(params: Any, batch: Any) -> jax.Array:  # a new function every call: no reuse
        x, y = batch
        h = x
        for i, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    return loss_fn


def first_fit_epoch(
    opt: Any, x: np.ndarray, y: np.ndarray, flat: bool | None = None
) -> tuple[float, float]:
    """(first epoch s, second epoch s) of gradx.fit."""
    result = gradx.fit(
        make_loss(), digits_params(), opt, (x, y), batch_size=32, epochs=2,
        key=jax.random.key(0), progress=False, flat=flat,
    )  # fmt: skip
    return float(result.epoch_seconds[0]), float(result.epoch_seconds[1])


def first_loop_epoch(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(first epoch s, second epoch s) of the optax-tutorial loop with optax.adam."""
    loss_fn = make_loss()
    opt = optax.adam(LR)

    @jax.jit
    def step(params, state, xb, yb):
        value, grads = jax.value_and_grad(loss_fn)(params, (xb, yb))
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    params = digits_params()
    state = opt.init(params)
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        for i in range(len(x) // 32):
            idx = order[i * 32 : (i + 1) * 32]
            params, state, _ = step(params, state, x[idx], y[idx])
        jax.block_until_ready(params)
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def fit_table(args: argparse.Namespace) -> None:
    x, y = digits_data()
    # Warm JAX's own caches (jnp helpers, the shuffle's program) for both; see the docstring.
    first_fit_epoch(gradx.adam(LR), x, y)
    first_fit_epoch(gradx.adam(LR), x, y, flat=False)
    first_loop_epoch(x, y)
    runs: dict[str, list[tuple[float, float]]] = {"fit": [], "fit_flat": [], "loop": []}
    for r in range(args.fit_repeats):
        order = ["fit", "fit_flat", "loop"] if r % 2 == 0 else ["loop", "fit_flat", "fit"]
        for name in order:
            if name == "fit":
                runs[name].append(first_fit_epoch(gradx.adam(LR), x, y))
            elif name == "fit_flat":
                runs[name].append(first_fit_epoch(gradx.adam(LR), x, y, flat=False))
            else:
                runs[name].append(first_loop_epoch(x, y))
    print(
        "\n### First epoch, digits network 64-16-16-10 (1437 examples, batch 32, Adam), "
        f"median of {args.fit_repeats} fresh runs\n"
    )
    print("| contender | first epoch s (incl. compile) | vs loop (paired) | next epoch s |")
    print("|---|---:|---:|---:|")
    labels = {
        "fit": "`gradx.fit(adam)` (packed by itself)",
        "fit_flat": "`gradx.fit(adam, flat=False)` (leaf by leaf)",
        "loop": "optax-tutorial loop (`optax.adam`)",
    }
    for name in ("fit", "fit_flat", "loop"):
        first = statistics.median(a for a, _ in runs[name])
        nxt = statistics.median(b for _, b in runs[name])
        paired = statistics.median(
            a / b for (a, _), (b, _) in zip(runs[name], runs["loop"], strict=True)
        )
        print(f"| {labels[name]} | {first:.3f} | {paired:.2f}× | {nxt:.4f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 4,000-leaf size")
    parser.add_argument("--rules", default="adam,momentum,rmsprop")
    parser.add_argument("--leaves", default=None, help="default 10,100,1000,4000")
    parser.add_argument(
        "--shapes", default="uniform", choices=("uniform", "distinct", "transformer", "gpt2")
    )
    parser.add_argument("--repeats", type=int, default=5, help="step measurements per side")
    parser.add_argument(
        "--compile-repeats", type=int, default=3, help="fresh trace + compile per side and size"
    )
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds per measurement")
    parser.add_argument("--fit-repeats", type=int, default=3)
    parser.add_argument(
        "--inject",
        action="store_true",
        help="also compile optax with optax.inject_hyperparams (runtime hyperparameters)",
    )
    parser.add_argument("--skip-step", action="store_true", help="no step times")
    parser.add_argument("--skip-update", action="store_true", help="no update table")
    parser.add_argument("--skip-mlp", action="store_true")
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument(
        "--muon-blocks",
        type=int,
        default=0,
        help="also compile gradx.muon and optax.contrib.muon on a transformer-shaped tree of "
        "this many blocks (12: update_step.py's 85M tree); 0: skip",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="use JAX's persistent compilation cache in this directory (run twice: the second "
        "run's first epochs are those with a warm cache); use with --skip-update --skip-mlp",
    )
    args = parser.parse_args(argv)
    if args.leaves is None:
        args.leaves = "10,100,1000" if args.quick else "10,100,1000,4000"
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    elif jax.config.jax_compilation_cache_dir:
        print("a persistent compilation cache is configured: unset it to measure compile time")
        return 1
    device = jax.devices()[0]
    print("$ python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, gradx {gradx.__version__}; "
        f"{device.platform} {device.device_kind}, {os.cpu_count()} CPU cores; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    if not args.skip_update:
        update_table(args)
    if not args.skip_mlp:
        mlp_table(args)
    if not args.skip_fit:
        fit_table(args)
    if args.muon_blocks:
        muon_table(args)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
