"""Two gloo ranks (spawned here, CPU, loopback only) against one process that
sees the concatenated batch."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import pyneg
from pyneg import distributed as pd

SIZES = (5, 3)  # rows per rank: unequal on purpose
DIM = 6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"q": torch.nn.Linear(DIM, DIM), "c": torch.nn.Linear(DIM, DIM)})


def _data():
    g = torch.Generator().manual_seed(1)
    n = sum(SIZES)
    return torch.randn(n, DIM, generator=g), torch.randn(n, DIM, generator=g)


def _loss(model, x, y, offset: int, gather) -> torch.Tensor:
    q = model["q"](x)
    c = gather(model["c"](y))
    logits = q @ c.t()
    labels = offset + torch.arange(q.shape[0])
    return F.cross_entropy(logits, labels)


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _model()
        x, y = _data()
        start = sum(SIZES[:rank])
        xs, ys = x[start : start + SIZES[rank]], y[start : start + SIZES[rank]]
        offset = pd.rank_offset(xs.shape[0])
        loss = _loss(model, xs, ys, offset, pd.all_gather_with_grad)
        # Ranks hold different numbers of rows: weight each rank's mean so that
        # DDP's average over ranks is the mean over the global batch.
        (loss * xs.shape[0] * world / sum(SIZES)).backward()
        # What DistributedDataParallel does: average parameter gradients.
        grads = {}
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            grads[name] = p.grad / world
        # The global loss is the mean over all rows: weight each rank's mean.
        total = loss.detach() * xs.shape[0]
        dist.all_reduce(total)
        shared = pd.sampler_seed(streams="shared", generator=torch.Generator().manual_seed(rank))
        disjoint = pd.sampler_seed(123, streams="disjoint")
        seeds = torch.tensor([shared, disjoint], dtype=torch.float64)
        all_seeds = pd.all_gather(seeds.unsqueeze(0))
        ids = pd.all_gather(torch.arange(SIZES[rank]) + 100 * rank)
        if rank == 0:
            torch.save(
                {"loss": total / sum(SIZES), "grads": grads, "seeds": all_seeds, "ids": ids, "offset": offset}, out_file
            )
        else:
            assert offset == SIZES[0]
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's threads can abort a rank at
    # exit ("terminate called without an active exception"), after all its work
    # and output are done, which the spawner would report as a failure.
    os._exit(0)


def test_two_gloo_ranks_equal_one_process_on_the_global_batch():
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out.pt")
        mp.spawn(_worker, args=(2, init_file, out_file), nprocs=2, join=True)
        res = torch.load(out_file)

    model = _model()
    x, y = _data()
    ref = _loss(model, x, y, 0, lambda t: t)
    ref.backward()
    assert torch.allclose(res["loss"], ref.detach(), atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(res["grads"][name], p.grad, atol=1e-6), name
    shared, disjoint = res["seeds"][:, 0], res["seeds"][:, 1]
    assert shared[0] == shared[1]  # broadcast from rank 0
    assert disjoint[0] != disjoint[1]
    assert torch.equal(res["ids"], torch.tensor([0, 1, 2, 3, 4, 100, 101, 102]))


def test_single_process_is_world_size_one():
    t = torch.randn(4, 3, requires_grad=True)
    assert pd.all_gather_with_grad(t) is t
    assert pd.all_gather(t) is t
    assert pd.rank_and_world_size() == (0, 1)
    assert pd.rank_offset(4) == 0
    assert pd.sampler_seed(5) == 5
    assert pd.sampler_seed(5, streams="disjoint") != 5
    with pytest.raises(ValueError, match="streams"):
        pd.sampler_seed(5, streams="other")
    with pytest.raises(TypeError, match="tensor"):
        pd.all_gather_with_grad([1, 2])
    assert pyneg.distributed is pd
