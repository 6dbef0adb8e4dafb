"""Reading a compiled step's optimized HLO (for ``update_step.py --hlo``): not a script."""

from __future__ import annotations

import pathlib
import re
from typing import Any

_OP = re.compile(r"^\s*(?:ROOT\s+)?%\S+ = (\w+)\[([\d,]*)\](?:\{[\d,]*\})? ([a-z-]+)\(")
_FREE = {"parameter", "broadcast", "constant", "fusion", "tuple", "bitcast", "copy"}


def hlo_summary(
    text: str, shapes: tuple[tuple[int, ...], ...]
) -> tuple[int, dict[str, int], int, int]:
    """What the compiled step does per element and per step, read off its optimized HLO.

    Returns (elementwise ops per element, {op: count} per element, scalar fusions, copies):
    the ops on arrays of the leaves' shape inside fusions (broadcasts, parameters and
    constants excluded), divided by the number of leaves; the fusions that compute a scalar
    (count increments, bias corrections), each one more kernel launch per step; and the
    copies of leaf-shaped buffers (an old moment kept alive past its in-place update: one
    more buffer to write and read, and on CPU to allocate, every step).
    """
    leaf_dims = {",".join(map(str, s)) for s in shapes}
    ops: dict[str, int] = {}
    scalar_fusions = copies = 0
    for line in text.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        _, dims, op = m.groups()
        if op == "fusion" and dims == "" and "ENTRY" not in line:
            scalar_fusions += 1
        copies += op == "copy" and dims in leaf_dims
        if dims in leaf_dims and op not in _FREE:
            ops[op] = ops.get(op, 0) + 1
    per_element = {k: v // len(shapes) for k, v in sorted(ops.items())}
    return sum(per_element.values()), per_element, scalar_fusions, copies


def dump_hlo(directory: pathlib.Path, tag: str, step: Any, *args: Any) -> str:
    """Writes the compiled HLO of ``step`` on ``args``; returns it."""
    text = step.lower(*args).compile().as_text()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{tag}.hlo.txt").write_text(text)
    return text
