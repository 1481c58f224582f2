"""Global-batch losses: two gloo ranks (spawned here, CPU, loopback only) under
DistributedDataParallel against one process that sees the concatenated batch.

Each rank's loss is the mean over its own rows and DDP averages gradients over
ranks, so with equal per-rank batches the average of the ranks' losses and every
parameter's gradient must equal the single-process loss on the global batch.
"""

from __future__ import annotations

import gc
import os
import tempfile
from typing import Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _rank_outcomes import outcomes
from torch.nn.parallel import DistributedDataParallel

import pyneg.functional as PF
from pyneg import distributed as pd
from pyneg.functional import NegativeSource

DIM, USERS, ITEMS = 6, 20, 9  # few items: accidental hits within and across ranks
TOL = dict(rtol=0, atol=1e-6)


class TwoTower(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.user = torch.nn.Sequential(torch.nn.Embedding(USERS, DIM), torch.nn.Linear(DIM, DIM))
        self.item = torch.nn.Sequential(torch.nn.Embedding(ITEMS, DIM), torch.nn.Linear(DIM, DIM))
        self.double()

    def forward(self, users, items, sampled):
        return self.user(users), self.item(items), self.item(sampled)


def global_batch(n: int):
    g = torch.Generator().manual_seed(1)
    users = torch.randint(0, USERS, (n,), generator=g)
    items = torch.randint(0, ITEMS, (n,), generator=g)
    # A frequency estimate stands in for log q; the same on every rank.
    log_q = torch.log(torch.bincount(items, minlength=ITEMS).double() / n)
    sampled = torch.randint(0, ITEMS, (5,), generator=g)  # shared sampled negatives (one seed)
    bank = NegativeSource.from_bank(
        type(
            "Bank",
            (),
            dict(
                embeddings=torch.randn(7, DIM, generator=g, dtype=torch.float64),
                ids=torch.randint(0, ITEMS, (7,), generator=g),
                log_q=torch.tensor([-1.0, float("nan"), -2.0, -0.5, float("nan"), -3.0, -1.5], dtype=torch.float64),
            ),
        )
    )
    return users, items, log_q, sampled, bank


def loss_of(kind: str, model, users, items, log_q, sampled, bank, gather: bool, reduction="mean"):
    q, c, s = model(users, items, sampled)
    if kind == "compiled":  # the mixed loss under torch.compile: with gather over 2 ranks it runs eagerly
        mixed = torch.compile(PF.mixed_negatives_loss, backend="eager")
    else:
        mixed = PF.mixed_negatives_loss
    if kind == "in_batch":
        return PF.in_batch_softmax_loss(
            q, c, log_q=log_q[items], candidate_ids=items, temperature=0.5, gather=gather, reduction=reduction
        )
    sources = [NegativeSource.batch(log_q[items]), bank, NegativeSource(s, sampled, torch.full((5,), -1.0))]
    return mixed(
        q,
        c,
        sources,
        positive_ids=items,
        positive_log_q=log_q[items],
        temperature=0.5,
        gather=gather,
        reduction=reduction,
        chunk_size=3,
    )


SCENARIOS = {"in_batch": (4, 4), "mixed": (4, 4), "unequal": (5, 3), "compiled": (4, 4)}
KIND = {"mixed": "mixed", "compiled": "compiled"}  # the others: in_batch


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _run_scenarios(rank, world, out_file)
        gc.collect()  # DDP holds reference cycles: free its reducers now
        # Every DDP model is gone (it lived in _run_scenarios) and both ranks are
        # done before the group is torn down: a rank that destroys the group while
        # the other still talks to it, or a DDP reducer outliving its group, can
        # abort the process inside gloo.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's threads can abort a rank at
    # exit ("terminate called without an active exception"), after all its work
    # and output are done, which the spawner would report as a failure.
    os._exit(0)


def _run_scenarios(rank: int, world: int, out_file: str) -> None:
    results: Dict[str, Dict] = {}
    for name, sizes in SCENARIOS.items():
        users, items, log_q, sampled, bank = global_batch(sum(sizes))
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        model = DistributedDataParallel(TwoTower())
        kind = KIND.get(name, "in_batch")
        per_row = loss_of(kind, model, users[rows], items[rows], log_q, sampled, bank, True, "none")
        loss = per_row.mean()
        if name == "unequal":  # weight each rank's mean so DDP's average is the global mean
            loss = loss * sizes[rank] * world / sum(sizes)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[name] = {
            "loss": mean_loss / world,
            "per_row": pd.all_gather(per_row.detach()),
            "grads": {n: p.grad.clone() for n, p in model.module.named_parameters()},
        }
    if rank == 0:
        torch.save(results, out_file)


@pytest.fixture(scope="module")
def two_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        init_file, out_file = os.path.join(tmp, "init"), os.path.join(tmp, "out.pt")
        mp.spawn(_worker, args=(2, init_file, out_file), nprocs=2, join=True)
        return torch.load(out_file)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_equals_one_process_on_the_global_batch(two_ranks, name):
    res = two_ranks[name]
    users, items, log_q, sampled, bank = global_batch(sum(SCENARIOS[name]))
    model = TwoTower()
    kind = KIND.get(name, "in_batch")
    per_row = loss_of(kind, model, users, items, log_q, sampled, bank, gather=False, reduction="none")
    per_row.mean().backward()
    torch.testing.assert_close(res["per_row"], per_row.detach(), **TOL)
    torch.testing.assert_close(res["loss"], per_row.mean().detach(), **TOL)
    for n, p in model.named_parameters():
        torch.testing.assert_close(res["grads"][n], p.grad, **TOL, msg=lambda m: f"{name} {n}: {m}")


def test_batch_has_cross_rank_accidental_hits():
    """The scenario exercises masking across ranks: an item of rank 0 recurs on rank 1."""
    _, items, _, _, _ = global_batch(8)
    assert set(items[:4].tolist()) & set(items[4:].tolist())


def _failing_loss_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import datetime

    # A short group timeout: a rank left waiting in a gather would fail after 20 s.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20)
    )
    try:
        bad = rank == 1
        q, c = torch.randn(3, DIM), torch.randn(3, DIM)
        ids, log_q = torch.tensor([1, 2, 3]), torch.zeros(3)
        calls = {
            # rank 1's check fails with a non-ValueError exception (meta tensors have no data)
            "in_batch_meta": lambda: PF.in_batch_softmax_loss(
                q, c.to("meta") if bad else c, candidate_ids=ids, gather=True
            ),
            # rank 1 gives ids, rank 0 does not: they would run different collectives
            "in_batch_ids_on_one_rank": lambda: PF.in_batch_softmax_loss(
                q, c, candidate_ids=ids if bad else None, gather=True
            ),
            "mixed_bad_temperature": lambda: PF.mixed_negatives_loss(
                q,
                c,
                [NegativeSource.batch(log_q)],
                positive_ids=ids,
                temperature=float("nan") if bad else 1.0,
                gather=True,
            ),
            "mixed_log_q_on_one_rank": lambda: PF.mixed_negatives_loss(
                q, c, [NegativeSource.batch(log_q if bad else None)], positive_ids=ids, gather=True
            ),
        }
        outcome = outcomes(calls)
        # The ranks are still in step: a valid gathering loss works on both.
        outcome["after"] = float(PF.in_batch_softmax_loss(q, c, candidate_ids=ids, gather=True))
        torch.save(outcome, os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()  # see _worker
    finally:
        dist.destroy_process_group()
    os._exit(0)  # see _worker


def test_a_gathering_loss_raises_on_every_rank_when_one_ranks_checks_fail():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_failing_loss_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]
    for name in ("in_batch_meta", "mixed_bad_temperature"):
        (kind0, msg0, t0), (kind1, msg1, t1) = results[0][name], results[1][name]
        assert t0 < 10 and t1 < 10, (name, t0, t1)  # promptly: far below the 20 s group timeout
        assert kind1 == "ValueError" and kind0 == "ValueError", (name, kind0, kind1)
        assert "another rank" in msg0, msg0  # rank 0 passed its own checks
        assert "another rank" not in msg1, msg1  # rank 1 reports its own error
    for name, flag in (("in_batch_ids_on_one_rank", "candidate_ids"), ("mixed_log_q_on_one_rank", "log_q")):
        (kind0, msg0, t0), (kind1, msg1, t1) = results[0][name], results[1][name]
        assert t0 < 10 and t1 < 10, (name, t0, t1)
        assert kind0 == kind1 == "ValueError" and "disagree" in msg0 and flag in msg1, (name, msg0, msg1)
    assert results[0]["after"] == pytest.approx(results[0]["after"]) and "after" in results[1]
