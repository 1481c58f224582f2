"""pyneg: fast, exact negative sampling for PyTorch.

Alias-table samplers (C++ with the GIL released), hierarchical softmax, memory
banks, streaming frequency estimation and bias-corrected softmax losses.
"""
import os as _os
import sys as _sys


def _use_installed_core() -> None:
    """Lets a source checkout import the compiled modules of an installed pyneg.

    ``python -m pyneg.bench`` or ``python -m pytest`` run from the repository
    root put the checkout's ``pyneg/`` (which holds no compiled ``_core``) first
    on ``sys.path``. When ``pip install .`` has put a build elsewhere on the
    path, extend this package's search path with it so ``pyneg._core`` resolves.
    """
    from importlib.machinery import EXTENSION_SUFFIXES

    def has_core(folder: str) -> bool:
        return any(_os.path.exists(_os.path.join(folder, "_core" + sfx)) for sfx in EXTENSION_SUFFIXES)

    here = _os.path.dirname(_os.path.abspath(__file__))
    if has_core(here):
        return
    for entry in _sys.path:
        candidate = _os.path.join(_os.path.abspath(entry or "."), "pyneg")
        if candidate != here and has_core(candidate):
            __path__.append(candidate)
            return


_use_installed_core()

from pyneg import distributed, functional  # noqa: E402
from pyneg.cuda import cuda_available  # noqa: E402
from pyneg.data import NegativeSamplingCollator  # noqa: E402
from pyneg.memory import FrequencyEstimator, MemoryBank  # noqa: E402
from pyneg import losses  # noqa: E402
from pyneg.functional import NegativeSource  # noqa: E402
from pyneg.hsoftmax import HierarchicalSoftmax, HuffmanTree  # noqa: E402
from pyneg import skipgram  # noqa: E402
from pyneg.skipgram import SkipGramNegativeSampling, SkipGramPairs  # noqa: E402
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
    "FrequencyEstimator",
    "MemoryBank",
    "HuffmanTree",
    "HierarchicalSoftmax",
    "skipgram",
    "SkipGramNegativeSampling",
    "SkipGramPairs",
    "functional",
    "distributed",
    "losses",
    "NegativeSource",
    "cuda_available",
]
__version__ = "0.1.0"
