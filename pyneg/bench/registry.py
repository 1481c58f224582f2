"""Every benchmark workload, found in the modules of :mod:`pyneg.bench`.

A module of ``pyneg/bench/`` that defines ``WORKLOADS`` (a list of
:class:`~pyneg.bench.workload.Workload`) is an area: its workloads run in the
order listed, areas in the order of ``_AREA_ORDER`` and then by module name, so
a new area needs no change here.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import List

from pyneg.bench.workload import Workload

# The table's order for the areas that exist now; modules not named here follow, by name.
_AREA_ORDER = ("sampling", "hsoftmax", "memory", "losses", "cuda")


def _area_modules() -> List[str]:
    import pyneg.bench as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    rank = {name: i for i, name in enumerate(_AREA_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def all_workloads(include_unavailable: bool = False) -> List[Workload]:
    """The workloads of every area, in table order.

    Workloads whose ``available()`` is False (GPU ones without a GPU) are left
    out unless ``include_unavailable``.
    """
    workloads: List[Workload] = []
    for name in _area_modules():
        module = importlib.import_module(f"pyneg.bench.{name}")
        workloads += getattr(module, "WORKLOADS", [])
    names = [w.name for w in workloads]
    assert len(names) == len(set(names)), "benchmark workload names must be unique"
    return [w for w in workloads if include_unavailable or w.available()]
