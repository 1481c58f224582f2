"""MemoryBank and FrequencyEstimator with sync=True: two gloo ranks (spawned here,
CPU, loopback only) hold identical state, equal to one process fed the
concatenated batches."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _rank_outcomes import outcomes

import pyneg

DIM, CAPACITY, BUCKETS = 4, 16, 97
# Rows per rank at each step: unequal, and rank 1 has nothing at step 2.
SIZES = [(5, 3), (2, 0), (7, 6), (1, 4), (9, 9)]


def _step_data(step: int, rank: int):
    n = SIZES[step][rank]
    rng = np.random.default_rng(100 * step + rank)
    emb = torch.from_numpy(rng.standard_normal((n, DIM)).astype(np.float32))
    ids = torch.from_numpy(rng.integers(0, 30, n))
    log_q = torch.from_numpy(-rng.random(n).astype(np.float32)) if rank == 0 else None  # rank 1 gives none
    return emb, ids, log_q


def _make(sync: bool):
    return (
        pyneg.MemoryBank(CAPACITY, DIM, sync=sync, max_age=3),
        pyneg.FrequencyEstimator(BUCKETS, alpha=0.2, sync=sync),
    )


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bank, est = _make(sync=True)
        for step in range(len(SIZES)):
            emb, ids, log_q = _step_data(step, rank)
            bank.enqueue(emb, ids, log_q)
            est.update(ids)
        torch.save({"bank": bank.state_dict(), "est": est.state_dict()}, os.path.join(out_dir, f"{rank}.pt"))
        # Both ranks are done with the gathers before the group is torn down: a rank
        # that destroys the group while the other still reads from it can abort
        # that process inside gloo ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's threads can abort a rank at
    # exit ("terminate called without an active exception"), after all its work
    # and output are done, which the spawner would report as a failure.
    os._exit(0)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        if a.is_floating_point():
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])
        return torch.equal(a, b)
    return a == b


def test_two_gloo_ranks_hold_the_state_of_one_process():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]

    bank, est = _make(sync=False)  # one process, the concatenated batches
    for step in range(len(SIZES)):
        parts = [_step_data(step, r) for r in range(2)]
        emb = torch.cat([p[0] for p in parts])
        ids = torch.cat([p[1] for p in parts])
        log_q = torch.cat([p[2] if p[2] is not None else torch.full((len(p[1]),), float("nan")) for p in parts])
        bank.enqueue(emb, ids, log_q)
        est.update(ids)
    expected = {"bank": bank.state_dict(), "est": est.state_dict()}
    assert len(bank) == CAPACITY and expected["est"]["step"] == len(SIZES)
    for res in results:
        for part in ("bank", "est"):
            for key, value in expected[part].items():
                assert _same(res[part][key], value), (part, key)


def test_sync_without_a_process_group_is_world_size_one():
    synced, plain = _make(sync=True), _make(sync=False)
    for step in range(len(SIZES)):
        emb, ids, log_q = _step_data(step, 0)
        for bank, est in (synced, plain):
            bank.enqueue(emb, ids, log_q)
            est.update(ids)
    assert _same(synced[0].embeddings, plain[0].embeddings) and _same(synced[0].log_q, plain[0].log_q)
    assert torch.equal(synced[1].state_dict()["gap"], plain[1].state_dict()["gap"])


def _bad_input_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bank, est = _make(sync=True)
        outcome = {}
        # Rank 1 passes 2-D ids (caught by its own checks, before any gather);
        # rank 0's input is fine. Both must raise (no rank left waiting in the
        # gather) and neither may change its state.
        ids = torch.tensor([1, 2, 3]) if rank == 0 else torch.tensor([[1, 2, 3]])
        for name, call in (
            ("enqueue", lambda: bank.enqueue(torch.ones(3, DIM), ids)),
            ("update", lambda: est.update(ids)),
        ):
            try:
                call()
                outcome[name] = "no error"
            except ValueError as e:
                outcome[name] = str(e)
        # Rank 0 sends float64 embeddings, rank 1 float32: stored in the bank's dtype.
        emb = torch.ones(2, DIM, dtype=torch.float64 if rank == 0 else torch.float32)
        bank.enqueue(emb, torch.tensor([rank, rank + 10]))
        outcome["after"] = bank.state_dict()
        torch.save(outcome, os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()  # see _worker
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's threads can abort a rank at
    # exit ("terminate called without an active exception"), after all its work
    # and output are done, which the spawner would report as a failure.
    os._exit(0)


def test_bad_input_on_one_rank_raises_on_every_rank():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_bad_input_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]
    for rank, res in enumerate(results):
        for name in ("enqueue", "update"):
            if rank == 1:
                assert "ids must be 1-D" in res[name], res[name]  # its own error
            else:
                assert "another rank" in res[name], res[name]
        assert torch.equal(res["after"]["ids"], torch.tensor([0, 10, 1, 11]))
        assert _same(res["after"]["embeddings"], results[0]["after"]["embeddings"])


class _Exploding:
    """An id container whose conversion raises something other than ValueError/TypeError."""

    def __array__(self, *args, **kwargs):
        raise RuntimeError("boom: this input cannot be read")

    def __len__(self):
        return 3


class _OddTensor(torch.Tensor):
    """A tensor whose layout cannot be read (raises RuntimeError in pyneg's checks)."""

    @property
    def layout(self):  # type: ignore[override]
        raise RuntimeError("boom: layout unavailable")


def _failing_checks_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import datetime

    # A short process-group timeout: were a rank left waiting, its collective
    # would fail after 20 s (and the elapsed times below would show it).
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20)
    )
    try:
        bank, est = _make(sync=True)
        ok_ids = torch.tensor([1, 2, 3])
        bad = rank == 1
        calls = {
            "enqueue": lambda: bank.enqueue(torch.ones(3, DIM), _Exploding() if bad else ok_ids),
            "update": lambda: est.update(_Exploding() if bad else ok_ids),
            "update_meta": lambda: est.update(ok_ids.to("meta") if bad else ok_ids),
            "all_gather": lambda: pyneg.distributed.all_gather(
                torch.ones(2, 3).as_subclass(_OddTensor) if bad else torch.ones(2, 3)
            ),
            "all_gather_mismatch": lambda: pyneg.distributed.all_gather(
                torch.ones(2, 4 if bad else 3, dtype=torch.float64 if bad else torch.float32)
            ),
            "all_gather_with_grad": lambda: pyneg.distributed.all_gather_with_grad(
                torch.ones(2, 3).to("meta") if bad else torch.ones(2, 3, requires_grad=True)
            ),
            "rank_offset": lambda: pyneg.distributed.rank_offset(_Exploding() if bad else 4),
            "sampler_seed": lambda: pyneg.distributed.sampler_seed(streams="nope" if bad else "shared"),
        }
        outcome = outcomes(calls)
        # Nothing was recorded, and the ranks are still in step: a valid synced call works.
        outcome["steps_before"] = (bank.step, est.step)
        bank.enqueue(torch.ones(1, DIM), torch.tensor([rank]))
        est.update(torch.tensor([rank]))
        outcome["ids_after"] = bank.ids.tolist()
        torch.save(outcome, os.path.join(out_dir, f"{rank}.pt"))
        dist.barrier()  # see _worker
    finally:
        dist.destroy_process_group()
    os._exit(0)  # see _worker


def test_any_failure_of_one_ranks_checks_raises_on_every_rank_promptly():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_failing_checks_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]
    own_error = {
        "enqueue": "RuntimeError",
        "update": "RuntimeError",
        "update_meta": "ValueError",
        "all_gather": "RuntimeError",
        "all_gather_mismatch": "ValueError",
        "all_gather_with_grad": "ValueError",
        "rank_offset": "TypeError",
        "sampler_seed": "ValueError",
    }
    for name, kind in own_error.items():
        (kind0, msg0, t0), (kind1, msg1, t1) = results[0][name], results[1][name]
        assert t0 < 10 and t1 < 10, (name, t0, t1)  # promptly: far below the 20 s group timeout
        if name == "all_gather_mismatch":  # both ranks see the mismatch
            assert kind0 == kind1 == "ValueError" and "different dtypes" in msg0 and "different dtypes" in msg1
            continue
        assert kind1 == kind, (name, kind1, msg1)  # the failing rank raises its own error
        assert kind0 == "ValueError" and "another rank" in msg0, (name, kind0, msg0)
    for res in results:
        assert res["steps_before"] == (0, 0)
        assert res["ids_after"] == [0, 1]
