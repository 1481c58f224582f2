"""Skip-gram workloads: pyneg's fused negative-sampling kernels and pair
generator against what users write today.

- the fused loss (``negative_sampling_embedding_loss``, sparse gradients)
  against today's autograd path (``nn.Embedding(sparse=True)`` gathers into
  ``pyneg.functional.negative_sampling_loss``) and a plain-PyTorch formula;
  B = 4,096 pairs, K = 5, d = 100, V = 10^5, peak memory in the table;
- one training step of the same batch: ``negative_sampling_sgd_`` in place
  against autograd + ``torch.optim.SGD`` on sparse gradients;
- a training pass over 2^16 pairs (V = 25,000 Zipf-distributed words, as on
  a 2M-token English corpus): per-pair steps (``batch_size=1``, Hogwild over
  torch's threads, word2vec's update) and deterministic mini-batches of 1,024
  against autograd + ``torch.optim.SGD`` on the same mini-batches;
- (centre, context) pairs of 10^6 tokens against a vectorised NumPy version of
  the same rule (word2vec's reduced window, sentences respected);
- hierarchical-softmax skip-gram epochs on a dictionary corpus (Debian's
  dict-gcide when installed, else a Zipf stand-in; 2M tokens, as
  examples/word2vec.py trains): pyneg's deterministic per-pair steps in
  corpus order (the example's default), deterministic mini-batches and
  Hogwild per-pair steps against gensim's ``Word2Vec(sg=1, hs=1)`` on the
  same tokens and threads (when gensim is installed), and both deterministic
  epochs while a CPU-bound process started by the benchmark competes for the
  cores, against the same epoch without it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import pyneg
from pyneg import skipgram as sg
from pyneg.bench.sampling import zipf_counts
from pyneg.bench.workload import Target, Workload

TODAY = "autograd: nn.Embedding(sparse) + negative_sampling_loss"
PLAIN = "plain PyTorch (gather + logsigmoid)"
TORCH_SGD = "autograd + torch.optim.SGD (sparse grads)"
NUMPY_PAIRS = "NumPy vectorised pairs"


# ------------------------------------------------------------------ the loss
def _loss_setup(v: int, batch: int, k: int, dim: int):
    def setup(quick: bool) -> SimpleNamespace:
        vv, b = (v, batch) if not quick else (min(v, 10**4), min(batch, 512))
        counts = zipf_counts(vv)
        gen = torch.Generator().manual_seed(0)
        w_in = (torch.rand(vv, dim, generator=gen) - 0.5) / dim
        w_out = torch.randn(vv, dim, generator=gen) * 0.1
        rng = np.random.default_rng(1)
        p = counts / counts.sum()
        centres = torch.from_numpy(rng.choice(vv, size=b, p=p))
        contexts = torch.from_numpy(rng.choice(vv, size=b, p=p))
        negatives = pyneg.UnigramSampler(counts).sample((b, k), seed=2)
        return SimpleNamespace(
            w_in=w_in.requires_grad_(),
            w_out=w_out.requires_grad_(),
            centres=centres,
            contexts=contexts,
            negatives=negatives,
            batch=b,
            k=k,
            dim=dim,
            v=vv,
        )

    return setup


def _grads(loss: torch.Tensor, st: SimpleNamespace) -> Tuple[torch.Tensor, ...]:
    return (loss.detach(),) + torch.autograd.grad(loss, [st.w_in, st.w_out])


def _pyneg_loss(st: SimpleNamespace):
    return _grads(
        sg.negative_sampling_embedding_loss(
            st.w_in, st.w_out, st.centres, st.contexts, st.negatives, "sum", sparse=True
        ),
        st,
    )


def _today_loss(st: SimpleNamespace):
    v = F.embedding(st.centres, st.w_in, sparse=True)
    loss = pyneg.functional.negative_sampling_loss(
        v,
        F.embedding(st.contexts, st.w_out, sparse=True),
        F.embedding(st.negatives, st.w_out, sparse=True),
        reduction="sum",
    )
    return _grads(loss, st)


def _plain_loss(st: SimpleNamespace):
    v = st.w_in[st.centres]
    pos = (v * st.w_out[st.contexts]).sum(-1)
    neg = torch.bmm(st.w_out[st.negatives], v.unsqueeze(2)).squeeze(2)
    return _grads((-F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)).sum(), st)


def _dense(g: torch.Tensor) -> torch.Tensor:
    return g.coalesce().to_dense() if g.is_sparse else g


def _check_loss(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    loss, g_in, g_out = result
    assert g_in.is_sparse and g_out.is_sparse
    touched = torch.unique(torch.cat([st.contexts, st.negatives.flatten()]))
    assert torch.equal(g_out._indices()[0], touched), "sparse gradient must hold exactly the touched rows"
    for name in (TODAY, PLAIN):
        bloss, b_in, b_out = baselines[name]
        assert torch.allclose(loss, bloss, rtol=1e-5), (name, float(loss), float(bloss))
        assert torch.allclose(_dense(g_in), _dense(b_in), rtol=1e-4, atol=1e-6), name
        assert torch.allclose(_dense(g_out), _dense(b_out), rtol=1e-4, atol=1e-6), name


# ------------------------------------------------------------- a whole step
def _step_setup(v: int, batch: int, k: int, dim: int):
    def setup(quick: bool) -> SimpleNamespace:
        st = _loss_setup(v, batch, k, dim)(quick)
        w_in, w_out = st.w_in.detach(), st.w_out.detach()
        st.fused = (w_in.clone(), w_out.clone())
        st.torch = (w_in.clone().requires_grad_(), w_out.clone().requires_grad_())
        st.opt = torch.optim.SGD(list(st.torch), lr=0.025)
        st.start = (w_in.clone(), w_out.clone())
        return st

    return setup


def _fused_step(st: SimpleNamespace):
    w_in, w_out = st.fused
    sg.negative_sampling_sgd_(w_in, w_out, st.centres, st.contexts, st.negatives, 0.025, batch_size=st.batch)
    return st.fused


def _torch_step(st: SimpleNamespace):
    a, b = st.torch
    v = F.embedding(st.centres, a, sparse=True)
    loss = pyneg.functional.negative_sampling_loss(
        v, F.embedding(st.contexts, b, sparse=True), F.embedding(st.negatives, b, sparse=True), reduction="sum"
    )
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    st.opt.step()
    return st.torch


def _check_step(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    # Timed calls keep training; compare one step of each from the same start.
    fused = (st.start[0].clone(), st.start[1].clone())
    sg.negative_sampling_sgd_(*fused, st.centres, st.contexts, st.negatives, 0.025, batch_size=st.batch)
    ref = SimpleNamespace(**vars(st))
    ref.torch = (st.start[0].clone().requires_grad_(), st.start[1].clone().requires_grad_())
    ref.opt = torch.optim.SGD(list(ref.torch), lr=0.025)
    want = _torch_step(ref)
    for got, exp in zip(fused, want):
        assert torch.allclose(got, exp.detach(), rtol=1e-4, atol=1e-6)
    assert result[0].shape == st.start[0].shape and not torch.equal(fused[1], st.start[1])


# ------------------------------------------------------------- a training pass
PASS_MINIBATCH = "pyneg mini-batches of 1024 (deterministic)"
PASS_TORCH = "autograd + torch.optim.SGD, mini-batches of 1024"
PASS_BATCH = 1024


def _pass_setup(v: int, pairs: int, k: int, dim: int):
    def setup(quick: bool) -> SimpleNamespace:
        n, v_ = (pairs, v) if not quick else (pairs // 4, v // 10)  # quick: still enough pairs per word to train
        counts = zipf_counts(v_)
        gen = torch.Generator().manual_seed(4)
        p = torch.as_tensor(counts, dtype=torch.float64)
        centres = torch.multinomial(p, n, replacement=True, generator=gen)
        contexts = (centres + torch.randint(1, 4, (n,), generator=gen)) % v_  # learnable: neighbours in id
        negatives = pyneg.UnigramSampler(counts, power=0.75).sample((n, k), seed=5)
        w_in = (torch.rand(v_, dim, generator=gen) - 0.5) / dim
        return SimpleNamespace(
            centres=centres,
            contexts=contexts,
            negatives=negatives,
            start=(w_in, torch.zeros(v_, dim)),
            n=n,
            v=v_,
        )

    return setup


def _pass_tables(st: SimpleNamespace) -> Tuple[torch.Tensor, torch.Tensor]:
    return st.start[0].clone(), st.start[1].clone()


def _pass_per_pair(st: SimpleNamespace):
    w = _pass_tables(st)
    sg.negative_sampling_sgd_(
        *w, st.centres, st.contexts, st.negatives, 0.025, lr_end=0.0001, batch_size=1, hogwild=True
    )
    return w


def _pass_minibatch(st: SimpleNamespace):
    w = _pass_tables(st)
    sg.negative_sampling_sgd_(*w, st.centres, st.contexts, st.negatives, 0.025, lr_end=0.0001, batch_size=PASS_BATCH)
    return w


def _pass_torch(st: SimpleNamespace):
    a, b = (t.requires_grad_() for t in _pass_tables(st))
    opt = torch.optim.SGD([a, b], lr=0.025)
    for first in range(0, st.n, PASS_BATCH):
        for group in opt.param_groups:
            group["lr"] = 0.025 + (0.0001 - 0.025) * first / st.n
        s = slice(first, first + PASS_BATCH)
        loss = pyneg.functional.negative_sampling_loss(
            F.embedding(st.centres[s], a, sparse=True),
            F.embedding(st.contexts[s], b, sparse=True),
            F.embedding(st.negatives[s], b, sparse=True),
            reduction="sum",
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return a.detach(), b.detach()


def _pass_loss(st: SimpleNamespace, w: Tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(sg.negative_sampling_embedding_loss(w[0], w[1], st.centres, st.contexts, st.negatives, "mean"))


def _check_pass(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    before = _pass_loss(st, st.start)
    mine, det, ref = (
        _pass_loss(st, result),
        _pass_loss(st, baselines[PASS_MINIBATCH]),
        _pass_loss(st, baselines[PASS_TORCH]),
    )
    assert mine < 0.97 * before, ("per-pair steps must train", mine, before)
    assert abs(det - ref) <= 1e-3 * ref, ("mini-batches must equal torch.optim.SGD", det, ref)
    assert abs(mine - ref) <= 0.1 * ref, ("per-pair and mini-batch SGD must reach a similar loss", mine, ref)


# ------------------------------------------------------------ pair generation
def _pairs_setup(n: int, window: int):
    def setup(quick: bool) -> SimpleNamespace:
        nn = n if not quick else n // 20
        rng = np.random.default_rng(3)
        lengths = rng.integers(1, 30, nn // 8)
        offsets = np.r_[0, np.cumsum(lengths)]
        offsets = offsets[offsets < nn]
        sent = np.zeros(nn, dtype=np.int64)
        sent[offsets[1:]] = 1
        # Token id = position, so a check can read distances and sentences back from the pairs.
        return SimpleNamespace(
            tokens=np.arange(nn, dtype=np.int64),
            offsets=offsets.astype(np.int64),
            sent=np.cumsum(sent),
            window=window,
            n=nn,
        )

    return setup


def _pyneg_pairs(st: SimpleNamespace):
    return sg.skipgram_pairs(st.tokens, st.window, offsets=st.offsets, seed=1)


def _numpy_pairs(st: SimpleNamespace):
    rng = np.random.default_rng(1)
    ids, sent, n = st.tokens, st.sent, st.n
    reach = rng.integers(1, st.window + 1, n)
    centres, contexts = [], []
    for o in range(1, st.window + 1):
        left = np.arange(n - o)
        right = left + o
        same = sent[left] == sent[right]
        fwd = same & (reach[left] >= o)
        bwd = same & (reach[right] >= o)
        centres += [ids[left[fwd]], ids[right[bwd]]]
        contexts += [ids[right[fwd]], ids[left[bwd]]]
    return np.concatenate(centres), np.concatenate(contexts)


def _check_pairs(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    c, x = result[0].numpy(), result[1].numpy()
    assert np.all(np.abs(c - x) <= st.window) and np.all(c != x)
    assert np.all(st.sent[c] == st.sent[x]), "a pair crosses a sentence"
    theirs = baselines[NUMPY_PAIRS][0].size
    assert abs(c.size - theirs) <= 0.02 * theirs, (c.size, theirs)  # same rule, different random streams


# ------------------------------------------- hierarchical-softmax epochs
GCIDE = "/usr/share/dictd/gcide.dict.dz"
GENSIM_HS = "gensim Word2Vec(sg=1, hs=1), same threads"
HS_IDLE = "pyneg deterministic, no competing process"


def _corpus(tokens: int):
    """Sentences of words: GCIDE's first ``tokens`` words when dict-gcide is installed, else Zipf words."""
    import os
    import re

    if os.path.exists(GCIDE):
        import gzip

        word, split = re.compile(r"[a-z]+(?:'[a-z]+)?"), re.compile(r"[.;:?!]+|\n\s*\n")
        out, total = [], 0
        with gzip.open(GCIDE, "rt", encoding="utf-8", errors="replace") as f:
            while total < tokens:
                block = f.read(1 << 20)
                if not block:
                    break
                for piece in split.split(block.lower()):
                    toks = word.findall(piece)[: tokens - total]
                    if toks:
                        out.append(toks)
                        total += len(toks)
                    if total >= tokens:
                        break
        return out, "GCIDE"
    rng = np.random.default_rng(0)
    ids = rng.choice(5000, size=tokens, p=zipf_counts(5000) / zipf_counts(5000).sum())
    return [[f"w{i}" for i in ids[s : s + 12]] for s in range(0, tokens, 12)], "Zipf stand-in"


def _hs_setup(tokens: int):
    def setup(quick: bool) -> SimpleNamespace:
        sentences, source = _corpus(tokens // 4 if quick else tokens)
        counter: Dict[str, int] = {}
        for snt in sentences:
            for t in snt:
                counter[t] = counter.get(t, 0) + 1
        words = sorted((w for w, c in counter.items() if c >= 5), key=lambda w: (-counter[w], w))
        index = {w: i for i, w in enumerate(words)}
        ids: List[int] = []
        starts: List[int] = []
        for snt in sentences:
            row = [index[t] for t in snt if t in index]
            if row:
                starts.append(len(ids))
                ids.extend(row)
        counts = np.array([counter[w] for w in words], dtype=np.float64)
        return SimpleNamespace(
            sentences=sentences,
            source=source,
            ids=torch.tensor(ids),
            offsets=torch.tensor(starts),
            counts=counts,
            keep=sg.keep_probability(counts, 1e-3),
            n=sum(len(snt) for snt in sentences),
            v=len(words),
            threads=torch.get_num_threads(),
        )

    return setup


def _hs_epoch(st: SimpleNamespace, mode: str):
    """One epoch as examples/word2vec.py trains it (pairs included), dim 100, window 5, lr 0.025 -> 0.0001.

    mode: "pairs" (the example's deterministic default: per-pair steps in
    corpus order, one thread), "minibatch" (deterministic mini-batches of
    1,024 shuffled pairs over torch's threads) or "hogwild" (per-pair steps,
    lock-free over torch's threads).
    """
    emb = _hs_init(st)
    hs = pyneg.HierarchicalSoftmax(st.counts, 100)
    batch = 1024 if mode == "minibatch" else 1
    # Mini-batches mix sentences: their pairs are written shuffled (seed 1), as SkipGramPairs does.
    c, x = sg._pairs(st.ids, 5, st.offsets, st.keep, 1, 0, 1 if batch > 1 else None)
    sg.hierarchical_softmax_sgd_(emb, hs, c, x, 0.025, lr_end=0.0001, batch_size=batch, hogwild=mode == "hogwild")
    return emb


def _hs_init(st: SimpleNamespace) -> torch.Tensor:
    """word2vec's initial input vectors, the same for every run."""
    return torch.empty(st.v, 100).uniform_(-0.005, 0.005, generator=torch.Generator().manual_seed(0))


def _hs_det(st: SimpleNamespace):
    return _hs_epoch(st, "pairs")


def _hs_minibatch(st: SimpleNamespace):
    return _hs_epoch(st, "minibatch")


def _hs_hogwild(st: SimpleNamespace):
    return _hs_epoch(st, "hogwild")


def _competing(fn):
    def run(st: SimpleNamespace):
        """fn's epoch while a CPU-bound process (started here, stopped after) competes for the cores."""
        import subprocess
        import sys

        rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            return fn(st)
        finally:
            rival.kill()
            rival.wait()

    return run


def _gensim_hs(st: SimpleNamespace):
    from gensim.models import Word2Vec  # type: ignore[import-untyped]

    model = Word2Vec(
        vector_size=100,
        window=5,
        min_count=5,
        sg=1,
        hs=1,
        negative=0,
        sample=1e-3,
        alpha=0.025,
        min_alpha=0.0001,
        seed=1,
        workers=st.threads,
    )
    model.build_vocab(st.sentences)
    model.train(st.sentences, total_examples=len(st.sentences), epochs=1)
    return model


def _gensim_baseline() -> Dict[str, Any]:
    try:
        import gensim  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return {}
    return {GENSIM_HS: _gensim_hs}


def _check_hs(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    # The epoch trained: finite vectors that moved from the initial ones (the
    # input rows of the words seen; word2vec's initial vectors lie in +-0.005).
    assert torch.isfinite(result).all()
    moved = (result - _hs_init(st)).abs().amax(dim=1)
    assert float(moved.max()) > 0.05 and float((moved > 0).float().mean()) > 0.5, "the epoch did not train"
    for name, other in baselines.items():
        if name == HS_IDLE:  # the same deterministic epoch: the same bits, competing process or not
            assert torch.equal(result, other), "a competing process must not change the deterministic result"


def _hs_competing(name: str, fn, what: str) -> Workload:
    """fn's epoch with a CPU-bound process competing, against the same epoch alone (time within 1.5x)."""
    return Workload(
        name=name,
        group="skipgram",
        description=f"{what} with a CPU-bound process competing (started by the benchmark)",
        setup=_hs_setup(2_000_000),
        run=_competing(fn),
        baselines={HS_IDLE: fn},
        check=_check_hs,
        items=lambda st: st.n,
        targets=(Target("ratio", 1 / 1.5, HS_IDLE),),
        target_size={"tokens": 2_000_000},
        size=lambda st: {"tokens": st.n},
    )


WORKLOADS = [
    Workload(
        name="skipgram_ns_loss_sparse_V1e5",
        group="skipgram",
        description="SGNS loss fwd + bwd from the tables, B = 4096, K = 5, d = 100, V = 10^5 (sparse grads)",
        setup=_loss_setup(10**5, 4096, 5, 100),
        run=_pyneg_loss,
        baselines={TODAY: _today_loss, PLAIN: _plain_loss},
        check=_check_loss,
        items=lambda st: st.batch,
        targets=(Target("ratio", 1, TODAY),),
        target_size={"V": 10**5, "B": 4096},
        size=lambda st: {"V": st.v, "B": st.batch},
        measure_memory=True,
    ),
    Workload(
        name="skipgram_ns_sgd_step_V1e5",
        group="skipgram",
        description="one SGNS training step in place, B = 4096, K = 5, d = 100, V = 10^5",
        setup=_step_setup(10**5, 4096, 5, 100),
        run=_fused_step,
        baselines={TORCH_SGD: _torch_step},
        check=_check_step,
        items=lambda st: st.batch,
        targets=(Target("ratio", 1, TORCH_SGD),),
        target_size={"V": 10**5, "B": 4096},
        size=lambda st: {"V": st.v, "B": st.batch},
        measure_memory=True,
    ),
    Workload(
        name="skipgram_ns_sgd_pass_2e16",
        group="skipgram",
        description="SGNS training pass in place, 65,536 pairs, K = 5, d = 100, V = 25,000 (Zipf): per-pair steps",
        setup=_pass_setup(25_000, 1 << 16, 5, 100),
        run=_pass_per_pair,
        baselines={PASS_MINIBATCH: _pass_minibatch, PASS_TORCH: _pass_torch},
        check=_check_pass,
        items=lambda st: st.n,
        targets=(Target("ratio", 1, PASS_TORCH),),
        target_size={"V": 25_000, "pairs": 1 << 16},
        size=lambda st: {"V": st.v, "pairs": st.n},
        measure_memory=True,
    ),
    Workload(
        name="skipgram_hs_gcide_det",
        group="skipgram",
        description="HS skip-gram epoch on 2M GCIDE tokens (pairs included), d = 100: deterministic per-pair steps "
        "in corpus order (the example's default)",
        setup=_hs_setup(2_000_000),
        run=_hs_det,
        baselines=_gensim_baseline(),
        check=_check_hs,
        items=lambda st: st.n,
        targets=(Target("ratio", 1, GENSIM_HS),) if _gensim_baseline() else (),
        target_size={"tokens": 2_000_000},
        size=lambda st: {"tokens": st.n},
    ),
    Workload(
        name="skipgram_hs_gcide_minibatch",
        group="skipgram",
        description="HS skip-gram epoch on 2M GCIDE tokens (pairs included), d = 100: deterministic mini-batches "
        "of 1,024 shuffled pairs",
        setup=_hs_setup(2_000_000),
        run=_hs_minibatch,
        baselines=_gensim_baseline(),
        check=_check_hs,
        items=lambda st: st.n,
        target_size={"tokens": 2_000_000},
        size=lambda st: {"tokens": st.n},
    ),
    Workload(
        name="skipgram_hs_gcide_hogwild",
        group="skipgram",
        description="HS skip-gram epoch on 2M GCIDE tokens (pairs included), d = 100: Hogwild per-pair steps",
        setup=_hs_setup(2_000_000),
        run=_hs_hogwild,
        baselines=_gensim_baseline(),
        check=_check_hs,
        items=lambda st: st.n,
        targets=(Target("ratio", 1, GENSIM_HS),) if _gensim_baseline() else (),
        target_size={"tokens": 2_000_000},
        size=lambda st: {"tokens": st.n},
    ),
    _hs_competing("skipgram_hs_gcide_det_competing", _hs_det, "the deterministic per-pair HS epoch"),
    _hs_competing("skipgram_hs_gcide_minibatch_competing", _hs_minibatch, "the deterministic mini-batch HS epoch"),
    Workload(
        name="skipgram_pairs_1e6",
        group="skipgram",
        description="(centre, context) pairs of 10^6 tokens, window 5, reduced window, sentences",
        setup=_pairs_setup(10**6, 5),
        run=_pyneg_pairs,
        baselines={NUMPY_PAIRS: _numpy_pairs},
        check=_check_pairs,
        items=lambda st: st.n,
    ),
]
