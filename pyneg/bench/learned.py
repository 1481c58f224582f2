"""Learned unigram sampling: counts updated from each step's true classes, negatives drawn from them.

One timed call is ``STEPS`` training steps, each adding a batch of 4,096 true
ids to the counts and drawing 4,096 x 20 negatives. pyneg's
:class:`~pyneg.LearnedUnigramSampler` rebuilds its alias table once per call
(``rebuild_every = STEPS``, so the O(V) build is inside every timed call, not
left out of the median). Baselines: an :class:`~pyneg.AliasSampler` rebuilt
from the counts at every step (exact, but O(V) per step) and
``torch.multinomial`` on the counts (a CDF rebuilt at every draw).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict

import numpy as np
import torch

import pyneg
from pyneg.bench.sampling import assert_follows, zipf_counts
from pyneg.bench.workload import Workload

STEPS = 10
BATCH = 4096
SHAPE = (4096, 20)
REBUILD_EACH_STEP = "AliasSampler rebuilt each step"
MULTINOMIAL = "torch.multinomial on the counts"


def _setup(quick: bool) -> SimpleNamespace:
    v = 10**6 if not quick else 10**5
    rng = np.random.default_rng(0)
    p = zipf_counts(v)
    p /= p.sum()
    # A pool of true-id batches cycled through: the stream's cost is not timed.
    pool = [torch.from_numpy(rng.choice(v, size=BATCH, p=p)) for _ in range(2 * STEPS)]
    return SimpleNamespace(
        v=v,
        pool=pool,
        step=[0],
        sampler=pyneg.LearnedUnigramSampler(v, rebuild_every=STEPS),
        counts_alias=torch.ones(v, dtype=torch.float64),
        counts_multi=torch.ones(v, dtype=torch.float64),
    )


def _next_ids(st: SimpleNamespace) -> torch.Tensor:
    st.step[0] += 1
    return st.pool[st.step[0] % len(st.pool)]


def _pyneg(st: SimpleNamespace) -> torch.Tensor:
    for _ in range(STEPS):
        ids = _next_ids(st)
        st.sampler.update(ids)
        out = st.sampler.sample(SHAPE, seed=st.step[0])
    return out


def _alias_each_step(st: SimpleNamespace) -> Any:
    for _ in range(STEPS):
        ids = _next_ids(st)
        st.counts_alias.index_add_(0, ids, torch.ones(ids.numel(), dtype=torch.float64))
        sampler = pyneg.AliasSampler(st.counts_alias)
        out = sampler.sample(SHAPE, seed=st.step[0])
    return out, st.counts_alias / st.counts_alias.sum()


def _multinomial(st: SimpleNamespace) -> Any:
    for _ in range(STEPS):
        ids = _next_ids(st)
        st.counts_multi.index_add_(0, ids, torch.ones(ids.numel(), dtype=torch.float64))
        out = torch.multinomial(st.counts_multi, SHAPE[0] * SHAPE[1], replacement=True).view(SHAPE)
    return out, st.counts_multi / st.counts_multi.sum()


def _check(st: SimpleNamespace, result: torch.Tensor, baselines: Dict[str, Any]) -> None:
    assert result.shape == SHAPE and result.dtype == torch.int64
    assert st.sampler.pending_updates == 0  # a call ends on a rebuild: probs are the live counts'
    # The table's resolution (docs/guide/samplers.md, "Exactness"): within 2**-33 / V + 2**-39 p.
    want = st.sampler.counts / st.sampler.counts.sum()
    torch.testing.assert_close(st.sampler.probs, want, rtol=2**-38, atol=2**-32)
    assert_follows(result, st.sampler.probs)
    for draws, probs in baselines.values():
        assert_follows(draws, probs)


WORKLOADS = [
    Workload(
        name="learned_unigram_step_V1e6",
        group="sampling",
        description=f"{STEPS} steps of (add 4096 true ids to the counts, draw 4096 x 20), V = 10^6",
        setup=_setup,
        run=_pyneg,
        baselines={REBUILD_EACH_STEP: _alias_each_step, MULTINOMIAL: _multinomial},
        check=_check,
        items=STEPS * SHAPE[0] * SHAPE[1],
        target_size={"V": 10**6, "steps": STEPS, "shape": list(SHAPE)},
        size=lambda st: {"V": st.v, "steps": STEPS, "shape": list(SHAPE)},
    ),
]
