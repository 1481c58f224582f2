"""pyneg.graph against the peers it replaces, when they are installed (not CI dependencies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyneg import graph as G
from pyneg._kg_data import load_bundled_kg


def test_pyg_drop_in_shapes_and_exactness():
    pyg = pytest.importorskip("torch_geometric.utils")
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, 100, (2, 1500), generator=g)
    ours = G.negative_sampling(ei, 100, 700, seed=0)
    theirs = pyg.negative_sampling(ei, 100, 700)
    assert ours.dtype == theirs.dtype and ours.dim() == theirs.dim() == 2 and ours.shape[0] == theirs.shape[0] == 2
    assert ours.shape[1] == 700 and theirs.shape[1] <= 700  # PyG may return fewer
    es = G.EdgeSet(ei, 100)
    assert not es.contains(ours).any() and not es.contains(theirs).any()
    und_o = G.negative_sampling(ei, 100, 400, force_undirected=True, seed=0)
    und_t = pyg.negative_sampling(ei, 100, 400, force_undirected=True)
    assert und_o.shape[0] == und_t.shape[0] == 2
    # structured_negative_sampling: the same triple of (E,) tensors.
    i_o, j_o, k_o = G.structured_negative_sampling(ei, 100, seed=0)
    i_t, j_t, k_t = pyg.structured_negative_sampling(ei, 100)
    assert i_o.shape == i_t.shape == j_o.shape == k_o.shape == k_t.shape
    assert torch.equal(i_o, i_t) and torch.equal(j_o, j_t)


@pytest.mark.parametrize("name", ["nations", "kinships", "umls"])
def test_bernoulli_probabilities_equal_pykeen(name):
    pytest.importorskip("pykeen")
    from pykeen.sampling import BernoulliNegativeSampler

    kg = load_bundled_kg(name)
    assert kg is not None
    ours = G.TripleSet(kg.train, kg.num_entities, kg.num_relations).head_corruption_probs()
    theirs = BernoulliNegativeSampler(
        mapped_triples=kg.train, num_entities=kg.num_entities, num_relations=kg.num_relations
    ).corrupt_head_probability
    seen = torch.bincount(kg.train[:, 1], minlength=kg.num_relations) > 0
    np.testing.assert_allclose(ours[seen].numpy(), theirs[seen].double().numpy(), rtol=1e-6)


def test_filtered_negatives_beat_pykeen_filters_on_umls():
    pytest.importorskip("pykeen")
    from pykeen.sampling import BernoulliNegativeSampler

    kg = load_bundled_kg("umls")
    assert kg is not None
    ts = G.TripleSet(kg.train, kg.num_entities, kg.num_relations)
    batch = kg.train[:1024]
    ours = G.TripleCorruptor(ts).sample(batch, 16, seed=0).triples
    assert ours.shape == (1024, 16, 3) and not ts.contains(ours.reshape(-1, 3)).any()
    for filt in ("python-set", "bloom"):
        torch.manual_seed(0)
        sampler = BernoulliNegativeSampler(
            mapped_triples=kg.train,
            num_entities=kg.num_entities,
            num_relations=kg.num_relations,
            num_negs_per_pos=16,
            filtered=True,
            filterer=filt,
        )
        neg, mask = sampler.sample(batch)
        kept = neg.reshape(-1, 3)[mask.reshape(-1)]
        assert not ts.contains(kept).any()  # PyKEEN's filters keep no known triple either...
        assert kept.shape[0] < 1024 * 16  # ...but return fewer than asked
