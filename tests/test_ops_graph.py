"""The graph kernels as PyTorch operators: opcheck, eager equality, torch.compile(fullgraph=True).

``torch.ops.pyneg.graph_corrupt`` and ``graph_filtered_ranks`` take the known
keys as an index's tensors (``EdgeSet.index_tensors``, ``TripleSet.index_tensors``)
and must give the eager functions' results bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from pyneg import graph as G

OPS = torch.ops.pyneg
N, R = 40, 8


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def t64(x: int) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


@pytest.fixture(scope="module")
def kg():
    g = torch.Generator().manual_seed(0)
    tr = torch.stack(
        [
            torch.randint(0, N, (400,), generator=g),
            torch.randint(0, R, (400,), generator=g),
            torch.randint(0, N, (400,), generator=g),
        ],
        1,
    )
    known = G.TripleSet(tr, num_entities=N, num_relations=R)
    return tr, known


@pytest.fixture(scope="module")
def graph():
    g = torch.Generator().manual_seed(1)
    ei = torch.randint(0, N, (2, 300), generator=g)
    return ei, G.EdgeSet(ei, N)


def _corrupt_args(tr, known, k=5, seed=3, offset=0, typed=False, unique=False, corrupt="bernoulli"):
    c = G.TripleCorruptor(known, corrupt=corrupt, pseudo_typed=typed, unique=unique)
    probs = torch.from_numpy(c.side_probs(tr[:, 1].numpy()))
    th, tt = ([], [])
    if typed:
        (ho, hi), (to, ti) = known._typed_lists()
        th, tt = [torch.from_numpy(ho), torch.from_numpy(hi)], [torch.from_numpy(to), torch.from_numpy(ti)]
    rel = known.index_tensors("relation") if corrupt in ("relation", "all") else []
    return c, (
        tr, probs, k, unique, False, [N, R, N], known.index_tensors("head"), rel, known.index_tensors("tail"),
        th, tt, t64(seed), t64(offset),
    )  # fmt: skip


def test_opcheck(kg, graph):
    tr, known = kg
    ei, es = graph
    for kw in ({}, {"typed": True}, {"unique": True, "k": 3}, {"corrupt": "all"}, {"k": 0}):
        _, args = _corrupt_args(tr[:50], known, **kw)
        torch.library.opcheck(OPS.graph_corrupt.default, args)
    rows = torch.stack([ei[0], torch.zeros_like(ei[0]), ei[1]], 1)[:30]
    probs = torch.zeros(30, 3, dtype=torch.float64)
    probs[:, 2] = 1.0
    torch.library.opcheck(
        OPS.graph_corrupt.default,
        (rows, probs, 4, False, True, [N, 1, N], [], [], es.index_tensors(), [], [], t64(1), t64(0)),
    )
    scores = torch.randn(20, N)
    truth = tr[:20, 2].contiguous()
    ka, kb = tr[:20, 1].contiguous(), tr[:20, 0].contiguous()
    torch.library.opcheck(OPS.graph_filtered_ranks.default, (scores, truth, known.index_tensors("tail"), ka, kb))
    torch.library.opcheck(OPS.graph_filtered_ranks.default, (scores.double(), truth, [], ka, kb))


@pytest.mark.parametrize("kw", [{}, {"typed": True}, {"unique": True}, {"corrupt": "all"}, {"corrupt": "head"}])
def test_corrupt_op_gives_the_eager_draws(kg, kw):
    tr, known = kg
    c, args = _corrupt_args(tr, known, **kw)
    ids, sides, lq = OPS.graph_corrupt(*args)
    eager = c.sample(tr, 5, seed=3)
    assert torch.equal(sides.long(), eager.side) and torch.equal(lq, eager.log_q)
    got = tr.unsqueeze(1).repeat(1, 5, 1)
    got.scatter_(2, sides.long().unsqueeze(2), ids.unsqueeze(2))
    assert torch.equal(got, eager.triples)
    assert not known.contains(got.reshape(-1, 3)).any()


def test_negative_edges_through_the_op(graph):
    ei, es = graph
    b = ei.shape[1]
    rows = torch.stack([ei[0], torch.zeros_like(ei[0]), ei[1]], 1)
    probs = torch.zeros(b, 3, dtype=torch.float64)
    probs[:, 2] = 1.0
    ids, _, lq = OPS.graph_corrupt(
        rows, probs, 6, False, True, [N, 1, N], [], [], es.index_tensors(), [], [], t64(9), t64(4)
    )
    eager = G.negative_edges(es, ei, 6, seed=9, offset=4)
    assert torch.equal(ids, eager.dst) and torch.equal(lq, eager.log_q)
    # both ends: the reverse index filters a new source
    probs[:, 0] = probs[:, 2] = 0.5
    ids, sides, lq = OPS.graph_corrupt(
        rows,
        probs,
        6,
        False,
        True,
        [N, 1, N],
        es.index_tensors(reverse=True),
        [],
        es.index_tensors(),
        [],
        [],
        t64(9),
        t64(0),
    )
    eager = G.negative_edges(es, ei, 6, corrupt="both", seed=9)
    head = sides == 0
    assert torch.equal(torch.where(head, ei[1].unsqueeze(1).expand(b, 6), ids), eager.dst)
    assert torch.equal(torch.where(head, ids, ei[0].unsqueeze(1).expand(b, 6)), eager.src)
    assert torch.equal(lq, eager.log_q)


def test_ranks_op_gives_the_eager_ranks(kg):
    tr, known = kg
    g = torch.Generator().manual_seed(5)
    scores = (torch.rand(tr.shape[0], N, generator=g) * 8).round() / 8  # ties
    for side, ix in (("tail", "tail"), ("head", "head")):
        truth = tr[:, 2 if side == "tail" else 0].contiguous()
        kb = tr[:, 0 if side == "tail" else 2].contiguous()
        opt, pes = OPS.graph_filtered_ranks(scores, truth, known.index_tensors(ix), tr[:, 1].contiguous(), kb)
        assert torch.equal(opt.double(), G.filtered_ranks(scores, tr, side=side, filter=known, ties="optimistic"))
        assert torch.equal(pes.double(), G.filtered_ranks(scores, tr, side=side, filter=known, ties="pessimistic"))


def _step(c, known, idx_h, idx_t, head_p):
    def step(triples: torch.Tensor, seed: torch.Tensor, scores: torch.Tensor):
        hp = head_p[triples[:, 1]]
        probs = torch.stack([hp, torch.zeros_like(hp), 1.0 - hp], 1)
        ids, sides, lq = OPS.graph_corrupt(
            triples,
            probs,
            4,
            False,
            False,
            [N, R, N],
            idx_h,
            [],
            idx_t,
            [],
            [],
            seed,
            torch.zeros((), dtype=torch.int64),
        )
        opt, pes = OPS.graph_filtered_ranks(
            scores, triples[:, 2].contiguous(), idx_t, triples[:, 1].contiguous(), triples[:, 0].contiguous()
        )
        return ids, sides, lq, (opt + pes).double() / 2

    return step


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_fullgraph_matches_eager(kg, backend):
    tr, known = kg
    c = G.TripleCorruptor(known, corrupt="bernoulli")
    head_p = known.head_corruption_probs()
    step = _step(c, known, known.index_tensors("head"), known.index_tensors("tail"), head_p)
    scores = torch.randn(tr.shape[0], N, generator=torch.Generator().manual_seed(2))
    explained = dynamo.explain(step)(tr, t64(7), scores)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    for s in (7, 8):
        ids, sides, lq, ranks = compiled(tr, t64(s), scores)
        eager = c.sample(tr, 4, seed=s)
        assert torch.equal(sides.long(), eager.side) and torch.equal(lq, eager.log_q)
        assert torch.equal(ranks, G.filtered_ranks(scores, tr, side="tail", filter=known))


def test_refusals_name_the_argument(kg):
    tr, known = kg
    _, args = _corrupt_args(tr[:10], known)
    bad = list(args)
    bad[0] = tr[:10].int()
    with pytest.raises(TypeError, match="rows"):
        OPS.graph_corrupt(*bad)
    bad = list(args)
    bad[6] = known.index_tensors("head")[:2]
    with pytest.raises(ValueError, match="head_index"):
        OPS.graph_corrupt(*bad)
    bad = list(args)
    bad[0] = tr[:10].clone()
    bad[0][3, 0] = N  # head id out of range: a data check in the kernel
    with pytest.raises(ValueError, match="out of range"):
        OPS.graph_corrupt(*bad)
    bad = list(args)
    bad[2] = 10**18
    with pytest.raises((ValueError, MemoryError), match="k"):
        OPS.graph_corrupt(*bad)
    with pytest.raises(ValueError, match="NaN"):
        s = torch.zeros(2, N)
        s[1, 3] = float("nan")
        OPS.graph_filtered_ranks(s, torch.tensor([0, 1]), [], torch.tensor([0, 0]), torch.tensor([0, 0]))


def test_arbitrary_index_tensors_are_never_read_out_of_bounds(kg):
    """A view over tensors that are not an index's gives wrong filters, never a crash."""
    tr, known = kg
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        ng = int(torch.randint(0, 50, (1,), generator=g))
        groups = torch.randint(-5, 10**6, (ng, 4), generator=g)
        groups[:, :2] = torch.randint(0, 3, (ng, 2), generator=g)
        values = torch.randint(-3, 2 * N, (int(torch.randint(0, 60, (1,), generator=g)),), generator=g)
        slots = torch.randint(-1, ng + 3, (64,), generator=g) if trial % 2 else torch.zeros(64, dtype=torch.int64)
        idx = [groups, values, slots]
        c, args = _corrupt_args(tr[:40], known)
        args = list(args)
        args[6] = args[8] = idx
        try:
            ids, _, _ = OPS.graph_corrupt(*args)
            assert int(ids.min()) >= 0 and int(ids.max()) < N
        except ValueError:
            pass  # a row left with nothing to draw
        scores = torch.randn(40, N, generator=g)
        opt, pes = OPS.graph_filtered_ranks(
            scores, tr[:40, 2].contiguous(), idx, tr[:40, 1].contiguous(), tr[:40, 0].contiguous()
        )
        assert bool((opt >= 1).all()) and bool((pes <= N).all())
    with pytest.raises(ValueError, match="power of two"):
        not_pow2 = [
            torch.zeros(0, 4, dtype=torch.int64),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(3, dtype=torch.int64),
        ]
        OPS.graph_filtered_ranks(torch.zeros(1, N), torch.tensor([0]), not_pow2, torch.tensor([0]), torch.tensor([0]))


class _NegativesAndRanks(torch.nn.Module):
    """A training / evaluation step as a module: Bernoulli corruption through
    graph_corrupt, filtered tail ranks through graph_filtered_ranks; the index
    tensors and the head probabilities are buffers."""

    def __init__(self, known):
        super().__init__()
        for name, ts in (("h", known.index_tensors("head")), ("t", known.index_tensors("tail"))):
            for j, x in enumerate(ts):
                self.register_buffer(f"{name}{j}", x)
        self.register_buffer("head_p", known.head_corruption_probs())

    def forward(self, triples: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, scores: torch.Tensor):
        idx_h = [self.h0, self.h1, self.h2]
        idx_t = [self.t0, self.t1, self.t2]
        hp = self.head_p[triples[:, 1]]
        probs = torch.stack([hp, torch.zeros_like(hp), 1.0 - hp], 1)
        ids, sides, lq = OPS.graph_corrupt(
            triples, probs, 4, False, False, [N, R, N], idx_h, [], idx_t, [], [], seed, offset
        )
        opt, pes = OPS.graph_filtered_ranks(
            scores, triples[:, 2].contiguous(), idx_t, triples[:, 1].contiguous(), triples[:, 0].contiguous()
        )
        return ids, sides, lq, opt, pes


@pytest.mark.parametrize("dynamic", [False, True])
def test_export_round_trip_matches_eager(kg, dynamic):
    tr, known = kg
    m = _NegativesAndRanks(known)
    g = torch.Generator().manual_seed(4)
    scores = (torch.rand(tr.shape[0], N, generator=g) * 8).round() / 8
    example = (tr[:64].contiguous(), t64(7), t64(0), scores[:64].contiguous())
    shapes = None
    if dynamic:
        b = torch.export.Dim("b", min=2, max=4096)
        shapes = ({0: b}, None, None, {0: b})
    ep = torch.export.export(m, example, dynamic_shapes=shapes)
    names = {n.target.name() for n in ep.graph.nodes if isinstance(n.target, torch._ops.OpOverload)}
    assert {"pyneg::graph_corrupt", "pyneg::graph_filtered_ranks"} <= names
    run = ep.module()
    # new inputs: other rows, seeds and offsets (and, with a dynamic batch, another size)
    lo, hi = (64, 128) if not dynamic else (100, 400)
    cases = [example, (tr[lo:hi].contiguous(), t64(123), t64(lo), scores[lo:hi].contiguous())]
    for args in cases:
        got, want = run(*args), m(*args)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
        # and the eager library functions
        batch = args[0]
        eager = G.TripleCorruptor(known, corrupt="bernoulli").sample(batch, 4, seed=int(args[1]), offset=int(args[2]))
        assert torch.equal(got[1].long(), eager.side) and torch.equal(got[2], eager.log_q)
        ranks = G.filtered_ranks(args[3], batch, side="tail", filter=known, ties="optimistic")
        assert torch.equal(got[3].double(), ranks)
