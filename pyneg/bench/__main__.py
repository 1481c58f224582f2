"""Command line: ``python -m pyneg.bench [--quick] [--filter TEXT] [--out DIR]``.

Runs every workload of :mod:`pyneg.bench.registry` (pyneg and its baselines in
the same process, one after the other), checks that they agree, prints a table
of median times, throughputs and ratios with each target's verdict, and writes
``results.json``, ``results.md`` (the same table as markdown) and
``results.png`` to ``--out``.

Every target is a ratio against a baseline of the same run, judged only where
the workload ran at the target's size: ``--quick`` shrinks most workloads and
marks their targets "full size only". The header and the JSON give the
machine's load average before and after the run, so a reader can tell an idle
run from a shared one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List

import torch

from pyneg.bench.registry import all_workloads
from pyneg.bench.timing import median, peak_memory_bytes, time_calls
from pyneg.bench.workload import MET, MISSED


def machine_description() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def run(quick: bool, name_filter: str, progress: bool = True) -> List[Dict[str, Any]]:
    try:
        from tqdm import tqdm
    except ImportError:  # the bench extra is optional for the library itself
        tqdm = None
    workloads = [w for w in all_workloads() if name_filter in w.name or name_filter in w.group]
    rows: List[Dict[str, Any]] = []
    bar = tqdm(total=len(workloads), desc="pyneg.bench", unit="workload", disable=not progress) if tqdm else None
    repeat, min_time = (3, 0.02) if quick else (9, 0.1)
    for w in workloads:
        if bar is not None:
            bar.set_postfix_str(w.name)
        state = w.setup(quick)
        w.verify(state)
        items = w.num_items(state)
        pyneg_s = median(time_calls(w.run, state, repeat=repeat, min_time=min_time))
        base_s = {
            name: median(time_calls(fn, state, repeat=repeat, min_time=min_time)) for name, fn in w.baselines.items()
        }
        peaks: Dict[str, Any] = {}
        if w.measure_memory:
            peaks = {name: peak_memory_bytes(fn, state) for name, fn in [("pyneg", w.run)] + list(w.baselines.items())}
        ratios = {name: t / pyneg_s for name, t in base_s.items()}
        judged = w.judged(state, quick)
        targets = []
        for t in w.targets:
            ratio = t.ratio(pyneg_s, base_s, peaks)
            targets.append(
                {
                    "target": t.describe(),
                    "kind": t.kind,
                    "baseline": t.baseline,
                    "value": t.value,
                    "ratio": ratio,
                    "judged": judged and ratio is not None,
                    "verdict": t.judge(ratio, judged, quick),
                }
            )
        rows.append(
            {
                "name": w.name,
                "group": w.group,
                "description": w.description,
                "items": items,
                "size": w.measured_size(state),
                "target_size": w.target_size,
                "pyneg_s": pyneg_s,
                "baselines_s": base_s,
                "ratios": ratios,
                "targets": targets,
                "peak_bytes": peaks,
                "notes": w.notes(state) if w.notes is not None else {},
            }
        )
        del state
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _verdict(t: Dict[str, Any], markdown: bool = False) -> str:
    """A target's verdict with the measured ratio, e.g. ``met (72.4x)``; MISSED stands out."""
    v = t["verdict"]
    if v == MISSED:
        v = "**missed**" if markdown else "MISSED"
    return v if t["ratio"] is None else f"{v} ({t['ratio']:.2f}x)"


def format_table(rows: List[Dict[str, Any]]) -> str:
    header = (
        f"{'workload':<30} {'impl':<28} {'median':>11} {'throughput':>14} {'ratio':>9} "
        f"{'peak mem':>9}  target: verdict (measured ratio)"
    )
    lines = [header, "-" * len(header)]
    for r in rows:

        def line(impl: str, s: float, ratio: str, target: str, r: dict = r) -> str:
            return (
                f"{r['name']:<30} {impl:<28} {_fmt_time(s):>11} "
                f"{_fmt_rate(r['items'] / s):>14} {ratio:>9} {_fmt_peak(r, impl):>9}  {target}"
            )

        tgt = "; ".join(f"{t['target']}: {_verdict(t)}" for t in r["targets"])
        lines.append(line("pyneg", r["pyneg_s"], "1.0x", tgt))
        for name, s in r["baselines_s"].items():
            lines.append(line(name, s, f"{r['ratios'][name]:.1f}x", ""))
        if r.get("notes"):
            lines.append(f"{'':<30} notes: {_fmt_notes(r['notes'])}")
    return "\n".join(lines)


def _fmt_notes(notes: Dict[str, Any]) -> str:
    """A workload's notes (compile time, graph breaks, ...) as ``key value; key value``."""
    return "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in notes.items())


def format_markdown(rows: List[Dict[str, Any]]) -> str:
    """The table as GitHub markdown, one row per implementation (for the README)."""
    lines = [
        "| workload | implementation | median | throughput | speed-up of pyneg | peak memory | target | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        tgt = "; ".join(t["target"] for t in r["targets"])
        verdict = "; ".join(_verdict(t, markdown=True) for t in r["targets"])
        lines.append(
            f"| `{r['name']}` | **pyneg** | {_fmt_time(r['pyneg_s'])} | "
            f"{_fmt_rate(r['items'] / r['pyneg_s'])} | | {_fmt_peak(r, 'pyneg')} | {tgt} | {verdict} |"
        )
        for name, s in r["baselines_s"].items():
            lines.append(
                f"| | {name} | {_fmt_time(s)} | {_fmt_rate(r['items'] / s)} | "
                f"{r['ratios'][name]:.1f}x | {_fmt_peak(r, name)} | | |"
            )
        if r.get("notes"):
            lines.append(f"| | notes: {_fmt_notes(r['notes'])} | | | | | | |")
    return "\n".join(lines)


def format_header(machine: Dict[str, Any], quick: bool, elapsed_s: float, load: Dict[str, Any]) -> str:
    """One line: the machine, the kind of run, its length and the load average around it."""

    def avg(x: Any) -> str:
        return "n/a" if x is None else " / ".join(f"{v:.2f}" for v in x)

    return (
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads); {'quick' if quick else 'full'} run, {elapsed_s:.0f} s; "
        f"load average (1 / 5 / 15 min) before {avg(load['before'])}, after {avg(load['after'])}"
        + ("; targets marked 'full size only' are judged by the full run" if quick else "")
    )


def load_average() -> List[float] | None:
    """``os.getloadavg()`` as a list, None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.2f} {unit}"
    return f"{s / 1e-9:.0f} ns"


def _fmt_peak(row: Dict[str, Any], impl: str) -> str:
    peak = row.get("peak_bytes", {}).get(impl)
    return "" if peak is None else f"{peak / 2**20:.0f} MiB"


def _fmt_rate(r: float) -> str:
    for unit, scale in (("G/s", 1e9), ("M/s", 1e6), ("k/s", 1e3)):
        if r >= scale:
            return f"{r / scale:.1f} {unit}"
    return f"{r:.1f} /s"


def _primary_target(row: Dict[str, Any]) -> Dict[str, Any] | None:
    """The workload's first time-ratio target, if any."""
    return next((t for t in row["targets"] if t["kind"] == "ratio"), None)


def _primary_baseline(row: Dict[str, Any]) -> str | None:
    """The baseline a workload is judged against: its ratio target's, else its first."""
    t = _primary_target(row)
    return t["baseline"] if t else next(iter(row["baselines_s"]), None)


# Bar colours by the primary target's verdict: green met, red missed, grey not judged or none.
_VERDICT_COLOURS = {MET: "tab:green", MISSED: "tab:red"}


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    """Two panels: speed-up over each workload's primary baseline (coloured by the
    verdict, the target marked), and pyneg's throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.5 * len(rows) + 1.8), sharey=True)
    ys = list(range(len(rows)))
    ratios, labels, colors = [], [], []
    for y, r in enumerate(rows):
        base = _primary_baseline(r)
        ratios.append(r["ratios"].get(base, float("nan")) if base else float("nan"))
        labels.append(base or "")
        t = _primary_target(r)
        colors.append(_VERDICT_COLOURS.get(t["verdict"], "tab:gray") if t else "tab:gray")
        if t:
            ax1.plot([t["value"]], [y], marker="|", markersize=14, markeredgewidth=2, color="black")
    ax1.barh(ys, ratios, color=colors)
    ax1.set_yticks(ys, [r["name"] for r in rows])
    ax1.set_xscale("log")
    ax1.axvline(1.0, color="black", linewidth=0.8)
    ax1.set_xlabel(
        "speed-up over the primary baseline (median time ratio; | the target; green met, red missed, grey not judged)"
    )
    for y, (x, lab) in enumerate(zip(ratios, labels)):
        ax1.text(x, y, f" {x:.1f}x vs {lab}", va="center", fontsize=7)
    rates = [r["items"] / r["pyneg_s"] for r in rows]
    ax2.barh(ys, rates, color="tab:blue")
    ax2.set_xscale("log")
    ax2.set_xlabel("pyneg throughput (items per second)")
    for y, x in enumerate(rates):
        ax2.text(x, y, f" {_fmt_rate(x)}", va="center", fontsize=7)
    ax1.invert_yaxis()
    fig.suptitle("pyneg microbenchmarks (python -m pyneg.bench)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyneg.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, fewer repeats; judges only the targets of workloads that keep their target's size",
    )
    parser.add_argument("--filter", default="", help="only workloads whose name or group contains TEXT")
    parser.add_argument("--out", default="bench_results", help="folder for results.json, results.md and results.png")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    args = parser.parse_args(argv)

    load = {"before": load_average()}
    t0 = time.perf_counter()
    rows = run(args.quick, args.filter, progress=True)
    elapsed = time.perf_counter() - t0
    load["after"] = load_average()
    machine = machine_description()
    header = format_header(machine, args.quick, elapsed, load)
    print("\n" + header)
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {"machine": machine, "quick": args.quick, "elapsed_s": elapsed, "load_average": load, "results": rows},
            f,
            indent=2,
        )
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(header + "\n\n" + format_markdown(rows) + "\n")
    if not args.no_plot:
        try:
            plot(rows, os.path.join(args.out, "results.png"))
        except ImportError:
            print("matplotlib is not installed (pip install 'pyneg[bench]'): no plot written")
    print(
        f"wrote {os.path.join(args.out, 'results.json')}, results.md"
        + ("" if args.no_plot else f" and {os.path.join(args.out, 'results.png')}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
