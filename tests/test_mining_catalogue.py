"""Issue 21: hard-negative mining over catalogue ids past 2**31 (``candidate_ids``)."""

from __future__ import annotations

import pytest
import torch

import pyneg

BIG = 2**40


def _setup(n=300, b=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, cands = torch.randn(b, d, generator=g), torch.randn(n, d, generator=g)
    ids = torch.randperm(n, generator=g) * (BIG // n) + 2**31  # distinct, shuffled, past 2**31
    ids[0] = BIG - 1
    return q, cands, ids


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("sampling", ["top", "uniform", "softmax"])
def test_candidate_ids_at_2_to_the_40_are_the_rows_mapped(backend, sampling):
    q, cands, ids = _setup()
    ex_rows = torch.tensor([[0, 5, -1], [1, 2, 3], [7, -1, -1], [0, 1, 9], [4, 4, 8], [10, 11, 12]])
    ref = pyneg.mine_hard_negatives(q, cands, 8, hi=40, exclude=ex_rows, sampling=sampling, seed=3, backend=backend)
    ex_ids = torch.where(ex_rows >= 0, ids[ex_rows.clamp(min=0)], ex_rows)
    ex_ids = torch.cat([ex_ids, torch.tensor([[5], [BIG + 7], [2**35 + 1], [3], [0], [2**62]])], 1)  # not candidates
    got = pyneg.mine_hard_negatives(
        q, cands, 8, hi=40, exclude=ex_ids, sampling=sampling, seed=3, backend=backend, candidate_ids=ids
    )
    assert torch.equal(got.ids, ids[ref.ids])
    assert torch.equal(got.scores, ref.scores) and torch.equal(got.log_q, ref.log_q)
    assert torch.equal(got.window, ref.window)
    assert not (got.ids.unsqueeze(2) == ex_ids.unsqueeze(1)).any()
    assert int(got.ids.min()) > 2**31 - 1
    src = pyneg.NegativeSource.from_mined(got, cands, candidate_ids=ids)
    assert torch.equal(src.embeddings, cands[ref.ids]) and torch.equal(src.ids, got.ids)


def test_candidate_ids_padding_and_refusals():
    q, cands, ids = _setup(n=20, b=2)
    all_but_two = ids[2:].repeat(2, 1)
    got = pyneg.mine_hard_negatives(q, cands, 4, hi=20, exclude=all_but_two, candidate_ids=ids, seed=0, pad=True)
    assert (got.ids[:, 2:] == -1).all() and set(got.ids[0, :2].tolist()) == set(ids[:2].tolist())
    for bad, err, match in [
        (torch.cat([ids[:-1], ids[:1]]), ValueError, "candidate_ids holds id .* twice"),
        (ids[:-1], ValueError, "candidate_ids must hold one id per row"),
        (torch.cat([ids[:-1], torch.tensor([-3])]), ValueError, "candidate_ids holds negative id -3"),
        (ids.double(), TypeError, "candidate_ids must hold integer ids"),
    ]:
        with pytest.raises(err, match=match):
            pyneg.mine_hard_negatives(q, cands, 4, hi=20, candidate_ids=bad, seed=0)
    with pytest.raises(ValueError, match="exclude holds id -2"):
        pyneg.mine_hard_negatives(q, cands, 4, hi=20, candidate_ids=ids, exclude=torch.tensor([-2, 1]), seed=0)
    mined = pyneg.mine_hard_negatives(q, cands, 4, hi=20, candidate_ids=ids, seed=0)
    with pytest.raises(ValueError, match="mined.ids holds an id that candidate_ids does not hold"):
        pyneg.NegativeSource.from_mined(mined, cands, candidate_ids=ids + 1)
