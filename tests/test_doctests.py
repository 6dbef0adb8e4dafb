"""The examples in gradx's docstrings (``>>>``) run and print what they say.

Each docstring with an example is one test, run by :mod:`doctest` in a fresh namespace under
the suite's strict JAX settings (``conftest.py``). The same examples appear in the API
reference of the docs site.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gradx


def _examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = {}
    for info in pkgutil.walk_packages(gradx.__path__, "gradx."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for test in finder.find(module):
            if test.examples and test.name not in tests:
                tests[test.name] = test
    return [tests[name] for name in sorted(tests)]


EXAMPLES = _examples()


def test_the_most_used_functions_have_examples():
    names = {t.name.rsplit(".", 1)[-1] for t in EXAMPLES}
    for name in ("adam", "sgd", "hyperparams", "set_hyperparams", "fit", "sweep", "flat", "mse"):
        assert name in names, f"{name} has no docstring example"


@pytest.mark.parametrize("test", EXAMPLES, ids=lambda t: t.name)
def test_docstring_example(test: doctest.DocTest):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    test.globs = {}  # fresh namespace: every example imports what it uses
    report: list[str] = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)
