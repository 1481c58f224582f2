"""Skip-gram word2vec on pyneg, side by side with gensim.

Trains skip-gram embeddings with two objectives:

- negative sampling: ``pyneg.SkipGramNegativeSampling`` (the two tables),
  negatives from ``pyneg.UnigramSampler(counts, power=0.75)``;
- hierarchical softmax: ``pyneg.HierarchicalSoftmax`` over the Huffman tree of
  the word counts;

then trains gensim's ``Word2Vec`` with the same hyperparameters on the same
tokens and prints, for each model: WordSim-353 and SimLex-999 Spearman
correlations, the accuracy on gensim's ``questions-words.txt`` analogies
(restricted to the vocabulary), nearest neighbours of a few words, and
training words per second.

The training loop is pyneg's skip-gram fast path: (centre, context) pairs of
a chunk of text from ``pyneg.SkipGramPairs`` (C++: word2vec's frequent-word
subsampling and reduced window, reproducible by seed), negatives drawn for a
slice of pairs in one call, and one fused C++ call per slice doing forward,
backward and the SGD update of every mini-batch of ``--batch`` pairs in place
with word2vec's linear learning-rate decay (deterministic for any thread
count). Hierarchical softmax defaults to word2vec's per-pair steps in corpus
order (``--batch 1``: deterministic, on one thread); ``--hogwild`` runs
per-pair steps on every thread, lock-free. ``--autograd`` trains the same
model through autograd and ``torch.optim.SGD`` on sparse gradients instead.

    python examples/word2vec.py                       # gensim's Lee corpus (~1 minute)
    python examples/word2vec.py --corpus text.txt     # any whitespace-tokenised text
    python examples/word2vec.py --gcide 2000000 --epochs 3 --threads 2   # Debian's dict-gcide, first 2M tokens
    python examples/word2vec.py --objectives hs --epochs 5

Needs ``pip install 'pyneg[examples]'`` (gensim and scipy).
"""

from __future__ import annotations

import argparse
import os
import string
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import pyneg

CHUNK_TOKENS = 1 << 20  # pairs are built (and shuffled) for this many tokens at a time
SLICE_PAIRS = 1 << 18  # pairs per fused call: negatives for them are drawn in one go
GCIDE = "/usr/share/dictd/gcide.dict.dz"  # Debian's dict-gcide: an English dictionary as text


# ------------------------------------------------------------------ corpus
def read_gcide(path: str, max_tokens: int) -> List[List[str]]:
    """The first ``max_tokens`` words of a dictd dictionary file (.dict.dz), lower-cased.

    Sentences end at . ; : ? ! and blank lines; words are runs of letters with
    inner apostrophes. Reads only the installed file (``apt-get install dict-gcide``).
    """
    import gzip
    import re

    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: install it with `apt-get install dict-gcide` (no download is attempted)")
    word, split = re.compile(r"[a-z]+(?:'[a-z]+)?"), re.compile(r"[.;:?!]+|\n\s*\n")
    sentences: List[List[str]] = []
    total = 0
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        while total < max_tokens:
            block = f.read(1 << 22)
            if not block:
                break
            block += f.readline()  # finish the line (sentences may still straddle blocks: fine)
            for piece in split.split(block.lower()):
                toks = word.findall(piece)[: max_tokens - total]
                if toks:
                    sentences.append(toks)
                    total += len(toks)
                if total >= max_tokens:
                    break
    return sentences


def read_corpus(path: str) -> List[List[str]]:
    """One sentence per line; tokens split on whitespace, lower-cased, outer punctuation stripped."""
    sentences = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            toks = [t.strip(string.punctuation) for t in line.lower().split()]
            toks = [t for t in toks if t]
            if toks:
                sentences.append(toks)
    return sentences


class Vocab:
    """Words with at least ``min_count`` occurrences, most frequent first."""

    def __init__(self, sentences: Sequence[Sequence[str]], min_count: int) -> None:
        counter = Counter(t for s in sentences for t in s)
        words = sorted((w for w, c in counter.items() if c >= min_count), key=lambda w: (-counter[w], w))
        self.words = words
        self.index: Dict[str, int] = {w: i for i, w in enumerate(words)}
        self.counts = np.array([counter[w] for w in words], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentences: Sequence[Sequence[str]]) -> Tuple[np.ndarray, np.ndarray]:
        """Flat ids of in-vocabulary tokens and the sentence each belongs to."""
        ids, sent = [], []
        for k, s in enumerate(sentences):
            row = [self.index[t] for t in s if t in self.index]
            ids.extend(row)
            sent.extend([k] * len(row))
        return np.asarray(ids, dtype=np.int64), np.asarray(sent, dtype=np.int64)


def sentence_offsets(sent: np.ndarray) -> np.ndarray:
    """Start of every sentence in the flat token stream (``nn.EmbeddingBag``-style offsets)."""
    if sent.size == 0:
        return np.zeros(1, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sent[1:] != sent[:-1]]).astype(np.int64)


def chunks_ahead(pairs: pyneg.SkipGramPairs, epochs: int) -> Iterator[Tuple[int, int, int, torch.Tensor, torch.Tensor]]:
    """(epoch, lo, hi, centres, contexts) of every chunk of every epoch, in order.

    The next chunk's pairs are made on a second thread while the caller trains
    on this one (pyneg's C++ calls release the GIL), so pair generation is
    off the training loop's critical path.
    """
    jobs = [(epoch, c, lo, hi) for epoch in range(epochs) for c, (lo, hi) in enumerate(pairs.chunks())]
    with ThreadPoolExecutor(max_workers=1) as pool:

        def submit(job: Tuple[int, int, int, int]):
            epoch, c, lo, hi = job
            return pool.submit(pairs.chunk_pairs, lo, hi, epoch, c)

        ahead = submit(jobs[0]) if jobs else None
        for j, (epoch, _c, lo, hi) in enumerate(jobs):
            centres, contexts = ahead.result()
            if j + 1 < len(jobs):
                ahead = submit(jobs[j + 1])
            yield epoch, lo, hi, centres, contexts


def train_pyneg(objective: str, vocab: Vocab, ids: np.ndarray, sent: np.ndarray, args) -> Tuple[np.ndarray, float]:
    """Trains skip-gram with ``objective`` in {"ns", "hs"}; returns (input vectors, seconds).

    ``--optimizer sgd`` (default) takes pyneg's fused fast path: pairs from
    ``pyneg.SkipGramPairs`` (C++, word2vec's subsampling and reduced window),
    negatives drawn for a whole slice of pairs at once, and one
    ``negative_sampling_sgd_`` / ``hierarchical_softmax_sgd_`` call per slice
    that runs forward, backward and the SGD update of every mini-batch of
    ``--batch`` pairs in place, with word2vec's linearly decaying learning rate.
    ``--autograd`` (or ``--optimizer adam``) trains the same model through
    autograd and ``torch.optim`` on sparse gradients instead.
    """
    torch.manual_seed(args.seed)
    v, d = len(vocab), args.dim
    dtype = torch.float32
    if objective == "ns":
        model = pyneg.SkipGramNegativeSampling(v, d, sparse=True, dtype=dtype)
        sampler = pyneg.UnigramSampler(vocab.counts, power=0.75)
        params = [model.weight, model.output_weight]
    else:
        emb = nn.Embedding(v, d, sparse=True, dtype=dtype)
        with torch.no_grad():  # word2vec's initialisation: small uniform inputs, zero inner nodes
            emb.weight.uniform_(-0.5 / d, 0.5 / d)
        hs = pyneg.HierarchicalSoftmax(vocab.counts, d, sparse=True, dtype=dtype)
        params = [emb.weight, hs.weight]
    weight = params[0]
    base_lr = args.lr if args.lr is not None else args.alpha
    fused = args.optimizer == "sgd" and not args.autograd
    opt: Optional[torch.optim.Optimizer] = None
    if not fused:
        opt = (
            torch.optim.SparseAdam(params, lr=base_lr)
            if args.optimizer == "adam"
            else torch.optim.SGD(params, lr=base_lr)
        )
    keep = pyneg.skipgram.keep_probability(vocab.counts, args.sample)
    # Default: per-pair steps (word2vec's update, corpus order) for Hogwild and
    # for hierarchical softmax; deterministic mini-batches of 1,024 for
    # negative sampling. A deterministic HS mini-batch must shuffle its pairs
    # (1,024 pairs in corpus order trained to WordSim-353 0.26 against 0.43
    # shuffled), and shuffled pairs lose the cache locality of corpus order:
    # the mini-batch path ran at about half the speed of per-pair steps on one
    # thread, which are deterministic too (docs/skipgram.md).
    batch = args.batch if args.batch is not None else (1 if fused and (args.hogwild or objective == "hs") else 1024)
    # Mini-batches should mix sentences (shuffled pairs); per-pair steps run in
    # corpus order as word2vec does, which also keeps a centre's row in cache.
    pairs = pyneg.SkipGramPairs(
        ids,
        args.window,
        offsets=sentence_offsets(sent),
        keep=keep,
        seed=args.seed,
        chunk_tokens=CHUNK_TOKENS,
        shuffle=batch > 1,
    )
    total_tokens = args.epochs * ids.shape[0]
    done_tokens = 0
    drawn = 0

    def lr_at(tokens: float) -> float:  # linear decay over the tokens seen, as word2vec does
        return max(base_lr * (1.0 - tokens / total_tokens), args.min_alpha)

    start = time.perf_counter()
    for _epoch, lo, hi, centres, contexts in chunks_ahead(pairs, args.epochs):
        n = centres.shape[0]
        step = SLICE_PAIRS if fused else batch
        for s in range(0, n, step):
            cs, xs = centres[s : s + step], contexts[s : s + step]
            t0 = done_tokens + (hi - lo) * s / max(n, 1)
            t1 = done_tokens + (hi - lo) * (s + cs.shape[0]) / max(n, 1)
            neg = None
            if objective == "ns":
                neg = sampler.sample((cs.shape[0], args.negative), seed=args.seed, offset=drawn)
                drawn += neg.numel()
            if fused and objective == "ns":
                model.sgd_step_(cs, xs, neg, lr_at(t0), lr_end=lr_at(t1), batch_size=batch, hogwild=args.hogwild)
            elif fused:
                pyneg.skipgram.hierarchical_softmax_sgd_(
                    emb.weight, hs, cs, xs, lr_at(t0), lr_end=lr_at(t1), batch_size=batch, hogwild=args.hogwild
                )
            else:
                for group in opt.param_groups:
                    group["lr"] = lr_at(t0)
                loss = model(cs, xs, neg, reduction="sum") if objective == "ns" else hs(emb(cs), xs, reduction="sum")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        done_tokens += hi - lo
    return weight.detach().numpy().copy(), time.perf_counter() - start


def train_gensim(objective: str, sentences: List[List[str]], args) -> Tuple[object, float]:
    from gensim.models import Word2Vec

    model = Word2Vec(
        vector_size=args.dim,
        window=args.window,
        min_count=args.min_count,
        sg=1,
        hs=int(objective == "hs"),
        negative=args.negative if objective == "ns" else 0,
        sample=args.sample,
        alpha=args.alpha,
        min_alpha=args.min_alpha,
        seed=args.seed,
        workers=args.threads,
    )
    model.build_vocab(sentences)
    start = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    return model, time.perf_counter() - start


# -------------------------------------------------------------- evaluation
def normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _gensim_data(name: str) -> str:
    from gensim.test.utils import datapath

    return datapath(name)


def similarity_spearman(path: str, index: Dict[str, int], unit: np.ndarray) -> Tuple[float, int]:
    """Spearman correlation of cosine similarity with human scores (tab-separated word, word, score)."""
    from scipy.stats import spearmanr

    human, model = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            a, b, score = line.lower().split("\t")[:3]
            if a in index and b in index:
                human.append(float(score))
                model.append(float(unit[index[a]] @ unit[index[b]]))
    if len(human) < 3:
        return float("nan"), len(human)
    return float(spearmanr(human, model).statistic), len(human)


def wordsim353(index: Dict[str, int], unit: np.ndarray) -> Tuple[float, int]:
    """WordSim-353 Spearman over the pairs in the vocabulary (gensim's bundled copy)."""
    return similarity_spearman(_gensim_data("wordsim353.tsv"), index, unit)


def simlex999(index: Dict[str, int], unit: np.ndarray) -> Tuple[float, int]:
    """SimLex-999 Spearman over the pairs in the vocabulary (gensim's bundled copy)."""
    return similarity_spearman(_gensim_data("simlex999.txt"), index, unit)


def analogy_accuracy(index: Dict[str, int], unit: np.ndarray) -> Tuple[float, int]:
    """3CosAdd accuracy on questions-words.txt, over questions whose four words are in the vocabulary.

    a : b :: c : d is right when d is the nearest word to b - a + c (unit
    vectors, cosine), a, b and c excluded.
    """
    quads = []
    with open(_gensim_data("questions-words.txt"), encoding="utf-8") as f:
        for line in f:
            if line.startswith(":"):
                continue
            words = line.lower().split()
            if len(words) == 4 and all(w in index for w in words):
                quads.append([index[w] for w in words])
    if not quads:
        return float("nan"), 0
    q = np.asarray(quads)
    right = 0
    for s in range(0, len(q), 512):
        part = q[s : s + 512]
        target = unit[part[:, 1]] - unit[part[:, 0]] + unit[part[:, 2]]
        sims = target @ unit.T
        rows = np.arange(len(part))
        for j in range(3):
            sims[rows, part[:, j]] = -np.inf
        right += int((sims.argmax(1) == part[:, 3]).sum())
    return right / len(q), len(q)


def neighbours(word: str, index: Dict[str, int], words: Sequence[str], unit: np.ndarray, k: int = 5) -> List[str]:
    sims = unit @ unit[index[word]]
    order = np.argsort(-sims)
    return [words[i] for i in order if words[i] != word][:k]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--corpus",
        default=None,
        help="whitespace-tokenised text, one sentence per line (default: gensim's lee_background.cor)",
    )
    p.add_argument(
        "--gcide",
        type=int,
        default=None,
        metavar="TOKENS",
        help=f"train on the first TOKENS words of {GCIDE} (Debian package dict-gcide) instead",
    )
    p.add_argument("--objectives", default="ns,hs", help="comma-separated: ns (negative sampling), hs")
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--negative", type=int, default=5)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--sample", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--alpha", type=float, default=0.025)
    p.add_argument("--min-alpha", type=float, default=0.0001)
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="sgd: word2vec's plain SGD on summed losses; adam: SparseAdam, steadier for "
        "large batches (a shared node such as the tree's root sums a whole batch)",
    )
    p.add_argument("--lr", type=float, default=None, help="pyneg's initial learning rate (default: --alpha)")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="pairs per SGD step (default: 1024 for ns; 1, word2vec's per-pair steps, for hs and with --hogwild)",
    )
    p.add_argument(
        "--autograd",
        action="store_true",
        help="train through autograd and torch.optim (sparse gradients) instead of pyneg's fused in-place SGD step",
    )
    p.add_argument(
        "--hogwild",
        action="store_true",
        help="fused path: threads train their own shares of the pairs lock-free, one pair per step "
        "by default (as word2vec and gensim do), instead of splitting each mini-batch deterministically",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for pyneg's kernels (torch's intra-op threads) and worker threads for gensim",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--words",
        default="government,police,australia,fire,president",
        help="words whose nearest neighbours are printed",
    )
    p.add_argument("--no-gensim", action="store_true", help="train pyneg's models only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    path = args.corpus
    if args.gcide is not None:
        path = f"{GCIDE} (first {args.gcide} words)"
        sentences = read_gcide(GCIDE, args.gcide)
    else:
        if path is None:
            path = _gensim_data("lee_background.cor")
        sentences = read_corpus(path)
    vocab = Vocab(sentences, args.min_count)
    ids, sent = vocab.encode(sentences)
    raw_words = sum(len(s) for s in sentences)
    print(
        f"corpus {path}: {raw_words} words, {len(sentences)} sentences, vocabulary {len(vocab)} "
        f"(min count {args.min_count}); {args.epochs} epochs, dim {args.dim}, window {args.window}"
    )

    shown = [w for w in args.words.split(",") if w in vocab.index] or vocab.words[20:25]
    rows = []
    for objective in [o.strip() for o in args.objectives.split(",") if o.strip()]:
        if objective not in ("ns", "hs"):
            raise SystemExit(f"unknown objective {objective!r}: use ns or hs")
        vectors, secs = train_pyneg(objective, vocab, ids, sent, args)
        rows.append((f"pyneg {objective}", vocab.index, vocab.words, normalise(vectors), secs))
        if not args.no_gensim:
            model, gsecs = train_gensim(objective, sentences, args)
            kv = model.wv
            rows.append((f"gensim {objective}", kv.key_to_index, kv.index_to_key, normalise(kv.vectors), gsecs))

    print(
        f"\n{'model':<11} {'WS353 rho':>9} {'pairs':>6} {'SL999 rho':>9} {'pairs':>6} {'analogy':>7} "
        f"{'qs':>6} {'words/s':>10} {'train s':>8}"
    )
    for name, index, _words, unit, secs in rows:
        ws, n_ws = wordsim353(index, unit)
        sl, n_sl = simlex999(index, unit)
        an, n_an = analogy_accuracy(index, unit)
        print(
            f"{name:<11} {ws:>9.3f} {n_ws:>6} {sl:>9.3f} {n_sl:>6} {an:>7.3f} {n_an:>6} "
            f"{raw_words * args.epochs / secs:>10,.0f} {secs:>8.1f}"
        )
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for word in shown:
        print(f"\nnearest neighbours of {word!r}:")
        for name, index, words, unit, _ in rows:
            if word in index:
                print(f"  {name:<11} {', '.join(neighbours(word, index, words, unit))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
