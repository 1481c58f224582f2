"""Every ```python block of docs/losses.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "losses.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_losses_doc_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_losses_doc_example_runs(index):
    exec(compile(BLOCKS[index], f"docs/losses.md[python block {index}]", "exec"), {"__name__": "__doc__"})
