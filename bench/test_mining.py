"""pytest-benchmark: exact hard-negative mining against PyTorch blocked matmul + topk and faiss.

With ``--benchmark-disable`` the workload runs at its quick size, once per
implementation, and the agreement check runs: a correctness test of the bench.
"""
from __future__ import annotations

import pytest

from pyneg.bench.mining import WORKLOADS

CASES = [(w, None) for w in WORKLOADS] + [(w, b) for w in WORKLOADS for b in w.baselines]


@pytest.mark.parametrize("workload,baseline", CASES, ids=[f"{w.name}-{b or 'pyneg'}" for w, b in CASES])
def test_mining_benchmark(benchmark, state_of, workload, baseline):
    state = state_of(workload)
    benchmark.group = workload.name
    fn = workload.run if baseline is None else workload.baselines[baseline]
    assert fn(state).shape == (state.b, state.hi)
    benchmark(fn, state)


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_mining_agrees_with_baselines(state_of, workload):
    workload.verify(state_of(workload))
