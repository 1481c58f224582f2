"""The DataLoader collate helper: negatives per worker, reproducible under manual_seed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import pyneg


def _loader(num_workers: int, collate) -> DataLoader:
    pairs = TensorDataset(torch.arange(64), torch.arange(64) % 10)
    return DataLoader(pairs, batch_size=8, num_workers=num_workers, collate_fn=collate)


def test_collator_adds_negatives_that_avoid_positives():
    collate = pyneg.NegativeSamplingCollator(pyneg.UniformSampler(10), 5, unique=True)
    for _users, items, neg in _loader(0, collate):
        assert neg.shape == (8, 5) and neg.dtype == torch.int64
        assert not (neg == items.unsqueeze(1)).any()
        srt = neg.sort(dim=1).values
        assert (srt[:, 1:] != srt[:, :-1]).all()


def test_workers_draw_distinct_reproducible_streams():
    collate = pyneg.NegativeSamplingCollator(pyneg.UniformSampler(1000), 16, exclude_positives=False)

    def run():
        torch.manual_seed(2024)
        return [batch[-1] for batch in _loader(2, collate)]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # Batches 0 and 1 come from different workers: their streams differ.
    assert not torch.equal(first[0], first[1])
    torch.manual_seed(7)
    other = [batch[-1] for batch in _loader(2, collate)]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


class _DictData(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        return {"user": i, "item": i % 3}


def test_dict_batches_and_bad_keys():
    collate = pyneg.NegativeSamplingCollator(pyneg.UniformSampler(3), 2, positive_key="item")
    batch = next(iter(DataLoader(_DictData(), batch_size=6, collate_fn=collate)))
    assert batch["negatives"].shape == (6, 2)
    assert not (batch["negatives"] == batch["item"].unsqueeze(1)).any()
    bad = pyneg.NegativeSamplingCollator(pyneg.UniformSampler(3), 2, positive_key="missing")
    with pytest.raises(ValueError, match="positive_key"):
        next(iter(DataLoader(_DictData(), batch_size=6, collate_fn=bad)))
    with pytest.raises(ValueError, match="num_negatives"):
        pyneg.NegativeSamplingCollator(pyneg.UniformSampler(3), 0)
    with pytest.raises(TypeError, match="sampler"):
        pyneg.NegativeSamplingCollator(object(), 2)
