"""pyneg: fast, exact negative sampling for PyTorch.

Alias-table samplers (C++ with the GIL released), hierarchical softmax, memory
banks, streaming frequency estimation and bias-corrected softmax losses.
"""
from pyneg import functional
from pyneg.samplers import (
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
    "functional",
]
__version__ = "0.1.0"
