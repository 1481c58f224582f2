"""pyneg/_core.pyi must describe pyneg._core: the same names, classes and members."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pyneg
from pyneg import _core


def _stub_tree() -> ast.Module:
    # The stub ships next to the package's Python files.
    here = Path(pyneg.__file__).parent
    return ast.parse((here / "_core.pyi").read_text())


def _public(names):
    return {n for n in names if not n.startswith("_")}


def test_stub_lists_every_module_attribute():
    tree = _stub_tree()
    stubbed = set()
    members = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
    actual = _public(dir(_core))
    assert _public(stubbed) == actual
    for cls, names in members.items():
        if cls.startswith("_"):
            continue  # _Testing describes the submodule _testing (next test)
        obj = getattr(_core, cls)
        assert _public(names) == _public(n for n, _ in inspect.getmembers(obj)), cls


def test_stub_describes_the_testing_submodule():
    # The test-only bindings live in pyneg._core._testing, out of _core's own
    # namespace; the stub declares them as the members of class _Testing.
    import pyneg._core._testing as testing

    assert _core._testing is testing
    tree = _stub_tree()
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Testing"]
    stubbed = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert stubbed == _public(dir(testing))
    assert {"draw_randoms", "philox_isa", "alias_table_sample", "alias_table_mass"} <= stubbed
    assert not stubbed & set(dir(_core))  # moved, not copied
    assert not {"mass", "entries", "sample", "sample_excluding", "sample_unique"} & set(dir(_core.AliasTable))
