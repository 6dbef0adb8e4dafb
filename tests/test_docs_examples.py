"""Every ```python block of README.md and docs/**/*.md runs on its own, as a reader pastes it.

Each block is one test case (ids like ``README.md:3`` or ``guides/training.md:2``, the block's
1-based index among its page's python blocks) and runs in a fresh namespace
(``{"__name__": "__main__"}``), in a scratch working directory, under jax's default settings
(not the suite's strict ones), with no fixture of ours: a block defines its own data, loss
and params. A block that is shown but must not run is a MyST
directive, ```{code-block} python, whose ``:caption:`` starts with "not run" and says why;
anything else that looks like Python (```py, ```python3) is refused, so no block escapes the
run by its spelling. A block over 20 s fails with its id: docs examples are small.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import sys
import time
from dataclasses import dataclass

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TIME_LIMIT_S = 20

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
# Directives whose body is text to show, not markdown to parse for nested fences.
LITERAL_DIRECTIVES = {
    "code-block",
    "code",
    "sourcecode",
    "code-cell",
    "math",
    "eval-rst",
    "raw",
    "csv-table",
    "mermaid",
    "graphviz",
}
SHOWN_AS_PYTHON = {"code-block", "code", "sourcecode"}
PYTHON_SPELLINGS = {"py", "python3", "py3", "Python"}
# jax's defaults, which a reader has: tests/conftest.py turns on float64 and strict promotion.
READER_CONFIG = {
    "jax_enable_x64": False,
    "jax_numpy_dtype_promotion": "standard",
    "jax_numpy_rank_promotion": "allow",
}


@dataclass(frozen=True)
class Fence:
    info: str  # the info string: "python", "{code-block} python", ""
    line: int  # 1-based line of the opening fence in its file
    body: list[str]  # the lines between the fences, the opening fence's indent removed


def fences(text: str, first_line: int = 1) -> list[Fence]:
    """Every fenced block of a markdown text, nested ones in MyST directives included."""
    lines, found, i = text.split("\n"), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, mark, info = opening["indent"], opening["fence"], opening["info"]
        end = i + 1
        while end < len(lines):
            closing = FENCE.match(lines[end])
            if (
                closing
                and not closing["info"]
                and closing["fence"][0] == mark[0]
                and len(closing["fence"]) >= len(mark)
            ):
                break
            end += 1
        body = [
            b[len(indent) :] if b.startswith(indent) else b.lstrip() for b in lines[i + 1 : end]
        ]
        found.append(Fence(info, first_line + i, body))
        directive = re.match(r"\{([\w-]+)\}", info)
        if directive and directive[1] not in LITERAL_DIRECTIVES:
            # An admonition, a dropdown, a tab: its body is markdown, its fences are rendered.
            found += fences("\n".join(body), first_line + i + 1)
        i = end + 1
    return found


def directive_options(body: list[str]) -> dict[str, str]:
    """The ``:name: value`` options atop a MyST directive's body, unquoted as MyST does."""
    options = {}
    for line in body:
        option = re.match(r"^:([\w-]+):\s*(.*?)\s*$", line)
        if not option:
            break
        value = option[2]
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        options[option[1]] = value[1:-1] if quoted else value
    return options


def pages() -> dict[str, pathlib.Path]:
    """{test id prefix: path}: README.md and every page under docs/ but built output."""
    found = {"README.md": ROOT / "README.md"}
    for path in sorted(DOCS.rglob("*.md")):
        relative = path.relative_to(DOCS)
        if not any(part.startswith(("_build", ".")) for part in relative.parts):
            found[relative.as_posix()] = path
    return found


def python_blocks() -> list[tuple[str, pathlib.Path, Fence]]:
    """(id, page, fence) of every ```python block that runs."""
    blocks = []
    for name, path in pages().items():
        runnable = [f for f in fences(path.read_text(encoding="utf-8")) if f.info == "python"]
        blocks += [(f"{name}:{k}", path, fence) for k, fence in enumerate(runnable, start=1)]
    return blocks


BLOCKS = python_blocks()


class _TooSlow(Exception):
    pass


def run_block(block_id: str, path: pathlib.Path, fence: Fence) -> dict:
    """Runs one block alone in a fresh namespace; its tracebacks name the page's own lines."""
    source = "\n" * fence.line + "\n".join(fence.body) + "\n"
    code = compile(source, str(path), "exec")
    namespace = {"__name__": "__main__"}

    def too_slow(signum, frame):
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_LIMIT_S)
    start = time.perf_counter()
    try:
        exec(code, namespace)
    except _TooSlow:
        pytest.fail(f"{block_id} (line {fence.line}) ran past {TIME_LIMIT_S} s", pytrace=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    if elapsed > TIME_LIMIT_S:  # the alarm waits for Python code: a long compile delays it
        pytest.fail(f"{block_id} (line {fence.line}) took {elapsed:.1f} s", pytrace=False)
    return namespace


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A reader's jax (the suite's strict settings off), in a scratch working directory.

    jax's config, the environment and matplotlib's figures are restored afterwards.
    """
    monkeypatch.chdir(tmp_path)
    config, environ = dict(jax.config.values), dict(os.environ)
    for name, value in READER_CONFIG.items():
        jax.config.update(name, value)
    yield
    for name, value in config.items():
        if jax.config.values.get(name) != value:
            jax.config.update(name, value)
    os.environ.clear()
    os.environ.update(environ)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize(("block_id", "path", "fence"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_python_block_runs_on_its_own(block_id, path, fence, isolated):
    run_block(block_id, path, fence)


def test_the_readme_examples_train(isolated):
    # What the README's blocks promise, checked on their own results: the quick start's fit
    # lowers the loss, and the vmap example trains one model per learning rate.
    readme = [b for b in BLOCKS if b[0].startswith("README.md:")]
    quick = next(b for b in readme if "gradx.fit(" in "\n".join(b[2].body))
    history = np.asarray(run_block(*quick)["result"].history["loss"])
    assert np.isfinite(history).all() and history[-1] < 0.01 * history[0], history
    vmapped = next(b for b in readme if "jax.vmap(step" in "\n".join(b[2].body))
    namespace = run_block(*vmapped)
    assert namespace["params_k"]["w"].shape == (4, 3)
    losses = jax.vmap(namespace["loss_fn"], in_axes=(0, None))(
        namespace["params_k"], namespace["batch"]
    )
    assert len(set(np.asarray(losses).tolist())) == 4, losses  # four rates, four models


def test_shown_blocks_say_why_they_are_not_run():
    unexplained = []
    for name, path in pages().items():
        for fence in fences(path.read_text(encoding="utf-8")):
            words = fence.info.split()
            if words[:1] and words[0] in PYTHON_SPELLINGS:
                unexplained.append(f"{name} line {fence.line}: ```{fence.info} (write ```python)")
            directive = re.match(r"\{([\w-]+)\}", fence.info)
            if directive and directive[1] in SHOWN_AS_PYTHON and words[1:2] in (["python"], ["py"]):
                caption = directive_options(fence.body).get("caption", "")
                if not caption.startswith("not run"):
                    unexplained.append(f"{name} line {fence.line}: caption {caption!r}")
    assert not unexplained, (
        "a Python block either runs (```python) or is a ```{code-block} python whose "
        f":caption: starts with 'not run' and says why: {unexplained}"
    )


def test_the_parser_finds_what_a_reader_sees():
    text = "\n".join(
        [
            "```python",
            "x = 1",
            "```",
            "````markdown",
            "```python",
            "shown as markdown source, never run",
            "```",
            "````",
            "````{note}",
            "  ```python",
            "  y = 2",
            "  ```",
            "````",
            "```{code-block} python",
            ":caption: not run: needs 8 devices",
            "z = 3",
            "```",
            "- a list item",
            "  ```python",
            "  w = 4",
            "  ```",
        ]
    )
    found = fences(text)
    assert [(f.info, f.line) for f in found if f.info == "python"] == [
        ("python", 1),
        ("python", 10),
        ("python", 19),
    ]
    assert [f.body for f in found if f.info == "python"] == [["x = 1"], ["y = 2"], ["w = 4"]]
    shown = next(f for f in found if f.info.startswith("{code-block}"))
    assert directive_options(shown.body) == {"caption": "not run: needs 8 devices"}
    quoted = [':caption: "not run: needs 8 devices"', ":linenos:", "", "z = 3"]
    assert directive_options(quoted) == {"caption": "not run: needs 8 devices", "linenos": ""}
    # The README is collected: a broken collector would pass vacuously.
    assert sum(b[0].startswith("README.md:") for b in BLOCKS) >= 2


def test_a_slow_block_fails_with_its_id(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "TIME_LIMIT_S", 1)
    fence = Fence("python", 7, ["import time", "time.sleep(3)"])
    with pytest.raises(pytest.fail.Exception, match=r"guides/x\.md:2 \(line 7\) ran past 1 s"):
        run_block("guides/x.md:2", tmp_path / "x.md", fence)
    fence = Fence("python", 3, ["raise KeyError('boom')"])
    with pytest.raises(KeyError) as info:
        run_block("README.md:1", ROOT / "README.md", fence)
    assert info.traceback[-1].lineno + 1 == 4  # the page's own line: fence at 3, code at 4
