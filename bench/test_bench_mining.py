"""pytest-benchmark: the parts of hard-negative mining beyond the exact search.

The exact search itself (pyneg against PyTorch blocked matmul + topk and faiss
IndexFlatIP) is the ``mining_exact_B4096_N1e6`` workload of
:mod:`pyneg.bench.mining`, run by ``bench/test_workloads.py`` and the CLI. Here:

- the window draw: pyneg's exact-log-q sampler against ``torch.multinomial``
  on the window's softmax (which gives no inclusion probabilities);
- faiss IVF (approximate) search: its time, and its recall@64 against pyneg's
  exact top 64, recorded in the benchmark's ``extra_info`` (skipped without faiss).

With ``--benchmark-disable`` every function runs once at a small size and the
checks still run.
"""

from __future__ import annotations

import pytest
import torch

import pyneg


@pytest.fixture(scope="module")
def sizes(request):
    quick = bool(request.config.getoption("benchmark_disable", default=False))
    return dict(b=256 if quick else 4096, n=20000 if quick else 200000, d=128, hi=64)


@pytest.fixture(scope="module")
def data(sizes):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(sizes["b"], sizes["d"], generator=g)
    c = torch.randn(sizes["n"], sizes["d"], generator=g)
    return q, c


@pytest.mark.parametrize("impl", ["pyneg softmax window", "torch.multinomial on the softmax"])
def test_window_draw(benchmark, data, sizes, impl):
    q, c = data
    top = pyneg.mine_hard_negatives(q, c, sizes["hi"], sampling="top")
    benchmark.group = "mining window draw, k = 8 of ranks [0, 64)"
    if impl.startswith("pyneg"):
        # The search is redone here too; the draw itself is a small part of it.
        def fn():
            return pyneg.mine_hard_negatives(q, c, 8, hi=sizes["hi"], sampling="softmax", tau=0.1, seed=0).ids
    else:

        def fn():
            p = torch.softmax(top.scores / 0.1, 1)
            return top.ids.gather(1, torch.multinomial(p, 8, replacement=False))

    ids = benchmark(fn)
    assert ids.shape == (sizes["b"], 8)
    assert bool(torch.isin(ids[0], top.ids[0]).all())


def test_faiss_ivf_recall(benchmark, data, sizes):
    faiss = pytest.importorskip("faiss")
    q, c = data
    d, hi = sizes["d"], sizes["hi"]
    faiss.omp_set_num_threads(torch.get_num_threads())
    nlist = 256
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(c[:20000].numpy())
    index.add(c.numpy())
    index.nprobe = 16
    benchmark.group = "faiss IVF (nlist 256, nprobe 16) vs exact"
    _, ids = benchmark(index.search, q.numpy(), hi)
    exact = pyneg.mine_hard_negatives(q, c, hi, sampling="top").ids.numpy()
    recall = sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), exact.tolist())) / (len(exact) * hi)
    benchmark.extra_info["recall@64"] = recall
    print(f"faiss IVF recall@64 against pyneg's exact search: {recall:.3f}")
    assert 0.0 < recall <= 1.0
