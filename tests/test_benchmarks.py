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
    "packing.py": (
        "--leaves 4 --sizes 8 --points fit,2 --steps 2 --epochs 2 --rounds 1",
        "| fit | 8 |",
    ),
    "diagnostics.py": ("--n 256 --repeats 1 --epochs 1 --optimizers adam --batch-sizes 32", "adam"),
    "scaling.py": ("--devices 2 --epochs 1 --n 64 --batch 32", "| digits 64-16-16-10 |"),
    "search_digits.py": ("--seeds 1 --epochs 1 --samples 2", "| random search"),
    "state_dtype.py": ("--n 4096 --repeats 1 --min-time 0.001 --hlo", "| gradx int8 |"),
    "state_dtype_quality.py": (
        "--n-train 600 --epochs 1 --seeds 1 --batch-size 64 --optimizer lion --lr 1e-4",
        "Lion lr 0.0001",
    ),
    "float16_gradx.py": ("", "every default float16 run is finite and within 3%"),
}


# run by benchmarks/gpu.sh --small: script -> (its table in OUT, a line it writes there)
GPU_SH = {
    "update_step.py": ("update_step_big.md", "| adam(μ bfloat16) | "),
    "compile_time.py": ("compile_time.md", "| momentum | 10 |"),
    "train_epoch.py": ("train_epoch.md", "| gradx.sweep, 8 lrs | 128 |"),
}


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}


def test_every_benchmark_script_is_covered():
    scripts = [p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")]
    assert sorted([*RUNS, *GPU_SH]) == sorted(scripts)  # _name.py: a module the scripts import


def test_gpu_script_runs_every_benchmark_it_names_at_a_toy_size(tmp_path):
    """benchmarks/gpu.sh --small: the accelerator run's scripts, at toy sizes, on CPU."""
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--small", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**_env(), "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for script, (table, marker) in GPU_SH.items():
        text = (tmp_path / "out" / table).read_text()
        assert marker in text, (script, text[-3000:])
    assert "leaf copies per step" in (tmp_path / "out" / "update_step_big.md").read_text()


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_at_a_toy_size(script, tmp_path):
    args, marker = RUNS[script]
    env = _env()
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
