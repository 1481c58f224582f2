"""Sources of negatives for :func:`pyneg.functional.mixed_negatives_loss` (re-exported there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from pyneg._validation import ArrayLike, as_tensor, shape_str


@dataclass(frozen=True)
class NegativeSource:
    """One source of negatives for :func:`mixed_negatives_loss`.

    Attributes:
        embeddings: (N, d) negative embeddings. For an ``in_batch`` source,
            None means the loss's ``positive`` (the batch's own positives).
        ids: (N,) integer ids >= 0: an entry whose id equals a row's positive
            id is an accidental hit and is masked for that row. For an
            ``in_batch`` source, None means the loss's ``positive_ids``.
        log_q: (N,) the log-probability with which *this source* yields each
            entry (its log Q: batch-inclusion probability for in-batch and
            queued negatives, the log expected count for sampled ones);
            subtracted from the entry's logits. None: no correction.
        in_batch: the entries are the batch's positives, row-aligned with the
            queries: entry ``i`` is row ``i``'s own positive, so it is left out
            of row ``i``'s negatives (the loss scores it once, as the
            positive). With ``gather=True`` these entries, ids and log q are
            gathered over ranks into the global batch.
    """

    embeddings: Optional[torch.Tensor] = None
    ids: Optional[ArrayLike] = None
    log_q: Optional[ArrayLike] = None
    in_batch: bool = False

    @classmethod
    def batch(
        cls,
        log_q: Optional[ArrayLike] = None,
        *,
        ids: Optional[ArrayLike] = None,
        embeddings: Optional[torch.Tensor] = None,
    ) -> NegativeSource:
        """The batch's own positives as negatives (in-batch), with their log q."""
        return cls(embeddings, ids, log_q, in_batch=True)

    @classmethod
    def from_bank(cls, bank: Any) -> NegativeSource:
        """A memory bank's entries (detached) with their ids and log q.

        With a :class:`pyneg.MemoryBank` this takes :meth:`~pyneg.MemoryBank.negatives`:
        no entries before warm-up, none older than ``max_age``, and views into
        the bank rather than copies (so enqueue after ``loss.backward()``). Any
        other object only needs ``embeddings``, ``ids`` and ``log_q``. Entries
        enqueued without a log q (NaN) get no correction.
        """
        negatives = getattr(bank, "negatives", None)
        entries = negatives() if callable(negatives) else bank
        log_q = entries.log_q
        if log_q is not None:
            missing = torch.isnan(log_q)
            # Eager: a bank without any log q gives None (no correction to apply). Compiled: no
            # branch on the values (reading a bank stays in the step's graph); zeros are the same loss.
            if not torch.compiler.is_compiling() and bool(missing.all()):
                log_q = None
            else:
                log_q = torch.where(missing, torch.zeros_like(log_q), log_q)
        return cls(entries.embeddings.detach(), entries.ids, log_q)

    @classmethod
    def from_sampler(
        cls, embeddings: torch.Tensor, ids: ArrayLike, sampler: Any, *, num_tries: Optional[int] = None
    ) -> NegativeSource:
        """Negatives drawn by a pyneg sampler: ``ids`` (N,) and their ``embeddings`` (N, d).

        log Q is the sampler's log expected count of each id among the N draws
        (``num_tries`` for draws with ``unique=True``, as ``sample_candidates`` reports it).
        """
        # A NumPy/list input is copied: the loss saves the ids for its backward.
        ids_t = ids if isinstance(ids, torch.Tensor) else as_tensor(ids, "ids").clone()
        log_q = sampler.log_expected_count(ids_t, max(int(ids_t.numel()), 1), num_tries=num_tries)
        return cls(embeddings, ids_t.to(embeddings.device), log_q.to(embeddings.device))

    @classmethod
    def from_mined(cls, mined: Any, embeddings: torch.Tensor, *, candidate_ids: Optional[Any] = None) -> NegativeSource:
        """Per-row hard negatives from :func:`pyneg.mine_hard_negatives`, with their own log q.

        Row ``i`` gets its own ``k`` negatives (not shared with other rows),
        each corrected by the log-probability with which it landed in row
        ``i``'s sample. Padding (id -1, log q -inf) is masked out by the loss.

        Args:
            mined: a :class:`pyneg.mining.MinedNegatives` (anything with
                ``ids`` and ``log_q`` of shape (B, k)).
            embeddings: the (N, d) catalogue the ids index (e.g. the current
                item tower's outputs, so gradients reach it), or the
                negatives' own (B, k, d) embeddings.
            candidate_ids: the ``candidate_ids`` the mining call was given (the
                catalogue id of each row of ``embeddings``): ``mined.ids`` are
                then catalogue ids, mapped back to rows here to gather.
        """
        ids, log_q = mined.ids, mined.log_q
        if candidate_ids is not None:
            if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
                raise ValueError("candidate_ids needs the (N, d) embeddings its ids name")
            from pyneg.mining import _CandidateIds

            rows = _CandidateIds(candidate_ids, embeddings.shape[0]).rows_of(ids.to("cpu", torch.int64))
            if bool(((rows < 0) & (ids.cpu() >= 0)).any()):
                raise ValueError("mined.ids holds an id that candidate_ids does not hold")
            emb = embeddings[rows.clamp_min(0).to(embeddings.device)]
            return cls(emb, ids.to(emb.device), log_q.to(emb.device))
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.dim() == 2:
            n = embeddings.shape[0]
            # Padding (-1) gathers row 0 (masked by the loss); the op checks the rest (no graph break).
            rows = torch.ops.pyneg.softmax_check_ids(
                ids.clamp_min(0).to(embeddings.device), "mined.ids", n, f"embeddings has only {n} rows", False
            )
            emb = embeddings[rows]
        elif embeddings.dim() == 3 and tuple(embeddings.shape[:2]) == tuple(ids.shape):
            emb = embeddings
        else:
            want = shape_str((*ids.shape, "d"))
            raise ValueError(f"embeddings must be (N, d) or {want}, got {shape_str(embeddings.shape)}")
        return cls(emb, ids.to(emb.device), log_q.to(emb.device))
