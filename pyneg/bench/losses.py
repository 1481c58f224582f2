"""Loss workloads: pyneg's softmax losses against a naive implementation.

The naive baseline is what a training script would write by hand: concatenate
every candidate, materialise the full (B, B + M) logit matrix, subtract log q,
mask with ``masked_fill`` and call ``F.cross_entropy``; autograd keeps each
intermediate for the backward pass. Each call is one forward and backward pass;
``check`` asserts that the losses and gradients agree.

Every loss workload also reports peak memory in the ``python -m pyneg.bench``
table (``measure_memory``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import pyneg.functional as PF
from pyneg.bench.workload import Workload

TEMPERATURE = 0.05
CHUNK = PF.DEFAULT_CHUNK_SIZE


def _setup(batch: int, bank: int, dim: int, quick_sizes: Tuple[int, int, int]):
    def setup(quick: bool) -> SimpleNamespace:
        b, m, d = quick_sizes if quick else (batch, bank, dim)
        g = torch.Generator().manual_seed(0)
        num_items = 4 * (b + m)
        # Zipf-like item ids: frequent items recur, so accidental hits happen.
        item_p = 1.0 / torch.arange(1, num_items + 1, dtype=torch.float64)
        item_p /= item_p.sum()
        ids = torch.multinomial(item_p, b + m, replacement=True, generator=g)
        log_q = torch.log(item_p[ids] * b).float()
        st = SimpleNamespace(
            b=b,
            m=m,
            d=d,
            query=F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_(),
            cand=F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_(),
            bank=F.normalize(torch.randn(m, d, generator=g), dim=1),  # detached, as a memory bank holds it
            ids=ids[:b],
            bank_ids=ids[b:],
            log_q=log_q[:b],
            bank_log_q=log_q[b:],
        )
        return st

    return setup


def _fwd_bwd(loss_fn: Callable[[SimpleNamespace], torch.Tensor]) -> Callable[[SimpleNamespace], Any]:
    """One training step's loss work: forward, backward, and the gradients it produced."""

    def run(st: SimpleNamespace):
        st.query.grad = st.cand.grad = None
        loss = loss_fn(st)
        loss.backward()
        return loss.detach(), st.query.grad, st.cand.grad

    return run


def _pyneg_mixed(chunk_size: Optional[int]):
    def loss(st: SimpleNamespace) -> torch.Tensor:
        sources = [PF.NegativeSource.batch(st.log_q), PF.NegativeSource(st.bank, st.bank_ids, st.bank_log_q)]
        return PF.mixed_negatives_loss(
            st.query,
            st.cand,
            sources,
            positive_ids=st.ids,
            positive_log_q=st.log_q,
            temperature=TEMPERATURE,
            chunk_size=chunk_size,
        )

    return loss


def _naive_mixed(st: SimpleNamespace) -> torch.Tensor:
    """Batch + bank as one logit matrix, label i: the textbook cross-batch loss."""
    cols = torch.cat([st.cand, st.bank])
    logits = st.query @ cols.t() / TEMPERATURE - torch.cat([st.log_q, st.bank_log_q])
    col_ids = torch.cat([st.ids, st.bank_ids])
    hit = st.ids.unsqueeze(1) == col_ids.unsqueeze(0)
    hit[:, : st.b].fill_diagonal_(False)
    return F.cross_entropy(logits.masked_fill(hit, float("-inf")), torch.arange(st.b))


def _pyneg_in_batch(chunk_size: Optional[int]):
    def loss(st: SimpleNamespace) -> torch.Tensor:
        return PF.in_batch_softmax_loss(
            st.query, st.cand, log_q=st.log_q, candidate_ids=st.ids, temperature=TEMPERATURE, chunk_size=chunk_size
        )

    return loss


def _naive_in_batch(st: SimpleNamespace) -> torch.Tensor:
    logits = st.query @ st.cand.t() / TEMPERATURE - st.log_q
    hit = st.ids.unsqueeze(1) == st.ids.unsqueeze(0)
    hit.fill_diagonal_(False)
    return F.cross_entropy(logits.masked_fill(hit, float("-inf")), torch.arange(st.b))


def _check(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    for name, other in baselines.items():
        for what, a, b in zip(("loss", "query grad", "candidate grad"), result, other):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()) + 1e-9), (
                f"pyneg and {name} disagree on the {what}: max diff {float((a - b).abs().max()):.3g}"
            )


NAIVE = "naive (full logits + cross_entropy)"


def _loss_workload(
    name: str,
    description: str,
    bank: int,
    quick_bank: int,
    pyneg_loss: Callable[[SimpleNamespace], torch.Tensor],
    naive_loss: Callable[[SimpleNamespace], torch.Tensor],
) -> Workload:
    """B = 4,096 queries (512 quick), d = 128 (64 quick), ``bank`` bank rows; fwd + bwd, peak memory."""
    return Workload(
        name=name,
        group="losses",
        description=description,
        setup=_setup(4096, bank, 128, (512, quick_bank, 64)),
        run=_fwd_bwd(pyneg_loss),
        baselines={NAIVE: _fwd_bwd(naive_loss)},
        check=_check,
        items=lambda st: st.b,
        measure_memory=True,
    )


WORKLOADS: List[Workload] = [
    _loss_workload(
        "mixed_bank_B4096_M65536",
        "in-batch + 65,536-entry bank, logQ + hit masking, fwd+bwd (d=128), chunk_size=None",
        65536,
        4096,
        _pyneg_mixed(None),
        _naive_mixed,
    ),  # chunk_size=None: every column at once
    _loss_workload(
        "mixed_bank_B4096_M65536_chunked",
        f"same, chunk_size={CHUNK} (the default: bank scored {CHUNK} columns at a time)",
        65536,
        4096,
        _pyneg_mixed(CHUNK),
        _naive_mixed,
    ),
    _loss_workload(
        "in_batch_B4096",
        "in-batch softmax, logQ + hit masking, fwd+bwd (d=128)",
        0,
        0,
        _pyneg_in_batch(None),
        _naive_in_batch,
    ),
]


# ------------------------------------------------ sampled losses, several positives
# TensorFlow-style sampled losses: B = 4,096 rows with T = 4 positives each, 8,192
# shared sampled negatives, d = 128, hits removed; the baseline is the same formula
# in plain PyTorch (full (B, T + S) logit matrix, masked_fill, then the softmax or
# sigmoid cross-entropy), as a training script would write it.
NUM_TRUE = 4


def _sampled_setup(quick: bool) -> SimpleNamespace:
    b, s, d = (512, 1024, 64) if quick else (4096, 8192, 128)
    g = torch.Generator().manual_seed(1)
    v = 4 * s
    labels = torch.randint(0, v // 8, (b, NUM_TRUE), generator=g)  # frequent labels: hits happen
    sampled = torch.randperm(v, generator=g)[:s]
    return SimpleNamespace(
        b=b,
        query=F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_(),
        pos=F.normalize(torch.randn(b, NUM_TRUE, d, generator=g), dim=2).requires_grad_(),
        neg=F.normalize(torch.randn(s, d, generator=g), dim=1).requires_grad_(),
        labels=labels,
        sampled=sampled,
        pos_lq=torch.log(torch.rand(b, NUM_TRUE, generator=g) * 0.01 + 1e-4),
        neg_lq=torch.log(torch.rand(s, generator=g) * 0.01 + 1e-4),
    )


def _sampled_fwd_bwd(loss_fn: Callable[[SimpleNamespace], torch.Tensor]) -> Callable[[SimpleNamespace], Any]:
    def run(st: SimpleNamespace):
        st.query.grad = st.pos.grad = st.neg.grad = None
        loss = loss_fn(st)
        loss.backward()
        return loss.detach(), st.query.grad, st.pos.grad, st.neg.grad

    return run


def _pyneg_sampled(fn: Callable[..., torch.Tensor]) -> Callable[[SimpleNamespace], torch.Tensor]:
    def loss(st: SimpleNamespace) -> torch.Tensor:
        return fn(
            st.query,
            st.pos,
            st.neg,
            positive_log_q=st.pos_lq,
            negative_log_q=st.neg_lq,
            positive_ids=st.labels,
            negative_ids=st.sampled,
            temperature=TEMPERATURE,
        )

    return loss


def _naive_sampled_logits(st: SimpleNamespace) -> Tuple[torch.Tensor, torch.Tensor]:
    pos = (st.query.unsqueeze(1) * st.pos).sum(-1) / TEMPERATURE - st.pos_lq
    neg = st.query @ st.neg.t() / TEMPERATURE - st.neg_lq
    hit = (st.labels.unsqueeze(-1) == st.sampled.view(1, 1, -1)).any(1)
    # TensorFlow's -FLOAT_MAX rather than -inf: soft-label cross-entropy gives 0 · −inf = NaN.
    return pos, neg.masked_fill(hit, torch.finfo(neg.dtype).min)


def _naive_sampled_softmax(st: SimpleNamespace) -> torch.Tensor:
    pos, neg = _naive_sampled_logits(st)
    labels = torch.cat([torch.full_like(pos, 1.0 / NUM_TRUE), torch.zeros_like(neg)], 1)
    return F.cross_entropy(torch.cat([pos, neg], 1), labels)


def _naive_nce(st: SimpleNamespace) -> torch.Tensor:
    pos, neg = _naive_sampled_logits(st)
    z = torch.full_like(pos, 1.0 / NUM_TRUE)
    per_row = F.binary_cross_entropy_with_logits(pos, z, reduction="none").sum(1) + F.softplus(neg).sum(1)
    return per_row.mean()


def _sampled_check(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    for name, other in baselines.items():
        for what, a, b in zip(("loss", "query grad", "positive grad", "negative grad"), result, other, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-9), (
                f"pyneg and {name} disagree on the {what}: max diff {float((a - b).abs().max()):.3g}"
            )


def _sampled_workload(name: str, description: str, fn, naive) -> Workload:
    return Workload(
        name=name,
        group="losses",
        description=description,
        setup=_sampled_setup,
        run=_sampled_fwd_bwd(_pyneg_sampled(fn)),
        baselines={"plain PyTorch (full logits)": _sampled_fwd_bwd(naive)},
        check=_sampled_check,
        items=lambda st: st.b,
        measure_memory=True,
    )


WORKLOADS += [
    _sampled_workload(
        "nce_B4096_T4_S8192",
        "NCE, 4 positives/row, 8,192 shared negatives, hits removed, fwd+bwd (d=128)",
        PF.nce_loss,
        _naive_nce,
    ),
    _sampled_workload(
        "sampled_softmax_B4096_T4_S8192",
        "sampled softmax, 4 positives/row, 8,192 shared negatives, hits removed, fwd+bwd (d=128)",
        PF.sampled_softmax_loss,
        _naive_sampled_softmax,
    ),
]
