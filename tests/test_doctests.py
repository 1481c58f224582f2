"""Every ``>>>`` example in pyneg's docstrings runs and prints what it shows.

The examples are collected from the imported package (the installed one in CI),
not with ``pytest --doctest-modules pyneg``, which would import the source tree's
files (no compiled core there) instead.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pyneg

# ``__main__`` modules run a program when imported.
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(pyneg.__path__, prefix="pyneg.")
    if not info.name.endswith("__main__") and not info.name.startswith("pyneg._cuda")
)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    # Fresh globals per docstring: each example stands alone, as a reader runs it.
    return [t for t in finder.find(module, module_name, globs={}) if t.examples]


def test_the_package_has_docstring_examples():
    assert sum(len(_examples(name)) for name in MODULES) >= 5


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    failures = []
    for test in _examples(module_name):
        result = runner.run(test, out=failures.append)
        assert result.attempted == len(test.examples)
    assert not failures, "".join(failures)
