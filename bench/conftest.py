"""pytest-benchmark suite over pyneg.bench's workloads.

Every workload of ``pyneg.bench.registry`` gets one benchmark for pyneg and one
per baseline (compare them with ``pytest bench --benchmark-group-by=param:workload``),
a test that asserts pyneg agrees with the baselines, and one that the state
has the dimensions the workload's targets are stated for (at full size, their
very sizes). With
``--benchmark-disable`` (as CI runs it) the workloads use their quick sizes and
every function runs once, so the suite doubles as a correctness test.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest

_STATES: Dict[str, Any] = {}


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable", default=False))


@pytest.fixture
def state_of(quick: bool):
    """Builds (once per session) and returns a workload's state."""

    def get(workload) -> Any:
        key = workload.name
        if key not in _STATES:
            _STATES.clear()  # keep one workload's (possibly large) inputs alive at a time
            _STATES[key] = workload.setup(quick)
        return _STATES[key]

    return get
