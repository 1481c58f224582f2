"""Two-tower retrieval on MovieLens-100K: which negatives, which correction?

Trains the same two-tower model (an embedding tower per side, L2-normalised,
temperature-scaled dot products) four ways and prints their retrieval quality
side by side:

1. in-batch       in-batch softmax (the other rows' items are the negatives);
2. + logQ         the same, each logit corrected by log q from a streaming
                  FrequencyEstimator (Yi et al., 2019);
3. + bank         in-batch + a MemoryBank of recent item embeddings
                  (cross-batch negatives, Wang et al., 2021), after a warm-up;
4. mixed          in-batch + UnigramSampler negatives + the bank, each source's
                  logits corrected by that source's own log q;
5. + mined        in-batch + logQ, plus hard negatives mined with
                  ``pyneg.mine_hard_negatives`` once per epoch (or every
                  ``--mine-every`` steps): every user's ranks [lo, hi) over the
                  catalogue, the user's training items excluded (and, with
                  ``--mine-perc-pos``, a TopK-PercPos false-negative filter),
                  k drawn uniformly, each with its own log q (log k/w), through
                  ``NegativeSource.from_mined`` and ``mixed_negatives_loss``.

Evaluation is leave-last-out: each user's latest interaction (by timestamp) is
held out; Recall@10, Recall@50 and NDCG@10 rank it against the full catalogue,
excluding the user's training items. Every method uses the same seeds, epochs
and batches; figures are averaged over ``--seeds``.

Data: ``--data PATH`` (MovieLens ``u.data``, RecBole's ``ml-100k.inter``, or a
folder holding either); otherwise RecBole's bundled copy when ``recbole`` is
installed (``pip install --no-deps recbole``); otherwise a generated power-law
dataset of the same shape (the output says so).

Distributed: ``torchrun --nproc-per-node 2 examples/two_tower.py`` (gloo, CPU)
splits each global batch across ranks and uses the global-batch losses
(``gather=True``), a synced bank and estimator, and shared sampler seeds, so it
reports the metrics of the single-process run with the same global batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import pyneg
import pyneg.functional as PF
from pyneg import distributed as pd
from pyneg.functional import NegativeSource

METHODS = ("in-batch", "+ logQ", "+ bank", "mixed", "+ mined")


# ------------------------------------------------------------------ data
def _read_interactions(path: str) -> np.ndarray:
    """(n, 3) int64 user, item, timestamp from u.data or a RecBole .inter file."""
    if os.path.isdir(path):
        for name in ("u.data", "ml-100k.inter"):
            if os.path.exists(os.path.join(path, name)):
                return _read_interactions(os.path.join(path, name))
        raise FileNotFoundError(f"{path} holds neither u.data nor ml-100k.inter")
    with open(path) as f:
        first = f.readline()
    skip = 1 if ":" in first else 0  # RecBole headers look like "user_id:token"
    raw = np.loadtxt(path, delimiter="\t", skiprows=skip, dtype=np.float64, usecols=(0, 1, 3))
    return raw.astype(np.int64)


def _recbole_copy() -> Optional[str]:
    try:
        import importlib.util

        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "dataset_example", "ml-100k", "ml-100k.inter")
    return path if os.path.exists(path) else None


def _power_law(num_users: int = 943, num_items: int = 1682, per_user: int = 106, seed: int = 0) -> np.ndarray:
    """A MovieLens-sized stand-in: Zipfian item popularity, users drawn from taste clusters."""
    rng = np.random.default_rng(seed)
    clusters = 20
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.9
    item_cluster = rng.integers(0, clusters, num_items)
    rows = []
    for u in range(num_users):
        taste = rng.integers(0, clusters)
        w = popularity * np.where(item_cluster == taste, 8.0, 1.0)
        n = max(20, int(rng.poisson(per_user)))
        items = rng.choice(num_items, size=min(n, num_items), replace=False, p=w / w.sum())
        rows += [(u, i, t) for t, i in enumerate(items)]
    return np.asarray(rows, dtype=np.int64)


def load(path: Optional[str]) -> Tuple[np.ndarray, str]:
    if path is not None:
        return _read_interactions(path), f"MovieLens-100K from {path}"
    copy = _recbole_copy()
    if copy is not None:
        return _read_interactions(copy), f"MovieLens-100K (RecBole's bundled copy, {copy})"
    return _power_law(), "GENERATED power-law data (no MovieLens found: pass --data PATH or pip install recbole)"


class Split:
    """Leave-last-out: each user's latest interaction is the test item."""

    def __init__(self, inter: np.ndarray) -> None:
        users, self.user_ids = np.unique(inter[:, 0], return_inverse=True)
        items, self.item_ids = np.unique(inter[:, 1], return_inverse=True)
        self.num_users, self.num_items = len(users), len(items)
        order = np.lexsort((np.arange(len(inter)), inter[:, 2], self.user_ids))  # by user, then time
        u, i = self.user_ids[order], self.item_ids[order]
        last = np.r_[u[1:] != u[:-1], True]
        test = last & np.r_[False, u[1:] == u[:-1]]  # a user's only interaction stays in training
        self.train_users = torch.from_numpy(u[~test])
        self.train_items = torch.from_numpy(i[~test])
        self.test_users = torch.from_numpy(u[test])
        self.test_items = torch.from_numpy(i[test])
        self.item_counts = torch.bincount(self.train_items, minlength=self.num_items).double()
        # Each user's training items, padded with -1: (num_users, max items of a user).
        per_user = torch.bincount(self.train_users, minlength=self.num_users)
        self.user_items = torch.full((self.num_users, max(int(per_user.max()), 1)), -1, dtype=torch.int64)
        by_user = torch.argsort(self.train_users, stable=True)
        start = torch.cumsum(per_user, 0) - per_user
        col = torch.arange(len(by_user)) - start[self.train_users[by_user]]
        self.user_items[self.train_users[by_user], col] = self.train_items[by_user]


# ------------------------------------------------------------------ model
class TwoTower(torch.nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.user = torch.nn.Embedding(num_users, dim)
        self.item = torch.nn.Embedding(num_items, dim)
        torch.nn.init.normal_(self.user.weight, std=0.1)
        torch.nn.init.normal_(self.item.weight, std=0.1)

    def forward(self, users: torch.Tensor, items: torch.Tensor, sampled: torch.Tensor):
        return (
            F.normalize(self.user(users), dim=1),
            F.normalize(self.item(items), dim=1),
            F.normalize(self.item(sampled), dim=1),
        )

    def all_items(self) -> torch.Tensor:
        return F.normalize(self.item.weight, dim=1)


# --------------------------------------------------------------- training
@torch.no_grad()
def mine_negatives(
    model: TwoTower, split: Split, args: argparse.Namespace, seed: int, offset: int
) -> pyneg.MinedNegatives:
    """Hard negatives for every user: ranks [--mine-lo, --mine-hi) of the catalogue by the current model.

    A user's training items are excluded (never a negative of any of the
    user's rows); ``--mine-perc-pos p`` also drops candidates scoring at least
    p times the user's mean positive score (TopK-PercPos, against unlabelled
    positives). ``--mine-k`` of the window are drawn uniformly; each carries
    log q = log(k / w), w the admissible candidates in the user's window.
    """
    users = F.normalize(model.user.weight, dim=1)
    items = model.all_items()
    filt = {}
    if args.mine_perc_pos is not None:
        pos = (users[split.train_users] * items[split.train_items]).sum(1).double()
        mean_pos = torch.zeros(split.num_users, dtype=torch.float64).index_add_(0, split.train_users, pos)
        mean_pos /= torch.bincount(split.train_users, minlength=split.num_users).clamp_min(1)
        filt = dict(positive_scores=mean_pos, perc_pos=args.mine_perc_pos)
    return pyneg.mine_hard_negatives(
        users,
        items,
        args.mine_k,
        lo=args.mine_lo,
        hi=args.mine_hi,
        exclude=split.user_items,
        sampling="uniform",
        pad=True,
        seed=seed,
        offset=offset,
        **filt,
    )


def train(method: str, split: Split, args: argparse.Namespace, seed: int) -> Tuple[TwoTower, float, float]:
    """Trains one method; returns (model, training seconds, seconds of them spent mining)."""
    rank, world = pd.rank_and_world_size()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(seed)
    model = TwoTower(split.num_users, split.num_items, args.dim).to(dtype)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    distributed = world > 1
    # Every rank sees every step's global ids (sync=True gathers them), so the
    # estimator and the bank evolve as in one process fed the global batch.
    est = pyneg.FrequencyEstimator(4 * split.num_items, alpha=0.05, sync=distributed)
    bank = pyneg.MemoryBank(args.bank_size, args.dim, dtype=dtype, warmup=args.warmup, sync=distributed)
    sampler = pyneg.UnigramSampler(split.item_counts, power=0.75)
    shuffle = torch.Generator().manual_seed(seed)
    n = len(split.train_users)
    step, t0 = 0, time.perf_counter()
    mined: Optional[pyneg.MinedNegatives] = None
    mining_s = 0.0
    for _ in range(args.epochs):
        order = torch.randperm(n, generator=shuffle)
        for start in range(0, n, args.batch_size):
            if args.max_steps is not None and step >= args.max_steps:
                break
            if method == "+ mined" and (
                mined is None
                or (start == 0 and not args.mine_every)
                or (args.mine_every and step % args.mine_every == 0)
            ):
                tm = time.perf_counter()
                mined = mine_negatives(model, split, args, seed, offset=step * split.num_users)  # same on every rank
                mining_s += time.perf_counter() - tm
            rows = order[start : start + args.batch_size]
            # This rank's shard of the global batch (all of it in one process).
            bounds = np.linspace(0, len(rows), world + 1).astype(int)
            mine = rows[bounds[rank] : bounds[rank + 1]]
            users, items = split.train_users[mine], split.train_items[mine]
            step += 1
            sampled = (
                sampler.sample(args.num_sampled, seed=seed * 1_000_003 + step)  # same on every rank
                if method == "mixed"
                else items[:0]
            )
            est.update(items)
            log_q = est.log_prob(items).to(dtype) if method != "in-batch" else None
            q, c, s = net(users, items, sampled)
            kw = dict(temperature=args.temperature, gather=distributed)
            if method in ("in-batch", "+ logQ"):
                loss = PF.in_batch_softmax_loss(q, c, log_q=log_q, candidate_ids=items, **kw)
            elif method == "+ mined":
                assert mined is not None
                per_row = pyneg.MinedNegatives(*(t[users] for t in mined))  # each row gets its user's negatives
                sources = [NegativeSource.batch(log_q), NegativeSource.from_mined(per_row, model.all_items())]
                loss = PF.mixed_negatives_loss(q, c, sources, positive_ids=items, positive_log_q=log_q, **kw)
            else:
                sources = [NegativeSource.batch(log_q), NegativeSource.from_bank(bank)]
                if method == "mixed":
                    sources.append(NegativeSource.from_sampler(s, sampled, sampler))
                loss = PF.mixed_negatives_loss(q, c, sources, positive_ids=items, positive_log_q=log_q, **kw)
            # Each rank's loss is the mean over its rows; DDP averages gradients,
            # so weight by the shard's share for the global-batch mean.
            (loss * (len(mine) * world / len(rows))).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if method in ("+ bank", "mixed"):  # after backward: the loss read the bank's storage
                bank.enqueue(c.detach(), items, log_q)
    return model, time.perf_counter() - t0, mining_s


@torch.no_grad()
def evaluate(model: TwoTower, split: Split, ks=(10, 50)) -> Dict[str, float]:
    """Recall@k and NDCG@10 of each user's held-out item over the full catalogue."""
    users = split.test_users
    scores = model.user.weight[users].double() @ model.all_items().double().t()
    # Never recommend what the user trained on.
    train_mask = torch.zeros(split.num_users, split.num_items, dtype=torch.bool)
    train_mask[split.train_users, split.train_items] = True
    scores.masked_fill_(train_mask[users], -math.inf)
    target = scores.gather(1, split.test_items.unsqueeze(1))
    rank = (scores > target).sum(1)  # 0 = ranked first
    out = {f"Recall@{k}": float((rank < k).double().mean()) for k in ks}
    out["NDCG@10"] = float(torch.where(rank < 10, 1.0 / torch.log2(rank.double() + 2.0), 0.0).mean())
    return out


# -------------------------------------------------------------------- main
def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="u.data, ml-100k.inter, or a folder with one of them")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024, help="the global batch (split across ranks)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--bank-size", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=20, help="steps before the bank is used")
    p.add_argument("--num-sampled", type=int, default=256, help="UnigramSampler negatives per step (mixed)")
    p.add_argument("--mine-k", type=int, default=16, help="+ mined: hard negatives per row")
    p.add_argument("--mine-lo", type=int, default=10, help="+ mined: the rank window [lo, hi) mined from")
    p.add_argument("--mine-hi", type=int, default=110, help="+ mined: see --mine-lo")
    p.add_argument(
        "--mine-every", type=int, default=0, help="+ mined: mine again every N steps (0: at the start of every epoch)"
    )
    p.add_argument(
        "--mine-perc-pos",
        type=float,
        default=None,
        help="+ mined: drop candidates scoring >= p x the user's mean positive score (TopK-PercPos, e.g. 0.95)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--quick", action="store_true", help="1 seed, 30 steps, warm-up 5: a smoke run")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--json", default=None, help="also write the results here (rank 0)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.warmup = args.seeds[:1], 5
        args.max_steps = args.max_steps or 30
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = pd.rank_and_world_size()
    # The matrices are small (B x B, B x bank): one thread per process avoids
    # thread-pool overhead, which dominates on a shared or oversubscribed machine.
    torch.set_num_threads(args.threads)
    inter, source = load(args.data)
    split = Split(inter)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(
        f"data: {source}\n  {split.num_users} users, {split.num_items} items, "
        f"{len(split.train_users)} training interactions, {len(split.test_users)} held out"
    )
    say(
        f"  {world} process(es), global batch {args.batch_size}, {args.epochs} epochs, "
        f"seeds {args.seeds}, dim {args.dim}, {args.dtype}"
    )
    results: Dict[str, Dict[str, List[float]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            model, secs, mining_s = train(method, split, args, seed)
            metrics = evaluate(model, split)
            metrics["train_s"] = secs
            metrics["mining_s_per_epoch"] = mining_s / max(args.epochs, 1)
            for k, v in metrics.items():
                results.setdefault(method, {}).setdefault(k, []).append(v)
            say(
                f"  {method:<9} seed {seed}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("train_s", "mining_s_per_epoch"))
                + f" ({secs:.1f} s)",
                flush=True,
            )
    say("\n" + table(results, len(args.seeds)))
    if rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "world_size": world, "args": vars(args), "results": results}, f, indent=1)
    if dist.is_initialized():
        dist.barrier()  # both ranks done before the group is torn down
        dist.destroy_process_group()
    return 0


def table(results: Dict[str, Dict[str, List[float]]], seeds: int) -> str:
    cols = ["Recall@10", "Recall@50", "NDCG@10"]
    lines = [
        f"| method ({seeds} seed{'s' if seeds > 1 else ''}) | " + " | ".join(cols) + " | train s | mining s/epoch |",
        "| --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: |",
    ]
    for method, m in results.items():
        cells = [f"{np.mean(m[c]):.4f} ± {np.std(m[c]):.4f}" for c in cols]
        mining = np.mean(m.get("mining_s_per_epoch", [0.0]))
        lines.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {np.mean(m['train_s']):.1f} | "
            + (f"{mining:.3f}" if method == "+ mined" else "-")
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
