"""Benchmarks pyneg and its baselines, workload by workload, and checks they agree."""

from __future__ import annotations

import pytest

from pyneg.bench.registry import all_workloads

WORKLOADS = all_workloads()

CASES = [(w, None) for w in WORKLOADS] + [(w, b) for w in WORKLOADS for b in w.baselines]


@pytest.mark.parametrize("workload,baseline", CASES, ids=[f"{w.name}-{b or 'pyneg'}" for w, b in CASES])
def test_benchmark(benchmark, state_of, workload, baseline):
    state = state_of(workload)
    benchmark.group = workload.name
    fn = workload.run if baseline is None else workload.baselines[baseline]
    result = benchmark(fn, state)
    assert result is not None
    if workload.notes is not None:  # e.g. the compiled step's compile time and graph breaks
        benchmark.extra_info.update(workload.notes(state))


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_agrees_with_baselines(state_of, workload):
    workload.verify(state_of(workload))


SIZED = [w for w in WORKLOADS if w.target_size is not None]


@pytest.mark.parametrize("workload", SIZED, ids=[w.name for w in SIZED])
def test_measures_the_size_it_declares(state_of, quick, workload):
    """The size read off the state names the target's dimensions; at full size it is the target's."""
    size = workload.measured_size(state_of(workload))
    assert size is not None and set(size) == set(workload.target_size), (size, workload.target_size)
    if not quick:
        assert size == workload.target_size
        assert workload.judged(state_of(workload), quick=False)
