"""Skip-gram word2vec on pyneg, side by side with gensim.

Trains skip-gram embeddings with two objectives:

- negative sampling: ``pyneg.UnigramSampler(counts, power=0.75)`` draws all
  negatives of a batch in one call, ``pyneg.functional.negative_sampling_loss``;
- hierarchical softmax: ``pyneg.HierarchicalSoftmax`` over the Huffman tree of
  the word counts;

then trains gensim's ``Word2Vec`` with the same hyperparameters on the same
tokens and prints, for each model: WordSim-353 Spearman correlation, nearest
neighbours of a few frequent words, and training words per second.

Everything per batch is vectorised: (centre, context) pairs of a whole chunk
of text are built with NumPy (word2vec's reduced window and frequent-word
subsampling included), embeddings are ``nn.Embedding(sparse=True)`` trained by
plain SGD on sparse gradients with word2vec's linear learning-rate decay.

    python examples/word2vec.py                       # gensim's Lee corpus (~1-2 minutes)
    python examples/word2vec.py --corpus text.txt     # any whitespace-tokenised text
    python examples/word2vec.py --objectives hs --epochs 5

Needs ``pip install 'pyneg[examples]'`` (gensim and scipy).
"""
from __future__ import annotations

import argparse
import string
import time
from collections import Counter
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import pyneg
from pyneg.functional import negative_sampling_loss

CHUNK_TOKENS = 1 << 20  # pairs are built for this many tokens at a time


# ------------------------------------------------------------------ corpus
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


def keep_probability(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's subsampling of frequent words: keep w with (sqrt(f/t) + 1) t / f, t = sample * total."""
    if sample <= 0:
        return np.ones_like(counts)
    t = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / t) + 1.0) * t / counts)


def skipgram_pairs(ids: np.ndarray, sent: np.ndarray, keep: np.ndarray, window: int,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """All (centre, context) pairs of a chunk, shuffled.

    Subsamples the tokens, gives every centre a reduced window b ~ U{1..window}
    as word2vec does, and pairs tokens at distance o <= b within a sentence.
    """
    kept = rng.random(ids.shape[0]) < keep[ids]
    ids, sent = ids[kept], sent[kept]
    n = ids.shape[0]
    reach = rng.integers(1, window + 1, n)
    centres, contexts = [], []
    for o in range(1, window + 1):
        left = np.arange(n - o)
        right = left + o
        same = sent[left] == sent[right]
        fwd = same & (reach[left] >= o)    # centre left, context right
        bwd = same & (reach[right] >= o)   # centre right, context left
        centres += [ids[left[fwd]], ids[right[bwd]]]
        contexts += [ids[right[fwd]], ids[left[bwd]]]
    c, x = np.concatenate(centres), np.concatenate(contexts)
    perm = rng.permutation(c.shape[0])
    return c[perm], x[perm]


def chunks(ids: np.ndarray, sent: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    for s in range(0, ids.shape[0], CHUNK_TOKENS):
        yield ids[s:s + CHUNK_TOKENS], sent[s:s + CHUNK_TOKENS]


# ---------------------------------------------------------------- training
def train_pyneg(objective: str, vocab: Vocab, ids: np.ndarray, sent: np.ndarray, args) -> Tuple[np.ndarray, float]:
    """Trains skip-gram with ``objective`` in {"ns", "hs"}; returns (input vectors, seconds)."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    v, d = len(vocab), args.dim
    emb = nn.Embedding(v, d, sparse=True)
    with torch.no_grad():  # word2vec's initialisation: small uniform inputs, zero outputs
        emb.weight.uniform_(-0.5 / d, 0.5 / d)
    if objective == "ns":
        out = nn.Embedding(v, d, sparse=True)
        nn.init.zeros_(out.weight)
        sampler = pyneg.UnigramSampler(vocab.counts, power=0.75)
        negatives = torch.empty(args.batch, args.negative, dtype=torch.int64)
        params = [emb.weight, out.weight]
    else:
        hs = pyneg.HierarchicalSoftmax(vocab.counts, d, sparse=True)
        params = [emb.weight, hs.weight]
    base_lr = args.lr if args.lr is not None else args.alpha
    if args.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.SparseAdam(params, lr=base_lr)
    else:
        opt = torch.optim.SGD(params, lr=base_lr)
    keep = keep_probability(vocab.counts, args.sample)
    total_tokens = args.epochs * ids.shape[0]
    done_tokens = 0
    drawn = 0
    start = time.perf_counter()
    for _ in range(args.epochs):
        for cids, csent in chunks(ids, sent):
            centres, contexts = skipgram_pairs(cids, csent, keep, args.window, rng)
            centres, contexts = torch.from_numpy(centres), torch.from_numpy(contexts)
            pairs = centres.shape[0]
            for s in range(0, pairs, args.batch):
                c, x = centres[s:s + args.batch], contexts[s:s + args.batch]
                # Linear decay over the tokens seen, as word2vec does.
                progress = (done_tokens + cids.shape[0] * s / max(pairs, 1)) / total_tokens
                lr = max(base_lr * (1.0 - progress), args.min_alpha)
                for group in opt.param_groups:
                    group["lr"] = lr
                vec = emb(c)
                if objective == "ns":
                    neg = sampler.sample((c.shape[0], args.negative), seed=args.seed, offset=drawn,
                                         out=negatives[: c.shape[0]])
                    drawn += neg.numel()
                    loss = negative_sampling_loss(vec, out(x), out(neg), reduction="sum")
                else:
                    loss = hs(vec, x, reduction="sum")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            done_tokens += cids.shape[0]
    return emb.weight.detach().numpy().copy(), time.perf_counter() - start


def train_gensim(objective: str, sentences: List[List[str]], args) -> Tuple[object, float]:
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=args.dim, window=args.window, min_count=args.min_count, sg=1,
                     hs=int(objective == "hs"), negative=args.negative if objective == "ns" else 0,
                     sample=args.sample, alpha=args.alpha, min_alpha=args.min_alpha, seed=args.seed,
                     workers=args.threads)
    model.build_vocab(sentences)
    start = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    return model, time.perf_counter() - start


# -------------------------------------------------------------- evaluation
def normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def wordsim353(index: Dict[str, int], unit: np.ndarray) -> Tuple[float, int]:
    """Spearman correlation of cosine similarity with WordSim-353 scores, over pairs in the vocabulary."""
    from gensim.test.utils import datapath
    from scipy.stats import spearmanr

    human, model = [], []
    with open(datapath("wordsim353.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            a, b, score = line.lower().split("\t")
            if a in index and b in index:
                human.append(float(score))
                model.append(float(unit[index[a]] @ unit[index[b]]))
    if len(human) < 3:
        return float("nan"), len(human)
    return float(spearmanr(human, model).statistic), len(human)


def neighbours(word: str, index: Dict[str, int], words: Sequence[str], unit: np.ndarray, k: int = 5) -> List[str]:
    sims = unit @ unit[index[word]]
    order = np.argsort(-sims)
    return [words[i] for i in order if words[i] != word][:k]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=None, help="whitespace-tokenised text, one sentence per line "
                   "(default: gensim's lee_background.cor)")
    p.add_argument("--objectives", default="ns,hs", help="comma-separated: ns (negative sampling), hs")
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--negative", type=int, default=5)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--sample", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--alpha", type=float, default=0.025)
    p.add_argument("--min-alpha", type=float, default=0.0001)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="sgd: word2vec's plain SGD on summed losses; adam: SparseAdam, steadier for "
                        "large batches (a shared node such as the tree's root sums a whole batch)")
    p.add_argument("--lr", type=float, default=None, help="pyneg's initial learning rate (default: --alpha)")
    p.add_argument("--batch", type=int, default=1024, help="pairs per SGD step")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for pyneg and worker threads for gensim (default 1: "
                        "a training step's ops are small, and on a busy machine intra-op threads "
                        "stall at barriers more than they help)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--words", default="government,police,australia,fire,president",
                   help="words whose nearest neighbours are printed")
    p.add_argument("--no-gensim", action="store_true", help="train pyneg's models only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    path = args.corpus
    if path is None:
        from gensim.test.utils import datapath
        path = datapath("lee_background.cor")
    sentences = read_corpus(path)
    vocab = Vocab(sentences, args.min_count)
    ids, sent = vocab.encode(sentences)
    raw_words = sum(len(s) for s in sentences)
    print(f"corpus {path}: {raw_words} words, {len(sentences)} sentences, vocabulary {len(vocab)} "
          f"(min count {args.min_count}); {args.epochs} epochs, dim {args.dim}, window {args.window}")

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

    print(f"\n{'model':<11} {'WS353 rho':>9} {'pairs':>6} {'words/s':>10} {'train s':>8}")
    for name, index, words, unit, secs in rows:
        rho, n = wordsim353(index, unit)
        print(f"{name:<11} {rho:>9.3f} {n:>6} {raw_words * args.epochs / secs:>10,.0f} {secs:>8.1f}")
    for word in shown:
        print(f"\nnearest neighbours of {word!r}:")
        for name, index, words, unit, _ in rows:
            if word in index:
                print(f"  {name:<11} {', '.join(neighbours(word, index, words, unit))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
