"""Every benchmark script runs end to end at a toy size, so a change in gradx cannot break one
unseen. Their figures are not checked here: speed is measured by running the scripts at their
real sizes (benchmarks/README.md), never in a timed test."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# script -> (toy-size arguments, a line the script prints when it has run through)
RUNS = {
    "compile_time.py": (
        "--rules momentum --leaves 10 --skip-mlp --skip-fit --repeats 1 --compile-repeats 1 "
        "--min-time 0.001",
        "| momentum | 10 |",
    ),
    "update_step.py": (
        "--only sgd --cases many --repeats 1 --min-time 0.001 --no-torch",
        "worst gradx/optax ratio",
    ),
    "packing.py": (
        "--leaves 4 --sizes 8 --points fit,2 --steps 2 --epochs 2 --rounds 1",
        "| fit | 8 |",
    ),
    "diagnostics.py": ("--n 256 --repeats 1 --epochs 1", "adam"),
    "train_epoch.py": ("--n 256 --repeats 1", "gradx.sweep"),
    "scaling.py": ("--devices 2 --epochs 1 --n 64 --batch 32", "| digits 64-16-16-10 |"),
    "search_digits.py": ("--seeds 1 --epochs 1 --samples 2", "| random search"),
}


def test_every_benchmark_script_is_covered():
    assert sorted(RUNS) == sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_at_a_toy_size(script, tmp_path):
    args, marker = RUNS[script]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args.split()],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # whatever a script writes lands here
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker in done.stdout, done.stdout[-3000:]
