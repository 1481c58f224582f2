"""Negatives for link prediction and knowledge-graph embeddings.

Exact filtering against the known edges or triples, exactly the requested
number of negatives (or a ``ValueError`` up front), Bernoulli and
pseudo-typed triple corruption, the ``log q`` of every negative, and filtered
ranking, all in C++ (``csrc/cpu/graph.cpp``).

* :class:`EdgeSet` and :class:`TripleSet` hold the known keys, built once:
  the sorted, deduplicated destinations of every (relation, source) pair,
  found through a hash of the full pair (int64 ids, no packed key), O(E)
  memory. ``contains`` answers membership queries in bulk.
* :func:`negative_sampling` and :func:`structured_negative_sampling` return
  what ``torch_geometric.utils`` returns under the same names, exactly and
  reproducibly; :func:`negative_edges` gives ``k`` negatives per positive edge
  (or per source node) with their ``log q``, uniform or weighted by any node
  weights (``degree ** alpha``).
* :class:`TripleCorruptor` corrupts KGE triples: head, tail, relation,
  uniform or Bernoulli (Wang et al., 2014), optionally pseudo-typed, filtered
  against any set of true triples; chunked negatives shared within a chunk
  (PyTorch-BigGraph) with the mask of hits.
* :func:`filtered_ranks` and :func:`rank_metrics`: filtered ranks
  (optimistic, realistic, pessimistic), MRR and Hits@k.

Every draw is a pure function of ``(seed, offset + row, draw)`` (Philox),
so the same seed gives the same negatives whatever the thread count, and a
batch split into pieces with matching offsets gives the same rows.

**What log q is.** For every negative, ``log_q`` is the log probability that
one draw of its row yields it: ``log P(side) + log q_side(id)`` where
``q_side`` is the draw distribution (uniform, or the node weights)
renormalised over the ids the row allows on that side (the universe minus the
row's own id, its known true values and, when excluded, the self-loop). With
replacement the expected count of an id in the row is ``k`` times it. With
``unique=True`` and uniform draws it is the same per-draw marginal, and the
probability that an id is among the row's ``k_side`` draws is ``k_side`` times
``q_side``. With ``unique=True`` and weights (successive sampling, without
replacement) ``log_q`` is still ``log P(side) + log q_side(id)``, the law of
the row's first draw; it is not the inclusion probability (which has no
closed form for weighted draws without replacement, and is below ``k_side``
times ``q_side`` for heavy ids).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyneg import _core
from pyneg._validation import as_index_tensor, check_bool, check_int, check_nbytes, check_seed
from pyneg.samplers import draw_seed

# Bytes a corrupted negative occupies in graph_corrupt's three (B, k) outputs:
# an int64 id, an int8 side and a float64 log q.
_CORRUPT_BYTES = 17

__all__ = [
    "EdgeSet",
    "TripleSet",
    "GraphNegatives",
    "CorruptedTriples",
    "ChunkedNegatives",
    "TripleCorruptor",
    "negative_edges",
    "negative_sampling",
    "structured_negative_sampling",
    "filtered_ranks",
    "rank_metrics",
]

_HEAD, _REL, _TAIL = 0, 1, 2
_MAX_ID = 2**62  # ids are int64 >= 0; universes stay below this


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _seed(seed: Any, generator: Optional[torch.Generator]) -> int:
    return check_seed(seed) if seed is not None else draw_seed(generator)


def _ids(data: Any, name: str, *, ndim: int, rows: Optional[int] = None, cols: Optional[int] = None) -> np.ndarray:
    """A private int64 copy of integer ids of the given rank (values checked by the caller)."""
    if data is None:
        raise TypeError(f"{name} must be an integer tensor, got None")
    t = as_index_tensor(data, name, None)
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows}, N), got {tuple(t.shape)}")
    if cols is not None and t.shape[-1] != cols:
        raise ValueError(f"{name} must have shape (N, {cols}), got {tuple(t.shape)}")
    arr: np.ndarray = np.ascontiguousarray(t.numpy())
    return arr


def _check_below(arr: np.ndarray, limit: int, name: str, what: str) -> None:
    if arr.size and int(arr.max()) >= limit:
        raise ValueError(f"{name} holds {what} id {int(arr.max())} >= {what.replace(' ', '_')}s_count {limit}")


def _count(value: Any, name: str) -> int:
    return check_int(value, name, minimum=1, maximum=_MAX_ID)


def _infer(arr: np.ndarray, given: Any, name: str, source: str) -> int:
    if given is not None:
        return _count(given, name)
    if arr.size == 0:
        raise ValueError(f"{name} must be given when {source} is empty")
    return int(arr.max()) + 1


def _check_lt(arr: np.ndarray, limit: int, arg: str, what: str, limit_name: str) -> None:
    if arr.size and int(arr.max()) >= limit:
        raise ValueError(f"{arg} holds {what} {int(arr.max())}, outside [0, {limit}) ({limit_name} = {limit})")


# ---------------------------------------------------------------- edge sets


class EdgeSet:
    """The known edges of a graph, for exact filtering and membership queries.

    Args:
        edge_index: (2, E) integer tensor (or array) of (source, destination) ids.
        num_nodes: number of nodes (ids in [0, num_nodes)); an int, or a
            ``(num_src_nodes, num_dst_nodes)`` pair for a bipartite graph
            (as in PyG). Default: 1 + the largest id.
        undirected: store both directions of every edge, so ``(u, v)`` and
            ``(v, u)`` are both known (a square graph only).

    Built once in C++ (O(E) memory, duplicates removed); keys are full
    (source, destination) pairs of int64 ids, so ids up to 2**62 work.
    """

    def __init__(
        self, edge_index: Any, num_nodes: Union[int, Tuple[int, int], None] = None, *, undirected: bool = False
    ):
        ei = _ids(edge_index, "edge_index", ndim=2, rows=2)
        self.undirected = check_bool(undirected, "undirected")
        if isinstance(num_nodes, (tuple, list)):
            if len(num_nodes) != 2:
                raise ValueError(f"num_nodes must be an int or a (num_src, num_dst) pair, got {num_nodes!r}")
            n_src = _infer(ei[0], num_nodes[0], "num_nodes[0]", "edge_index")
            n_dst = _infer(ei[1], num_nodes[1], "num_nodes[1]", "edge_index")
        else:
            n = _infer(ei, num_nodes, "num_nodes", "edge_index")
            n_src = n_dst = n
        if self.undirected and n_src != n_dst:
            raise ValueError("undirected=True needs a square graph (num_src_nodes == num_dst_nodes)")
        _check_lt(ei[0], n_src, "edge_index", "source id", "num_nodes")
        _check_lt(ei[1], n_dst, "edge_index", "destination id", "num_nodes")
        self.num_src_nodes = n_src
        self.num_dst_nodes = n_dst
        src, dst = ei[0], ei[1]
        if self.undirected:
            src, dst = np.concatenate([ei[0], ei[1]]), np.concatenate([ei[1], ei[0]])
        rel = np.zeros(src.shape[0], dtype=np.int64)
        self._fwd = _core.PairGroups(rel, src, dst, 1, n_src, n_dst, _threads())
        self._bwd: Optional[Any] = self._fwd if self.undirected else None
        self._num_upper: Optional[int] = None

    @property
    def num_nodes(self) -> int:
        """Number of nodes (of a square graph; the source count of a bipartite one)."""
        return self.num_src_nodes

    @property
    def num_edges(self) -> int:
        """Distinct directed pairs stored (an undirected edge counts twice, a self-loop once)."""
        return int(self._fwd.num_keys)

    def contains(self, edge_index: Any) -> torch.Tensor:
        """(N,) bool: whether each column ``(u, v)`` of a (2, N) ``edge_index`` is a known edge."""
        ei = _ids(edge_index, "edge_index", ndim=2, rows=2)
        zeros = np.zeros(ei.shape[1], dtype=np.int64)
        return torch.from_numpy(self._fwd.contains(zeros, ei[0], ei[1], _threads()))

    def index_tensors(self, reverse: bool = False) -> List[torch.Tensor]:
        """The index's ``[groups, values, slots]`` int64 tensors, for ``torch.ops.pyneg.graph_corrupt``.

        ``reverse=False``: the known destinations of every source (the filter of
        a corrupted destination: pass it as ``tail_index``); ``True``: the known
        sources of every destination (``head_index``). They share the C++
        index's memory (no copy; do not write to them) and keep it alive.
        """
        return _index_tensors(self._backward() if check_bool(reverse, "reverse") else self._fwd)

    def _backward(self) -> Any:
        if self._bwd is None:
            _, s, d = self._fwd.keys()
            self._bwd = _core.PairGroups(np.zeros_like(s), d, s, 1, self.num_dst_nodes, self.num_src_nodes, _threads())
        return self._bwd

    def _upper_known(self) -> int:
        if self._num_upper is None:
            _, s, d = self._fwd.keys()
            self._num_upper = int(np.count_nonzero(s < d))
        return self._num_upper


def _index_tensors(index: Any) -> List[torch.Tensor]:
    with warnings.catch_warnings():  # the arrays are read-only views of the index: torch warns
        warnings.simplefilter("ignore", UserWarning)
        return [torch.from_numpy(a) for a in index.arrays()]


class GraphNegatives(NamedTuple):
    """Negative edges: ``src`` and ``dst`` (B, k) int64, ``log_q`` (B, k) float64 (see the module doc)."""

    src: torch.Tensor
    dst: torch.Tensor
    log_q: torch.Tensor


def _node_alias(weights: Any, n: int, name: str) -> Any:
    if weights is None:
        return None
    if isinstance(weights, torch.Tensor):
        if weights.is_complex() or weights.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got {weights.dtype}")
        w = weights.detach().to("cpu", torch.float64).numpy().copy()
    else:
        w = np.array(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one weight per node ({n}), got shape {tuple(w.shape)}")
    try:
        return _core.GraphAlias(w)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def negative_edges(
    edges: EdgeSet,
    edge_index: Any,
    num_negatives: int,
    *,
    corrupt: str = "dst",
    weights: Any = None,
    unique: bool = False,
    exclude_self_loops: bool = True,
    filtered: bool = True,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> GraphNegatives:
    """``num_negatives`` negatives for every positive edge (row), exactly.

    Args:
        edges: the known edges (:class:`EdgeSet`); with ``filtered=True`` no
            negative is one of them.
        edge_index: (2, B) positive edges ``(u, v)``; each gives one row. For
            negatives per *source node* pass ``torch.stack([nodes, -ones])``
            with ``corrupt="dst"`` (a destination of -1 means "no positive").
        num_negatives: k, the negatives per row (exactly k, or a ValueError).
        corrupt: ``"dst"`` (replace v), ``"src"`` (replace u), or ``"both"``
            (each draw replaces u or v with probability 1/2).
        weights: optional (num_nodes,) node weights, e.g. ``degree ** 0.75``;
            draws follow them renormalised over the allowed nodes. None: uniform.
        unique: the k negatives of a row (per side) are distinct. With
            ``weights``, successive sampling (as
            ``torch.multinomial(replacement=False)``): each draw follows the
            weights renormalised over the allowed nodes not drawn yet; a row
            with fewer than k allowed nodes of weight > 0 is refused
            (ValueError) before anything is drawn. ``log_q`` stays the
            one-draw (first-draw) probability, not the inclusion probability.
        exclude_self_loops: never return ``u == v``.
        filtered: exclude the known edges (False: only the row's own positive).
        seed: row i draws from Philox stream ``offset + i`` of ``seed`` (taken
            from ``generator`` / torch's generator when None).
        offset: the first row's Philox stream.
        generator: the ``torch.Generator`` a seed is drawn from when ``seed`` is None.

    Returns:
        :class:`GraphNegatives` ``(src, dst, log_q)``, each (B, k).

    Raises:
        ValueError: bad ids or shapes, or a row that cannot get k negatives
            (refused before anything is drawn).
        TypeError: non-integer ids.
    """
    if not isinstance(edges, EdgeSet):
        raise TypeError(f"edges must be a pyneg.graph.EdgeSet, got {type(edges).__name__}")
    k = check_int(num_negatives, "num_negatives", minimum=0)
    if corrupt not in ("dst", "src", "both"):
        raise ValueError(f"corrupt must be 'dst', 'src' or 'both', got {corrupt!r}")
    t = as_index_tensor(edge_index, "edge_index", None, allow_padding=True)
    if t.dim() != 2 or t.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, B), got {tuple(t.shape)}")
    ei = t.numpy()
    _check_lt(ei[0], edges.num_src_nodes, "edge_index", "source id", "num_nodes")
    _check_lt(ei[1], edges.num_dst_nodes, "edge_index", "destination id", "num_nodes")
    if corrupt != "dst" and ei[1].size and int(ei[1].min()) < 0:
        raise ValueError("edge_index holds destination -1: only corrupt='dst' accepts rows without a positive")
    if ei[0].size and int(ei[0].min()) < 0:
        raise ValueError(f"edge_index holds source id {int(ei[0].min())} (ids must be >= 0)")
    unique = check_bool(unique, "unique")
    exclude_self_loops = check_bool(exclude_self_loops, "exclude_self_loops")
    filtered = check_bool(filtered, "filtered")
    if corrupt != "dst" and edges.num_src_nodes != edges.num_dst_nodes and weights is not None:
        raise ValueError("weights= with corrupt='src' or 'both' needs a square graph")
    alias = _node_alias(weights, edges.num_dst_nodes, "weights")
    s = _seed(seed, generator)
    off = check_seed(offset, "offset")
    b = ei.shape[1]
    check_nbytes((b, k), _CORRUPT_BYTES, "num_negatives")  # before any allocation
    rows = np.zeros((b, 3), dtype=np.int64)
    rows[:, 0] = ei[0]
    rows[:, 2] = ei[1]
    probs = np.zeros((b, 3), dtype=np.float64)
    probs[:, {"dst": _TAIL, "src": _HEAD, "both": _HEAD}[corrupt]] = 1.0
    if corrupt == "both":
        probs[:, _HEAD] = probs[:, _TAIL] = 0.5
    fwd = edges._fwd if filtered else None
    bwd = edges._backward() if filtered and corrupt != "dst" else None
    ids, sides, lq = _core.graph_corrupt(
        rows,
        probs,
        k,
        unique,
        exclude_self_loops,
        [bwd, None, fwd],
        [edges.num_src_nodes, 1, edges.num_dst_nodes],
        None,
        None,
        alias if corrupt != "dst" else None,
        alias,
        s,
        off,
        _threads(),
    )
    ids_t = torch.from_numpy(ids)
    head = torch.from_numpy(sides) == _HEAD
    src = torch.where(head, ids_t, torch.from_numpy(ei[0]).unsqueeze(1).expand(b, k))
    dst = torch.where(head, torch.from_numpy(ei[1]).unsqueeze(1).expand(b, k), ids_t)
    return GraphNegatives(src.contiguous(), dst.contiguous(), torch.from_numpy(lq))


def _edge_set_for(edge_index: Any, num_nodes: Any, undirected: bool) -> EdgeSet:
    if isinstance(edge_index, EdgeSet):
        return edge_index
    return EdgeSet(edge_index, num_nodes, undirected=undirected)


def negative_sampling(
    edge_index: Any,
    num_nodes: Union[int, Tuple[int, int], None] = None,
    num_neg_samples: Optional[int] = None,
    method: str = "sparse",
    force_undirected: bool = False,
    *,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    unique: bool = True,
    return_log_q: bool = False,
) -> Any:
    """Drop-in for ``torch_geometric.utils.negative_sampling``, exact.

    Returns a (2, num_neg_samples) int64 tensor of pairs ``(u, v)`` drawn
    uniformly from the pairs that are not edges of ``edge_index`` (and not
    self-loops when the graph is square), distinct unless ``unique=False``.
    Unlike PyG it returns exactly ``num_neg_samples`` pairs (default: the
    number of edges) or raises ValueError up front when fewer exist.

    Args:
        edge_index: (2, E) edges, or an :class:`EdgeSet` (built once, reused).
        num_nodes: int, or ``(num_src, num_dst)`` for a bipartite graph.
        num_neg_samples: number of pairs (default: E).
        method: ``"sparse"`` or ``"dense"``; accepted for compatibility (the
            result is exact either way).
        force_undirected: return an undirected set: ``num_neg_samples // 2``
            unordered pairs ``u < v`` and their reverses (as PyG does).
        seed: the Philox seed (None: drawn from ``generator``, so ``torch.manual_seed`` reproduces).
        generator: the ``torch.Generator`` a seed is drawn from when ``seed`` is None.
        unique: pairs are distinct (PyG's behaviour); False draws with replacement.
        return_log_q: also return the log probability of one draw (a float).
    """
    if method not in ("sparse", "dense"):
        raise ValueError(f"method must be 'sparse' or 'dense', got {method!r}")
    force_undirected = check_bool(force_undirected, "force_undirected")
    es = _edge_set_for(edge_index, num_nodes, force_undirected)
    if force_undirected and not es.undirected:
        _, s_, d_ = es._fwd.keys()
        es = EdgeSet(np.stack([s_, d_]), (es.num_src_nodes, es.num_dst_nodes), undirected=True)
    k = es.num_edges if num_neg_samples is None else check_int(num_neg_samples, "num_neg_samples", minimum=0)
    check_nbytes((2, k), 8, "num_neg_samples")  # before any allocation
    unique = check_bool(unique, "unique")
    square = es.num_src_nodes == es.num_dst_nodes
    s = _seed(seed, generator)
    if force_undirected:
        pairs, lq = _core.graph_global_negatives(
            es._fwd, es.num_src_nodes, es.num_dst_nodes, es._upper_known(), k // 2, unique, True, True, s, 0, _threads()
        )
        out = torch.from_numpy(np.concatenate([pairs, pairs[::-1]], axis=1))
    else:
        pairs, lq = _core.graph_global_negatives(
            es._fwd, es.num_src_nodes, es.num_dst_nodes, es.num_edges, k, unique, square, False, s, 0, _threads()
        )
        out = torch.from_numpy(pairs)
    if return_log_q:
        return out, float(lq)
    return out


def structured_negative_sampling(
    edge_index: Any,
    num_nodes: Optional[int] = None,
    contains_neg_self_loops: bool = True,
    *,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop-in for ``torch_geometric.utils.structured_negative_sampling``, exact.

    For every edge ``(i, j)`` returns a node ``k`` with ``(i, k)`` not an edge
    (uniform over those nodes; ``k != i`` unless ``contains_neg_self_loops``).
    Returns ``(i, j, k)``, three (E,) int64 tensors. Raises ValueError when a
    source is connected to every allowed node (PyG would loop or give up).
    """
    es = _edge_set_for(edge_index, num_nodes, False)
    ei = edge_index if not isinstance(edge_index, EdgeSet) else None
    if ei is None:
        raise TypeError("structured_negative_sampling needs the (2, E) edge_index, not an EdgeSet")
    contains_neg_self_loops = check_bool(contains_neg_self_loops, "contains_neg_self_loops")
    arr = _ids(ei, "edge_index", ndim=2, rows=2)
    neg = negative_edges(
        es, arr, 1, exclude_self_loops=not contains_neg_self_loops, seed=_seed(seed, generator), offset=0
    )
    t = torch.from_numpy(arr)
    return t[0].clone(), t[1].clone(), neg.dst[:, 0].clone()


# ---------------------------------------------------------------- triples


class TripleSet:
    """Known (head, relation, tail) triples, for filtering and Bernoulli statistics.

    Args:
        triples: (T, 3) integer ids ``[head, relation, tail]`` (PyKEEN's layout).
        num_entities: the entity id range (default: 1 + the largest id).
        num_relations: the relation id range (default: 1 + the largest id).

    Builds two indexes once, in C++: the tails of every (relation, head) and
    the heads of every (relation, tail) (and, when relations are corrupted,
    the relations of every (head, tail)). Duplicates are dropped.
    """

    def __init__(self, triples: Any, num_entities: Optional[int] = None, num_relations: Optional[int] = None):
        tr = _ids(triples, "triples", ndim=2, cols=3)
        self.num_entities = _infer(tr[:, [0, 2]], num_entities, "num_entities", "triples")
        self.num_relations = _infer(tr[:, 1], num_relations, "num_relations", "triples")
        _check_lt(tr[:, 0], self.num_entities, "triples", "head id", "num_entities")
        _check_lt(tr[:, 2], self.num_entities, "triples", "tail id", "num_entities")
        _check_lt(tr[:, 1], self.num_relations, "triples", "relation id", "num_relations")
        h, r, t = (np.ascontiguousarray(tr[:, i]) for i in range(3))
        n, nr = self.num_entities, self.num_relations
        self._by_head = _core.PairGroups(r, h, t, nr, n, n, _threads())  # (r, h) -> tails
        self._by_tail = _core.PairGroups(r, t, h, nr, n, n, _threads())  # (r, t) -> heads
        self._by_pair: Optional[Any] = None  # (h, t) -> relations, built on first use
        self._typed: Optional[Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]] = None

    @classmethod
    def union(cls, *sets: Any, num_entities: Optional[int] = None, num_relations: Optional[int] = None) -> TripleSet:
        """One set from several (T_i, 3) triple tensors, e.g. train + valid + test for filtered evaluation."""
        arrs = [_ids(s, f"sets[{i}]", ndim=2, cols=3) for i, s in enumerate(sets)]
        return cls(np.concatenate(arrs) if arrs else np.zeros((0, 3), np.int64), num_entities, num_relations)

    @property
    def num_triples(self) -> int:
        """Distinct triples stored."""
        return int(self._by_head.num_keys)

    def contains(self, triples: Any) -> torch.Tensor:
        """(N,) bool: whether each row ``[h, r, t]`` of an (N, 3) tensor is a known triple."""
        tr = _ids(triples, "triples", ndim=2, cols=3)
        h, r, t = (np.ascontiguousarray(tr[:, i]) for i in range(3))
        return torch.from_numpy(self._by_head.contains(r, h, t, _threads()))

    def head_corruption_probs(self) -> torch.Tensor:
        """(num_relations,) float64: the Bernoulli scheme's P(corrupt head | r) = tph / (tph + hpt).

        tph (tails per head) is the number of triples of r divided by its
        distinct heads; hpt (heads per tail) the number of its triples divided
        by its distinct tails (Wang et al., 2014). A relation without triples gets 0.5.
        """
        a, _, count = self._by_head.group_arrays()
        triples = np.bincount(a, weights=count, minlength=self.num_relations)
        heads = np.bincount(a, minlength=self.num_relations).astype(np.float64)
        a2, _, _ = self._by_tail.group_arrays()
        tails = np.bincount(a2, minlength=self.num_relations).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tph = triples / heads
            hpt = triples / tails
            p = tph / (tph + hpt)
        return torch.from_numpy(np.where(heads > 0, p, 0.5))

    def index_tensors(self, side: str) -> List[torch.Tensor]:
        """The ``[groups, values, slots]`` int64 tensors of the index that filters ``side``.

        ``side="head"``: the known heads of every (relation, tail);
        ``"tail"``: the known tails of every (relation, head); ``"relation"``:
        the known relations of every (head, tail). Pass them as
        ``head_index`` / ``tail_index`` / ``relation_index`` of
        ``torch.ops.pyneg.graph_corrupt`` (and ``"tail"`` / ``"head"`` as the
        ``index`` of ``graph_filtered_ranks``). They share the C++ index's
        memory (no copy; do not write to them).
        """
        if side == "head":
            return _index_tensors(self._by_tail)
        if side == "tail":
            return _index_tensors(self._by_head)
        if side == "relation":
            return _index_tensors(self._pairs())
        raise ValueError(f"side must be 'head', 'tail' or 'relation', got {side!r}")

    def _pairs(self) -> Any:
        if self._by_pair is None:
            r, h, t = self._by_head.keys()
            self._by_pair = _core.PairGroups(
                h, t, r, self.num_entities, self.num_entities, self.num_relations, _threads()
            )
        return self._by_pair

    def _typed_lists(self) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
        """(offsets, ids) of the heads and of the tails seen with every relation."""
        if self._typed is None:
            out = []
            for index in (self._by_head, self._by_tail):  # groups (r, h) give heads; (r, t) tails
                a, b, _ = index.group_arrays()
                order = np.lexsort((b, a))
                ids = np.ascontiguousarray(b[order])
                offsets = np.zeros(self.num_relations + 1, dtype=np.int64)
                np.cumsum(np.bincount(a, minlength=self.num_relations), out=offsets[1:])
                out.append((offsets, ids))
            self._typed = (out[0], out[1])
        return self._typed


class CorruptedTriples(NamedTuple):
    """Negative triples ``(B, k, 3)``, their ``log_q`` (B, k) and the replaced ``side`` (B, k).

    ``side``: 0 head, 1 relation, 2 tail.
    """

    triples: torch.Tensor
    log_q: torch.Tensor
    side: torch.Tensor


class ChunkedNegatives(NamedTuple):
    """Negatives shared within chunks (PyTorch-BigGraph).

    ``entities`` (C, n): the candidate entities of each chunk of rows;
    ``hits`` (B, n) bool: candidate j would make row i a known true triple (or
    is row i's own entity) and must be masked; ``log_q`` (C, n): -log(num_entities)
    (uniform draws, unfiltered).
    """

    entities: torch.Tensor
    hits: torch.Tensor
    log_q: torch.Tensor


_CORRUPT = ("bernoulli", "uniform", "head", "tail", "relation", "all")


class TripleCorruptor:
    """Negative triples for KGE training: exact filtering, fixed k per positive, log q.

    Args:
        train: the training triples (:class:`TripleSet` or (T, 3) ids); the
            Bernoulli statistics and the pseudo-typed candidates come from them.
        filter: the true triples no negative may be (:class:`TripleSet`, e.g.
            ``TripleSet.union(train, valid, test)``); default ``train``;
            ``None`` disables filtering (only each row's own entity is excluded).
        corrupt: ``"bernoulli"`` (head with probability tph/(tph+hpt) of the
            relation, else tail), ``"uniform"`` (head or tail, 1/2 each),
            ``"head"``, ``"tail"``, ``"relation"``, or ``"all"`` (head, relation,
            tail, 1/3 each).
        pseudo_typed: draw heads among the entities seen as heads of the row's
            relation in ``train`` (tails likewise), as PyKEEN's pseudo-typed sampler.
        unique: a row's negatives (per side) are distinct.
    """

    def __init__(
        self,
        train: Any,
        *,
        filter: Any = "train",
        corrupt: str = "bernoulli",
        pseudo_typed: bool = False,
        unique: bool = False,
    ):
        self.train = train if isinstance(train, TripleSet) else TripleSet(train)
        if isinstance(filter, str) and filter == "train":
            self.filter: Optional[TripleSet] = self.train
        elif filter is None or isinstance(filter, TripleSet):
            self.filter = filter
        else:
            raise TypeError(f"filter must be a TripleSet, 'train' or None, got {type(filter).__name__}")
        if self.filter is not None and (
            self.filter.num_entities != self.train.num_entities or self.filter.num_relations != self.train.num_relations
        ):
            raise ValueError("filter and train must have the same num_entities and num_relations")
        if corrupt not in _CORRUPT:
            raise ValueError(f"corrupt must be one of {_CORRUPT}, got {corrupt!r}")
        self.corrupt = corrupt
        self.pseudo_typed = check_bool(pseudo_typed, "pseudo_typed")
        self.unique = check_bool(unique, "unique")
        self._head_probs = self.train.head_corruption_probs().numpy() if corrupt == "bernoulli" else None

    def side_probs(self, relations: np.ndarray) -> np.ndarray:
        """(B, 3) probabilities of replacing head, relation, tail for rows of these relations."""
        b = relations.shape[0]
        p = np.zeros((b, 3), dtype=np.float64)
        if self.corrupt == "bernoulli":
            assert self._head_probs is not None
            ph = self._head_probs[relations]
            p[:, _HEAD] = ph
            p[:, _TAIL] = 1.0 - ph
        elif self.corrupt == "uniform":
            p[:, _HEAD] = p[:, _TAIL] = 0.5
        elif self.corrupt == "all":
            p[:, :] = 1.0 / 3.0
            p[:, _TAIL] = 1.0 - 2.0 / 3.0
        else:
            p[:, {"head": _HEAD, "relation": _REL, "tail": _TAIL}[self.corrupt]] = 1.0
        if self.pseudo_typed and self.corrupt in ("bernoulli", "uniform", "all"):
            # A relation seen with a single head (tail) in train has no other
            # typed head (tail) to draw: that side's probability moves to the
            # other entity side, so its rows still get k negatives (log q
            # follows the probabilities actually used).
            (ho, _), (to, _) = self.train._typed_lists()
            single_h = np.diff(ho)[relations] <= 1
            single_t = np.diff(to)[relations] <= 1
            only_t = single_h & ~single_t
            only_h = single_t & ~single_h
            p[only_t, _TAIL] += p[only_t, _HEAD]
            p[only_t, _HEAD] = 0.0
            p[only_h, _HEAD] += p[only_h, _TAIL]
            p[only_h, _TAIL] = 0.0
        return p

    def _rows(self, triples: Any) -> np.ndarray:
        tr = _ids(triples, "triples", ndim=2, cols=3)
        _check_lt(tr[:, 0], self.train.num_entities, "triples", "head id", "num_entities")
        _check_lt(tr[:, 2], self.train.num_entities, "triples", "tail id", "num_entities")
        _check_lt(tr[:, 1], self.train.num_relations, "triples", "relation id", "num_relations")
        return np.ascontiguousarray(tr)

    def sample(
        self,
        triples: Any,
        num_negatives: int,
        *,
        seed: Optional[int] = None,
        offset: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> CorruptedTriples:
        """``num_negatives`` negative triples for every positive row of ``triples`` (B, 3).

        Each draw picks its side (head / relation / tail) from the scheme, then
        an id uniformly among the ids that make no known triple (and differ
        from the row's own). Exactly k per row, or ValueError before any draw.
        Row i uses Philox stream ``offset + i`` of ``seed``.
        """
        rows = self._rows(triples)
        k = check_int(num_negatives, "num_negatives", minimum=0)
        s = _seed(seed, generator)
        off = check_seed(offset, "offset")
        f = self.filter
        n, nr = self.train.num_entities, self.train.num_relations
        typed_h = typed_t = None
        if self.pseudo_typed:
            typed_h, typed_t = self.train._typed_lists()
        check_nbytes((rows.shape[0], k), _CORRUPT_BYTES, "num_negatives")  # before any allocation
        probs = self.side_probs(rows[:, 1])
        ids, sides, lq = _core.graph_corrupt(
            rows,
            probs,
            k,
            self.unique,
            False,
            [
                f._by_tail if f is not None else None,
                f._pairs() if f is not None and self.corrupt in ("relation", "all") else None,
                f._by_head if f is not None else None,
            ],
            [n, nr, n],
            typed_h,
            typed_t,
            None,
            None,
            s,
            off,
            _threads(),
        )
        out = np.repeat(rows[:, None, :], k, axis=1)
        np.put_along_axis(out, sides.astype(np.int64)[:, :, None], ids[:, :, None], axis=2)
        return CorruptedTriples(torch.from_numpy(out), torch.from_numpy(lq), torch.from_numpy(sides.astype(np.int64)))

    def sample_chunked(
        self,
        triples: Any,
        num_negatives: int,
        *,
        chunk_size: int,
        side: str = "tail",
        seed: Optional[int] = None,
        offset: int = 0,
        generator: Optional[torch.Generator] = None,
    ) -> ChunkedNegatives:
        """Negatives shared within chunks of ``chunk_size`` rows (PyTorch-BigGraph style).

        Every chunk of rows shares ``num_negatives`` entities drawn uniformly
        (unfiltered, so one set serves the whole chunk); ``hits`` marks, per
        row, the candidates that form a known true triple with that row (or
        equal its own entity): mask those logits. Chunk c uses Philox stream
        ``offset + c``.
        """
        rows = self._rows(triples)
        k = check_int(num_negatives, "num_negatives", minimum=0)
        cs = check_int(chunk_size, "chunk_size", minimum=1)
        if side not in ("head", "tail"):
            raise ValueError(f"side must be 'head' or 'tail', got {side!r}")
        s = _seed(seed, generator)
        off = check_seed(offset, "offset")
        b = rows.shape[0]
        chunks = (b + cs - 1) // cs
        check_nbytes((chunks, k), _CORRUPT_BYTES, "num_negatives")  # before any allocation
        n = self.train.num_entities
        crow = np.zeros((chunks, 3), dtype=np.int64)
        crow[:, 2] = -1
        cprob = np.zeros((chunks, 3), dtype=np.float64)
        cprob[:, _TAIL] = 1.0
        ids, _, _ = _core.graph_corrupt(
            crow, cprob, k, False, False, [None, None, None], [n, 1, n], seed=s, offset=off, num_threads=_threads()
        )
        cand = ids[np.arange(b) // cs]  # (B, k)
        col = _TAIL if side == "tail" else _HEAD
        own = rows[:, col][:, None] == cand
        if self.filter is not None:
            h = np.repeat(rows[:, 0], k) if side == "tail" else cand.reshape(-1)
            t = cand.reshape(-1) if side == "tail" else np.repeat(rows[:, 2], k)
            r = np.repeat(rows[:, 1], k)
            known = self.filter._by_head.contains(r, h, t, _threads()).reshape(b, k)
            own |= known
        lq = np.full((chunks, k), -math.log(n))
        return ChunkedNegatives(torch.from_numpy(ids), torch.from_numpy(own), torch.from_numpy(lq))


# ---------------------------------------------------------------- ranking

_TIES = ("optimistic", "realistic", "pessimistic")


def filtered_ranks(
    scores: torch.Tensor,
    triples: Any,
    *,
    side: str = "tail",
    filter: Optional[TripleSet] = None,
    ties: str = "realistic",
) -> torch.Tensor:
    """Filtered rank of every row's true entity among all entities, (B,) float64.

    Args:
        scores: (B, num_entities) float32/float64, higher is better; row i
            scores every candidate replacing ``side`` of ``triples[i]``.
        triples: (B, 3) ``[head, relation, tail]`` test triples.
        side: ``"tail"`` (rank the true tail of (h, r, ?)) or ``"head"``.
        filter: known true triples left out of the ranking (their scores are
            ignored; the row's own true entity is always ranked). None: raw ranks.
        ties: ``"optimistic"`` (1 + # strictly better), ``"pessimistic"``
            (1 + # better or equal, other than the truth) or ``"realistic"``
            (their mean: the expected rank under random tie-breaking), as
            PyKEEN defines them.

    Counted row by row in C++ over the scores, with no dense filter mask.
    Raises ValueError for NaN scores or ids out of range.
    """
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"scores must be float32 or float64, got {scores.dtype}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (B, num_entities), got shape {tuple(scores.shape)}")
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    if side not in ("head", "tail"):
        raise ValueError(f"side must be 'head' or 'tail', got {side!r}")
    if filter is not None and not isinstance(filter, TripleSet):
        raise TypeError(f"filter must be a TripleSet or None, got {type(filter).__name__}")
    tr = _ids(triples, "triples", ndim=2, cols=3)
    if tr.shape[0] != scores.shape[0]:
        raise ValueError(f"triples has {tr.shape[0]} rows but scores has {scores.shape[0]}")
    n = scores.shape[1]
    truth = np.ascontiguousarray(tr[:, 2] if side == "tail" else tr[:, 0])
    _check_lt(truth, n, "triples", f"{side} id", "scores.shape[1]")
    index = None
    key_a = np.ascontiguousarray(tr[:, 1])
    key_b = np.ascontiguousarray(tr[:, 0] if side == "tail" else tr[:, 2])
    if filter is not None:
        index = filter._by_head if side == "tail" else filter._by_tail
    s = scores.detach().to("cpu").contiguous().numpy()
    opt, pes = _core.graph_filtered_ranks(s, truth, index, key_a, key_b, _threads())
    o = torch.from_numpy(opt).to(torch.float64)
    p = torch.from_numpy(pes).to(torch.float64)
    if ties == "optimistic":
        return o
    if ties == "pessimistic":
        return p
    return (o + p) / 2


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int] = (1, 3, 10)) -> Dict[str, float]:
    """``{"mrr": mean(1/rank), "mr": mean rank, "hits@k": mean(rank <= k), ...}`` of (B,) ranks."""
    if not isinstance(ranks, torch.Tensor):
        raise TypeError(f"ranks must be a torch.Tensor, got {type(ranks).__name__}")
    if ranks.numel() == 0:
        raise ValueError("ranks must not be empty")
    r = ranks.to(torch.float64).reshape(-1)
    out = {"mrr": float((1.0 / r).mean()), "mr": float(r.mean())}
    for k in ks:
        kk = check_int(k, "ks", minimum=1)
        out[f"hits@{kk}"] = float((r <= kk).to(torch.float64).mean())
    return out
