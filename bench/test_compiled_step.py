"""The compiled-step workload's compile path (pyneg.bench.compiled), which quick runs skip.

Compiles the tiny quick-size step with ``backend="eager"`` (Dynamo only, so it
stays affordable in CI) and checks what the full run reports: the compiled
step gives the eager loss and gradients, and the notes carry a compile time
and Dynamo's graph-break count.
"""

from __future__ import annotations

import pytest
import torch

from pyneg.bench import compiled


@pytest.mark.slow
def test_compiled_step_matches_eager_and_reports_breaks():
    workload = compiled.WORKLOADS[0]
    state = workload.setup(True)
    assert workload.notes(state) == {
        "compile": "skipped in --quick (compiling takes minutes on small machines): both rows ran eager"
    }
    try:
        compiled._compile(state, backend="eager")
        workload.verify(state)  # the compiled step against the eager one, loss and gradients
        notes = workload.notes(state)
    finally:
        torch._dynamo.reset()
    assert notes["backend"] == "eager" and notes["compile_s"] > 0
    assert isinstance(notes["graph_breaks"], int) and notes["graph_breaks"] >= 0
    assert notes["graphs"] >= 1
