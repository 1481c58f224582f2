"""pyneg: fast, exact negative sampling for PyTorch.

Alias-table samplers (C++ with the GIL released), hierarchical softmax, memory
banks, streaming frequency estimation and bias-corrected softmax losses.
"""

__version__ = "0.1.0"  # the only place the version is written (pyproject.toml reads it)


def _require_compiled_core() -> None:
    """Refuses, with instructions, to run from a source tree that holds no build.

    ``python -m ...`` run from the repository root puts the checkout's
    ``pyneg/`` first on ``sys.path``; it holds the Python files but no compiled
    ``_core``. Mixing those files with a ``_core`` built elsewhere (from other
    sources, at another version) would fail in confusing ways, so pyneg never
    does that: it says what to run instead (the convention NumPy follows).
    """
    try:
        import pyneg._core  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "pyneg._core":
            raise
        import os

        here = os.path.dirname(os.path.abspath(__file__))
        raise ImportError(
            f"pyneg's compiled module pyneg._core is missing from {here}: you are importing "
            "pyneg from its source tree, which holds no compiled code (the current directory "
            "or PYTHONPATH puts the checkout's pyneg/ first). Either run from outside the "
            "checkout to use an installed pyneg (`cd` elsewhere, `python -P`, or the plain "
            "`pytest` command, which does not put the current directory on sys.path), or "
            "build the checkout for development: `pip install --no-build-isolation -e .`"
        ) from None


_require_compiled_core()

from pyneg import (
    _ops,  # noqa: F401  (registers the torch.ops.pyneg operators)
    distributed,
    functional,
    graph,
    losses,
    memory,  # noqa: F401  (the historical home of MemoryBank: pyneg.memory stays an attribute)
    mining,
    skipgram,
)
from pyneg.bank import MemoryBank
from pyneg.cuda import cuda_available
from pyneg.data import NegativeSamplingCollator
from pyneg.frequency import FrequencyEstimator
from pyneg.functional import NegativeSource
from pyneg.hsoftmax import HierarchicalSoftmax, HuffmanTree
from pyneg.learned_sampler import LearnedUnigramSampler
from pyneg.mining import MinedNegatives, mine_hard_negatives
from pyneg.samplers import (
    AliasSampler,
    CandidateSample,
    LogUniformSampler,
    UniformSampler,
    UnigramSampler,
)
from pyneg.skipgram import SkipGramNegativeSampling, SkipGramPairs

__all__ = [
    "AliasSampler",
    "UnigramSampler",
    "UniformSampler",
    "LogUniformSampler",
    "LearnedUnigramSampler",
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
    "graph",
    "distributed",
    "losses",
    "NegativeSource",
    "mining",
    "MinedNegatives",
    "mine_hard_negatives",
    "cuda_available",
]
