"""End-to-end skip-gram training speed: examples/word2vec.py's fast path against gensim's Word2Vec.

One epoch over the same corpus (the first 300k words of Debian's dict-gcide when
installed, else a generated Zipfian text), same hyperparameters and threads, in
the same run; words/s of each land in the benchmark's extra_info. With
``--benchmark-disable`` every function runs once and only the checks remain.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
word2vec = pytest.importorskip("word2vec")
pytest.importorskip("gensim")

TOKENS = 300_000


@pytest.fixture(scope="module")
def corpus():
    if os.path.exists(word2vec.GCIDE):
        sentences = word2vec.read_gcide(word2vec.GCIDE, TOKENS)
    else:
        rng = np.random.default_rng(0)
        ranks = rng.zipf(1.3, TOKENS) % 20000
        sentences = [[f"w{r}" for r in ranks[s : s + 12]] for s in range(0, TOKENS, 12)]
    vocab = word2vec.Vocab(sentences, 5)
    ids, sent = vocab.encode(sentences)
    return sentences, vocab, ids, sent


def _args(threads: int) -> argparse.Namespace:
    return argparse.Namespace(
        dim=100,
        window=5,
        negative=5,
        min_count=5,
        sample=1e-3,
        epochs=1,
        alpha=0.025,
        min_alpha=0.0001,
        optimizer="sgd",
        lr=None,
        batch=1024,
        threads=threads,
        seed=1,
        autograd=False,
        hogwild=False,
    )


@pytest.mark.parametrize("objective", ["ns", "hs"])
@pytest.mark.parametrize("engine", ["pyneg", "gensim"])
def test_word2vec_epoch(benchmark, corpus, objective, engine):
    import torch

    sentences, vocab, ids, sent = corpus
    args = _args(torch.get_num_threads())
    benchmark.group = f"word2vec_{objective}"
    if engine == "pyneg":
        vectors, _ = benchmark.pedantic(word2vec.train_pyneg, (objective, vocab, ids, sent, args), rounds=1)
        assert vectors.shape == (len(vocab), 100) and np.isfinite(vectors).all()
    else:
        model, _ = benchmark.pedantic(word2vec.train_gensim, (objective, sentences, args), rounds=1)
        assert model.wv.vectors.shape[1] == 100
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["words_per_s"] = sum(map(len, sentences)) / stats.stats.median
