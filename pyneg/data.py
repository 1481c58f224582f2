"""Drawing negatives inside ``torch.utils.data.DataLoader`` workers.

Negatives are cheapest to draw where the batch is assembled: in the DataLoader
workers, in parallel with the training step. :class:`NegativeSamplingCollator`
is a ``collate_fn`` that collates a batch as usual and adds its negatives.

Streams: without a ``seed`` the sampler takes one from torch's default
generator, which DataLoader seeds differently in every worker (``base_seed +
worker_id``, ``base_seed`` drawn from the main process's generator). So the
workers draw distinct negatives, and ``torch.manual_seed`` before building the
iterator reproduces all of them.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, List, Optional

import torch
from torch.utils.data import default_collate

from pyneg._validation import check_bool, check_int
from pyneg.samplers import AliasSampler

__all__ = ["NegativeSamplingCollator"]


class NegativeSamplingCollator:
    """A DataLoader ``collate_fn`` that adds ``num_negatives`` negatives per example.

    Args:
        sampler: any pyneg sampler.
        num_negatives: negatives per example; the batch gains a (B, num_negatives)
            LongTensor.
        positive_key: where the positive ids sit in the collated batch: an index
            for tuple/list batches, a key for dict batches. Only read when
            ``exclude_positives``.
        exclude_positives: never draw an example's own positive (accidental hits).
        unique: distinct negatives within each example's row.
        collate_fn: how to collate the examples first (default_collate).
        output_key: the key negatives are stored under for dict batches; tuple
            and list batches get them appended as the last element.

    Example:
        >>> import torch, pyneg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> pairs = TensorDataset(torch.arange(8), torch.arange(8) % 5)
        >>> collate = pyneg.NegativeSamplingCollator(pyneg.UniformSampler(5), 3)
        >>> users, items, negatives = next(iter(DataLoader(pairs, batch_size=4, collate_fn=collate)))
        >>> negatives.shape
        torch.Size([4, 3])
        >>> bool((negatives != items.unsqueeze(1)).all())
        True
    """

    def __init__(
        self,
        sampler: AliasSampler,
        num_negatives: int,
        *,
        positive_key: Hashable = 1,
        exclude_positives: bool = True,
        unique: bool = False,
        collate_fn: Callable[[List[Any]], Any] = default_collate,
        output_key: str = "negatives",
    ) -> None:
        if not isinstance(sampler, AliasSampler):
            raise TypeError(f"sampler must be a pyneg sampler, got {type(sampler).__name__}")
        self.sampler = sampler
        self.num_negatives = check_int(num_negatives, "num_negatives", minimum=1)
        self.positive_key = positive_key
        self.exclude_positives = check_bool(exclude_positives, "exclude_positives")
        self.unique = check_bool(unique, "unique")
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        try:
            hash(positive_key)
            hash(output_key)
        except TypeError:
            raise TypeError("positive_key and output_key must be hashable (an index or a dict key)") from None
        self.collate_fn = collate_fn
        self.output_key = output_key

    def __call__(self, batch: List[Any]) -> Any:
        collated = self.collate_fn(batch)
        positives: Optional[torch.Tensor] = None
        if self.exclude_positives:
            try:
                positives = collated[self.positive_key]
            except (KeyError, IndexError, TypeError):
                raise ValueError(
                    f"positive_key {self.positive_key!r} does not select the positive ids of the collated batch"
                ) from None
            if not isinstance(positives, torch.Tensor) or positives.dim() != 1:
                raise ValueError("positive_key must select a 1-D tensor of positive ids")
        size = (len(batch), self.num_negatives)
        negatives = self.sampler.sample(size, exclude=positives, unique=self.unique)
        if isinstance(collated, dict):
            collated[self.output_key] = negatives
            return collated
        if isinstance(collated, (tuple, list)):
            return type(collated)([*collated, negatives]) if isinstance(collated, list) else (*collated, negatives)
        return collated, negatives
