"""GPU workloads (registered only when ``pyneg.cuda_available()``).

Alias draws with pyneg's CUDA kernels against ``torch.multinomial`` on the same
GPU, and hierarchical softmax forward + backward against a plain PyTorch
gather implementation on the same GPU. Every timed function synchronises the
device, so wall-clock times are the GPU's.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

import pyneg
from pyneg import cuda
from pyneg._hsoftmax_reference import gather_nll, padded_paths
from pyneg.bench.sampling import assert_follows, zipf_counts
from pyneg.bench.workload import Target, Workload
from pyneg.cuda import cuda_available
from pyneg.hsoftmax import HuffmanTree


def balanced_tree(num_classes: int, device: Any = "cpu") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flat layout (offsets, nodes, codes) of the Huffman tree of equal counts.

    A balanced tree (depths differ by at most one) built by HuffmanTree, in
    the layout the kernels read, on ``device``.
    """
    tree = HuffmanTree.from_counts(np.ones(num_classes))
    return tuple(t.to(device) for t in (tree.path_offsets, tree.path_nodes, tree.path_codes))  # type: ignore[return-value]


def hs_gather_reference(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
) -> torch.Tensor:
    """Per-example NLL with plain PyTorch: the gather path of HierarchicalSoftmax (every path
    padded to the longest, gathered, masked), padding included in the call."""
    paths = padded_paths(offsets, nodes, codes, dtype=input.dtype, device=input.device)
    return gather_nll(input, target, weight, bias, paths)


# ----------------------------------------------------------------- draws
def _draw_setup(quick: bool) -> SimpleNamespace:
    v, n = (10**7, 10**8) if not quick else (10**6, 10**7)
    sampler = pyneg.UnigramSampler(zipf_counts(v), power=0.75)
    dev = torch.device("cuda")
    st = SimpleNamespace(
        sampler=sampler,
        v=v,
        n=n,
        probs=sampler.probs,
        seed=[0],
        probs32=sampler.probs.to(device=dev, dtype=torch.float32),
        out=torch.empty(n, dtype=torch.int64, device=dev),
    )
    sampler.sample(1, seed=0, device=dev)  # upload the table once (not timed)
    return st


def _pyneg_draw(st: SimpleNamespace) -> torch.Tensor:
    st.seed[0] += 1
    res = st.sampler.sample(st.n, seed=st.seed[0], out=st.out)
    torch.cuda.synchronize()
    return res


def _multinomial(st: SimpleNamespace) -> torch.Tensor:
    res = torch.multinomial(st.probs32, st.n, replacement=True)
    torch.cuda.synchronize()
    return res


def _check_draws(st: SimpleNamespace, result: torch.Tensor, baselines: Dict[str, Any]) -> None:
    assert result.device.type == "cuda" and result.numel() == st.n
    head = result[: 2 * 10**6].cpu()
    assert_follows(head, st.probs)
    assert_follows(baselines["torch.multinomial (GPU)"][: 2 * 10**6], st.probs)
    # Bit-identical to the CPU kernels for the same seed and positions.
    assert torch.equal(head[: 10**5], st.sampler.sample(10**5, seed=st.seed[0]))


# ------------------------------------------------------ hierarchical softmax
def _hs_setup(quick: bool) -> SimpleNamespace:
    v, b, d = (10**5, 4096, 128) if not quick else (10**4, 1024, 64)
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    offsets, nodes, codes = balanced_tree(v, dev)
    return SimpleNamespace(
        offsets=offsets,
        nodes=nodes,
        codes=codes,
        b=b,
        v=v,
        x=torch.randn(b, d, device=dev, generator=g),
        w=0.1 * torch.randn(v - 1, d, device=dev, generator=g),
        target=torch.randint(0, v, (b,), device=dev, generator=g),
        grad=torch.ones(b, device=dev) / b,
    )


def _pyneg_hs(st: SimpleNamespace) -> Tuple[torch.Tensor, ...]:
    nll = cuda.hs_forward(st.x, st.w, st.target, st.offsets, st.nodes, st.codes)
    gx, gw, _ = cuda.hs_backward(st.grad, st.x, st.w, st.target, st.offsets, st.nodes, st.codes)
    torch.cuda.synchronize()
    return nll, gx, gw


def _gather_hs(st: SimpleNamespace) -> Tuple[torch.Tensor, ...]:
    x = st.x.detach().requires_grad_()
    w = st.w.detach().requires_grad_()
    nll = hs_gather_reference(x, w, None, st.target, st.offsets, st.nodes, st.codes)
    nll.backward(st.grad)
    torch.cuda.synchronize()
    return nll.detach(), x.grad, w.grad


def _check_hs(st: SimpleNamespace, result: Tuple[torch.Tensor, ...], baselines: Dict[str, Any]) -> None:
    for ours, ref in zip(result, baselines["PyTorch gather (GPU)"]):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


WORKLOADS = [
    Workload(
        name="cuda_alias_draw_V1e7",
        group="cuda",
        description="GPU: 10^8 draws from unigram^0.75 over V = 10^7, out= reused",
        setup=_draw_setup,
        run=_pyneg_draw,
        baselines={"torch.multinomial (GPU)": _multinomial},
        check=_check_draws,
        items=lambda st: st.n,
        # DESIGN also quotes >= 10 G draws/s on an H100: an absolute rate, shown as throughput, not judged.
        targets=(Target("ratio", 20, "torch.multinomial (GPU)"),),
        target_size={"V": 10**7, "draws": 10**8},
        size=lambda st: {"V": st.v, "draws": st.n},
        available=cuda_available,
    ),
    Workload(
        name="cuda_hsoftmax_fwd_bwd",
        group="cuda",
        description="GPU: hierarchical softmax forward + backward, B = 4096, d = 128, V = 10^5",
        setup=_hs_setup,
        run=_pyneg_hs,
        baselines={"PyTorch gather (GPU)": _gather_hs},
        check=_check_hs,
        items=lambda st: st.b,
        targets=(Target("ratio", 2, "PyTorch gather (GPU)"),),
        target_size={"B": 4096, "d": 128, "V": 10**5},
        size=lambda st: {"B": st.b, "d": int(st.x.shape[1]), "V": st.v},
        available=cuda_available,
    ),
]
