"""MemoryBank against a plain deque of the last `capacity` entries."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pyneg


class Reference:
    """The bank as a deque of (embedding, id, log_q, step), oldest first."""

    def __init__(self, capacity: int) -> None:
        self.q: deque = deque(maxlen=capacity)
        self.step = 0

    def enqueue(self, emb, ids, log_q=None) -> None:
        self.step += 1
        for i in range(emb.shape[0]):
            lq = math.nan if log_q is None else float(log_q[i])
            self.q.append((emb[i].tolist(), int(ids[i]), lq, self.step))

    def column(self, j: int, dtype=None):
        return torch.tensor([e[j] for e in self.q], dtype=dtype)


def same(a, b) -> bool:
    """torch.equal that treats NaN as equal to NaN (log_q holds NaN where none was given)."""
    if not isinstance(a, torch.Tensor):
        return a == b
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
    return torch.equal(a, b)


def batch(rng: np.random.Generator, n: int, dim: int, num_ids: int = 20, with_log_q: bool = True):
    emb = torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, num_ids, n))
    log_q = torch.from_numpy(-rng.random(n).astype(np.float32)) if with_log_q else None
    return emb, ids, log_q


def assert_same(bank: pyneg.MemoryBank, ref: Reference, dim: int) -> None:
    n = len(ref.q)
    assert len(bank) == n and bank.step == ref.step
    assert torch.equal(bank.embeddings.cpu(), ref.column(0, torch.float32).reshape(n, dim))
    assert torch.equal(bank.ids.cpu(), ref.column(1, torch.int64))
    assert same(bank.log_q.cpu(), ref.column(2, torch.float32))
    assert torch.equal(bank.steps.cpu(), ref.column(3, torch.int64))
    assert torch.equal(bank.ages.cpu(), ref.step - ref.column(3, torch.int64))


def assert_negatives_consistent(bank: pyneg.MemoryBank, positives: torch.Tensor) -> None:
    """negatives() columns are the young entries (any order), aligned, with a brute-force hit mask."""
    neg = bank.negatives(positives)
    if not bank.ready:
        assert neg.embeddings.shape == (0, bank.dim) and neg.hit_mask.shape == (len(positives), 0)
        return
    young = bank.valid_mask()
    rows = torch.cat([bank.embeddings, bank.ids.unsqueeze(1).to(bank.dtype), bank.log_q.unsqueeze(1).to(bank.dtype)], 1)
    got = torch.cat([neg.embeddings, neg.ids.unsqueeze(1).to(bank.dtype), neg.log_q.unsqueeze(1).to(bank.dtype)], 1)
    key = lambda t: sorted(map(tuple, t.nan_to_num(99.0).tolist()))
    assert key(got) == key(rows[young])
    assert torch.equal(neg.hit_mask, positives.unsqueeze(1).to(neg.ids.device) == neg.ids.unsqueeze(0))


@pytest.mark.parametrize(
    "capacity,sizes",
    [
        (8, [3, 3, 3, 3]),  # wraps mid-batch
        (8, [8, 1, 8]),  # exactly full, then aligned
        (8, [20, 2, 11, 5]),  # batches larger than capacity
        (5, [1] * 12),
        (1, [3, 1, 2]),
    ],
)
def test_fifo_matches_deque(capacity, sizes, device):
    dim = 3
    rng = np.random.default_rng(capacity + len(sizes))
    bank = pyneg.MemoryBank(capacity, dim, device=device)
    ref = Reference(capacity)
    storage = bank.negatives().embeddings.untyped_storage().data_ptr()
    for i, n in enumerate(sizes):
        emb, ids, log_q = batch(rng, n, dim, with_log_q=i % 2 == 0)
        bank.enqueue(emb.to(device), ids, log_q)
        ref.enqueue(emb, ids, log_q)
        assert_same(bank, ref, dim)
        assert_negatives_consistent(bank, torch.from_numpy(rng.integers(0, 20, 6)))
    # Written in place: the storage never moved.
    assert bank.negatives().embeddings.untyped_storage().data_ptr() == storage


@given(
    capacity=st.integers(1, 12),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=10),
    max_age=st.one_of(st.none(), st.integers(0, 4)),
    warmup=st.integers(0, 3),
)
def test_fifo_property(capacity, sizes, max_age, warmup):
    dim = 2
    rng = np.random.default_rng(sum(sizes) + capacity)
    bank = pyneg.MemoryBank(capacity, dim, max_age=max_age, warmup=warmup)
    ref = Reference(capacity)
    for n in sizes:
        emb, ids, log_q = batch(rng, n, dim, num_ids=6)
        bank.enqueue(emb, ids, log_q)
        ref.enqueue(emb, ids, log_q)
        assert_same(bank, ref, dim)
        ages = ref.step - ref.column(3, torch.int64)
        expected_valid = torch.ones(len(ref.q), dtype=torch.bool) if max_age is None else ages <= max_age
        assert torch.equal(bank.valid_mask(), expected_valid)
        assert bank.ready == (ref.step >= warmup)
        positives = torch.from_numpy(rng.integers(0, 6, 4))
        assert torch.equal(bank.hit_mask(positives), positives.unsqueeze(1) == bank.ids.unsqueeze(0))
        assert_negatives_consistent(bank, positives)


def test_max_age_and_warmup():
    bank = pyneg.MemoryBank(10, 1, max_age=1, warmup=2)
    bank.enqueue(torch.zeros(3, 1), [1, 2, 3])
    assert not bank.ready and bank.negatives().ids.numel() == 0
    bank.enqueue(torch.ones(3, 1), [4, 5, 6])
    assert bank.ready and bank.negatives().ids.tolist() == [1, 2, 3, 4, 5, 6]
    bank.enqueue(torch.full((2, 1), 2.0), [7, 1])
    neg = bank.negatives([1, 4, 9])
    assert neg.ids.tolist() == [4, 5, 6, 7, 1]  # step 1's entries are too old
    assert neg.hit_mask.tolist() == [[False, False, False, False, True], [True] + [False] * 4, [False] * 5]
    # hit_mask covers every stored entry; valid_mask marks the young ones.
    assert bank.hit_mask([1])[0].tolist() == [True] + [False] * 6 + [True]
    assert bank.valid_mask().tolist() == [False] * 3 + [True] * 5
    assert bank.ages.tolist() == [2, 2, 2, 1, 1, 1, 0, 0]


def test_negatives_are_views_invalidated_by_enqueue():
    bank = pyneg.MemoryBank(4, 2)
    bank.enqueue(torch.randn(4, 2), [0, 1, 2, 3])
    q = torch.randn(3, 2, requires_grad=True)
    neg = bank.negatives()
    loss = (q @ neg.embeddings.t()).logsumexp(1).sum()
    bank.enqueue(torch.randn(1, 2), [9])  # too early: overwrites what backward needs
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
    # The documented order works, and the bank never holds a graph.
    neg = bank.negatives()
    (q @ neg.embeddings.t()).sum().backward()
    bank.enqueue(torch.randn(2, 2, requires_grad=True), [5, 6])
    assert not bank.embeddings.requires_grad and not bank.negatives().embeddings.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    bank = pyneg.MemoryBank(3, 2, dtype=dtype)
    x = torch.randn(4, 2)
    bank.enqueue(x, np.arange(4, dtype=np.int32), log_q=np.zeros(4, dtype=np.float64))
    assert bank.embeddings.dtype == dtype and torch.equal(bank.embeddings, x[1:].to(dtype))
    assert bank.log_q.dtype == torch.float32 and bank.ids.dtype == torch.int64
    # Same dtype (a raw row copy) and non-contiguous input (torch's copy) agree.
    y = torch.randn(2, 4)[:, ::2].to(dtype)
    bank.enqueue(y.contiguous(), [5, 6])
    bank.enqueue(y, [7, 8])
    assert torch.equal(bank.embeddings, torch.cat([y[1:], y]))


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(5)
    a = pyneg.MemoryBank(7, 3, max_age=3)
    for n in (4, 5, 2):
        a.enqueue(*batch(rng, n, 3))
    b = pyneg.MemoryBank(7, 3, max_age=3)
    b.load_state_dict(a.state_dict())
    for n in (3, 9, 1, 6):
        emb, ids, log_q = batch(rng, n, 3)
        a.enqueue(emb, ids, log_q)
        b.enqueue(emb, ids, log_q)
        pos = torch.from_numpy(rng.integers(0, 20, 5))
        na, nb = a.negatives(pos), b.negatives(pos)
        for x, y in zip(na, nb):  # same slots: the same columns in the same order
            assert same(x, y)
        for key, value in a.state_dict().items():
            assert same(value, b.state_dict()[key]), key


def test_load_state_dict_rejects_another_shape_and_changes_nothing():
    a = pyneg.MemoryBank(4, 2)
    a.enqueue(torch.ones(3, 2), [1, 2, 3])
    before = a.state_dict()
    for other in (pyneg.MemoryBank(5, 2), pyneg.MemoryBank(4, 3)):
        other.enqueue(torch.zeros(1, other.dim), [7])
        with pytest.raises(ValueError, match="capacity|dim"):
            a.load_state_dict(other.state_dict())
    # Tampered copies of another bank's state, so that a partial write would show.
    c = pyneg.MemoryBank(4, 2)
    c.enqueue(torch.full((2, 2), 5.0), [7, 8], [-7.0, -8.0])
    c.enqueue(torch.full((1, 2), 6.0), [9])
    good = c.state_dict()
    for key, bad in [
        ("ids", torch.tensor([-1, 2, 3])),
        ("head", 1),
        ("steps", torch.tensor([2, 1, 1])),
        ("embeddings", torch.ones(2, 2)),
        ("log_q", torch.zeros(3, dtype=torch.float64)),
    ]:
        with pytest.raises((ValueError, TypeError)):
            a.load_state_dict(dict(good, **{key: bad}))
    after = a.state_dict()
    assert all(same(after[k], before[k]) for k in ("embeddings", "ids", "steps", "log_q"))
    assert after["head"] == before["head"] and after["step"] == before["step"]


def _other_state():
    other = pyneg.MemoryBank(4, 2)
    other.enqueue(torch.full((5, 2), 7.0), [20, 21, 22, 23, 24], torch.full((5,), -7.0))
    return other.state_dict()


@pytest.mark.parametrize(
    "key,bad,error",
    [
        ("embeddings", lambda sd: torch.empty(4, 2, device="meta"), (ValueError, TypeError)),
        ("embeddings", lambda sd: sd["embeddings"].to_sparse(), TypeError),
        ("log_q", lambda sd: torch.empty(4, device="meta"), (ValueError, TypeError)),
        ("log_q", lambda sd: sd["log_q"].to_sparse(), TypeError),
        ("steps", lambda sd: sd["steps"].to_sparse(), TypeError),
        ("step", lambda sd: 2**63 - 1, ValueError),  # the next enqueue's step would not fit in int64
        ("step", lambda sd: 2**70, ValueError),
    ],
)
def test_load_state_dict_with_a_tampered_tensor_changes_nothing(key, bad, error):
    a = pyneg.MemoryBank(4, 2)
    a.enqueue(torch.ones(3, 2), [1, 2, 3], [-1.0, -2.0, -3.0])
    before = a.state_dict()
    sd = _other_state()
    sd[key] = bad(sd)
    with pytest.raises(error, match=key):
        a.load_state_dict(sd)
    for k, value in a.state_dict().items():
        assert same(value, before[k]), k
    a.enqueue(torch.zeros(1, 2), [4])  # still usable
    assert a.ids.tolist() == [1, 2, 3, 4]


def test_load_state_dict_never_attaches_a_graph():
    sd = _other_state()
    sd["embeddings"] = sd["embeddings"].clone().requires_grad_()
    sd["log_q"] = sd["log_q"].clone().requires_grad_()
    bank = pyneg.MemoryBank(4, 2)
    bank.load_state_dict(sd)
    neg = bank.negatives()
    assert not neg.embeddings.requires_grad and not neg.log_q.requires_grad
    assert not bank.embeddings.requires_grad and torch.equal(bank.embeddings, torch.full((4, 2), 7.0))


BAD_ENQUEUES = [
    (lambda: ([[1.0, 2.0]], [1], None), TypeError, "embeddings"),
    (lambda: (torch.ones(2, 2, dtype=torch.int64), [1, 2], None), TypeError, "embeddings"),
    (lambda: (torch.ones(2, 3), [1, 2], None), ValueError, "embeddings"),
    (lambda: (torch.ones(2), [1, 2], None), ValueError, "embeddings"),
    (lambda: (torch.ones(0, 2), torch.empty(0, dtype=torch.int64), None), ValueError, "empty"),
    (lambda: (torch.ones(2, 2), [1, 2, 3], None), ValueError, "ids"),
    (lambda: (torch.ones(2, 2), [1, -2], None), ValueError, "ids"),
    (lambda: (torch.ones(2, 2), [1.0, 2.0], None), TypeError, "ids"),
    (lambda: (torch.ones(2, 2), [[1, 2]], None), ValueError, "ids"),
    (lambda: (torch.ones(2, 2), [1, 2], torch.zeros(3)), ValueError, "log_q"),
    (lambda: (torch.ones(2, 2), [1, 2], torch.zeros(2, dtype=torch.int64)), TypeError, "log_q"),
    (lambda: (torch.ones(2, 2, device="meta"), [1, 2], None), ValueError, "embeddings are on meta"),
    # Inputs torch can only reject once copying: all must be caught before the index moves.
    (lambda: (torch.ones(2, 2).to_sparse(), [1, 2], None), TypeError, "embeddings"),
    (lambda: (torch.ones(2, 2), [1, 2], torch.zeros(2).to_sparse()), TypeError, "log_q"),
    (lambda: (torch.ones(2, 2), [1, 2], torch.zeros(2, device="meta")), ValueError, "log_q"),
]


@pytest.mark.parametrize("make,error,match", BAD_ENQUEUES)
def test_bad_enqueue_leaves_the_bank_unchanged(make, error, match):
    bank = pyneg.MemoryBank(3, 2)
    bank.enqueue(torch.arange(4.0).reshape(2, 2), [10, 11], [-1.0, -2.0])
    before = bank.state_dict()
    with pytest.raises(error, match=match):
        bank.enqueue(*make())
    after = bank.state_dict()
    for key, value in before.items():
        assert same(after[key], value), key
    assert len(bank) == 2


def test_negative_bit_embeddings_are_stored_by_value():
    # A contiguous view with the negative bit set cannot take the raw byte copy;
    # it used to fail only after the index had recorded the batch.
    bank = pyneg.MemoryBank(3, 2)
    bank.enqueue(torch.arange(4.0).reshape(2, 2), [10, 11], [-1.0, -2.0])
    x = torch.tensor([[1.0, 2.0]])
    bank.enqueue(torch._neg_view(x), [12], [-3.0])
    assert bank.ids.tolist() == [10, 11, 12] and bank.log_q.tolist() == [-1.0, -2.0, -3.0]
    assert torch.equal(bank.embeddings[-1], -x[0])


@pytest.mark.parametrize("rows", [slice(0, 3), slice(1, 3), slice(0, 4)])
def test_enqueue_of_the_banks_own_entries(rows):
    # Re-enqueueing what negatives() returned (views of the bank's storage)
    # must copy the values as they were, not read rows the same call has
    # already overwritten, and not fail halfway through the write.
    bank = pyneg.MemoryBank(4, 2)
    bank.enqueue(torch.arange(8.0).reshape(4, 2), [1, 2, 3, 4], [-1.0, -2.0, -3.0, -4.0])
    bank.enqueue(torch.full((1, 2), 9.0), [5], [-5.0])  # head moves to slot 1
    neg = bank.negatives()
    emb, ids, log_q = neg.embeddings[rows].clone(), neg.ids[rows].clone(), neg.log_q[rows].clone()
    ref = pyneg.MemoryBank(4, 2)
    ref.load_state_dict(bank.state_dict())
    ref.enqueue(emb, ids, log_q)
    bank.enqueue(neg.embeddings[rows], neg.ids[rows], neg.log_q[rows])
    for key, value in ref.state_dict().items():
        assert same(bank.state_dict()[key], value), key
    positives = torch.tensor([1, 2, 3, 4, 5])
    assert torch.equal(bank.hit_mask(positives), positives.unsqueeze(1) == bank.ids.unsqueeze(0))


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        (dict(capacity=0, dim=2), ValueError, "capacity"),
        (dict(capacity=-3, dim=2), ValueError, "capacity"),
        (dict(capacity=2**40, dim=2), ValueError, "capacity"),
        (dict(capacity=4, dim=0), ValueError, "dim"),
        (dict(capacity=4.0, dim=2), TypeError, "capacity"),
        (dict(capacity=4, dim=2, dtype=torch.int64), TypeError, "dtype"),
        (dict(capacity=4, dim=2, device="nowhere"), ValueError, "device"),
        (dict(capacity=4, dim=2, max_age=-1), ValueError, "max_age"),
        (dict(capacity=4, dim=2, warmup=-1), ValueError, "warmup"),
        (dict(capacity=4, dim=2, sync="yes"), TypeError, "sync"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        pyneg.MemoryBank(**kwargs)


def test_bad_positive_ids():
    bank = pyneg.MemoryBank(3, 2)
    bank.enqueue(torch.ones(1, 2), [1])
    with pytest.raises(ValueError, match="positive_ids"):
        bank.hit_mask([-1])
    with pytest.raises(TypeError, match="positive_ids"):
        bank.negatives([0.5])


def test_to_device(device):
    bank = pyneg.MemoryBank(3, 2)
    bank.enqueue(torch.ones(2, 2), [1, 2], [-0.5, -0.25])
    moved = bank.to(device)
    assert moved is bank and bank.device.type == device
    assert bank.embeddings.device.type == device and bank.hit_mask([1]).device.type == device
    bank.enqueue(torch.zeros(2, 2, device=device), torch.tensor([3, 1], device=device))
    assert bank.ids.tolist() == [2, 3, 1] and bank.hit_mask([1]).tolist() == [[False, False, True]]


def test_lookup_survives_heavy_churn():
    # Many ids, long chains and constant eviction exercise the id -> slots
    # table's deletions; every hit list must still match brute force.
    rng = np.random.default_rng(11)
    bank = pyneg.MemoryBank(500, 1, max_age=6)
    for _ in range(40):
        n = int(rng.integers(1, 300))
        ids = torch.from_numpy(np.where(rng.random(n) < 0.5, rng.integers(0, 40, n), rng.integers(0, 10**12, n)))
        bank.enqueue(torch.zeros(n, 1), ids)
        pos = torch.cat([ids[:50], torch.from_numpy(rng.integers(0, 40, 20))])
        assert torch.equal(bank.hit_mask(pos), pos.unsqueeze(1) == bank.ids.unsqueeze(0))
        assert_negatives_consistent(bank, pos)


def test_hit_mask_of_no_positives_is_empty():
    # An empty bank asked about its own (empty) ids: a (0, 0) mask, not a reshape error.
    bank = pyneg.MemoryBank(4, 2)
    assert bank.hit_mask(bank.ids).shape == (0, 0)
    bank.enqueue(torch.zeros(3, 2), torch.tensor([1, 2, 1]))
    assert bank.hit_mask(torch.empty(0, dtype=torch.int64)).shape == (0, 3)
