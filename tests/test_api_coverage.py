"""The API reference (docs/api/*.md) has one entry per public name, and no entry for a name
that does not exist.

Public: the names ``gradx/__init__.py`` binds without a leading underscore (functions,
classes, ``OPTIMIZERS``, the re-exported optax names, the public submodules), the ``__all__``
of ``gradx.compat.torch``, ``gradx.compat.keras``, ``gradx.compat.optax``, ``gradx.losses``,
``gradx.callbacks``, ``gradx.search_space`` and ``gradx.schedules``, and the classes and constants
``gradx.checkpoint`` defines. An entry is an ``auto*::``, ``py:*::`` or ``automodule::``
directive naming the object by its full dotted name (the anchor Sphinx gives it). The check
reads the pages' text: no Sphinx build in the test suite (the build is a step of ``.ci/run``).
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import types
from collections import Counter

import gradx

API = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"
ENTRY = re.compile(r"^\s*\.\. (?:auto\w+|py:\w+)::\s+([\w.]+)", re.MULTILINE)
NOT_DOCUMENTED = {"gradx.__version__"}
SUBMODULES_WITH_ALL = (
    "gradx.compat.torch",
    "gradx.compat.keras",
    "gradx.compat.optax",
    "gradx.losses",
    "gradx.callbacks",
    "gradx.search_space",
    "gradx.schedules",
)


def _entries() -> list[str]:
    names = []
    for page in sorted(API.glob("*.md")):
        names += ENTRY.findall(page.read_text(encoding="utf-8"))
    return names


def public_names() -> set[str]:
    """Every public name of gradx, by its full dotted name."""
    names = {f"gradx.{n}" for n in vars(gradx) if not n.startswith("_")}
    names |= {"gradx.compat"}
    for module_name in SUBMODULES_WITH_ALL:
        module = importlib.import_module(module_name)
        names |= {module_name} | {f"{module_name}.{n}" for n in module.__all__}
    checkpoint = gradx.checkpoint
    names |= {
        f"gradx.checkpoint.{n}"
        for n, obj in vars(checkpoint).items()
        if not n.startswith("_")
        and (
            getattr(obj, "__module__", None) == "gradx.checkpoint"
            or (n.isupper() and isinstance(obj, (str, int, float)))
        )
    }
    return names - NOT_DOCUMENTED


def _resolve(name: str) -> object:
    """The object ``name`` (``a.b.c``) refers to; raises if there is none."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(name)


def test_every_public_name_has_an_entry():
    missing = sorted(public_names() - set(_entries()))
    assert not missing, f"public names with no entry in docs/api/*.md: {missing}"


def test_the_public_names_include_the_expected_kinds():
    names = public_names()
    for name in (
        "gradx.adam",
        "gradx.OPTIMIZERS",
        "gradx.chain",
        "gradx.GradientTransformation",
        "gradx.compat.torch.AdamW",
        "gradx.compat.keras.Nadam",
        "gradx.compat.optax.nadamw",
        "gradx.losses.mse",
        "gradx.callbacks.EarlyStopping",
        "gradx.checkpoint.Checkpointer",
        "gradx.checkpoint.LOCK",
        "gradx.search_space.loguniform",
    ):
        assert name in names


def test_every_entry_names_something_that_exists():
    unknown = []
    for name in _entries():
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            unknown.append(name)
    assert not unknown, f"entries in docs/api/*.md for names that do not exist: {unknown}"


def test_each_name_is_documented_once():
    # gradx.compat.optax.adam and gradx.adam are two names; each may have one entry only.
    repeated = [name for name, n in Counter(_entries()).items() if n > 1]
    assert not repeated, f"names with more than one entry in docs/api/*.md: {repeated}"


def test_every_entry_is_public():
    private = [n for n in _entries() if any(p.startswith("_") for p in n.split("."))]
    assert not private, f"entries for private names: {private}"


def test_the_entry_kind_matches_the_object():
    wrong = []
    for page in sorted(API.glob("*.md")):
        for kind, name in re.findall(r"^\s*\.\. auto(\w+)::\s+([\w.]+)", page.read_text(), re.M):
            obj = _resolve(name)
            expected = {
                "function": inspect.isfunction(obj),
                "class": inspect.isclass(obj),
                "exception": inspect.isclass(obj) and issubclass(obj, BaseException),
                "module": isinstance(obj, types.ModuleType),
                "data": not callable(obj) and not isinstance(obj, types.ModuleType),
            }.get(kind, True)
            if not expected:
                wrong.append(f"auto{kind}:: {name}")
    assert not wrong, f"entries of the wrong kind: {wrong}"
