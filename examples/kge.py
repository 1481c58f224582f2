"""Knowledge-graph embeddings and link prediction with pyneg.graph's exact negatives.

Part 1 (KGE): TransE (a plain PyTorch model) trained on Nations, Kinships or
UMLS, read from the files PyKEEN's wheel ships (no download), with filtered
Bernoulli negatives from ``pyneg.graph.TripleCorruptor`` (exactly k per
positive, none a training triple) and a margin ranking loss; evaluated with
``pyneg.graph.filtered_ranks`` (both sides, realistic ties, filtered with
train + valid + test). When PyKEEN is installed, the same model and
hyperparameters are trained by PyKEEN's pipeline side by side (its Bernoulli
sampler with the exact python-set filterer), and both report MRR, Hits@10 and
seconds per epoch.

Part 2 (link prediction): a generated power-law graph (PyG's wheel bundles no
dataset), a dot-product node embedding trained with ``negative_edges``
(filtered, destination corrupted, 8 per edge), evaluated by the filtered rank
of each held-out edge's destination among all nodes.

    python examples/kge.py --dataset umls --epochs 100
    python examples/kge.py --quick        # a smoke run (Nations, few epochs)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from pyneg import graph
from pyneg._kg_data import load_bundled_kg


class TransE(torch.nn.Module):
    """score(h, r, t) = -||e_h + w_r - e_t||_p; entity vectors renormalised to unit L2 norm each step (Bordes 2013)."""

    def __init__(self, num_entities: int, num_relations: int, dim: int, p: int = 2):
        super().__init__()
        self.p = p
        self.ent = torch.nn.Embedding(num_entities, dim)
        self.rel = torch.nn.Embedding(num_relations, dim)
        bound = 6 / math.sqrt(dim)
        torch.nn.init.uniform_(self.ent.weight, -bound, bound)
        torch.nn.init.uniform_(self.rel.weight, -bound, bound)
        with torch.no_grad():
            self.rel.weight.div_(self.rel.weight.norm(dim=1, keepdim=True))
        self.normalize()

    def normalize(self) -> None:
        with torch.no_grad():
            self.ent.weight.div_(self.ent.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, triples: torch.Tensor) -> torch.Tensor:
        h, r, t = self.ent(triples[..., 0]), self.rel(triples[..., 1]), self.ent(triples[..., 2])
        return -torch.linalg.vector_norm(h + r - t, ord=self.p, dim=-1)

    @torch.no_grad()
    def score_all(self, triples: torch.Tensor, side: str) -> torch.Tensor:
        """(B, num_entities) scores of every entity in place of ``side``."""
        e = self.ent.weight
        r = self.rel(triples[:, 1])
        if side == "tail":
            q = self.ent(triples[:, 0]) + r  # h + r - t
            return -torch.cdist(q, e, p=float(self.p))
        q = self.ent(triples[:, 2]) - r  # h - (t - r)
        return -torch.cdist(q, e, p=float(self.p))


def evaluate(model: TransE, test: torch.Tensor, known: graph.TripleSet, batch: int = 512) -> Dict[str, float]:
    ranks = []
    for side in ("head", "tail"):
        for lo in range(0, test.shape[0], batch):
            rows = test[lo : lo + batch]
            ranks.append(graph.filtered_ranks(model.score_all(rows, side), rows, side=side, filter=known))
    return graph.rank_metrics(torch.cat(ranks), ks=(1, 3, 10))


def train_pyneg(kg: Any, args: argparse.Namespace) -> Dict[str, Any]:
    torch.manual_seed(args.seed)
    model = TransE(kg.num_entities, kg.num_relations, args.dim)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_set = graph.TripleSet(kg.train, kg.num_entities, kg.num_relations)
    corruptor = graph.TripleCorruptor(train_set, corrupt="bernoulli")
    g = torch.Generator().manual_seed(args.seed)
    n = kg.train.shape[0]
    start = time.perf_counter()
    step = 0
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        for lo in range(0, n, args.batch_size):
            pos = kg.train[perm[lo : lo + args.batch_size]]
            neg = corruptor.sample(pos, args.negatives, seed=args.seed, offset=step * args.batch_size).triples
            step += 1
            s_pos = model(pos)  # (B,)
            s_neg = model(neg)  # (B, k)
            loss = F.relu(args.margin - s_pos[:, None] + s_neg).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.normalize()
    seconds = time.perf_counter() - start
    known = graph.TripleSet.union(
        kg.train, kg.valid, kg.test, num_entities=kg.num_entities, num_relations=kg.num_relations
    )
    metrics = evaluate(model, kg.test, known)
    return {"mrr": metrics["mrr"], "hits@10": metrics["hits@10"], "s/epoch": seconds / args.epochs}


def train_pykeen(kg: Any, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    try:
        from pykeen.pipeline import pipeline
        from pykeen.triples import CoreTriplesFactory
    except ImportError:
        return None

    def factory(t: torch.Tensor) -> Any:
        return CoreTriplesFactory.create(mapped_triples=t, num_entities=kg.num_entities, num_relations=kg.num_relations)

    result = pipeline(
        training=factory(kg.train),
        validation=factory(kg.valid),
        testing=factory(kg.test),
        model="TransE",
        model_kwargs=dict(embedding_dim=args.dim, scoring_fct_norm=2),
        loss="marginranking",
        loss_kwargs=dict(margin=args.margin),
        optimizer="adam",
        optimizer_kwargs=dict(lr=args.lr),
        negative_sampler="bernoulli",
        negative_sampler_kwargs=dict(num_negs_per_pos=args.negatives, filtered=True, filterer="python-set"),
        training_kwargs=dict(num_epochs=args.epochs, batch_size=args.batch_size, use_tqdm=False),
        evaluation_kwargs=dict(use_tqdm=False),
        random_seed=args.seed,
        device="cpu",
    )
    return {
        "mrr": float(result.get_metric("both.realistic.inverse_harmonic_mean_rank")),
        "hits@10": float(result.get_metric("both.realistic.hits_at_10")),
        "s/epoch": float(result.train_seconds) / args.epochs,
    }


def power_law_graph(n: int, e: int, seed: int) -> torch.Tensor:
    """Endpoints with Zipf-like popularity (rank^-0.8 weights, shuffled ids), no self-loops or duplicates."""
    g = torch.Generator().manual_seed(seed)
    w = torch.arange(1, n + 1, dtype=torch.float64) ** -0.8
    ids = torch.randperm(n, generator=g)
    src = ids[torch.multinomial(w, e, replacement=True, generator=g)]
    dst = ids[torch.multinomial(w, e, replacement=True, generator=g)]
    keep = src != dst
    ei = torch.unique(torch.stack([src[keep], dst[keep]]), dim=1)
    return ei[:, torch.randperm(ei.shape[1], generator=g)]


def link_prediction(args: argparse.Namespace) -> Dict[str, Any]:
    n, e = (2000, 20000) if args.quick else (20000, 300000)
    ei = power_law_graph(n, e, args.seed)
    n_test = ei.shape[1] // 20
    train_ei, test_ei = ei[:, n_test:], ei[:, :n_test]
    edges = graph.EdgeSet(train_ei, n)
    torch.manual_seed(args.seed)
    emb = torch.nn.Embedding(n, args.dim)
    ctx = torch.nn.Embedding(n, args.dim)
    torch.nn.init.normal_(emb.weight, std=0.1)
    torch.nn.init.normal_(ctx.weight, std=0.1)
    opt = torch.optim.Adam(list(emb.parameters()) + list(ctx.parameters()), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    epochs = 2 if args.quick else 5
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(train_ei.shape[1], generator=g)
        for lo in range(0, train_ei.shape[1], 1024):
            pos = train_ei[:, perm[lo : lo + 1024]]
            neg = graph.negative_edges(edges, pos, 8, seed=args.seed, offset=step * 1024)
            step += 1
            u = emb(pos[0])
            s_pos = (u * ctx(pos[1])).sum(-1)
            s_neg = (u[:, None, :] * ctx(neg.dst)).sum(-1)
            loss = F.softplus(-s_pos).mean() + F.softplus(s_neg).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    # Filtered rank of each held-out destination among all nodes (training edges filtered out).
    known = graph.TripleSet.union(
        torch.stack([train_ei[0], torch.zeros_like(train_ei[0]), train_ei[1]], 1),
        torch.stack([test_ei[0], torch.zeros_like(test_ei[0]), test_ei[1]], 1),
        num_entities=n,
        num_relations=1,
    )
    test_triples = torch.stack([test_ei[0], torch.zeros_like(test_ei[0]), test_ei[1]], 1)
    with torch.no_grad():
        scores = emb(test_ei[0]) @ ctx.weight.T
    ranks = graph.filtered_ranks(scores, test_triples, side="tail", filter=known)
    m = graph.rank_metrics(ranks, ks=(10, 100))
    return {
        "nodes": n,
        "edges": int(ei.shape[1]),
        "mrr": m["mrr"],
        "hits@10": m["hits@10"],
        "hits@100": m["hits@100"],
        "s/epoch": seconds / epochs,
    }


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="umls", choices=["nations", "kinships", "umls"])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--negatives", type=int, default=4, help="negatives per positive")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no OpenMP oversubscription on a shared machine)"
    )
    p.add_argument("--no-pykeen", action="store_true", help="skip the PyKEEN side-by-side run")
    p.add_argument("--quick", action="store_true", help="Nations, 5 epochs, a small graph: a smoke run")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.epochs = "nations", 5
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    out: Dict[str, Any] = {"dataset": args.dataset, "epochs": args.epochs}
    kg = load_bundled_kg(args.dataset)
    if kg is None:
        print("PyKEEN is not installed: its wheel ships the KGE datasets; skipping part 1")
    else:
        print(
            f"{args.dataset}: {kg.num_entities} entities, {kg.num_relations} relations, "
            f"{kg.train.shape[0]}/{kg.valid.shape[0]}/{kg.test.shape[0]} train/valid/test triples"
        )
        out["pyneg"] = train_pyneg(kg, args)
        print(
            f"  pyneg  TransE: MRR {out['pyneg']['mrr']:.4f}  Hits@10 {out['pyneg']['hits@10']:.4f}  "
            f"{out['pyneg']['s/epoch']:.3f} s/epoch"
        )
        pk = None if args.no_pykeen else train_pykeen(kg, args)
        if pk is not None:
            out["pykeen"] = pk
            print(f"  PyKEEN TransE: MRR {pk['mrr']:.4f}  Hits@10 {pk['hits@10']:.4f}  {pk['s/epoch']:.3f} s/epoch")
    lp = link_prediction(args)
    out["link_prediction"] = lp
    print(
        f"power-law graph ({lp['nodes']} nodes, {lp['edges']} edges): filtered MRR {lp['mrr']:.4f}  "
        f"Hits@10 {lp['hits@10']:.4f}  Hits@100 {lp['hits@100']:.4f}  {lp['s/epoch']:.3f} s/epoch"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
