"""Renamed keywords (docs/architecture.md, "Names"): the old name still works, with a DeprecationWarning."""

from __future__ import annotations

import inspect

import pytest
import torch

import pyneg
from pyneg import functional as PF
from pyneg.losses import NegativeSamplingLoss


@pytest.mark.parametrize("cls, args", [(pyneg.MemoryBank, (8, 2)), (pyneg.FrequencyEstimator, (16,))])
def test_process_group_is_the_deprecated_name_of_group(cls, args):
    assert "group" in inspect.signature(cls).parameters
    with pytest.warns(DeprecationWarning, match="process_group= is deprecated, use group="):
        old = cls(*args, process_group=None)
    new = cls(*args, group=None)
    assert old.state_dict().keys() == new.state_dict().keys()
    with pytest.raises(TypeError, match="both group= and process_group="):
        cls(*args, group=None, process_group=None)


def test_negative_sampling_loss_input_is_the_deprecated_name_of_query():
    g = torch.Generator().manual_seed(0)
    q, p, n = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    want = PF.negative_sampling_loss(q, p, n)
    assert torch.equal(PF.negative_sampling_loss(query=q, positive=p, negative=n), want)
    with pytest.warns(DeprecationWarning, match="input= is deprecated, use query="):
        got = PF.negative_sampling_loss(input=q, positive=p, negative=n)
    assert torch.equal(got, want)
    with pytest.warns(DeprecationWarning, match="input= is deprecated"):
        assert torch.equal(NegativeSamplingLoss()(input=q, positive=p, negative=n), want)
    with pytest.raises(TypeError, match="both query= and input="):
        PF.negative_sampling_loss(input=q, query=q, positive=p, negative=n)
