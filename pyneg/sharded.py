"""A sampler whose table is split across the ranks of a ``torch.distributed`` group.

Each rank builds an alias table over its own contiguous slice of the classes
(rank ``r`` holds ids ``[start_r, start_r + n_r)``, slices in rank order), so no
rank ever holds all the weights, and a catalogue larger than one machine's
memory can be sampled. The ranks exchange only the slice sizes and the log of
each slice's total mass at construction (one small all-gather).

Algorithm of a draw (exact: ``P(i) = w_i / sum(w)``, each row renormalised over
its allowed ids when ``exclude`` is given):

1. *Shard pick.* Draw ``j`` picks shard ``r`` with probability ``A_r / A``,
   where ``A_r`` is the mass of shard ``r`` still allowed for the draw's row
   (the shard's mass minus the mass of the row's excluded ids that fall in it,
   which the owners report) and ``A`` their sum. The uniform is float64 from a
   generator seeded by the call's seed (resolution 2**-53).
2. *In-shard draw.* The draws that fell into shard ``r`` are sent to its owner
   (one ``all_to_all_single``), which draws each one from its local alias table,
   excluding the row's ids of its shard, and sends the ids back (another).

So ``P(i) = A_r / A * p_i / A_r = p_i / A``: the unsharded distribution, to the
local tables' 2**-32 resolution.

Determinism: the draws of a call are a pure function of ``(seed, size,
exclude)`` and of the partition (the slices each rank holds): the same on every
rank that makes the same request, in every run, whatever the thread count. The
owner of shard ``r`` draws the requests it receives at consecutive positions of
the stream ``(seed, r)``, in the order of their positions ``j``. Changing the
world size (or the slices) changes the draws, not their distribution.

Cost of one :meth:`ShardedAliasSampler.sample` call: one small all-gather (every
rank agrees the call is valid and learns the seeds), then two ``all_to_all_single`` rounds of
counts and payloads: each draw crosses the network twice as one int64 (its row
index out, its id back). With ``exclude`` on any rank, a first round sends the
rows' excluded ids to their owners (one int64 pair per id, one float64 back).
A final small all-gather makes an error on any owner every rank's error.

Failure: every call is collective (all ranks of the group must call it, in the
same order). A rank whose arguments are invalid makes every rank raise a
ValueError (the bad rank its own error). A rank that dies or leaves makes the
others' collectives fail: gloo and NCCL raise when the peer's connection closes
or, at the latest, after the process group's ``timeout``
(``torch.distributed.init_process_group(..., timeout=...)``), never a hang.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from pyneg._validation import (
    MAX_CLASSES,
    ArrayLike,
    SizeLike,
    as_float64_numpy,
    as_index_tensor,
    check_int,
    check_seed,
    check_size,
)
from pyneg.distributed import _collective_device, _splitmix64, rank_and_world_size
from pyneg.samplers import AliasSampler, draw_seed

__all__ = ["ShardedAliasSampler"]

_CPU = torch.device("cpu")
_MASK63 = (1 << 63) - 1


class ShardedAliasSampler:
    """Draws class ids with probability proportional to weights split across ranks.

    Collective: every rank of ``group`` constructs it with its own slice, and
    calls :meth:`sample` and :meth:`log_prob` together.

    Args:
        local_weights: this rank's slice of the weights (1-D, finite, >= 0; at
            least one class per rank). Rank ``r``'s classes are the global ids
            ``start_r .. start_r + len - 1``, ``start_r`` the total length of
            the slices of ranks ``0 .. r-1``. The sum over all ranks must be
            positive (a rank's own slice may be all zeros).
        group: the process group (default: the world). Without an initialised
            process group the sampler is world size 1: one shard.

    Example:
        >>> import torch
        >>> from pyneg.sharded import ShardedAliasSampler
        >>> s = ShardedAliasSampler(torch.tensor([1.0, 2.0, 0.0, 5.0]))  # world size 1
        >>> s.sample((2, 3), seed=0).shape
        torch.Size([2, 3])
    """

    def __init__(self, local_weights: ArrayLike, *, group: Optional[Any] = None) -> None:
        self._group = group
        rank, world = rank_and_world_size(group)
        error: Optional[BaseException] = None
        n, log_mass, positive = 0, -math.inf, 0
        local: Optional[AliasSampler] = None
        try:
            w = as_float64_numpy(local_weights, "local_weights", max_len=MAX_CLASSES)
            if w.size == 0:
                raise ValueError("local_weights must hold at least one class on every rank")
            if not np.isfinite(w).all() or (w < 0).any():
                raise ValueError("local_weights must be finite and non-negative")
            n = int(w.size)
            top = float(w.max())
            if top > 0:
                log_mass = math.log(top) + math.log(float(np.sum(w / top)))
                local = AliasSampler(w, _name="local_weights")
                positive = local.num_positive
        except Exception as e:  # reported to every rank below
            error = e
        self._dev = _collective_device(group) if world > 1 else _CPU  # NCCL: a CUDA device
        if world > 1:
            mine = torch.tensor(
                [0.0 if error is None else 1.0, float(n), log_mass, float(positive)],
                dtype=torch.float64,
                device=self._dev,
            )
            parts = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(parts, mine, group=group)
            table = torch.stack(parts).cpu()
            if error is not None:
                raise error
            if bool((table[:, 0] > 0).any()):
                raise ValueError("another rank passed invalid local_weights (see its error)")
            sizes = [int(v) for v in table[:, 1].tolist()]
            log_masses = table[:, 2].clone()
            positives = [int(v) for v in table[:, 3].tolist()]
        else:
            if error is not None:
                raise error
            sizes, log_masses, positives = [n], torch.tensor([log_mass], dtype=torch.float64), [positive]
        if not bool(torch.isfinite(log_masses).any()):
            raise ValueError("local_weights: the weights of all ranks are zero (no class can be drawn)")
        if sum(sizes) > 2**62:
            raise ValueError(f"the ranks' slices hold {sum(sizes)} classes in all, more than 2**62")
        self._rank, self._world = rank, world
        self._local = local
        self._sizes = sizes
        self._starts = [sum(sizes[:r]) for r in range(world)]
        self._positives = positives
        # log P(shard r): the shard's share of the total mass.
        self._log_shard = log_masses - torch.logsumexp(log_masses, 0)
        self._shard_p = torch.exp(self._log_shard)
        self._bounds = torch.tensor(self._starts[1:], dtype=torch.int64)  # owner = searchsorted(bounds, id, right)

    # ------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        """V, the number of classes over all ranks."""
        return sum(self._sizes)

    @property
    def shard_range(self) -> Tuple[int, int]:
        """``(start, stop)``: the global ids whose table this rank holds."""
        start = self._starts[self._rank]
        return start, start + self._sizes[self._rank]

    @property
    def shard_probs(self) -> torch.Tensor:
        """(world size,) float64: the probability that a draw falls into each rank's shard."""
        return self._shard_p.clone()

    @property
    def local_sampler(self) -> Optional[AliasSampler]:
        """The alias sampler over this rank's slice (None when its weights are all zero)."""
        return self._local

    def local_nbytes(self) -> int:
        """Bytes of the table this rank holds now: its shard's entries (8 per class), and its
        masses (8 more) once derived (by exclusions or ``log_prob``); O(world size) besides."""
        if self._local is None:
            return 0
        from pyneg._sampler_files import table_tensors

        return sum(t.numel() * t.element_size() for t in table_tensors(self._local))

    def __repr__(self) -> str:
        return (
            f"ShardedAliasSampler(num_classes={self.num_classes}, shard={self.shard_range}, world_size={self._world})"
        )

    # ------------------------------------------------------------ exchanges
    def _owner(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self._bounds, ids.contiguous(), right=True)

    def _exchange(self, send: torch.Tensor, counts: List[int]) -> Tuple[torch.Tensor, List[int]]:
        """Rows of ``send`` (grouped by destination rank, ``counts[r]`` rows for rank r) to their
        ranks; returns what this rank received (grouped by source rank) and the counts per source."""
        if self._world == 1:
            return send, counts
        c = torch.tensor(counts, dtype=torch.int64, device=self._dev)
        got = torch.empty_like(c)
        dist.all_to_all_single(got, c, group=self._group)
        recv_counts = [int(v) for v in got.tolist()]
        payload = send.contiguous().to(self._dev)
        recv = payload.new_empty((sum(recv_counts),) + tuple(send.shape[1:]))
        dist.all_to_all_single(
            recv, payload, output_split_sizes=recv_counts, input_split_sizes=counts, group=self._group
        )
        return recv.cpu(), recv_counts

    def _reply(self, answer: torch.Tensor, recv_counts: List[int], counts: List[int]) -> torch.Tensor:
        """Sends answers to the rows received by :meth:`_exchange` back to their senders."""
        if self._world == 1:
            return answer
        payload = answer.contiguous().to(self._dev)
        back = payload.new_empty((sum(counts),) + tuple(answer.shape[1:]))
        dist.all_to_all_single(
            back, payload, output_split_sizes=counts, input_split_sizes=recv_counts, group=self._group
        )
        return back.cpu()

    def _agree(self, error: Optional[BaseException], flag: bool = False) -> bool:
        """Every rank raises if any rank's checks failed; returns whether any rank set ``flag``."""
        return self._agree_seeds(error, flag, 0)[0]

    def _agree_seeds(self, error: Optional[BaseException], flag: bool, seed: int) -> Tuple[bool, List[int]]:
        """As :meth:`_agree`, and every rank's ``seed`` (one all-gather of three int64 per rank)."""
        if self._world == 1:
            if error is not None:
                raise error
            return flag, [seed]
        bits = seed - (1 << 64) if seed >= 1 << 63 else seed  # the 64 bits as an int64
        mine = torch.tensor([0 if error is None else 1, int(flag), bits], dtype=torch.int64, device=self._dev)
        parts = [torch.empty_like(mine) for _ in range(self._world)]
        dist.all_gather(parts, mine, group=self._group)
        table = torch.stack(parts).cpu()
        if error is not None:
            raise error
        if bool((table[:, 0] > 0).any()):
            raise ValueError("another rank passed invalid arguments to this collective call (see its error)")
        return bool((table[:, 1] > 0).any()), [int(v) & ((1 << 64) - 1) for v in table[:, 2].tolist()]

    # ---------------------------------------------------------------- log q
    def log_prob(self, ids: ArrayLike) -> torch.Tensor:
        """log P(one draw == id) of the whole distribution, float64, shaped like ``ids``.

        The probabilities the sampler draws with (the shard's mass times the local
        table's probability): the unsharded sampler's, and the normalised weights, to
        the tables' 2**-32 resolution.

        Collective: each id is answered by the rank that owns it. The ``log q`` of the
        logQ correction (``log_expected_count`` adds ``log(num_sampled)``).
        """
        error: Optional[BaseException] = None
        idx = torch.empty(0, dtype=torch.int64)
        try:
            idx = as_index_tensor(ids, "ids", self.num_classes)
        except Exception as e:
            error = e
        self._agree(error)
        flat = idx.reshape(-1)
        owner = self._owner(flat)
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=self._world).tolist()
        recv, recv_counts = self._exchange(flat[order], counts)
        answer = self._local_log_prob(recv - self.shard_range[0])
        back = self._reply(answer, recv_counts, counts)
        out = torch.empty(flat.shape, dtype=torch.float64)
        out[order] = back
        return out.reshape(idx.shape)

    def _local_log_prob(self, local_ids: torch.Tensor) -> torch.Tensor:
        if self._local is None:
            return torch.full(local_ids.shape, -math.inf, dtype=torch.float64)
        return self._local.log_prob(local_ids) + self._log_shard[self._rank]

    def log_expected_count(self, ids: ArrayLike, num_sampled: int) -> torch.Tensor:
        """``log(num_sampled * p)``: the logQ of ``num_sampled`` draws with replacement (collective)."""
        num_sampled = check_int(num_sampled, "num_sampled", minimum=1)
        return self.log_prob(ids) + math.log(num_sampled)

    # ---------------------------------------------------------------- drawing
    def sample(
        self,
        size: SizeLike,
        *,
        exclude: Optional[ArrayLike] = None,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> torch.Tensor:
        """Draws an int64 CPU tensor of global class ids of shape ``size`` (collective).

        Args:
            size: int or tuple; the last dimension holds one query's negatives.
            exclude: ids a row must never contain, (B,) or (B, P) padded with -1,
                B the first dimension of ``size`` (each element of a 1-D size is
                a row); the row's draws follow the distribution renormalised
                over its allowed ids, exactly.
            generator: as :meth:`pyneg.AliasSampler.sample`.
            seed: as :meth:`pyneg.AliasSampler.sample`. Ranks that pass the same
                seed, size and exclusions get the same ids.

        Each rank asks for its own draws (sizes may differ between ranks); every
        rank must call. Draws with replacement only (no ``unique``).
        """
        error: Optional[BaseException] = None
        shape: Tuple[int, ...] = (0,)
        ex: Optional[torch.Tensor] = None
        s = 0
        try:
            shape = check_size(size, max_numel=2**60 - 1)
            if exclude is not None:
                ex = as_index_tensor(exclude, "exclude", self.num_classes, allow_padding=True)
                if ex.dim() == 1:
                    ex = ex.unsqueeze(1)
                lead = shape[0] if shape else 1
                if ex.dim() != 2:
                    raise ValueError(f"exclude must be (B,) or (B, P), got shape {tuple(ex.shape)}")
                if ex.shape[0] != lead:
                    raise ValueError(
                        f"exclude has {ex.shape[0]} rows but size {shape} has {lead} in its first dimension"
                    )
            if generator is not None and not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            s = check_seed(seed) if seed is not None else draw_seed(generator)
        except Exception as e:
            error = e
        any_exclude, seeds = self._agree_seeds(error, ex is not None, s)
        n = math.prod(shape)
        lists = ex.shape[0] if ex is not None else 1
        per_list = n // lists if lists else 0
        world = self._world

        # Allowed mass of every (exclusion list, shard); without exclusions, the shard masses.
        allowed = self._shard_p.unsqueeze(0)
        pairs_recv = torch.empty((0, 2), dtype=torch.int64)
        pair_counts_recv = [0] * world
        if any_exclude:
            masses, pairs_recv, pair_counts_recv = self._excluded_mass(ex)
            if ex is not None:
                allowed = masses
        error = None
        if ex is not None and n:
            empty = allowed.sum(1) <= 0
            if bool(empty.any()):
                error = ValueError(
                    f"exclude leaves row {int(empty.nonzero()[0])} no class with positive weight to draw"
                )
        self._agree(error)

        # 1. shard of every draw.
        g = torch.Generator().manual_seed(_splitmix64(s) & _MASK63)
        u = torch.rand(n, dtype=torch.float64, generator=g)
        row = (
            torch.arange(n, dtype=torch.int64) // per_list
            if (ex is not None and n)
            else torch.zeros(n, dtype=torch.int64)
        )
        cum = torch.cumsum(allowed, 1)
        if ex is not None and n:
            target = u * cum[row, -1]
            shard = torch.searchsorted(cum[row], target.unsqueeze(1), right=True).squeeze(1)
            last = (allowed > 0).to(torch.int64).cumsum(1).argmax(1)  # last shard with allowed mass
            shard = torch.minimum(shard, last[row])
        else:
            target = u * cum[0, -1]
            shard = torch.searchsorted(cum[0], target, right=True)
            shard = torch.minimum(shard, torch.tensor(int((self._shard_p > 0).nonzero().max())))
        order = torch.argsort(shard, stable=True)
        counts = torch.bincount(shard, minlength=world).tolist()
        # 2. the owners draw: each request carries its exclusion list's index.
        recv, recv_counts = self._exchange(row[order], counts)
        answer, error = self._draw_local(recv, recv_counts, pairs_recv, pair_counts_recv, seeds)
        back = self._reply(answer, recv_counts, counts)
        self._agree(error)
        out = torch.empty(n, dtype=torch.int64)
        out[order] = back
        return out.reshape(shape)

    def _excluded_mass(self, ex: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        """Sends each row's excluded ids to their owners; returns the (rows, world) allowed masses,
        and the (list, local id) pairs this rank received (grouped by source) with their counts."""
        world = self._world
        if ex is None:
            pairs = torch.empty((0, 2), dtype=torch.int64)
        else:
            rows = torch.arange(ex.shape[0], dtype=torch.int64).unsqueeze(1).expand_as(ex)
            keep = ex >= 0
            pairs = torch.stack([rows[keep], ex[keep]], 1)
            if pairs.shape[0]:
                pairs = torch.unique(pairs, dim=0)  # sorted by (row, id): duplicates excluded once
        owner = self._owner(pairs[:, 1])
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=world).tolist()
        sent = pairs[order]
        start = self.shard_range[0]
        recv, recv_counts = self._exchange(sent, counts)
        local_ids = recv[:, 1] - start
        # Each excluded id's probability within its shard (local p), and whether it is drawable.
        if self._local is None or local_ids.numel() == 0:
            q = torch.zeros(local_ids.shape, dtype=torch.float64)
        else:
            q = torch.exp(self._local.log_prob(local_ids))
        back = self._reply(q, recv_counts, counts)
        lists = ex.shape[0] if ex is not None else 0
        excluded = torch.zeros((lists, world), dtype=torch.float64)
        npos = torch.zeros((lists, world), dtype=torch.int64)
        if sent.shape[0]:
            own = owner[order]
            excluded.index_put_((sent[:, 0], own), back, accumulate=True)
            npos.index_put_((sent[:, 0], own), (back > 0).to(torch.int64), accumulate=True)
        share = (1.0 - excluded).clamp_(min=0.0)
        share[npos >= torch.tensor(self._positives, dtype=torch.int64)] = 0.0
        return self._shard_p.unsqueeze(0) * share, recv, recv_counts

    def _draw_local(
        self,
        rows: torch.Tensor,
        counts: List[int],
        pairs: torch.Tensor,
        pair_counts: List[int],
        seeds: List[int],
    ) -> Tuple[torch.Tensor, Optional[BaseException]]:
        """Draws the requests this rank received (``counts[r]`` from rank r, each naming its
        exclusion list, drawn from rank r's seed): the global ids, and the error this rank hit
        (answers are then -1)."""
        out = torch.full(rows.shape, -1, dtype=torch.int64)
        if rows.numel() == 0:
            return out, None
        start = self.shard_range[0]
        try:
            if self._local is None:
                raise ValueError(f"rank {self._rank} holds no drawable class but received draws")
            pos = 0
            pair_pos = 0
            for r in range(self._world):
                c, pc = counts[r], pair_counts[r]
                mine = pairs[pair_pos : pair_pos + pc]
                pair_pos += pc
                if c == 0:
                    continue
                want = rows[pos : pos + c]
                # the requester's seed and this shard: a request's ids do not depend on who asked
                stream = _splitmix64((seeds[r] + self._rank + 1) & ((1 << 64) - 1))
                if mine.shape[0] == 0:
                    got = self._local.sample(c, seed=stream, offset=0)
                else:
                    got = self._local.sample((c, 1), exclude=_lists_for(want, mine, start), seed=stream)
                out[pos : pos + c] = got.reshape(-1) + start
                pos += c
        except Exception as e:
            return out, e
        return out, None


def _lists_for(rows: torch.Tensor, pairs: torch.Tensor, start: int) -> torch.Tensor:
    """(len(rows), P) local exclusion lists (-1 padded) of the requests' rows, from the sorted
    (row, global id) pairs one rank sent."""
    uniq, inverse, counts = torch.unique_consecutive(pairs[:, 0], return_inverse=True, return_counts=True)
    width = int(counts.max())
    first = torch.cumsum(counts, 0) - counts
    col = torch.arange(pairs.shape[0]) - first[inverse]
    table = torch.full((uniq.numel(), width), -1, dtype=torch.int64)
    table[inverse, col] = pairs[:, 1] - start
    # requests whose row excluded nothing in this shard get an all -1 list
    where = torch.searchsorted(uniq, rows)
    found = (where < uniq.numel()) & (uniq[where.clamp(max=uniq.numel() - 1)] == rows)
    lists = torch.full((rows.numel(), width), -1, dtype=torch.int64)
    lists[found] = table[where[found]]
    return lists
