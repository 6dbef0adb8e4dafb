"""The repository stands alone: every path its documentation cites exists in it.

Scanned: README.md, every page docs/**/*.md of the site (not its build), every cell of
notebooks/*.ipynb, the source (docstrings included) of gradx/ and benchmarks/, and
tests/golden/record.py. A cited path is a
whitespace-separated word inside backticks (`x` or ``x``) or a markdown link target that
looks like a file of this repository: its first folder is one of the repository's own
top-level folders, or it ends in a file extension. Nothing may cite the workbench outside
the repository (the course slides, the peer-conventions notes): their content lives in
docs/seeds.md and docs/conventions.md.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOP_LEVEL = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} - {
    "gradx.egg-info",
    "build",
    "dist",
}
EXTENSIONS = (".md", ".py", ".ipynb", ".json", ".png", ".toml", ".txt", ".yml", ".yaml", ".cfg")
FORBIDDEN = re.compile(r"shared/|(?<![\w/])CONVENTIONS\.md|(?<![\w.])seeds/|/work/")

BACKTICKED = re.compile(r"``(.+?)``|`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _sources() -> dict[str, str]:
    """{repository path of a document: its text} for everything the checks scan."""
    texts = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    for path in sorted((ROOT / "docs").rglob("*.md")):
        if "_build" in path.relative_to(ROOT / "docs").parts:
            continue
        texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            source = cell["source"]
            texts[f"{path.relative_to(ROOT)} cell {i}"] = (
                "".join(source) if isinstance(source, list) else source
            )
    for folder in ("gradx", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    texts["benchmarks/README.md"] = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    texts["tests/golden/record.py"] = (ROOT / "tests/golden/record.py").read_text(encoding="utf-8")
    return texts


SOURCES = _sources()


def _looks_like_a_repo_path(word: str) -> bool:
    if "/" not in word or "://" in word or word.startswith(("~", "$", "/", "-")):
        return False
    first = word.split("/", 1)[0]
    return first in TOP_LEVEL or first in ("..", ".") or word.rstrip("/").endswith(EXTENSIONS)


def cited_paths(document: str, text: str) -> list[str]:
    """The repository paths ``text`` cites, relative to the repository root."""
    words = []
    for match in BACKTICKED.finditer(text):
        if text[max(match.start() - 1, 0)] == "}":
            continue  # a MyST role's target, {doc}`../seeds`: the -W docs build checks those
        span = match.group(1) or match.group(2)
        words += [w.strip("'\"(),;:") for w in span.split()]
    base = pathlib.PurePosixPath(document.split(" ")[0]).parent
    for match in LINK.finditer(text):
        target = match.group(1).split("#")[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            # A markdown link is relative to the document that holds it.
            words.append(str(base / target) if document.endswith(".md") else target)
    return [w for w in dict.fromkeys(words) if _looks_like_a_repo_path(w)]


def _exists(path: str) -> bool:
    path = path.split("::")[0]
    if any(c in path for c in "*?["):
        return any(ROOT.glob(path))
    return (ROOT / path).resolve().exists()


def test_the_scan_finds_citations():
    # The checks below must see something to check: a broken scanner passes vacuously.
    everything = {p for doc, text in SOURCES.items() for p in cited_paths(doc, text)}
    for expected in ("docs/conventions.md", "docs/seeds.md", "tests/golden/record.py"):
        assert expected in everything, sorted(everything)
    assert cited_paths("docs/x.md", "see [the seeds](seeds.md) and `gradx/nope.py`") == [
        "gradx/nope.py",
        "docs/seeds.md",
    ]
    assert not _exists("gradx/nope.py") and _exists("tests/golden/*.json")
    # A MyST role names a page or an object, not a file; the docs build resolves it.
    assert cited_paths("docs/api/x.md", "{doc}`../seeds` and `gradx/nope.py`") == ["gradx/nope.py"]


@pytest.mark.parametrize("document", sorted(SOURCES))
def test_every_cited_path_exists(document):
    missing = [p for p in cited_paths(document, SOURCES[document]) if not _exists(p)]
    assert not missing, f"{document} cites paths that are not in the repository: {missing}"


@pytest.mark.parametrize("document", sorted(SOURCES))
def test_nothing_cites_the_workbench_outside_the_repository(document):
    bad = sorted({m.group(0) for m in FORBIDDEN.finditer(SOURCES[document])})
    assert not bad, (
        f"{document} cites {bad}, which is not in the repository: cite docs/seeds.md (the "
        "course slides) or docs/conventions.md (the peers' conventions) instead"
    )


def test_the_forbidden_pattern_catches_the_old_citations():
    for old in ("``CONVENTIONS.md``", "`shared/CONVENTIONS.md`", "slides in `seeds/`", "/work/x"):
        assert FORBIDDEN.search(old), old
    for fine in ("docs/conventions.md", "docs/seeds.md", "the seeds' network"):
        assert not FORBIDDEN.search(fine), fine
