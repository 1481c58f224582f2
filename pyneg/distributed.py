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

import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from pyneg._validation import check_int, check_seed

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


def _collective_device(group) -> torch.device:
    """Where collectives of ``group`` take their tensors: NCCL means a CUDA device."""
    return (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    )


def _raise_if_any_rank_failed(
    error: Optional[BaseException],
    group=None,
    device: Optional[torch.device] = None,
    flags: Optional[Dict[str, bool]] = None,
) -> None:
    """Makes a local failure everyone's: one small all-reduce, then every rank raises if any failed.

    Call it on every rank after the rank's own checks, with the exception they
    raised (any exception, not only ValueError) or None: the failing rank
    re-raises its own error, the others raise a ValueError saying that another
    rank failed. No rank is left waiting in a collective that the failing rank
    never joins. ``flags`` (name -> bool, the same names on every rank) must be
    equal on all ranks, e.g. which optional tensors a call will gather: ranks
    that disagree would run different collectives, so every rank raises a
    ValueError naming the flag instead. A no-op without a process group.
    """
    flags = flags or {}
    if len(flags) > 30:
        raise ValueError(f"at most 30 flags can be compared across ranks, got {len(flags)}")
    _, world = rank_and_world_size(group)
    if world > 1:
        dev = device if device is not None else _collective_device(group)
        # Fixed length whatever failed: a rank that failed before it knew its flags
        # sends the same three numbers. The masks agree on every rank exactly when
        # world * sum(mask^2) == sum(mask)^2 (Cauchy-Schwarz), which every rank sees.
        mask = sum(1 << i for i, on in enumerate(flags.values()) if on) if error is None else 0
        vec = torch.tensor([0 if error is None else 1, mask, mask * mask], dtype=torch.int64, device=dev)
        dist.all_reduce(vec, group=group)
        failed, total, squares = (int(v) for v in vec.tolist())
        if error is None and failed > 0:
            raise ValueError("another rank passed invalid input to this synchronised call (see its error)")
        if error is None and world * squares != total * total:
            raise ValueError(
                f"ranks disagree on which of {', '.join(flags)} they give: each must be given on every rank or on none"
            )
    if error is not None:
        raise error


def _fingerprint(tensor: torch.Tensor) -> int:
    """What must agree between ranks for a gather along dim 0: dtype and trailing shape."""
    return zlib.crc32(repr((str(tensor.dtype), tuple(tensor.shape[1:]))).encode())


def _exchange_sizes(n: int, fingerprint: int, error: Optional[BaseException], device: torch.device, group) -> List[int]:
    """Every rank's row count, gathered together with whether its checks passed and what it sends.

    One all-gather, as a plain size exchange would take: a rank whose checks
    failed, or ranks sending tensors that cannot be concatenated, make every
    rank raise instead of leaving some waiting in (or corrupting) the gather.
    """
    _, world = rank_and_world_size(group)
    mine = torch.tensor([0 if error is None else 1, n, fingerprint], dtype=torch.int64, device=device)
    parts = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    table = [[int(v) for v in p.tolist()] for p in parts]
    if error is not None:
        raise error
    if any(row[0] for row in table):
        raise ValueError("another rank passed an invalid tensor to this collective (see its error)")
    if len({row[2] for row in table}) > 1:
        raise ValueError(
            "ranks passed tensors of different dtypes or trailing shapes to a gather "
            "(every rank must send rows of the same dtype and shape)"
        )
    return [row[1] for row in table]


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
    def forward(ctx, tensor: torch.Tensor, group, sizes: List[int]) -> torch.Tensor:  # type: ignore[override]
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
        return grad[ctx.start : ctx.stop], None, None


def _check_tensor(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided or tensor.is_nested:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {tensor.layout}")
    if tensor.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor, which holds no data")
    if tensor.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (rows to gather)")


def _checked_sizes(tensor: torch.Tensor, group) -> List[int]:
    """Checks ``tensor`` on this rank and exchanges row counts; every rank raises if any rank's check failed."""
    error: Optional[BaseException] = None
    try:
        _check_tensor(tensor, "tensor")
    except Exception as e:
        error = e
    if error is None:
        return _exchange_sizes(tensor.shape[0], _fingerprint(tensor), None, tensor.device, group)
    return _exchange_sizes(0, 0, error, _collective_device(group), group)


def all_gather_with_grad(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Concatenates ``tensor`` over all ranks along dim 0; gradients flow back.

    Rank ``r``'s rows come after those of ranks ``0..r-1`` (see
    :func:`rank_offset`); ranks may hold different numbers of rows, but the
    same dtype and trailing shape. With no process group (or world size 1)
    returns ``tensor`` itself. A rank whose tensor is invalid (or whose dtype
    or shape differs from the others') makes every rank raise, promptly.
    """
    _, world = rank_and_world_size(group)
    if world == 1:
        _check_tensor(tensor, "tensor")
        return tensor
    sizes = _checked_sizes(tensor, group)  # raises on every rank, before the gather, if any rank's tensor is bad
    return _AllGatherWithGrad.apply(tensor, group, sizes)


def all_gather(tensor: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Concatenates ``tensor`` over all ranks along dim 0, without gradient (ids, log q).

    Same rules as :func:`all_gather_with_grad`: every rank raises when any rank's tensor is invalid.
    """
    _, world = rank_and_world_size(group)
    if world == 1:
        _check_tensor(tensor, "tensor")
        return tensor
    sizes = _checked_sizes(tensor, group)
    return _gather_padded(tensor.detach(), sizes, group)


def rank_offset(num_rows: int, group: Optional[dist.ProcessGroup] = None, device=None) -> int:
    """Index of this rank's first row in the gathered global batch.

    Row ``i`` of this rank's queries has its positive at global column
    ``rank_offset(B) + i``: the label offset of in-batch losses on the global batch.
    """
    rank, world = rank_and_world_size(group)
    if world == 1:
        check_int(num_rows, "num_rows", minimum=0)
        return 0
    error: Optional[BaseException] = None
    n = 0
    try:
        n = check_int(num_rows, "num_rows", minimum=0)
        dev = torch.device(device) if device is not None else _collective_device(group)
    except Exception as e:
        error, dev = e, _collective_device(group)
    sizes = _exchange_sizes(n, 0, error, dev, group)
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
    from pyneg.samplers import draw_seed

    rank, world = rank_and_world_size(group)
    if seed is None and world > 1:
        # Every rank draws (their generators stay in step), rank 0's draw is
        # shared; the same all-reduce tells every rank whether any rank failed.
        error: Optional[BaseException] = None
        drawn = 0
        try:
            _check_streams(streams)
            drawn = draw_seed(generator)  # 63 bits: fits the int64 sum
        except Exception as e:
            error = e
        t = torch.tensor(
            [0 if error is None else 1, drawn if rank == 0 else 0], dtype=torch.int64, device=_collective_device(group)
        )
        dist.all_reduce(t, group=group)
        if error is not None:
            raise error
        if int(t[0]) > 0:
            raise ValueError("another rank passed invalid arguments to sampler_seed (see its error)")
        seed = int(t[1])
    _check_streams(streams)
    if seed is None:
        seed = draw_seed(generator)
    seed = check_seed(seed)
    if streams == "shared":
        return seed
    return _splitmix64(seed + rank)


# ------------------------------------------------- synchronised state (bank, estimator)
def _sync_group(sync: bool, group: Optional[Any]) -> Optional[Any]:
    """The group a ``sync=True`` object gathers over, or None when there is nothing to gather."""
    if not sync:
        return None
    _, world = rank_and_world_size(group)
    return (group if group is not None else dist.group.WORLD) if world > 1 else None


def _gather_rows(t: torch.Tensor, group: Any) -> torch.Tensor:
    """:func:`all_gather` on the device the backend needs, the result back on ``t``'s device."""
    return all_gather(t.to(_collective_device(group)), group).to(t.device)


def _checked_on_every_rank(check: Callable[[], Any], group: Optional[Any]) -> Any:
    """Runs the input checks ``check()``; under ``group`` the ranks agree first.

    A rank whose checks fail, with any exception (a ValueError for bad input,
    but also whatever an odd input object raises), must not leave the others
    waiting in the gather that follows: every rank reports whether its checks
    passed (one small all-reduce), and if any failed, all raise (the failing
    rank its own error, the others a ValueError saying so).
    """
    if group is None:
        return check()
    error: Optional[BaseException] = None
    result = None
    try:
        result = check()
    except Exception as e:
        error = e
    _raise_if_any_rank_failed(error, group, _collective_device(group))
    return result


def _check_streams(streams: str) -> None:
    if streams not in ("shared", "disjoint"):
        raise ValueError(f"streams must be 'shared' or 'disjoint', got {streams!r}")


def _splitmix64(x: int) -> int:
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)
