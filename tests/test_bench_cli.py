"""`python -m pyneg.bench` writes its table, JSON and plot."""
from __future__ import annotations

import json

import pytest

from pyneg.bench.__main__ import main
from pyneg.bench.registry import all_workloads


def test_cli_quick_run_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["--quick", "--filter", "raw_draws_V1e4", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "raw_draws_V1e4" in printed and "torch.randint" in printed
    data = json.loads((tmp_path / "results.json").read_text())
    (row,) = data["results"]
    assert row["name"] == "raw_draws_V1e4" and row["pyneg_s"] > 0
    assert set(row["ratios"]) == {"torch.randint (uniform)"}
    assert (tmp_path / "results.png").stat().st_size > 1000
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("| workload |")
    assert "| `raw_draws_V1e4` | **pyneg** |" in md and "| | torch.randint (uniform) |" in md


def test_workloads_are_well_formed():
    names = [w.name for w in all_workloads()]
    assert len(names) == len(set(names))
    for w in all_workloads():
        for t in w.targets:
            assert t.kind in ("ratio", "items_per_s", "ns_per_item")
            if t.kind == "ratio":
                assert t.baseline in w.baselines, (w.name, t.baseline)


def test_peak_memory_counts_what_a_call_touches():
    import sys

    import torch

    from pyneg.bench.timing import peak_memory_bytes

    if not sys.platform.startswith("linux"):
        pytest.skip("peak memory is read from /proc")
    mib = 2**20
    peak = peak_memory_bytes(lambda n: torch.ones(n // 4).sum(), 64 * mib)
    assert peak is not None and 60 * mib <= peak <= 100 * mib
    assert peak_memory_bytes(lambda n: n + 1, 1) < 8 * mib
