"""Re-execute every notebook in this folder in place, so its saved outputs are current.

Usage, from the repository root::

    pip install -e ".[notebooks]"
    python notebooks/run_all.py                 # every notebooks/*.ipynb
    python notebooks/run_all.py 02 05           # only those whose name starts with 02 or 05

Each notebook runs top to bottom in a fresh ``python3`` kernel (the kernel of the Python
that runs this script), with ``notebooks/`` as its working directory, and is written back
with its new outputs. A failing cell stops that notebook, leaves the file untouched and
makes the script exit with status 1. ``tests/test_notebooks.py`` checks (without running
anything) that the saved notebooks were executed in order, without errors, with plots.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT_PER_CELL_S = 300


def run(path: pathlib.Path) -> float:
    """Executes ``path`` in place; returns the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    env_backend = os.environ.pop("MPLBACKEND", None)  # let the kernel embed inline figures
    try:
        start = time.perf_counter()
        NotebookClient(
            nb,
            timeout=TIMEOUT_PER_CELL_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
        seconds = time.perf_counter() - start
    finally:
        if env_backend is not None:
            os.environ["MPLBACKEND"] = env_backend
    nbformat.write(nb, path)
    return seconds


def main(prefixes: list[str]) -> int:
    paths = sorted(HERE.glob("*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(x) for x in prefixes)]
    if not paths:
        print("no notebook matched", prefixes, file=sys.stderr)
        return 1
    failed = []
    for path in paths:
        try:
            seconds = run(path)
        except CellExecutionError as e:
            failed.append(path.name)
            print(f"FAILED {path.name}:\n{e}", file=sys.stderr)
            continue
        print(f"{path.name}: {seconds:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
