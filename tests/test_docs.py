"""Every ```python block of the documentation pages (docs/**/*.md) runs as written.

Blocks whose first line is ``# requires: cuda`` need a GPU and pyneg's CUDA
module; they are skipped (and say so) where ``pyneg.cuda_available()`` is False.
Each block runs in fresh globals, like the README's (tests/test_readme.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pyneg

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for index, block in enumerate(FENCE.findall(page.read_text(encoding="utf-8"))):
            found.append((page.relative_to(DOCS).as_posix(), index, block))
    return found


BLOCKS = _blocks()


def test_docs_have_examples():
    pages = {page for page, _, _ in BLOCKS}
    assert {"getting-started.md", "guide/samplers.md", "guide/hsoftmax.md", "guide/memory.md"} <= pages
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("page", "index", "source"), BLOCKS, ids=[f"{p}[{i}]" for p, i, _ in BLOCKS])
def test_docs_example_runs(page, index, source, capsys):
    if source.startswith("# requires: cuda") and not pyneg.cuda_available():
        pytest.skip("needs a GPU and pyneg's CUDA module (pyneg.cuda_available() is False)")
    exec(compile(source, f"docs/{page}[python block {index}]", "exec"), {"__name__": "__docs__"})
