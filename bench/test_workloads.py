"""Benchmarks pyneg and its baselines, workload by workload, and checks they agree."""
from __future__ import annotations

import pytest

from pyneg.bench.registry import all_workloads

WORKLOADS = all_workloads()

CASES = [(w, None) for w in WORKLOADS] + [(w, b) for w in WORKLOADS for b in w.baselines]


@pytest.mark.parametrize(
    "workload,baseline", CASES, ids=[f"{w.name}-{b or 'pyneg'}" for w, b in CASES]
)
def test_benchmark(benchmark, state_of, workload, baseline):
    state = state_of(workload)
    benchmark.group = workload.name
    fn = workload.run if baseline is None else workload.baselines[baseline]
    result = benchmark(fn, state)
    assert result is not None


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_agrees_with_baselines(state_of, workload):
    workload.verify(state_of(workload))
