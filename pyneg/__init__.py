"""pyneg: fast, exact negative sampling for PyTorch.

Alias-table samplers (C++ with the GIL released), hierarchical softmax, memory
banks, streaming frequency estimation and bias-corrected softmax losses.
"""
import glob as _glob
import os as _os
import sys as _sys


def _use_installed_core() -> None:
    """Lets a source checkout import the compiled modules of an installed pyneg.

    ``python -m pyneg.bench`` or ``python -m pytest`` run from the repository
    root put the checkout's ``pyneg/`` (which holds no compiled ``_core``) first
    on ``sys.path``. When ``pip install .`` has put a build elsewhere on the
    path, extend this package's search path with it so ``pyneg._core`` resolves.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _glob.glob(_os.path.join(here, "_core*")):
        return
    for entry in _sys.path:
        candidate = _os.path.join(_os.path.abspath(entry or "."), "pyneg")
        if candidate != here and _glob.glob(_os.path.join(candidate, "_core*")):
            __path__.append(candidate)
            return


_use_installed_core()

from pyneg import functional  # noqa: E402
from pyneg.data import NegativeSamplingCollator  # noqa: E402
from pyneg.samplers import (  # noqa: E402
    AliasSampler,
    CandidateSample,
    LogUniformSampler,
    UniformSampler,
    UnigramSampler,
)

__all__ = [
    "AliasSampler",
    "UnigramSampler",
    "UniformSampler",
    "LogUniformSampler",
    "CandidateSample",
    "NegativeSamplingCollator",
    "functional",
]
__version__ = "0.1.0"
