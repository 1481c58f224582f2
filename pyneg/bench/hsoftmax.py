"""Hierarchical-softmax workloads: pyneg's Huffman tree and HS kernels against
what users would otherwise write.

Baselines (defined once, in :mod:`pyneg._hsoftmax_reference`): a textbook
``heapq`` Huffman builder; hierarchical softmax in pure PyTorch over padded
paths (``F.embedding`` gather, ``bmm``, ``logsigmoid``); and the full softmax
(``F.cross_entropy`` over all V logits) that hierarchical softmax replaces.

The forward + backward workloads also report peak memory in the
``python -m pyneg.bench`` table (``measure_memory``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F

import pyneg
from pyneg._hsoftmax_reference import gather_nll, heapq_huffman_depths
from pyneg.bench.sampling import zipf_counts
from pyneg.bench.workload import Target, Workload

GATHER = "PyTorch gather (padded paths)"
FULL_SOFTMAX = "full softmax (F.cross_entropy)"


# ---------------------------------------------------------------- tree build
def _build_setup(quick: bool) -> SimpleNamespace:
    v = 10**6 if not quick else 10**5
    return SimpleNamespace(counts=zipf_counts(v), v=v)


def _pyneg_build(st: SimpleNamespace) -> pyneg.HuffmanTree:
    return pyneg.HuffmanTree.from_counts(st.counts)


def _heapq_build(st: SimpleNamespace) -> np.ndarray:
    return heapq_huffman_depths(st.counts)


def _check_build(st: SimpleNamespace, tree: pyneg.HuffmanTree, baselines: Dict[str, Any]) -> None:
    ours = float((st.counts * tree.depths.numpy()).sum())
    theirs = float((st.counts * baselines["heapq builder"]).sum())
    assert ours == theirs, f"weighted path length {ours} != heapq's {theirs}"
    assert tree.num_classes == st.v and int(tree.path_offsets[-1]) == int(tree.depths.sum())


# ------------------------------------------------------ forward + backward
def _hs_setup(v: int, batch: int, dim: int, *, sparse: bool):
    def setup(quick: bool) -> SimpleNamespace:
        vv, b = (v, batch) if not quick else (min(v, 10**4), min(batch, 1024))
        counts = zipf_counts(vv)
        gen = torch.Generator().manual_seed(0)
        hs = pyneg.HierarchicalSoftmax(counts, dim, sparse=sparse)
        with torch.no_grad():
            hs.weight.normal_(0, 0.1, generator=gen)
        rng = np.random.default_rng(1)
        # Targets drawn from the counts, as a training batch's would be.
        target = torch.from_numpy(rng.choice(vv, size=b, p=counts / counts.sum()))
        x = torch.randn(b, dim, generator=gen).requires_grad_()
        return SimpleNamespace(
            hs=hs,
            paths=hs.tree.padded_paths(torch.float32),
            x=x,
            target=target,
            weight=hs.weight,
            sparse=sparse,
            batch=b,
            v=vv,
        )

    return setup


def _pyneg_fwd_bwd(st: SimpleNamespace):
    loss = st.hs(st.x, st.target, reduction="sum")
    return (loss,) + torch.autograd.grad(loss, [st.x, st.weight])


def _gather_fwd_bwd(st: SimpleNamespace):
    loss = gather_nll(st.x, st.target, st.weight, None, st.paths, sparse=st.sparse).sum()
    return (loss,) + torch.autograd.grad(loss, [st.x, st.weight])


def _check_fwd_bwd(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    loss, gx, gw = result
    bloss, bgx, bgw = baselines[GATHER]
    assert torch.allclose(loss, bloss, rtol=1e-4), (float(loss), float(bloss))
    assert torch.allclose(gx, bgx, rtol=1e-3, atol=1e-5)
    if st.sparse:
        assert gw.is_sparse
        gw, bgw = gw.to_dense(), bgw.coalesce().to_dense()
    assert torch.allclose(gw, bgw, rtol=1e-3, atol=1e-5)


# --------------------------------------------------- versus a full softmax
def _softmax_setup(v: int, batch: int, dim: int):
    # HS with sparse gradients, as one trains it at this scale: only the rows
    # on the batch's paths change, while a full softmax's gradient is dense.
    def setup(quick: bool) -> SimpleNamespace:
        vv = v if not quick else v // 10
        st = _hs_setup(vv, batch, dim, sparse=True)(False)
        gen = torch.Generator().manual_seed(2)
        st.full_weight = (torch.randn(vv, dim, generator=gen) * 0.1).requires_grad_()
        return st

    return setup


def _full_softmax(st: SimpleNamespace):
    loss = F.cross_entropy(st.x @ st.full_weight.T, st.target, reduction="sum")
    return (loss,) + torch.autograd.grad(loss, [st.x, st.full_weight])


def _check_vs_softmax(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    # Two different models: check each against its own definition on a slice.
    loss, gx, gw = result
    ref = gather_nll(st.x, st.target, st.weight, None, st.paths).sum()
    assert torch.allclose(loss, ref, rtol=1e-4)
    assert gx.shape == st.x.shape and gw.shape == st.weight.shape and gw.is_sparse
    floss = baselines[FULL_SOFTMAX][0]
    logits = st.x.detach() @ st.full_weight.detach().T
    manual = (torch.logsumexp(logits, 1) - logits.gather(1, st.target[:, None]).squeeze(1)).sum()
    assert torch.allclose(floss, manual, rtol=1e-4)
    probs = st.hs.log_prob(st.x[:4].detach()).exp().sum(1)
    assert torch.allclose(probs, torch.ones(4), atol=1e-3)


def _hs_size(st: SimpleNamespace) -> Dict[str, int]:
    return {"B": st.batch, "d": int(st.x.shape[1]), "V": st.v}


def _fwd_bwd_workload(name: str, *, sparse: bool) -> Workload:
    """HS forward + backward against the gather version, B = 4096, d = 128, V = 10^5; peak memory."""
    return Workload(
        name=name,
        group="hsoftmax",
        description="HS loss forward + backward, B = 4096, d = 128, V = 10^5 "
        f"({'sparse' if sparse else 'dense'} grads)",
        setup=_hs_setup(10**5, 4096, 128, sparse=sparse),
        run=_pyneg_fwd_bwd,
        baselines={GATHER: _gather_fwd_bwd},
        check=_check_fwd_bwd,
        items=lambda st: st.batch,
        # DESIGN: >= 2x the gather version, with lower peak memory (dense gradients).
        targets=() if sparse else (Target("ratio", 2, GATHER), Target("peak_memory_ratio", 1, GATHER)),
        target_size={"B": 4096, "d": 128, "V": 10**5},
        size=_hs_size,
        measure_memory=True,
    )


def _small_call_workload() -> Workload:
    """HS forward + backward at B = 256 (one small training step) against the gather version.

    Sparse gradients, as one trains HS at V = 10^5: a dense (V - 1, d) gradient
    would make both sides' time the zeroing of 50 MB, not the per-call cost.
    """
    return Workload(
        name="hsoftmax_small_call_B256",
        group="hsoftmax",
        description="per-call overhead: HS loss forward + backward, B = 256, d = 128, V = 10^5 (sparse grads)",
        setup=_hs_setup(10**5, 256, 128, sparse=True),
        run=_pyneg_fwd_bwd,
        baselines={GATHER: _gather_fwd_bwd},
        check=_check_fwd_bwd,
        items=lambda st: st.batch,
        target_size={"B": 256, "d": 128, "V": 10**5},
        size=_hs_size,
    )


def _vs_softmax_workload(name: str, exp: int, batch: int) -> Workload:
    """Sparse HS against the full softmax it replaces, V = 10^exp, d = 128; peak memory."""
    return Workload(
        name=name,
        group="hsoftmax",
        description=f"sparse HS vs full softmax fwd + bwd, B = {batch}, d = 128, V = 10^{exp}",
        setup=_softmax_setup(10**exp, batch, 128),
        run=_pyneg_fwd_bwd,
        baselines={FULL_SOFTMAX: _full_softmax},
        check=_check_vs_softmax,
        items=lambda st: st.batch,
        measure_memory=True,
    )


WORKLOADS = [
    Workload(
        name="huffman_build_V1e6",
        group="hsoftmax",
        description="Huffman tree from 10^6 unsorted Zipfian counts",
        setup=_build_setup,
        run=_pyneg_build,
        baselines={"heapq builder": _heapq_build},
        check=_check_build,
        items=lambda st: st.v,
        targets=(Target("ratio", 20, "heapq builder"),),
        target_size={"V": 10**6},
        size=lambda st: {"V": st.v},
    ),
    _fwd_bwd_workload("hsoftmax_fwd_bwd_V1e5", sparse=False),
    _fwd_bwd_workload("hsoftmax_fwd_bwd_sparse_V1e5", sparse=True),
    _small_call_workload(),
    _vs_softmax_workload("hsoftmax_vs_softmax_V1e5", 5, 512),
    _vs_softmax_workload("hsoftmax_vs_softmax_V1e6", 6, 128),
]
