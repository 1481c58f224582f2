"""What a benchmark is: one workload, pyneg's way of doing it, the baselines a
user would otherwise reach for, and the targets pyneg is judged by.

Each workload is defined once and serves both ``python -m pyneg.bench`` and the
pytest-benchmark suite in ``bench/``; both call :meth:`Workload.verify`, which
asserts that pyneg and the baselines agree, so a fast but wrong kernel fails.

Every target is a ratio against a baseline measured in the same run (absolute
rates differ twofold between two of the same machines; the ratios hold), and a
target is judged only where the workload ran at the size the target is stated
for (:meth:`Workload.judged`): a ``--quick`` run reports its smaller workloads'
figures but does not judge them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

#: The verdicts a target can get, as the JSON spells them.
MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"
FULL_SIZE_ONLY = "full size only"  # a quick run measured a smaller size
NOT_AT_TARGET_SIZE = "not at target size"  # a full run did: the workload's setup is wrong

_KINDS = ("ratio", "peak_memory_ratio")


@dataclass(frozen=True)
class Target:
    """A performance target from DESIGN.md, as a ratio against one baseline.

    kind is one of:
      - ``"ratio"``: median time of ``baseline`` / median time of pyneg >= ``value``
        (a speed-up; ``value`` 0.5 reads "pyneg takes at most 2x the baseline's time");
      - ``"peak_memory_ratio"``: peak memory of ``baseline`` / peak memory of pyneg
        >= ``value`` (needs ``measure_memory`` on the workload).

    ``baseline`` names one of the workload's baselines.
    """

    kind: str
    value: float
    baseline: str

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"Target kind must be one of {_KINDS} (targets are ratios against a baseline "
                f"measured in the same run), got {self.kind!r}"
            )
        if not self.value > 0:
            raise ValueError(f"Target value must be > 0, got {self.value!r}")
        if not isinstance(self.baseline, str) or not self.baseline:
            raise ValueError("Target baseline must name one of the workload's baselines")

    def ratio(
        self, pyneg_s: float, baselines_s: Mapping[str, float], peak_bytes: Mapping[str, Optional[int]]
    ) -> Optional[float]:
        """The measured ratio (baseline over pyneg), or None where it was not measured."""
        if self.kind == "ratio":
            base = baselines_s.get(self.baseline)
            return None if base is None else base / pyneg_s
        base, ours = peak_bytes.get(self.baseline), peak_bytes.get("pyneg")
        if base is None or ours is None:
            return None
        return max(base, 1) / max(ours, 1)  # a call that adds no resident memory counts as one byte

    def describe(self) -> str:
        what = "time" if self.kind == "ratio" else "peak memory"
        if self.value >= 1:
            return f">= {self.value:g}x {self.baseline}" + ("" if self.kind == "ratio" else " (peak memory)")
        return f"{what} <= {1 / self.value:g}x {self.baseline}"

    def judge(self, ratio: Optional[float], judged: bool, quick: bool = True) -> str:
        """The verdict: met / missed where judged and measured, else why not."""
        if ratio is None:
            return NOT_MEASURED
        if not judged:
            return FULL_SIZE_ONLY if quick else NOT_AT_TARGET_SIZE
        return MET if ratio >= self.value else MISSED


@dataclass(frozen=True)
class Workload:
    """One benchmark.

    Attributes:
        name: short unique id, e.g. ``"alias_draw_V1e6"``.
        group: the area (``"sampling"``, ``"hsoftmax"``, ``"memory"``, ...).
        description: one line for the table.
        setup: ``setup(quick) -> state``; builds the inputs (not timed). With
            ``quick`` it may shrink sizes so the whole CLI run stays short;
            ``setup(False)`` builds the size the targets are stated for.
        run: pyneg's way, ``run(state) -> result`` (timed).
        baselines: name -> ``fn(state) -> result`` (timed), what users would
            otherwise use, and what the targets are ratios against.
        check: ``check(state, pyneg_result, {name: baseline_result})``; raises
            AssertionError when pyneg's result is wrong or disagrees with the
            baselines (statistically, for samplers).
        items: items one call processes (draws, ids, examples), for throughput;
            an int or ``items(state) -> int``.
        targets: the DESIGN.md targets this workload is judged by.
        target_size: the sizes DESIGN.md states the targets for, e.g.
            ``{"V": 10**7, "draws": 81920}``.
        size: ``size(state) -> dict`` with the same keys, read off the state
            that was measured. With both given, a target is judged exactly when
            the two are equal (so a quick run judges a workload whose quick
            size is the full one); without them, in full runs only.
        measure_memory: also report the peak resident memory one call of
            pyneg and of each baseline adds (CPU workloads whose memory is part
            of the claim, e.g. losses that avoid materialising logits).
        available: ``available() -> bool``; False leaves the workload out of
            the run (e.g. GPU workloads on a machine without one).
        notes: ``notes(state) -> dict``, figures measured in setup that the
            table reports beside the times (a compile time, a graph-break count).
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
    target_size: Optional[Dict[str, Any]] = None
    size: Optional[Callable[[Any], Dict[str, Any]]] = None
    measure_memory: bool = False
    available: Callable[[], bool] = lambda: True
    notes: Optional[Callable[[Any], Dict[str, Any]]] = None

    def num_items(self, state: Any) -> int:
        return int(self.items(state) if callable(self.items) else self.items)

    def measured_size(self, state: Any) -> Optional[Dict[str, Any]]:
        """The sizes ``state`` was built with (None when the workload declares none)."""
        return None if self.size is None else dict(self.size(state))

    def judged(self, state: Any, quick: bool) -> bool:
        """Whether this run measured the size the targets are stated for."""
        if self.size is None or self.target_size is None:
            return not quick
        return self.measured_size(state) == dict(self.target_size)

    def verify(self, state: Any) -> None:
        """Runs pyneg and every baseline once and checks that they agree."""
        result = self.run(state)
        base = {name: fn(state) for name, fn in self.baselines.items()}
        if self.check is not None:
            self.check(state, result, base)
