"""Memory-bank workloads: pyneg's in-place queue and streaming frequency
estimator against what users would otherwise write.

Baselines: a MoCo-style queue that appends with ``torch.cat`` and keeps the
last M rows (allocates and copies the whole queue every step), and a
vectorised NumPy transcription of the frequency estimator's update (hashes,
``np.unique`` for the once-per-step rule, fancy-indexed updates).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict

import numpy as np
import torch

import pyneg
from pyneg.bench.sampling import zipf_counts
from pyneg.bench.workload import Target, Workload

# ----------------------------------------------------------------- the queue
_QUEUE_BATCHES = 3  # distinct batches cycled through, so consecutive writes differ


def _queue_setup(capacity: int, dim: int, batch: int):
    def setup(quick: bool) -> SimpleNamespace:
        g = torch.Generator().manual_seed(0)
        fill = torch.randn(capacity, dim, generator=g)
        fill_ids = torch.randint(0, 10**6, (capacity,), generator=g)
        fill_lq = -torch.rand(capacity, generator=g)
        st = SimpleNamespace(capacity=capacity, batch=batch, calls={"pyneg": 0, "cat": 0})
        st.batches = [
            (
                torch.randn(batch, dim, generator=g),
                torch.randint(0, 10**6, (batch,), generator=g),
                -torch.rand(batch, generator=g),
            )
            for _ in range(_QUEUE_BATCHES)
        ]
        st.bank = pyneg.MemoryBank(capacity, dim)
        st.bank.enqueue(fill, fill_ids, fill_lq)
        st.queue = (fill.clone(), fill_ids.clone(), fill_lq.clone())
        return st

    return setup


def _next_batch(st: SimpleNamespace, who: str, batches=None):
    """``who``'s next batch: each implementation cycles through the batches on its own count."""
    batches = st.batches if batches is None else batches
    k = st.calls[who]
    st.calls[who] = k + 1
    return batches[k % len(batches)]


def _pyneg_enqueue(st: SimpleNamespace) -> pyneg.MemoryBank:
    emb, ids, log_q = _next_batch(st, "pyneg")
    st.bank.enqueue(emb, ids, log_q)
    return st.bank


def _cat_and_slice(st: SimpleNamespace):
    emb, ids, log_q = _next_batch(st, "cat")
    m = st.capacity
    st.queue = tuple(torch.cat([old, new.detach()])[-m:] for old, new in zip(st.queue, (emb, ids, log_q)))
    return st.queue


def _check_queue(st: SimpleNamespace, result: pyneg.MemoryBank, baselines: Dict[str, Any]) -> None:
    # Both hold the batch they wrote last as their newest rows...
    emb, ids, _ = st.batches[(st.calls["pyneg"] - 1) % len(st.batches)]
    assert torch.equal(result.embeddings[-st.batch :], emb) and torch.equal(result.ids[-st.batch :], ids)
    emb, ids, _ = st.batches[(st.calls["cat"] - 1) % len(st.batches)]
    queue = baselines["torch.cat + slice (MoCo-style)"]
    assert len(result) == queue[0].shape[0] == st.capacity
    assert torch.equal(queue[0][-st.batch :], emb) and torch.equal(queue[1][-st.batch :], ids)
    # ...and, fed the same batches from the same start, the same queue.
    fresh = _queue_setup(st.capacity, result.dim, st.batch)(True)
    for _ in range(_QUEUE_BATCHES + 1):
        bank = _pyneg_enqueue(fresh)
        queue = _cat_and_slice(fresh)
    assert torch.equal(bank.embeddings, queue[0]) and torch.equal(bank.ids, queue[1])
    assert torch.equal(bank.log_q, queue[2])


# --------------------------------------------------- the frequency estimator
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _numpy_buckets(ids: np.ndarray, k: int, num_buckets: int) -> np.ndarray:
    """pyneg's hash k (splitmix64 of id + (k + 1) * golden gamma) and range reduction, in uint64 NumPy."""
    z = ids.astype(np.uint64) + np.uint64(((k + 1) * _GOLDEN) & _MASK64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    # floor(z * n / 2^64) from 32-bit halves: exact, and no term exceeds 2^63 for n < 2^31.
    n = np.uint64(num_buckets)
    hi, lo = z >> np.uint64(32), z & np.uint64(0xFFFFFFFF)
    return ((hi * n + ((lo * n) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


class NumpyFrequencyEstimator:
    """The estimator's update written with vectorised NumPy (the baseline)."""

    def __init__(self, num_buckets: int, alpha: float = 0.01, num_hashes: int = 2) -> None:
        self.num_buckets, self.alpha = num_buckets, alpha
        self.last = np.zeros((num_hashes, num_buckets))
        self.gap = np.zeros((num_hashes, num_buckets))
        self.step = 0

    def update(self, ids: np.ndarray) -> None:
        self.step += 1
        t = float(self.step)
        for k in range(self.last.shape[0]):
            b = np.unique(_numpy_buckets(ids, k, self.num_buckets))  # once per step
            last = self.last[k, b]
            blended = (1.0 - self.alpha) * self.gap[k, b] + self.alpha * (t - last)
            self.gap[k, b] = np.where(last == 0, t, blended)
            self.last[k, b] = t


def _freq_setup(num_buckets: int, batch: int):
    def setup(quick: bool) -> SimpleNamespace:
        sampler = pyneg.UnigramSampler(zipf_counts(10**6), power=1.0)
        batches = [sampler.sample(batch, seed=s) for s in range(16)]
        return SimpleNamespace(
            num_buckets=num_buckets,
            batch=batch,
            batches=batches,
            calls={"pyneg": 0, "np": 0},
            est=pyneg.FrequencyEstimator(num_buckets),
            np_est=NumpyFrequencyEstimator(num_buckets),
            np_batches=[b.numpy() for b in batches],
        )

    return setup


def _pyneg_update(st: SimpleNamespace) -> pyneg.FrequencyEstimator:
    st.est.update(_next_batch(st, "pyneg"))
    return st.est


def _numpy_update(st: SimpleNamespace) -> NumpyFrequencyEstimator:
    st.np_est.update(_next_batch(st, "np", st.np_batches))
    return st.np_est


def _check_freq(st: SimpleNamespace, result: pyneg.FrequencyEstimator, baselines: Dict[str, Any]) -> None:
    assert result.step == st.calls["pyneg"] and baselines["NumPy vectorised update"].step == st.calls["np"]
    # Fed the same stream from scratch, pyneg and the NumPy update agree bit for bit.
    ours, theirs = pyneg.FrequencyEstimator(st.num_buckets), NumpyFrequencyEstimator(st.num_buckets)
    for b in st.batches[:5]:
        ours.update(b)
        theirs.update(b.numpy())
    sd = ours.state_dict()
    assert np.array_equal(sd["gap"].numpy(), theirs.gap) and np.array_equal(sd["last_step"].numpy(), theirs.last)


WORKLOADS = [
    Workload(
        name="queue_enqueue_M65536",
        group="memory",
        description="enqueue 1,024 x 128 float32 (+ ids, log q) into a full 65,536-entry queue",
        setup=_queue_setup(65_536, 128, 1_024),
        run=_pyneg_enqueue,
        baselines={"torch.cat + slice (MoCo-style)": _cat_and_slice},
        check=_check_queue,
        items=1_024,
        targets=(Target("ratio", 20, "torch.cat + slice (MoCo-style)"),),
        target_size={"M": 65_536, "d": 128, "B": 1_024},
        size=lambda st: {"M": st.capacity, "d": st.bank.dim, "B": st.batch},
    ),
    Workload(
        name="freq_update_4096",
        group="memory",
        description="FrequencyEstimator.update of 4,096 Zipfian ids, 2 hashes x 2^20 buckets",
        setup=_freq_setup(1 << 20, 4_096),
        run=_pyneg_update,
        baselines={"NumPy vectorised update": _numpy_update},
        check=_check_freq,
        items=4_096,  # no DESIGN target: the speed-up over NumPy is shown for information
    ),
]
