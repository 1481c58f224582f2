"""pyneg's microbenchmarks: ``python -m pyneg.bench [--quick]``.

Workloads are defined once (see :mod:`pyneg.bench.workload`) in one module per
area and listed in :mod:`pyneg.bench.registry`.
"""
from pyneg.bench.workload import Target, Workload

__all__ = ["Target", "Workload"]
