"""Every picklable pyneg object through DataLoader workers started with spawn, forkserver and fork.

spawn (the default on macOS and Windows, and the only safe start once CUDA is
initialised) and forkserver pickle the dataset and the collate_fn with torch's
multiprocessing pickler, which sends CPU tensors as shared-memory file
descriptors; fork copies the parent. Each object must arrive whole: the probes
below compute, in the worker, what the parent computes on its own copy (draws
for a fixed seed, losses, estimates), and the results must be equal.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import pyneg

CONTEXTS = [c for c in ("spawn", "forkserver", "fork") if c in multiprocessing.get_all_start_methods()]


def _ids(n: int, hi: int, seed: int) -> torch.Tensor:
    return torch.randint(0, hi, (n,), generator=torch.Generator().manual_seed(seed))


def _sampler_probe(s: Any) -> List[torch.Tensor]:
    v = s.num_classes
    draws = s.sample((4, 5), seed=7, exclude=torch.arange(4) % v)
    cand = s.sample_candidates(3, torch.tensor([0, 1]), seed=11)
    return [draws, s.log_prob(torch.arange(v)), cand.sampled_candidates, cand.true_expected_count]


_SPARSE_IDS = torch.tensor([3, 2**31 - 1, 2**31, 2**31 + 9, 2**35, 2**40 - 1])


def _sparse() -> pyneg.UnigramSampler:
    # A sparse catalogue of 2**40 ids (issue 21): six ids carry weight, ids past 2**31.
    return pyneg.UnigramSampler(torch.tensor([4.0, 1.0, 0.0, 2.0, 5.0, 3.0]), ids=_SPARSE_IDS, num_classes=2**40)


def _sparse_probe(s: Any) -> List[torch.Tensor]:
    draws = s.sample((4, 5), seed=7, exclude=_SPARSE_IDS[:4])
    unique = s.sample((3, 4), seed=8, unique=True)
    cand = s.sample_candidates(3, _SPARSE_IDS[:2], seed=11)
    return [draws, unique, s.log_prob(_SPARSE_IDS), cand.sampled_candidates, cand.true_expected_count]


def _learned() -> pyneg.LearnedUnigramSampler:
    s = pyneg.LearnedUnigramSampler(20, rebuild_every=2)
    s.update(_ids(50, 20, 1))
    s.update(_ids(50, 20, 2))  # rebuilds
    s.update(_ids(50, 20, 3))  # pending
    return s


def _learned_probe(s: pyneg.LearnedUnigramSampler) -> List[torch.Tensor]:
    out = _sampler_probe(s)
    s.update(_ids(50, 20, 4))  # the copy's own schedule: this update rebuilds
    return out + [s.sample((6,), seed=3), s.counts, torch.tensor(s.pending_updates)]


def _collator() -> pyneg.NegativeSamplingCollator:
    return pyneg.NegativeSamplingCollator(pyneg.UnigramSampler(torch.arange(1.0, 21.0)), 3, unique=True)


def _collator_probe(c: pyneg.NegativeSamplingCollator) -> List[torch.Tensor]:
    torch.manual_seed(5)  # the collator draws from torch's default generator
    users, items, neg = c([(torch.tensor(i), torch.tensor(i % 20)) for i in range(8)])
    return [users, items, neg]


def _bank() -> pyneg.MemoryBank:
    bank = pyneg.MemoryBank(8, 3)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        bank.enqueue(torch.randn(4, 3, generator=g), _ids(4, 6, step), torch.randn(4, generator=g))
    return bank


def _bank_probe(bank: pyneg.MemoryBank) -> List[torch.Tensor]:
    out = [bank.embeddings, bank.ids, bank.log_q, bank.hit_mask(torch.tensor([0, 3, 5]))]
    bank.enqueue(torch.ones(2, 3), torch.tensor([9, 1]))
    return out + [bank.embeddings, bank.ids]


def _estimator() -> pyneg.FrequencyEstimator:
    est = pyneg.FrequencyEstimator(64, alpha=0.1)
    for step in range(4):
        est.update(_ids(16, 30, step))
    return est


def _estimator_probe(est: pyneg.FrequencyEstimator) -> List[torch.Tensor]:
    ids = torch.arange(30)
    out = [est.log_prob(ids)]
    est.update(_ids(16, 30, 9))
    return out + [est.probability(ids), *(v for v in est.state_dict().values() if isinstance(v, torch.Tensor))]


def _tree_probe(t: pyneg.HuffmanTree) -> List[torch.Tensor]:
    return [t.depths, *t.path(3), torch.tensor(list(t.fingerprint().encode()))]


def _hs() -> pyneg.HierarchicalSoftmax:
    torch.manual_seed(0)
    return pyneg.HierarchicalSoftmax(torch.arange(1.0, 13.0), 4)


def _hs_probe(hs: pyneg.HierarchicalSoftmax) -> List[torch.Tensor]:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return [hs(x, torch.tensor([0, 3, 5, 7, 11]), reduction="none"), hs.log_prob(x)]


def _sgns() -> Any:
    torch.manual_seed(0)
    return pyneg.SkipGramNegativeSampling(12, 4)


def _sgns_probe(m: Any) -> List[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _pairs() -> Any:
    tokens = _ids(300, 12, 0)
    return pyneg.SkipGramPairs(tokens, 2, batch_size=64, seed=4, chunk_tokens=100)


#: name -> (build, probe). The probe runs on the worker's copy and on a parent copy.
OBJECTS: Dict[str, Tuple[Callable[[], Any], Callable[[Any], List[torch.Tensor]]]] = {
    "AliasSampler": (lambda: pyneg.AliasSampler(torch.tensor([0.5, 0.0, 2.0, 1.0, 3.0])), _sampler_probe),
    "UnigramSampler": (lambda: pyneg.UnigramSampler(torch.arange(1.0, 30.0), power=0.5), _sampler_probe),
    "UniformSampler": (lambda: pyneg.UniformSampler(50), _sampler_probe),
    "LogUniformSampler": (lambda: pyneg.LogUniformSampler(40), _sampler_probe),
    "LearnedUnigramSampler": (_learned, _learned_probe),
    "SparseUnigramSampler": (_sparse, _sparse_probe),
    "NegativeSamplingCollator": (_collator, _collator_probe),
    "MemoryBank": (_bank, _bank_probe),
    "FrequencyEstimator": (_estimator, _estimator_probe),
    "HuffmanTree": (lambda: pyneg.HuffmanTree.from_counts(torch.arange(1.0, 17.0)), _tree_probe),
    "HierarchicalSoftmax": (_hs, _hs_probe),
    "SkipGramNegativeSampling": (_sgns, _sgns_probe),
}


class _Probes(Dataset):  # type: ignore[type-arg]
    """Item i: the probe of object i, computed in the worker on the copy the worker received."""

    def __init__(self, objects: List[Tuple[str, Any]]) -> None:
        self.objects = objects

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, i: int) -> Tuple[str, List[torch.Tensor]]:
        name, obj = self.objects[i]
        return name, OBJECTS[name][1](obj)


def _first(batch: List[Any]) -> Any:
    return batch[0]


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_picklable_object_round_trips_through_workers(context):
    built = {name: build() for name, (build, _) in OBJECTS.items()}
    import copy

    expected = {name: OBJECTS[name][1](copy.deepcopy(obj)) for name, obj in built.items()}
    loader = DataLoader(
        _Probes(list(built.items())),
        batch_size=1,
        num_workers=2,
        collate_fn=_first,
        multiprocessing_context=context,
        timeout=300,
    )
    seen = {}
    for name, got in loader:
        seen[name] = got
        want = expected[name]
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape, name
            assert torch.equal(g, w), name
    assert set(seen) == set(OBJECTS)
    # The parent's objects are untouched by having been sent.
    for name, obj in built.items():
        again = OBJECTS[name][1](copy.deepcopy(obj))
        assert all(torch.equal(a, b) for a, b in zip(again, expected[name])), name


@pytest.mark.parametrize("context", CONTEXTS)
def test_collator_as_collate_fn_in_workers(context):
    """The issue's call: the collator itself is the collate_fn of spawn/forkserver/fork workers."""
    pairs = TensorDataset(torch.arange(64), torch.arange(64) % 50)
    collate = pyneg.NegativeSamplingCollator(pyneg.UniformSampler(50), 3)
    runs = []
    for _ in range(2):
        loader = DataLoader(
            pairs,
            batch_size=32,
            num_workers=1,
            collate_fn=collate,
            multiprocessing_context=context,
            generator=torch.Generator().manual_seed(0),
            timeout=300,
        )
        batches = list(loader)
        assert len(batches) == 2
        for _users, items, neg in batches:
            assert neg.shape == (32, 3) and neg.dtype == torch.int64
            assert bool((neg != items.unsqueeze(1)).all()) and bool(((neg >= 0) & (neg < 50)).all())
        runs.append(torch.cat([b[2] for b in batches]))
    assert torch.equal(runs[0], runs[1])  # worker streams come from the DataLoader's generator


def test_collator_draws_agree_across_start_methods():
    """Worker seeds are base_seed + worker_id whatever the start method: equal negatives."""
    pairs = TensorDataset(torch.arange(40), torch.arange(40) % 7)
    collate = pyneg.NegativeSamplingCollator(pyneg.LogUniformSampler(100), 4)
    got = {}
    for context in CONTEXTS:
        loader = DataLoader(
            pairs,
            batch_size=8,
            num_workers=2,
            collate_fn=collate,
            multiprocessing_context=context,
            generator=torch.Generator().manual_seed(3),
            timeout=300,
        )
        got[context] = torch.cat([b[2] for b in loader])
    first = next(iter(got.values()))
    assert all(torch.equal(first, v) for v in got.values())


@pytest.mark.parametrize("context", CONTEXTS)
def test_skipgram_pairs_epoch_through_workers(context):
    """SkipGramPairs as the DataLoader's dataset: the workers split its chunks, and together give
    exactly the pairs of the same epoch iterated without workers."""
    pairs = _pairs()

    def key(b: Tuple[torch.Tensor, torch.Tensor]) -> List[Tuple[int, int]]:
        return sorted(zip(b[0].tolist(), b[1].tolist()))

    want = key(tuple(torch.cat(x) for x in zip(*list(_pairs()))))  # type: ignore[arg-type]
    loader = DataLoader(pairs, batch_size=None, num_workers=2, multiprocessing_context=context, timeout=300)
    got = key(tuple(torch.cat(x) for x in zip(*list(loader))))  # type: ignore[arg-type]
    assert got == want and len(want) > 0
