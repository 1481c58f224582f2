"""Every ```python block of the documentation pages (docs/**/*.md) runs as written.

Blocks whose first line is ``# requires: cuda`` need a GPU and pyneg's CUDA
module; they are skipped (and say so) where ``pyneg.cuda_available()`` is False.
A page reads top to bottom: its blocks run in order, in one namespace per page
(a later block may use what an earlier one defined).
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
    # The NCE / several-positives / biases / weights page shows each feature.
    assert sum(page == "losses.md" for page, _, _ in BLOCKS) >= 6


PAGES = sorted({page for page, _, _ in BLOCKS})


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_examples_run(page, capsys):
    namespace = {"__name__": "__docs__"}
    ran = 0
    for name, index, source in BLOCKS:
        if name != page:
            continue
        if source.startswith("# requires: cuda") and not pyneg.cuda_available():
            continue  # a GPU-only block: counted below
        exec(compile(source, f"docs/{page}[python block {index}]", "exec"), namespace)
        ran += 1
    if ran == 0:
        pytest.skip("every block of this page needs a GPU and pyneg's CUDA module")
