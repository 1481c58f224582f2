"""Every benchmark workload, grouped by area. Add an area's list here."""
from __future__ import annotations

from typing import List

from pyneg.bench.workload import Workload


def all_workloads() -> List[Workload]:
    from pyneg.bench import sampling
    from pyneg.bench import losses
    from pyneg.bench import memory

    workloads: List[Workload] = []
    workloads += sampling.WORKLOADS
    workloads += losses.WORKLOADS
    workloads += memory.WORKLOADS
    names = [w.name for w in workloads]
    assert len(names) == len(set(names)), "benchmark workload names must be unique"
    return workloads
