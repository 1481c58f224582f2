"""Negatives across ranks with ``torch.distributed``.

In-batch negatives should come from the global batch, not from each rank's
slice. :func:`all_gather_with_grad` concatenates a tensor over all ranks and
lets gradients flow back to the rank that owns each row; the other helpers
gather ids and probabilities (no gradient) and derive per-rank sampler seeds.

Without an initialised process group everything behaves as world size 1: the
functions return their input, so the same training code runs in one process.

Gradients: the backward of :func:`all_gather_with_grad` sums, over all ranks,
the gradient that each rank's loss sends to a row, and returns the owner's
part. With ``DistributedDataParallel`` (which averages parameter gradients over
ranks) a loss that is the mean over each rank's rows then has exactly the
gradient of the mean over the global batch in one process. When ranks hold
different numbers of rows ``b_r``, scale rank ``r``'s mean by
``b_r * world_size / B`` (``B`` the global batch) for the same equality.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from pyneg._validation import check_seed

__all__ = [
    "all_gather_with_grad",
    "all_gather",
    "rank_and_world_size",
    "rank_offset",
    "sampler_seed",
]


def rank_and_world_size(group: Optional[dist.ProcessGroup] = None) -> Tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_sizes(n: int, device: torch.device, group) -> List[int]:
    _, world = rank_and_world_size(group)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def _gather_padded(tensor: torch.Tensor, sizes: List[int], group) -> torch.Tensor:
    """all_gather along dim 0 for rows counts that may differ between ranks."""
    longest = max(sizes)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0],) + tuple(tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    else:
        padded = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
        rank, _ = rank_and_world_size(group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _gather_padded(tensor.detach(), sizes, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        # Every rank's loss may use every row: sum their gradients, keep ours.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start:ctx.stop], None


def _check_tensor(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (rows to gather)")


def all_gather_with_grad(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Concatenates ``tensor`` over all ranks along dim 0; gradients flow back.

    Rank ``r``'s rows come after those of ranks ``0..r-1`` (see
    :func:`rank_offset`); ranks may hold different numbers of rows. With no
    process group (or world size 1) returns ``tensor`` itself.
    """
    _check_tensor(tensor, "tensor")
    _, world = rank_and_world_size(group)
    if world == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, group)


def all_gather(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Concatenates ``tensor`` over all ranks along dim 0, without gradient (ids, log q)."""
    _check_tensor(tensor, "tensor")
    _, world = rank_and_world_size(group)
    if world == 1:
        return tensor
    sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
    return _gather_padded(tensor.detach(), sizes, group)


def rank_offset(num_rows: int, group: Optional[dist.ProcessGroup] = None, device=None) -> int:
    """Index of this rank's first row in the gathered global batch.

    Row ``i`` of this rank's queries has its positive at global column
    ``rank_offset(B) + i``: the label offset of in-batch losses on the global batch.
    """
    rank, world = rank_and_world_size(group)
    if world == 1:
        return 0
    dev = device if device is not None else ("cuda" if dist.get_backend(group) == "nccl" else "cpu")
    sizes = _gather_sizes(int(num_rows), torch.device(dev), group)
    return sum(sizes[:rank])


def sampler_seed(
    seed: Optional[int] = None,
    *,
    streams: str = "shared",
    generator: Optional[torch.Generator] = None,
    group: Optional[dist.ProcessGroup] = None,
) -> int:
    """A sampler seed for this rank.

    ``streams="shared"``: every rank gets the same seed, so ``sampler.sample(...,
    seed=s)`` gives the same negatives everywhere (e.g. negatives shared by the
    global batch). Without ``seed``, rank 0 draws one from ``generator`` (or
    torch's default generator) and broadcasts it.

    ``streams="disjoint"``: each rank gets its own stream, ``seed`` mixed with the
    rank (a splitmix64 step of ``seed + rank``), so ranks draw independent
    negatives that are still reproducible from one seed.
    """
    if streams not in ("shared", "disjoint"):
        raise ValueError(f"streams must be 'shared' or 'disjoint', got {streams!r}")
    from pyneg.samplers import draw_seed

    rank, world = rank_and_world_size(group)
    if seed is None:
        seed = draw_seed(generator)
        if world > 1:
            dev = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
            t = torch.tensor([seed], dtype=torch.int64, device=dev)
            dist.broadcast(t, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
            seed = int(t)
    seed = check_seed(seed)
    if streams == "shared":
        return seed
    return _splitmix64(seed + rank)


def _splitmix64(x: int) -> int:
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)
