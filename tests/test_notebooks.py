"""The saved notebooks in notebooks/ are executed, in order, without errors, with plots.

Nothing is run here (that takes minutes: ``python notebooks/run_all.py`` re-executes them in
place); these checks read the saved files only, so a notebook committed unexecuted, run out of
order, saved with an error or without its figures fails fast.
"""

from __future__ import annotations

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "01_trajectories.ipynb",
    "02_sgd_noise_ball.ipynb",
    "03_bias_correction.ipynb",
    "04_universal_approximation.ipynb",
    "05_lookahead_and_rprop.ipynb",
    "06_digits_and_sweeps.ipynb",
    "07_curse_of_dimensionality.ipynb",
    "08_effective_learning_rate.ipynb",
    "09_beyond_the_slides.ipynb",
    "10_state_precision.ipynb",
]
MAX_TOTAL_BYTES = 3 * 1024 * 1024


def _load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_every_notebook_is_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


def test_notebooks_stay_small():
    total = sum(p.stat().st_size for p in NOTEBOOKS)
    assert total < MAX_TOTAL_BYTES, f"notebooks take {total} bytes, more than {MAX_TOTAL_BYTES}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_valid_nbformat_v4(path):
    nb = _load(path)
    assert nb["nbformat"] == 4
    assert nb["cells"], "a notebook without cells"
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["source"], (str, list))
    assert nb["cells"][0]["cell_type"] == "markdown", "each notebook opens with its intro"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_executed_in_order(path):
    counts = [c["execution_count"] for c in _code_cells(_load(path))]
    assert None not in counts, (
        f"unexecuted code cells at positions {[i for i, n in enumerate(counts) if n is None]}"
    )
    assert counts == list(range(1, len(counts) + 1)), (
        f"execution counts {counts}: run top to bottom in a fresh kernel"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_error_outputs(path):
    for i, cell in enumerate(_code_cells(_load(path))):
        for out in cell["outputs"]:
            assert out["output_type"] != "error", (
                f"code cell {i}: {out.get('ename')}: {out.get('evalue')}"
            )
            if out["output_type"] == "stream":
                text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
                assert "Traceback (most recent call last)" not in text, (
                    f"code cell {i} printed a traceback"
                )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_an_embedded_plot(path):
    images = [
        out
        for cell in _code_cells(_load(path))
        for out in cell["outputs"]
        if out["output_type"] in ("display_data", "execute_result")
        and any(mime.startswith("image/") for mime in out.get("data", {}))
    ]
    assert images, "no embedded image output"
