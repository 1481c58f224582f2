"""Skip-gram training at C++ speed: pair generation, a fused negative-sampling
loss over embedding tables, and in-place SGD steps.

The pieces a skip-gram loop (word2vec, item2vec, DeepWalk / node2vec) spends
its time on, as kernels:

- :func:`skipgram_pairs` / :class:`SkipGramPairs`: (centre, context) pairs of a
  token stream with word2vec's frequent-word subsampling
  (:func:`keep_probability`) and reduced window, a pure function of
  ``(seed, offset + token index)`` (Philox4x32-10, like pyneg's samplers);
- :func:`negative_sampling_embedding_loss` / :class:`SkipGramNegativeSampling`:
  ``-log σ(u_o·v_c) - Σ_k log σ(-u_{n_k}·v_c)`` straight from the two
  embedding tables and the ids, forward and backward in one pass — the
  (B, K, d) tensor of negative vectors is never built — with dense or sparse
  (touched rows only) gradients for the tables;
- :func:`negative_sampling_sgd_` and :func:`hierarchical_softmax_sgd_`: one call
  that runs forward, backward and the SGD update in place for many mini-batches,
  with word2vec's linearly decaying learning rate. By default they are
  deterministic mini-batch SGD (no Hogwild races): every gradient of a
  mini-batch is taken at the weights before its update and each row is
  updated by one thread in pair order, so the result is the same bits for
  any thread count. ``batch_size=1`` is word2vec's per-pair update (on one
  thread); ``hogwild=True`` opts in to word2vec's lock-free threading.

Kernels run on CPU float32 / float64 tensors on all of torch's intra-op
threads with the GIL released; other devices and dtypes use an equivalent
plain-PyTorch path (the fused loss) or are refused (the in-place steps).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

from pyneg import _core
from pyneg._reduction import check_reduction as _check_reduction
from pyneg._reduction import reduce_loss as _reduce
from pyneg._validation import ArrayLike, as_float64_numpy, as_index_tensor, as_tensor, check_bool, check_int, check_seed
from pyneg.hsoftmax import HierarchicalSoftmax
from pyneg.samplers import draw_seed

__all__ = [
    "keep_probability",
    "skipgram_pairs",
    "SkipGramPairs",
    "negative_sampling_embedding_loss",
    "SkipGramNegativeSampling",
    "negative_sampling_sgd_",
    "hierarchical_softmax_sgd_",
]

_KERNEL_DTYPES = (torch.float32, torch.float64)
_MAX_WORKERS = 255  # DataLoader workers SkipGramPairs counts epochs for


def _threads() -> int:
    return torch.get_num_threads()


def _check_finite_float(value: Any, name: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be finite and >= {minimum}, got {value}")
    return value


# -------------------------------------------------------------- pair generation
def keep_probability(counts: ArrayLike, sample: float = 1e-3) -> torch.Tensor:
    """word2vec's probability of keeping each occurrence of a word when subsampling.

    With ``f`` a word's count and ``t = sample * sum(counts)``, a word is kept
    with probability ``min(1, (sqrt(f / t) + 1) * t / f)`` (Mikolov et al.'s
    released code; words rarer than about ``t`` are always kept). ``sample = 0``
    keeps everything; words with count 0 get 1.

    Args:
        counts: (V,) word counts, finite and >= 0.
        sample: the subsampling threshold (word2vec's ``-sample``, 1e-3 by default).

    Returns:
        (V,) float64 keep probabilities in (0, 1].
    """
    c = torch.from_numpy(as_float64_numpy(counts, "counts").copy())
    if not torch.isfinite(c).all() or (c < 0).any():
        raise ValueError("counts must be finite and >= 0")
    sample = _check_finite_float(sample, "sample")
    keep = torch.ones_like(c)
    total = float(c.sum())
    if sample == 0 or total == 0:
        return keep
    t = sample * total
    seen = c > 0
    keep[seen] = ((c[seen] / t).sqrt() + 1.0) * t / c[seen]
    return keep.clamp_(max=1.0)


def skipgram_pairs(
    tokens: ArrayLike,
    window: int = 5,
    *,
    offsets: Optional[ArrayLike] = None,
    keep: Optional[ArrayLike] = None,
    seed: Optional[int] = None,
    offset: int = 0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """All (centre, context) pairs of a token stream, as word2vec's skip-gram forms them.

    Token ``p`` draws one Philox block from ``(seed, offset + p)``: a uniform
    ``u`` (53 bits) keeps it iff ``u < keep[token]``, and a reduced window
    ``b = 1 + floor(r * window / 2**32)`` in ``[1, window]``. The kept tokens of
    each sentence are then paired with the kept tokens at most ``b`` positions
    away (``b`` of the centre), never across sentences. Pairs come out in corpus
    order: centres ascending, each centre's contexts left to right. Results
    depend only on the seed and the absolute positions, so splitting a corpus
    into chunks (passing each chunk's start as ``offset``) gives the same pairs.

    Args:
        tokens: (N,) int token ids (>= 0, and < len(keep) when ``keep`` is given).
        window: the maximum window (word2vec's ``-window``), >= 1.
        offsets: (S,) start of each sentence in ``tokens`` (as
            ``nn.EmbeddingBag``'s offsets): 0 first, non-decreasing, <= N.
            None: ``tokens`` is one sentence.
        keep: (V,) keep probabilities (see :func:`keep_probability`); None keeps all.
        seed: the stream's seed; None draws one from ``generator`` (torch's
            default generator when that is None too).
        offset: counter position of ``tokens[0]``.

    Returns:
        (centres, contexts), two int64 tensors of equal length.
    """
    window = check_int(window, "window", minimum=1)
    offset = check_int(offset, "offset", minimum=0)
    seed = draw_seed(generator) if seed is None else check_seed(seed)
    return _pairs(tokens, window, offsets, keep, seed, offset, None)


def _pairs(
    tokens: ArrayLike,
    window: int,
    offsets: Optional[ArrayLike],
    keep: Optional[ArrayLike],
    seed: int,
    offset: int,
    shuffle_seed: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """skipgram_pairs's pairs, shuffled by :func:`_shuffle_pairs` (shuffle_seed) unless shuffle_seed is None."""
    tok = _as_ids(tokens, "tokens")
    keep_np = None if keep is None else _check_keep(as_float64_numpy(keep, "keep"))
    offs = None if offsets is None else _as_ids(offsets, "offsets").numpy()
    centres, contexts = _core.skipgram_pairs(tok.numpy(), offs, keep_np, window, seed, offset, shuffle_seed, _threads())
    return torch.from_numpy(centres), torch.from_numpy(contexts)


def _shuffle_pairs(centres: ArrayLike, contexts: ArrayLike, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (centre, context) pairs in a uniformly random order, a pure function of (seed, pairs).

    Each pair moves as one record. The C++ shuffle (csrc/cpu/pair_shuffle.h):
    Philox random bucket labels, a stable scatter into the buckets, then
    Fisher-Yates with Lemire's unbiased bounded integers in each bucket;
    exactly uniform, the same bits for any thread count.
    """
    c = _as_ids(centres, "centres")
    x = _as_ids(contexts, "contexts")
    out_c, out_x = _core.shuffle_pairs(c.numpy(), x.numpy(), check_seed(seed), -1, _threads())
    return torch.from_numpy(out_c), torch.from_numpy(out_x)


def _check_keep(keep: np.ndarray) -> np.ndarray:
    """keep probabilities must lie in [0, 1]: a value above 1 is not a probability (refused, not clipped)."""
    if keep.ndim != 1:
        raise ValueError(f"keep must be 1-D (one probability per word), got shape {keep.shape}")
    if not np.isfinite(keep).all():
        raise ValueError("keep must be finite")
    if keep.size and (keep.min() < 0.0 or keep.max() > 1.0):
        bad = keep[(keep < 0.0) | (keep > 1.0)][0]
        raise ValueError(f"keep holds {bad}, outside [0, 1]: keep is a probability per word (see keep_probability)")
    return keep


def _as_ids(data: ArrayLike, name: str) -> torch.Tensor:
    """A contiguous 1-D int64 CPU tensor (values are range-checked by the kernels)."""
    t = as_tensor(data, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.detach().to(device="cpu", dtype=torch.int64).contiguous()


class SkipGramPairs(torch.utils.data.IterableDataset):
    """Batches of (centre, context) pairs over a token stream, one pass per epoch.

    The stream is cut into chunks of ``chunk_tokens`` tokens (at sentence
    starts when ``offsets`` is given); each chunk's pairs come from
    :func:`skipgram_pairs` at the chunk's absolute position, shuffled within
    the chunk when ``shuffle`` is set, and yielded ``batch_size`` at a time.
    The shuffle is exactly uniform over the chunk's orders and a pure function
    of ``(seed, epoch, chunk)``, the same for any thread count: C++ Philox keyed
    by ``(seed * 1_000_003 + epoch * 7919 + chunk) % 2**63`` labels each pair
    with a random bucket, the pairs are written straight into their buckets,
    and each bucket is shuffled by Fisher-Yates with unbiased bounded integers
    (changed in this version: it was a ``torch.randperm``, so a seed now gives
    another order than before). Epoch ``e``
    draws its subsampling and windows at positions ``e * N + p``, so epochs
    differ and every epoch is reproducible; call :meth:`set_epoch` (as with
    ``DistributedSampler``) or let iteration count epochs. Under a DataLoader
    with several workers, each worker takes every ``num_workers``-th chunk.

    Args:
        tokens: as :func:`skipgram_pairs`.
        window: as :func:`skipgram_pairs`.
        offsets: as :func:`skipgram_pairs`.
        keep: as :func:`skipgram_pairs`.
        batch_size: pairs per yielded batch (the last of a chunk may be smaller).
        seed: int; None draws one from torch's default generator once.
        shuffle: shuffle pairs within each chunk.
        chunk_tokens: tokens per chunk (memory: about 2 * window * 16 bytes per token).

    Iterating yields ``(centres, contexts)``, two int64 tensors per batch.
    """

    def __init__(
        self,
        tokens: ArrayLike,
        window: int = 5,
        *,
        offsets: Optional[ArrayLike] = None,
        keep: Optional[ArrayLike] = None,
        batch_size: int = 1024,
        seed: Optional[int] = None,
        shuffle: bool = True,
        chunk_tokens: int = 1 << 20,
    ) -> None:
        super().__init__()
        self.tokens = _as_ids(tokens, "tokens")
        self.window = check_int(window, "window", minimum=1)
        self.offsets = None if offsets is None else _as_ids(offsets, "offsets")
        self.keep = None if keep is None else torch.from_numpy(_check_keep(as_float64_numpy(keep, "keep").copy()))
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.seed = draw_seed() if seed is None else check_seed(seed)
        self.shuffle = check_bool(shuffle, "shuffle")
        self.chunk_tokens = check_int(chunk_tokens, "chunk_tokens", minimum=1)
        self.epoch = 0
        # Iterations started so far, slot 0 for this process, 1 + w for DataLoader
        # worker w. Shared memory, so the count survives the workers' copies of the
        # dataset (fork or spawn, fresh workers every epoch or persistent ones):
        # iteration in slot s draws epoch `self.epoch + started[s]`.
        self._started = torch.zeros(_MAX_WORKERS + 1, dtype=torch.int64).share_memory_()
        # Fail now rather than in a worker: one validating pass over a tiny slice is not enough.
        if self.tokens.numel() and int(self.tokens.min()) < 0:
            raise ValueError(f"tokens holds id {int(self.tokens.min())} below 0")
        if self.keep is not None and self.tokens.numel() and int(self.tokens.max()) >= self.keep.numel():
            raise ValueError(f"tokens holds id {int(self.tokens.max())} outside [0, {self.keep.numel()})")

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch the next iteration draws (iteration then moves on by one).

        Call it in the process that owns the DataLoader, between epochs.
        """
        self.epoch = check_int(epoch, "epoch", minimum=0)
        self._started.zero_()

    def next_epoch(self) -> int:
        """The epoch the next iteration in this process (or the next epoch of a DataLoader's workers) draws."""
        return self.epoch + int(self._started.max())

    def _claim_epoch(self) -> Tuple[int, int, int]:
        """(epoch, worker, workers) for an iteration starting now, and count it.

        Without workers, this process continues after the furthest epoch any
        consumer reached. Worker w counts its own iterations in its own slot of
        the shared counter (each worker iterates once per epoch), so epochs move
        on under a DataLoader exactly as they do without one, however the
        workers are started, with no lock (one writer per slot).
        """
        info = torch.utils.data.get_worker_info()
        if info is None:
            m = int(self._started.max())
            self._started.fill_(m + 1)
            return self.epoch + m, 0, 1
        if info.num_workers > _MAX_WORKERS:
            raise ValueError(
                f"SkipGramPairs supports at most {_MAX_WORKERS} DataLoader workers, got {info.num_workers}"
            )
        slot = 1 + info.id
        e = int(self._started[slot])
        self._started[slot] = e + 1
        return self.epoch + e, info.id, info.num_workers

    def chunks(self) -> Iterator[Tuple[int, int]]:
        """(start, end) token ranges of the chunks, cut at sentence starts when offsets are given."""
        n = self.tokens.numel()
        if self.offsets is None:
            for s in range(0, n, self.chunk_tokens):
                yield s, min(n, s + self.chunk_tokens)
            return
        starts = self.offsets.numpy()
        start = 0
        while start < n:
            # The first sentence start at or after start + chunk_tokens ends this chunk.
            i = int(np.searchsorted(starts, start + self.chunk_tokens, side="left"))
            end = min(int(starts[i]) if i < starts.size else n, n)
            yield start, end
            start = end

    def chunk_pairs(self, lo: int, hi: int, epoch: int, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """All pairs of chunk ``index`` = tokens [lo, hi) in ``epoch`` (shuffled when ``shuffle``).

        The building block of iteration, for loops that want whole chunks (and
        the token range, e.g. for a learning-rate schedule) rather than batches.
        """
        n = self.tokens.numel()
        offs = None
        if self.offsets is not None:
            starts = self.offsets.numpy()
            a, b = np.searchsorted(starts, [lo, hi], side="left")
            offs = starts[a:b] - lo
            if offs.size == 0 or offs[0] != 0:  # a chunk that starts inside a sentence
                offs = np.concatenate([[0], offs]).astype(np.int64)
        shuffle_seed = (self.seed * 1_000_003 + epoch * 7919 + index) % (2**63) if self.shuffle else None
        # Shuffled pairs are written straight to their shuffled places (C++, csrc/cpu/pair_shuffle.h).
        return _pairs(self.tokens[lo:hi], self.window, offs, self.keep, self.seed, epoch * n + lo, shuffle_seed)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        epoch, worker, workers = self._claim_epoch()
        for c, (lo, hi) in enumerate(self.chunks()):
            if c % workers != worker:
                continue
            centres, contexts = self.chunk_pairs(lo, hi, epoch, c)
            for s in range(0, centres.numel(), self.batch_size):
                yield centres[s : s + self.batch_size], contexts[s : s + self.batch_size]


# ---------------------------------------------------------- negative sampling
def _check_table(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (rows, dim) table, got shape {tuple(t.shape)}")
    return t


def _check_batch(
    input_weight: torch.Tensor,
    output_weight: torch.Tensor,
    centres: ArrayLike,
    contexts: ArrayLike,
    negatives: ArrayLike,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_table(input_weight, "input_weight")
    _check_table(output_weight, "output_weight")
    if output_weight.dtype != input_weight.dtype:
        raise TypeError(f"output_weight must have input_weight's dtype {input_weight.dtype}, got {output_weight.dtype}")
    if output_weight.device != input_weight.device:
        raise ValueError(f"output_weight is on {output_weight.device} but input_weight is on {input_weight.device}")
    if output_weight.shape[1] != input_weight.shape[1]:
        raise ValueError(
            f"output_weight must have input_weight's dim {input_weight.shape[1]}, got {output_weight.shape[1]}"
        )
    c = as_index_tensor(centres, "centres", input_weight.shape[0])
    x = as_index_tensor(contexts, "contexts", output_weight.shape[0])
    n = as_index_tensor(negatives, "negatives", output_weight.shape[0])
    if c.dim() != 1:
        raise ValueError(f"centres must be 1-D, got shape {tuple(c.shape)}")
    if x.shape != c.shape:
        raise ValueError(f"contexts must be ({c.shape[0]},) to match centres, got shape {tuple(x.shape)}")
    if n.dim() != 2 or n.shape[0] != c.shape[0]:
        raise ValueError(f"negatives must be ({c.shape[0]}, K) to match centres, got shape {tuple(n.shape)}")
    # Ids given as NumPy arrays are wrapped, not copied: backward must not see later writes.
    return (
        c if isinstance(centres, torch.Tensor) else c.clone(),
        x if isinstance(contexts, torch.Tensor) else x.clone(),
        n if isinstance(negatives, torch.Tensor) else n.clone(),
    )


def _sparse_rows(indices: torch.Tensor, values: torch.Tensor, rows: int) -> torch.Tensor:
    # The kernels emit distinct ascending rows: coalesced by construction.
    return torch.sparse_coo_tensor(
        indices.unsqueeze(0), values, (rows, values.shape[1]), is_coalesced=True, check_invariants=False
    )


class _SGNSLoss(torch.autograd.Function):
    """Per-pair SGNS loss from the two tables through the C++ kernels."""

    @staticmethod
    def forward(
        ctx: Any,
        input_weight: torch.Tensor,
        output_weight: torch.Tensor,
        centres: torch.Tensor,
        contexts: torch.Tensor,
        negatives: torch.Tensor,
        sparse: bool,
    ) -> torch.Tensor:
        w_in = input_weight.detach().contiguous()
        w_out = output_weight.detach().contiguous()
        b, k = negatives.shape
        loss = torch.empty(b, dtype=w_in.dtype)
        coef = torch.empty(b, k + 1, dtype=w_in.dtype)
        _core.sgns_forward(
            w_in.numpy(),
            w_out.numpy(),
            centres.numpy(),
            contexts.numpy(),
            negatives.numpy(),
            loss.numpy(),
            coef.numpy(),
            _threads(),
        )
        ctx.save_for_backward(w_in, w_out, centres, contexts, negatives, coef, input_weight, output_weight)
        ctx.sparse = sparse
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor):
        w_in, w_out, centres, contexts, negatives, coef, input_weight, output_weight = ctx.saved_tensors
        need_in, need_out = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():
            # backward(create_graph=True), e.g. a gradient penalty: differentiate the plain-PyTorch
            # loss instead, so the gradients carry a graph and second derivatives are exact
            # (the gradients come out dense, also for sparse=True).
            wrt = [w for w, need in ((input_weight, need_in), (output_weight, need_out)) if need]
            with torch.enable_grad():
                ref = _reference_loss(input_weight, output_weight, centres, contexts, negatives, False)
            grads = iter(torch.autograd.grad(ref, wrt, grad_loss, create_graph=True, allow_unused=True))
            return (next(grads) if need_in else None, next(grads) if need_out else None, None, None, None, None)
        grad_loss = grad_loss.detach().to(w_in.dtype).contiguous()
        b, k = negatives.shape
        dim = w_in.shape[1]
        gi = go = ti = to = None
        if ctx.sparse:
            if need_in:
                cap = min(b, w_in.shape[0])
                gi, ti = torch.empty(cap, dim, dtype=w_in.dtype), torch.empty(cap, dtype=torch.int64)
            if need_out:
                cap = min(b * (k + 1), w_out.shape[0])
                go, to = torch.empty(cap, dim, dtype=w_in.dtype), torch.empty(cap, dtype=torch.int64)
        else:
            # Rows off the batch stay zero; torch.zeros maps zero pages lazily.
            gi = torch.zeros_like(w_in) if need_in else None
            go = torch.zeros_like(w_out) if need_out else None
        n_in, n_out = _core.sgns_backward(
            w_in.numpy(),
            w_out.numpy(),
            centres.numpy(),
            contexts.numpy(),
            negatives.numpy(),
            coef.numpy(),
            grad_loss.numpy(),
            None if gi is None else gi.numpy(),
            None if ti is None else ti.numpy(),
            None if go is None else go.numpy(),
            None if to is None else to.numpy(),
            _threads(),
        )
        if ctx.sparse:
            if gi is not None and ti is not None:
                gi = _sparse_rows(ti[:n_in], gi[:n_in], w_in.shape[0])
            if go is not None and to is not None:
                go = _sparse_rows(to[:n_out], go[:n_out], w_out.shape[0])
        return gi, go, None, None, None, None


def _reference_loss(
    input_weight: torch.Tensor,
    output_weight: torch.Tensor,
    centres: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
    sparse: bool,
) -> torch.Tensor:
    """The same per-pair loss in plain PyTorch (any device and dtype)."""
    emb = nn.functional.embedding
    v = emb(centres, input_weight, sparse=sparse)
    pos = (v * emb(contexts, output_weight, sparse=sparse)).sum(-1)
    neg = (emb(negatives, output_weight, sparse=sparse) * v.unsqueeze(1)).sum(-1)
    return -nn.functional.logsigmoid(pos) - nn.functional.logsigmoid(-neg).sum(-1)


def negative_sampling_embedding_loss(
    input_weight: torch.Tensor,
    output_weight: torch.Tensor,
    centres: ArrayLike,
    contexts: ArrayLike,
    negatives: ArrayLike,
    reduction: str = "mean",
    *,
    sparse: bool = False,
) -> torch.Tensor:
    """Skip-gram negative-sampling loss straight from two embedding tables.

    For pair b with centre row ``v = input_weight[centres[b]]``, context row
    ``u_o = output_weight[contexts[b]]`` and negative rows ``u_{n_k} =
    output_weight[negatives[b, k]]``: ``-log σ(u_o·v) - Σ_k log σ(-u_{n_k}·v)``,
    the value of :func:`pyneg.functional.negative_sampling_loss` on the gathered
    rows. On CPU float32 / float64 forward and backward are one C++ pass each
    over the ids (no (B, K, d) gather); gradients flow to both tables.

    Args:
        input_weight: (V_in, d) centre table (e.g. ``nn.Embedding.weight``).
        output_weight: (V_out, d) context / negative table, same dtype and device.
        centres: (B,) ids into ``input_weight``.
        contexts: (B,) ids into ``output_weight``.
        negatives: (B, K) ids into ``output_weight`` (e.g. from a sampler).
        reduction: "none" (B,), "mean" or "sum".
        sparse: give the tables sparse COO gradients holding only the touched
            rows (coalesced), as ``nn.Embedding(sparse=True)`` does.
    """
    _check_reduction(reduction)
    check_bool(sparse, "sparse")
    c, x, n = _check_batch(input_weight, output_weight, centres, contexts, negatives)
    if input_weight.device.type == "cpu" and input_weight.dtype in _KERNEL_DTYPES:
        loss = _SGNSLoss.apply(input_weight, output_weight, c, x, n, sparse)
    else:
        dev = input_weight.device
        loss = _reference_loss(input_weight, output_weight, c.to(dev), x.to(dev), n.to(dev), sparse)
    return _reduce(loss, reduction)


def _check_lr(lr: Any, lr_end: Any) -> Tuple[float, float]:
    lr = _check_finite_float(lr, "lr")
    lr_end = lr if lr_end is None else _check_finite_float(lr_end, "lr_end")
    return lr, lr_end


def _check_inplace(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cpu" or t.dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"{name} must be a CPU float32 or float64 tensor for the in-place step, got {t.dtype} on {t.device}"
        )
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the step writes it in place)")


def negative_sampling_sgd_(
    input_weight: torch.Tensor,
    output_weight: torch.Tensor,
    centres: ArrayLike,
    contexts: ArrayLike,
    negatives: ArrayLike,
    lr: float,
    *,
    lr_end: Optional[float] = None,
    batch_size: int = 1024,
    compute_loss: bool = False,
    hogwild: bool = False,
) -> Optional[float]:
    """Trains both tables on the pairs in place: forward, backward and SGD in one call.

    The pairs are taken ``batch_size`` at a time; each mini-batch does one SGD
    step ``w -= lr * grad`` of the *summed* loss of
    :func:`negative_sampling_embedding_loss` on the rows it touches (word2vec's
    per-pair learning rate, applied to a mini-batch). The learning rate falls
    linearly from ``lr`` at the first pair to ``lr_end`` at the last (word2vec's
    schedule over a slice of the training; ``lr_end=None``: constant).
    Deterministic for any thread count; equal to ``torch.optim.SGD`` on the
    summed loss of each mini-batch (see the tests).

    ``batch_size=1`` runs word2vec's inner loop (each pair one SGD step, its
    rows updated in cache, no grouping): the fastest kernel per pair, on one
    thread unless ``hogwild``. Larger mini-batches are split across torch's
    threads with two barriers per mini-batch; on a machine with more runnable
    threads than cores each barrier waits for a descheduled thread, and
    ``hogwild=True`` with ``batch_size=1`` is then the fast choice.

    Args:
        input_weight: contiguous CPU float32 / float64 tables,
            same dtype and dim, not sharing memory; updated in place.
        output_weight: as ``input_weight`` above.
        centres: as :func:`negative_sampling_embedding_loss`.
        contexts: as ``centres`` above.
        negatives: as ``centres`` above.
        lr: learning rates (>= 0).
        lr_end: as ``lr`` above.
        batch_size: pairs per SGD step.
        compute_loss: also sum the loss (one ``log1p`` per score more; the
            gradients need only the sigmoids).
        hogwild: opt in to word2vec's lock-free threading: each thread trains
            its own contiguous share of the pairs at once on the shared tables,
            mini-batch by mini-batch (no barriers, so it scales on a busy
            machine, but updates of a row two threads touch at once may be
            lost and results depend on scheduling; with one thread it is the
            deterministic path, bit for bit). Default: deterministic.

    Returns:
        With ``compute_loss``, the summed loss of all pairs, each taken before
        its mini-batch's update; else None.
    """
    check_bool(compute_loss, "compute_loss")
    check_bool(hogwild, "hogwild")
    c, x, n = _check_batch(input_weight, output_weight, centres, contexts, negatives)
    lr, lr_end = _check_lr(lr, lr_end)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    _check_inplace(input_weight, "input_weight")
    _check_inplace(output_weight, "output_weight")
    with torch.no_grad():
        total = _core.sgns_sgd(
            input_weight.detach().numpy(),
            output_weight.detach().numpy(),
            c.numpy(),
            x.numpy(),
            n.numpy(),
            lr,
            lr_end,
            batch_size,
            compute_loss,
            _threads(),
            hogwild,
        )
    return float(total) if compute_loss else None


def hierarchical_softmax_sgd_(
    input_weight: torch.Tensor,
    hs: HierarchicalSoftmax,
    centres: ArrayLike,
    contexts: ArrayLike,
    lr: float,
    *,
    lr_end: Optional[float] = None,
    batch_size: int = 1024,
    compute_loss: bool = False,
    hogwild: bool = False,
) -> Optional[float]:
    """Skip-gram with hierarchical softmax, trained in place: ``hs(input_weight[centres], contexts)``.

    The same schedule and guarantees as :func:`negative_sampling_sgd_`, on the
    summed NLL of each mini-batch; updates ``input_weight`` and ``hs.weight``
    (and ``hs.bias``). A path node is scored like a negative-sampling slot
    with label ``1 - code`` (word2vec's ``g = 1 - code - f``), so both
    objectives run the same fused mini-batch kernel.

    With ``hogwild=True`` and ``batch_size=1`` on several threads, each thread
    steps its own copies of the inner nodes nearest the root (the rows on
    nearly every path) and adds its changes to the shared rows every 512
    pairs, so those rows do not move between the cores' caches on every pair;
    a thread sees the others' updates of them at most a few hundred pairs
    late. ``batch_size=1`` without ``hogwild`` (deterministic, one thread) is
    the fastest deterministic way when pairs are in corpus order.

    Returns:
        With ``compute_loss``, the summed NLL of all pairs, each taken before
        its mini-batch's update; else None.
    """
    check_bool(compute_loss, "compute_loss")
    check_bool(hogwild, "hogwild")
    if not isinstance(hs, HierarchicalSoftmax):
        raise TypeError(f"hs must be a pyneg.HierarchicalSoftmax, got {type(hs).__name__}")
    _check_table(input_weight, "input_weight")
    _check_inplace(input_weight, "input_weight")
    _check_inplace(hs.weight, "hs.weight")
    if hs.weight.dtype != input_weight.dtype:
        raise TypeError(f"hs.weight must have input_weight's dtype {input_weight.dtype}, got {hs.weight.dtype}")
    if input_weight.shape[1] != hs.dim:
        raise ValueError(f"input_weight must have hs.dim = {hs.dim} columns, got {input_weight.shape[1]}")
    c = as_index_tensor(centres, "centres", input_weight.shape[0])
    x = as_index_tensor(contexts, "contexts", hs.num_classes)
    if c.dim() != 1:
        raise ValueError(f"centres must be 1-D, got shape {tuple(c.shape)}")
    if x.shape != c.shape:
        raise ValueError(f"contexts must be ({c.shape[0]},) to match centres, got shape {tuple(x.shape)}")
    lr, lr_end = _check_lr(lr, lr_end)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    bias = None if hs.bias is None else hs.bias.detach().numpy()
    with torch.no_grad():
        total = _core.hs_sgd(
            hs.tree._core,
            input_weight.detach().numpy(),
            hs.weight.detach().numpy(),
            bias,
            c.numpy(),
            x.numpy(),
            lr,
            lr_end,
            batch_size,
            compute_loss,
            _threads(),
            hogwild,
        )
    return float(total) if compute_loss else None


class SkipGramNegativeSampling(nn.Module):
    """Skip-gram with negative sampling as a module: two tables and the fused loss.

    Args:
        num_embeddings: rows of the input (centre) table.
        dim: embedding size.
        num_outputs: rows of the output (context) table; defaults to ``num_embeddings``.
        sparse: sparse (touched rows only) gradients, for ``torch.optim.SGD`` or
            ``SparseAdam``; see :func:`negative_sampling_embedding_loss`.
        dtype: of the parameters.
        device: as ``dtype`` above.

    Attributes:
        weight: (num_embeddings, dim) input vectors, word2vec's init
            ``U(-0.5/dim, 0.5/dim)`` — the word vectors to keep after training.
        output_weight: (num_outputs, dim) output vectors, initialised to zero.

    Example:
        >>> import torch, pyneg
        >>> m = pyneg.SkipGramNegativeSampling(100, 16)
        >>> c, x, n = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.randint(0, 100, (2, 5))
        >>> m(c, x, n).backward()                     # autograd: any torch.optim optimizer
        >>> loss = m.sgd_step_(c, x, n, lr=0.025, compute_loss=True)  # or the fused in-place SGD
    """

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        num_outputs: Optional[int] = None,
        sparse: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        num_embeddings = check_int(num_embeddings, "num_embeddings", minimum=1)
        dim = check_int(dim, "dim", minimum=1)
        num_outputs = num_embeddings if num_outputs is None else check_int(num_outputs, "num_outputs", minimum=1)
        self.sparse = check_bool(sparse, "sparse")
        self.dim = dim
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim, **factory))
        self.output_weight = nn.Parameter(torch.empty(num_outputs, dim, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """word2vec's initialisation: small uniform inputs, zero outputs."""
        with torch.no_grad():
            self.weight.uniform_(-0.5 / self.dim, 0.5 / self.dim)
            self.output_weight.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.weight.shape[0]}, num_outputs={self.output_weight.shape[0]}, "
            f"dim={self.dim}, sparse={self.sparse}"
        )

    def forward(
        self, centres: ArrayLike, contexts: ArrayLike, negatives: ArrayLike, reduction: str = "mean"
    ) -> torch.Tensor:
        """The loss of :func:`negative_sampling_embedding_loss` on this module's tables."""
        return negative_sampling_embedding_loss(
            self.weight, self.output_weight, centres, contexts, negatives, reduction, sparse=self.sparse
        )

    def sgd_step_(
        self,
        centres: ArrayLike,
        contexts: ArrayLike,
        negatives: ArrayLike,
        lr: float,
        *,
        lr_end: Optional[float] = None,
        batch_size: int = 1024,
        compute_loss: bool = False,
        hogwild: bool = False,
    ) -> Optional[float]:
        """The fused in-place fast path :func:`negative_sampling_sgd_` on this module's tables."""
        return negative_sampling_sgd_(
            self.weight,
            self.output_weight,
            centres,
            contexts,
            negatives,
            lr,
            lr_end=lr_end,
            batch_size=batch_size,
            compute_loss=compute_loss,
            hogwild=hogwild,
        )
