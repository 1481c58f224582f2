"""`python -m pyneg.bench`: its table, JSON, markdown and plot, and how it judges targets.

Verdicts are checked against the medians the JSON records, never against a
clock: the synthetic workloads below carry targets no timing can meet (a
10^12x speed-up) or miss (10^-12x), so their verdicts are fixed in advance.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from pyneg.bench import __main__ as cli
from pyneg.bench.__main__ import main
from pyneg.bench.registry import all_workloads
from pyneg.bench.workload import FULL_SIZE_ONLY, MET, MISSED, NOT_AT_TARGET_SIZE, Target, Workload


def _run_cli(tmp_path, *args):
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), "--no-plot"]) == 0
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def _pyneg_line(printed: str, name: str) -> str:
    (line,) = [ln for ln in printed.splitlines() if ln.startswith(name + " ") and " pyneg " in ln]
    return line


def _recomputed_verdict(row, t) -> str:
    """The verdict a judged target must get, recomputed from the medians (or peaks) in the JSON."""
    if t["kind"] == "ratio":
        ratio = row["baselines_s"][t["baseline"]] / row["pyneg_s"]
    else:
        ratio = max(row["peak_bytes"][t["baseline"]], 1) / max(row["peak_bytes"]["pyneg"], 1)
    assert t["ratio"] == pytest.approx(ratio, rel=1e-12)
    return MET if ratio >= t["value"] else MISSED


def _assert_verdicts_follow_from_json(data, printed: str, md: str) -> None:
    for row in data["results"]:
        line = _pyneg_line(printed, row["name"])
        (md_line,) = [ln for ln in md.splitlines() if ln.startswith(f"| `{row['name']}` | **pyneg** |")]
        for t in row["targets"]:
            if row["target_size"] is None:
                judged = data["quick"] is False
            else:
                judged = row["size"] == row["target_size"]
            assert t["judged"] is judged, (row["name"], t)
            if judged:
                assert t["verdict"] == _recomputed_verdict(row, t), (row["name"], t)
            else:
                assert t["verdict"] == (FULL_SIZE_ONLY if data["quick"] else NOT_AT_TARGET_SIZE), (row["name"], t)
            # The console table and results.md say the same as the JSON.
            assert f"{t['target']}: {t['verdict'].upper() if t['verdict'] == MISSED else t['verdict']}" in line
            assert t["target"] in md_line
            assert (("**missed**" if t["verdict"] == MISSED else t["verdict"]) + f" ({t['ratio']:.2f}x)") in md_line
        if not any(t["judged"] for t in row["targets"]):
            assert "MISSED" not in line and "missed" not in md_line


def test_cli_quick_run_writes_json_md_and_png(tmp_path, capsys):
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
    assert md.startswith("machine: ") and "load average" in md.splitlines()[0]
    assert "\n| workload |" in md
    assert "| `raw_draws_V1e4` | **pyneg** |" in md and "| | torch.randint (uniform) |" in md


def test_quick_run_judges_only_what_it_measured_at_the_targets_size(tmp_path, capsys):
    # raw_draws_V1e4 draws 2 * 10^6 per call when quick (its target is stated for 10^7);
    # small_call_512x5 is the target's own shape, quick or not.
    data1, md1 = _run_cli(tmp_path / "a", "--quick", "--filter", "raw_draws_V1e4")
    printed1 = capsys.readouterr().out
    data2, md2 = _run_cli(tmp_path / "b", "--quick", "--filter", "small_call_512x5")
    printed2 = capsys.readouterr().out
    (raw,), (small,) = data1["results"], data2["results"]
    assert raw["size"] != raw["target_size"] and [t["verdict"] for t in raw["targets"]] == [FULL_SIZE_ONLY]
    assert "MISSED" not in printed1 and "missed" not in md1
    assert small["size"] == small["target_size"] == {"shape": [512, 5]}
    assert [t["judged"] for t in small["targets"]] == [True]
    for data, printed, md in ((data1, printed1, md1), (data2, printed2, md2)):
        _assert_verdicts_follow_from_json(data, printed, md)


def test_json_and_header_give_the_load_average(tmp_path, capsys):
    data, md = _run_cli(tmp_path, "--quick", "--filter", "small_call_512x5")
    printed = capsys.readouterr().out
    load = data["load_average"]
    assert set(load) == {"before", "after"}
    for when in ("before", "after"):
        assert len(load[when]) == 3 and all(x >= 0 for x in load[when])
        text = " / ".join(f"{x:.2f}" for x in load[when])
        assert f"{when} {text}" in printed and f"{when} {text}" in md
    assert data["elapsed_s"] > 0


# ------------------------------------------------------- synthetic workloads
def _fake(name: str, targets, *, quick_shrinks: bool, memory: bool = False) -> Workload:
    """A cheap workload whose quick size is (or is not) the target's size."""

    def setup(quick: bool) -> SimpleNamespace:
        return SimpleNamespace(n=100 if quick and quick_shrinks else 1000)

    return Workload(
        name=name,
        group="fake",
        description="synthetic",
        setup=setup,
        run=lambda st: sum(range(st.n)),
        baselines={"base": lambda st: sum(range(st.n)), "other": lambda st: math.fsum(range(st.n))},
        check=lambda st, ours, theirs: None,
        items=lambda st: st.n,
        targets=tuple(targets),
        target_size={"n": 1000},
        size=lambda st: {"n": st.n},
        measure_memory=memory,
    )


IMPOSSIBLE = Target("ratio", 1e12, "base")  # a 10^12x speed-up: always missed where judged
TRIVIAL = Target("ratio", 1e-12, "other")  # always met where judged


@pytest.fixture
def fakes(monkeypatch):
    workloads = [
        _fake("fake_shrunk", [IMPOSSIBLE, TRIVIAL], quick_shrinks=True),
        _fake("fake_same_size", [IMPOSSIBLE, TRIVIAL], quick_shrinks=False),
        _fake("fake_memory", [Target("peak_memory_ratio", 1e-12, "base")], quick_shrinks=False, memory=True),
    ]
    monkeypatch.setattr(cli, "all_workloads", lambda: workloads)
    return workloads


def test_quick_run_never_misses_a_target_it_measured_at_another_size(tmp_path, capsys, fakes):
    data, md = _run_cli(tmp_path, "--quick")
    printed = capsys.readouterr().out
    rows = {r["name"]: r for r in data["results"]}
    assert [t["verdict"] for t in rows["fake_shrunk"]["targets"]] == [FULL_SIZE_ONLY, FULL_SIZE_ONLY]
    assert [t["judged"] for t in rows["fake_shrunk"]["targets"]] == [False, False]
    assert "MISSED" not in _pyneg_line(printed, "fake_shrunk")
    # Measured at the target's size, the same targets are judged even in a quick run.
    assert [t["verdict"] for t in rows["fake_same_size"]["targets"]] == [MISSED, MET]
    assert "MISSED" in _pyneg_line(printed, "fake_same_size")
    _assert_verdicts_follow_from_json(data, printed, md)


def test_full_run_judges_every_target(tmp_path, capsys, fakes, monkeypatch):
    monkeypatch.setattr(cli, "all_workloads", lambda: fakes[:1])  # the full-size timing loop is slower
    data, md = _run_cli(tmp_path)
    printed = capsys.readouterr().out
    (row,) = data["results"]
    assert data["quick"] is False and row["size"] == row["target_size"]
    assert [t["verdict"] for t in row["targets"]] == [MISSED, MET]
    assert "**missed**" in md and "MISSED" in printed
    _assert_verdicts_follow_from_json(data, printed, md)


def test_peak_memory_target_is_judged_from_the_peaks(tmp_path, capsys, fakes):
    if cli.peak_memory_bytes(lambda st: None, None) is None:
        pytest.skip("peak memory is not measurable here")
    data, md = _run_cli(tmp_path, "--quick", "--filter", "fake_memory")
    printed = capsys.readouterr().out
    (row,) = data["results"]
    (t,) = row["targets"]
    assert t["kind"] == "peak_memory_ratio" and t["verdict"] == MET and t["target"].startswith("peak memory")
    _assert_verdicts_follow_from_json(data, printed, md)


# ------------------------------------------------------------ declarations
def test_targets_are_ratios_against_a_baseline():
    with pytest.raises(ValueError, match="kind"):
        Target("items_per_s", 500e6, "torch.randint (uniform)")
    with pytest.raises(ValueError, match="value"):
        Target("ratio", 0, "torch.randint (uniform)")
    assert Target("ratio", 30, "torch.multinomial").describe() == ">= 30x torch.multinomial"
    assert Target("ratio", 0.5, "torch.cumsum").describe() == "time <= 2x torch.cumsum"
    assert Target("peak_memory_ratio", 10, "topk").describe() == ">= 10x topk (peak memory)"


def test_verdict_rule():
    t = Target("ratio", 2, "b")
    assert t.ratio(1.0, {"b": 3.0}, {}) == 3.0
    assert t.judge(3.0, True) == MET and t.judge(1.5, True) == MISSED and t.judge(1.5, False) == FULL_SIZE_ONLY
    assert t.judge(1.5, False, quick=False) == "not at target size"
    assert t.judge(t.ratio(1.0, {}, {}), True) == "not measured"
    m = Target("peak_memory_ratio", 1, "b")
    assert m.ratio(1.0, {"b": 1.0}, {"pyneg": 10, "b": 30}) == 3.0
    assert m.ratio(1.0, {"b": 1.0}, {"pyneg": None, "b": 30}) is None


def test_workloads_are_well_formed():
    workloads = all_workloads(include_unavailable=True)
    names = [w.name for w in workloads]
    assert len(names) == len(set(names))
    assert {"small_call_512x5", "small_call_4096x20", "cuda_alias_draw_V1e7"} <= set(names)
    for w in workloads:
        for t in w.targets:
            assert isinstance(t, Target)
            assert t.baseline in w.baselines, (w.name, t.baseline)
            if t.kind == "peak_memory_ratio":
                assert w.measure_memory, w.name
        if w.targets:
            # Declared, so a quick run can tell whether it measured the target's size.
            assert w.target_size and callable(w.size), w.name


def test_registry_leaves_out_unavailable_workloads():
    from pyneg.cuda import cuda_available

    listed = {w.name for w in all_workloads()}
    every = all_workloads(include_unavailable=True)
    assert listed == {w.name for w in every if w.available()}
    assert ("cuda_alias_draw_V1e7" in listed) == cuda_available()


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


def test_notes_reach_the_table_markdown_and_json(tmp_path, capsys):
    # The compiled step reports its compile (skipped when quick) beside its times.
    data, md = _run_cli(tmp_path, "--quick", "--filter", "compiled_step_small")
    printed = capsys.readouterr().out
    (row,) = data["results"]
    assert row["notes"]["compile"].startswith("skipped in --quick")
    assert "notes: compile skipped in --quick" in printed
    assert "| | notes: compile skipped in --quick" in md
    assert set(row["baselines_s"]) == {"eager step"}
