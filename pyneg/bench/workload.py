"""What a benchmark is: one workload, pyneg's way of doing it, and the baselines
a user would otherwise reach for.

Each workload is defined once and serves both ``python -m pyneg.bench`` and the
pytest-benchmark suite in ``bench/``; both call :meth:`Workload.check`, which
asserts that pyneg and the baselines agree, so a fast but wrong kernel fails.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional


@dataclass(frozen=True)
class Target:
    """A performance target from DESIGN.md.

    kind is one of:
      - "ratio": median(baseline) / median(pyneg) >= value;
      - "items_per_s": pyneg's throughput >= value;
      - "ns_per_item": pyneg's median time per item <= value nanoseconds.
    """

    kind: str
    value: float
    baseline: Optional[str] = None

    def met(self, pyneg_s: float, baseline_s: Dict[str, float], items: int) -> Optional[bool]:
        if self.kind == "ratio":
            base = baseline_s.get(self.baseline or "")
            return None if base is None else base / pyneg_s >= self.value
        if self.kind == "items_per_s":
            return items / pyneg_s >= self.value
        if self.kind == "ns_per_item":
            return pyneg_s / items * 1e9 <= self.value
        raise ValueError(f"unknown target kind {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "ratio":
            return f">= {self.value:g}x {self.baseline}"
        if self.kind == "items_per_s":
            return f">= {self.value / 1e6:g} M/s"
        return f"<= {self.value:g} ns/item"


@dataclass(frozen=True)
class Workload:
    """One benchmark.

    Attributes:
        name: short unique id, e.g. ``"alias_draw_V1e6"``.
        group: the area (``"sampling"``, ``"hsoftmax"``, ``"memory"``, ...).
        description: one line for the table.
        setup: ``setup(quick) -> state``; builds the inputs (not timed). With
            ``quick`` it may shrink sizes so the whole CLI run stays short.
        run: pyneg's way, ``run(state) -> result`` (timed).
        baselines: name -> ``fn(state) -> result`` (timed), what users would
            otherwise use.
        check: ``check(state, pyneg_result, {name: baseline_result})``; raises
            AssertionError when pyneg's result is wrong or disagrees with the
            baselines (statistically, for samplers).
        items: items one call processes (draws, ids, examples), for throughput;
            an int or ``items(state) -> int``.
        targets: the DESIGN.md targets this workload is measured against.
        measure_memory: also report the peak resident memory one call of
            pyneg and of each baseline adds (CPU workloads whose memory is part
            of the claim, e.g. losses that avoid materialising logits).
    """

    name: str
    group: str
    description: str
    setup: Callable[[bool], Any]
    run: Callable[[Any], Any]
    baselines: Dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    check: Optional[Callable[[Any, Any, Dict[str, Any]], None]] = None
    items: Any = 1
    targets: tuple = ()
    measure_memory: bool = False

    def num_items(self, state: Any) -> int:
        return int(self.items(state) if callable(self.items) else self.items)

    def verify(self, state: Any) -> None:
        """Runs pyneg and every baseline once and checks that they agree."""
        result = self.run(state)
        base = {name: fn(state) for name, fn in self.baselines.items()}
        if self.check is not None:
            self.check(state, result, base)
