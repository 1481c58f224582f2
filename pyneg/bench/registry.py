"""Every benchmark workload, grouped by area. Add an area's list here."""
from __future__ import annotations

from typing import List

from pyneg.bench.workload import Workload


def all_workloads() -> List[Workload]:
    from pyneg.bench import cuda as cuda_bench
    from pyneg.bench import hsoftmax, losses, memory, sampling, skipgram
    from pyneg.cuda import cuda_available

    workloads: List[Workload] = []
    workloads += sampling.WORKLOADS
    workloads += hsoftmax.WORKLOADS
    workloads += memory.WORKLOADS
    workloads += losses.WORKLOADS
    workloads += skipgram.WORKLOADS
    if cuda_available():
        workloads += cuda_bench.WORKLOADS
    names = [w.name for w in workloads]
    assert len(names) == len(set(names)), "benchmark workload names must be unique"
    return workloads
