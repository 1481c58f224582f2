# Hand-written stubs for pyneg._core (checked against the module by
# tests/test_stubs.py). One section per csrc/bindings/register_<area>.cpp.
from typing import Any

import numpy as np
import numpy.typing as npt

# ---------------------------------------------------------------- register_alias
MAX_CLASSES: int
MAX_ANALYTIC_CLASSES: int

class AliasTable:
    def __init__(self, weights: npt.ArrayLike, name: str = "weights", num_threads: int = 1) -> None: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def num_positive(self) -> int: ...
    def _storage(self) -> npt.NDArray[np.int64]: ...

def alias_class_masses(entries: npt.ArrayLike, out: npt.NDArray[np.int64]) -> int: ...

# Sparse catalogues (register_sparse.cpp): sorted catalogue ids of a table's slots.
class IdBuffer:
    def __init__(self, ids: npt.ArrayLike) -> None: ...
    def _storage(self) -> npt.NDArray[np.int64]: ...

def sparse_check_ids(ids: npt.ArrayLike, num_classes: int, name: str = "ids") -> None: ...
def sparse_gather(ids: npt.ArrayLike, num_classes: int, inout: npt.NDArray[np.int64], num_threads: int = 1) -> None: ...
def sparse_log_prob(
    ids: npt.ArrayLike,
    mass: npt.ArrayLike,
    num_classes: int,
    query: npt.ArrayLike,
    out: npt.NDArray[np.float64],
    name: str = "ids",
    num_threads: int = 1,
) -> None: ...
def sparse_lookup(
    ids: npt.ArrayLike,
    num_classes: int,
    query: npt.ArrayLike,
    slots: npt.NDArray[np.int64],
    allow_padding: bool = False,
    name: str = "ids",
    num_threads: int = 1,
) -> None: ...

# The kernels of pyneg::analytic_sample (uniform: kind 0, log-uniform: kind 1).
def analytic_draw(
    kind: int, num_classes: int, seed: int, offset: int, out: npt.NDArray[np.int64], num_threads: int = 1
) -> None: ...
def analytic_draw_excluding(
    kind: int,
    num_classes: int,
    seed: int,
    offset: int,
    exclude: npt.ArrayLike,
    k: int,
    out: npt.NDArray[np.int64],
    num_threads: int = 1,
) -> None: ...
def analytic_draw_unique(
    kind: int,
    num_classes: int,
    seed: int,
    offset: int,
    exclude: npt.ArrayLike,
    k: int,
    out: npt.NDArray[np.int64],
    tries: npt.NDArray[np.int64] | None = None,
    num_threads: int = 1,
) -> None: ...

# The kernels of the pyneg::alias_* operators: the table comes as int64 arrays.
def alias_draw(
    entries: npt.ArrayLike, seed: int, offset: int, out: npt.NDArray[np.int64], num_threads: int = 1
) -> None: ...
def alias_draw_excluding(
    entries: npt.ArrayLike,
    mass: npt.ArrayLike,
    num_positive: int,
    seed: int,
    offset: int,
    exclude: npt.ArrayLike,
    k: int,
    out: npt.NDArray[np.int64],
    num_threads: int = 1,
) -> None: ...
def alias_draw_unique(
    entries: npt.ArrayLike,
    mass: npt.ArrayLike,
    num_positive: int,
    seed: int,
    offset: int,
    exclude: npt.ArrayLike,
    k: int,
    out: npt.NDArray[np.int64],
    tries: npt.NDArray[np.int64] | None = None,
    num_threads: int = 1,
) -> None: ...
def alias_prepare_exclude(
    num_classes: int, num_positive: int, exclude: npt.ArrayLike, id_mass: npt.ArrayLike, rows: int, unique_k: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.uint64], int, int]: ...

class _Testing:
    """The submodule ``pyneg._core._testing``: bindings only pyneg's tests call; not API.

    Declared as a namespace here because a ``.pyi`` file cannot hold a
    submodule; tests/test_stubs.py checks these names against the runtime one.
    """

    @staticmethod
    def frequency_bucket(id: int, k: int, num_buckets: int) -> int: ...
    @staticmethod
    def alias_table_from_entries(entries: npt.ArrayLike) -> AliasTable: ...
    @staticmethod
    def alias_table_entries(table: AliasTable) -> npt.NDArray[np.uint64]: ...
    @staticmethod
    def alias_table_mass(table: AliasTable) -> npt.NDArray[np.uint64]: ...
    @staticmethod
    def analytic_expected_tries(kind: int, num_classes: int, excluded: npt.ArrayLike, k: int) -> int: ...
    @staticmethod
    def alias_table_sample(
        table: AliasTable, seed: int, offset: int, out: npt.NDArray[np.int64], num_threads: int = 1
    ) -> None: ...
    @staticmethod
    def alias_table_sample_excluding(
        table: AliasTable,
        seed: int,
        offset: int,
        exclude: npt.ArrayLike,
        k: int,
        out: npt.NDArray[np.int64],
        num_threads: int = 1,
    ) -> None: ...
    @staticmethod
    def alias_table_sample_unique(
        table: AliasTable,
        seed: int,
        offset: int,
        exclude: npt.ArrayLike,
        k: int,
        out: npt.NDArray[np.int64],
        tries: npt.NDArray[np.int64] | None = None,
        num_threads: int = 1,
    ) -> None: ...
    @staticmethod
    def alias_table_prepare_exclude(
        table: AliasTable, exclude: npt.ArrayLike, rows: int, unique_k: int = 0
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.uint64], int, int
    ]: ...
    @staticmethod
    def alias_table_cumulative_mass(table: AliasTable) -> npt.NDArray[np.uint64]: ...
    @staticmethod
    def draw_randoms(seed: int, offset: int, out: npt.NDArray[np.uint64], isa: str = "") -> None: ...
    @staticmethod
    def philox_isa() -> str: ...

_testing: _Testing

# --------------------------------------------------------------- register_memory
MAX_FREQUENCY_BUCKETS: int

def frequency_update(
    state: npt.NDArray[np.float64], ids: npt.ArrayLike, step: int, alpha: float, num_threads: int = 1
) -> None: ...
def frequency_estimate(
    state: npt.NDArray[np.float64], ids: npt.ArrayLike, step: int, log: bool, out: npt.NDArray[np.float32]
) -> None: ...

MAX_RING_CAPACITY: int

class RingIndex:
    def __init__(self, capacity: int) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def head(self) -> int: ...
    def push(self, ids: npt.ArrayLike) -> tuple[int, int, int, int]: ...
    def restore(self, ids: npt.ArrayLike, steps: npt.ArrayLike, head: int) -> None: ...

def ring_copy_rows(dst: npt.NDArray[np.uint8], src: npt.ArrayLike, write: tuple[int, int, int, int]) -> None: ...

# ------------------------------------------------------------- register_hsoftmax
class HuffmanTree:
    @staticmethod
    def from_counts(counts: npt.ArrayLike, name: str = "counts") -> HuffmanTree: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def path_offsets(self) -> npt.NDArray[np.int64]: ...
    @property
    def path_nodes(self) -> npt.NDArray[np.int32]: ...
    @property
    def path_codes(self) -> npt.NDArray[np.uint8]: ...
    @property
    def depths(self) -> npt.NDArray[np.int64]: ...
    @property
    def children(self) -> npt.NDArray[np.int32]: ...

# Each kernel is bound for float32 and float64 arrays (outputs exactly that dtype). They take the
# tree's flat arrays (path_offsets int64, path_nodes int32, path_codes uint8, children int32), copy
# what they read and check the copies (ValueError), so any arrays are safe to pass.
def hs_forward(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None,
    path_offsets: npt.ArrayLike,
    path_nodes: npt.ArrayLike,
    path_codes: npt.ArrayLike,
    loss: npt.NDArray[Any],
    dz: npt.NDArray[Any],
    num_threads: int = 1,
) -> None: ...
def hs_backward(
    input: npt.ArrayLike,
    target: npt.ArrayLike,
    weight: npt.ArrayLike,
    path_offsets: npt.ArrayLike,
    path_nodes: npt.ArrayLike,
    path_codes: npt.ArrayLike,
    dz: npt.ArrayLike,
    grad_loss: npt.ArrayLike,
    grad_input: npt.NDArray[Any] | None = None,
    grad_weight: npt.NDArray[Any] | None = None,
    grad_bias: npt.NDArray[Any] | None = None,
    touched: npt.NDArray[np.int64] | None = None,
    num_threads: int = 1,
    pad_unused: bool = True,
) -> int: ...
def hs_log_prob(
    children: npt.ArrayLike, logits: npt.ArrayLike, out: npt.NDArray[Any], num_threads: int = 1
) -> None: ...
def hs_log_prob_backward(
    children: npt.ArrayLike,
    logits: npt.ArrayLike,
    grad_out: npt.ArrayLike,
    grad_logits: npt.NDArray[Any],
    num_threads: int = 1,
) -> None: ...
def mine_topk(
    query: npt.NDArray[Any],
    candidates: npt.NDArray[Any],
    exclude: npt.NDArray[np.int64],
    upper: npt.NDArray[np.float64],
    has_upper: bool,
    max_score: float,
    has_max_score: bool,
    cosine: bool,
    hi: int,
    query_block: int,
    candidate_block: int,
    ids: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    counts: npt.NDArray[np.int64],
    num_threads: int = 1,
) -> None: ...
def mine_window(
    ids: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    counts: npt.NDArray[np.int64],
    lo: int,
    k: int,
    sampling: int,
    tau: float,
    seed: int,
    offset: int,
    out_ids: npt.NDArray[np.int64],
    out_scores: npt.NDArray[np.float64],
    out_log_q: npt.NDArray[np.float64],
    window: npt.NDArray[np.int64],
    num_threads: int = 1,
) -> None: ...

# Skip-gram kernels (csrc/bindings/register_skipgram.cpp).
def skipgram_isa() -> str: ...
def skipgram_pairs(
    tokens: npt.ArrayLike,
    offsets: npt.ArrayLike | None,
    keep: npt.ArrayLike | None,
    window: int,
    seed: int,
    position: int = 0,
    shuffle_seed: int | None = None,
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def shuffle_pairs(
    centres: npt.ArrayLike,
    contexts: npt.ArrayLike,
    seed: int,
    bucket_bits: int = -1,
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def sgns_forward(
    input_weight: npt.ArrayLike,
    output_weight: npt.ArrayLike,
    centres: npt.ArrayLike,
    contexts: npt.ArrayLike,
    negatives: npt.ArrayLike,
    loss: npt.NDArray[Any],
    coef: npt.NDArray[Any],
    num_threads: int = 1,
) -> None: ...
def sgns_backward(
    input_weight: npt.ArrayLike,
    output_weight: npt.ArrayLike,
    centres: npt.ArrayLike,
    contexts: npt.ArrayLike,
    negatives: npt.ArrayLike,
    coef: npt.ArrayLike,
    grad_loss: npt.ArrayLike | None = None,
    grad_input: npt.NDArray[Any] | None = None,
    touched_input: npt.NDArray[np.int64] | None = None,
    grad_output: npt.NDArray[Any] | None = None,
    touched_output: npt.NDArray[np.int64] | None = None,
    num_threads: int = 1,
) -> tuple[int, int]: ...
def sgns_sgd(
    input_weight: npt.NDArray[Any],
    output_weight: npt.NDArray[Any],
    centres: npt.ArrayLike,
    contexts: npt.ArrayLike,
    negatives: npt.ArrayLike,
    lr_begin: float,
    lr_end: float,
    step: int,
    compute_loss: bool = True,
    num_threads: int = 1,
    hogwild: bool = False,
) -> float: ...
def hs_sgd(
    tree: HuffmanTree,
    input_weight: npt.NDArray[Any],
    weight: npt.NDArray[Any],
    bias: npt.NDArray[Any] | None,
    centres: npt.ArrayLike,
    contexts: npt.ArrayLike,
    lr_begin: float,
    lr_end: float,
    step: int,
    compute_loss: bool = True,
    num_threads: int = 1,
    hogwild: bool = False,
) -> float: ...

# ----------------------------------------------------------------- register_hits
def find_accidental_hits(
    negative_ids: npt.ArrayLike, positive_ids: npt.ArrayLike, max_pairs: int = ...
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None: ...

# ------------------------------------------------------------ register_tablefile
def checksum64(data: Any, num_threads: int = ...) -> int: ...

# ----------------------------------------------------------------- register_graph
class PairGroups:
    def __init__(
        self,
        a: npt.ArrayLike,
        b: npt.ArrayLike,
        c: npt.ArrayLike,
        limit_a: int = -1,
        limit_b: int = -1,
        limit_c: int = -1,
        num_threads: int = 1,
    ) -> None: ...
    @property
    def num_keys(self) -> int: ...
    @property
    def num_groups(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...
    def contains(
        self, a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike, num_threads: int = 1
    ) -> npt.NDArray[np.bool_]: ...
    def group_arrays(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def keys(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...

class GraphAlias:
    def __init__(self, weights: npt.ArrayLike) -> None: ...
    @property
    def probs(self) -> npt.NDArray[np.float64]: ...
    @property
    def num_classes(self) -> int: ...

def graph_corrupt(
    rows: npt.ArrayLike,
    side_probs: npt.ArrayLike,
    k: int,
    unique: bool,
    exclude_self_loops: bool,
    indexes: list[PairGroups | tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike] | None],
    universes: list[int],
    typed_head: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    typed_tail: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    weights_head: GraphAlias | None = None,
    weights_tail: GraphAlias | None = None,
    seed: int = 0,
    offset: int = 0,
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int8], npt.NDArray[np.float64]]: ...
def graph_global_negatives(
    index: PairGroups,
    num_src: int,
    num_dst: int,
    num_known: int,
    k: int,
    unique: bool,
    exclude_self_loops: bool,
    upper: bool,
    seed: int = 0,
    offset: int = 0,
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], float]: ...
def graph_filtered_ranks(
    scores: npt.NDArray[Any],
    targets: npt.ArrayLike,
    index: PairGroups | tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike] | None,
    key_a: npt.ArrayLike,
    key_b: npt.ArrayLike,
    num_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
