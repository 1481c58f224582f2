"""pyneg: fast, exact negative sampling for PyTorch."""
from pyneg.samplers import AliasSampler, LogUniformSampler, UniformSampler, UnigramSampler

__all__ = ["AliasSampler", "UnigramSampler", "UniformSampler", "LogUniformSampler"]
__version__ = "0.1.0"
