"""Bad input gets a ValueError or TypeError naming the argument, never a crash.

The hypothesis test throws generated inputs (well over 1,000 of them) at the
public sampler API and asserts each call either returns valid samples or raises
one of those errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pyneg


@pytest.mark.parametrize(
    "weights, err, match",
    [
        ([1.0, float("nan")], ValueError, "weights"),
        ([1.0, float("inf")], ValueError, "weights"),
        ([1.0, -0.5], ValueError, "weights"),
        ([0.0, 0.0], ValueError, "weights"),
        ([], ValueError, "weights"),
        ([[1.0, 2.0]], ValueError, "weights"),
        (5.0, ValueError, "weights"),
        ("abc", TypeError, "weights"),
        (None, TypeError, "weights"),
        ([1 + 2j], TypeError, "weights"),
        (torch.tensor([True, False]), TypeError, "weights"),
        ([{"a": 1}], TypeError, "weights"),
    ],
)
def test_bad_weights(weights, err, match):
    with pytest.raises(err, match=match):
        pyneg.AliasSampler(weights)


def test_bad_counts_and_sizes():
    with pytest.raises(ValueError, match="counts"):
        pyneg.UnigramSampler([1.0, -1.0])
    with pytest.raises(ValueError, match="counts"):
        pyneg.UnigramSampler([0.0, 0.0])
    with pytest.raises(ValueError, match="power"):
        pyneg.UnigramSampler([1.0], power=float("nan"))
    with pytest.raises(TypeError, match="power"):
        pyneg.UnigramSampler([1.0], power="1")
    for cls in (pyneg.UniformSampler, pyneg.LogUniformSampler):
        with pytest.raises(ValueError, match="num_classes"):
            cls(0)
        with pytest.raises(TypeError, match="num_classes"):
            cls(2.5)


def test_bad_sample_arguments():
    s = pyneg.AliasSampler([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="size"):
        s.sample(-1)
    with pytest.raises(ValueError, match="size"):
        s.sample((2, -3))
    with pytest.raises(TypeError, match="size"):
        s.sample(2.0)
    with pytest.raises(TypeError, match="size"):
        s.sample("3")
    with pytest.raises(ValueError, match="seed"):
        s.sample(3, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        s.sample(3, seed=2**64)
    with pytest.raises(TypeError, match="seed"):
        s.sample(3, seed=1.5)
    with pytest.raises(TypeError, match="generator"):
        s.sample(3, generator=42)
    with pytest.raises(ValueError, match="device"):
        s.sample(3, device="not-a-device")
    with pytest.raises(TypeError, match="unique"):
        s.sample(3, unique=1)
    with pytest.raises(ValueError, match="offset"):
        s.sample(3, offset=-1)
    with pytest.raises(ValueError, match="ids"):
        s.log_prob([3])
    with pytest.raises(TypeError, match="ids"):
        s.log_prob([0.5])
    with pytest.raises(ValueError, match="num_sampled"):
        s.log_expected_count([0], 0)


def test_rejected_call_leaves_out_untouched():
    s = pyneg.AliasSampler([1.0, 0.0, 2.0])
    out = torch.full((2, 2), -7, dtype=torch.int64)
    with pytest.raises(ValueError):
        s.sample((2, 2), exclude=torch.tensor([[0, -1], [0, 2]]), out=out, seed=1)
    assert (out == -7).all()


_valid_weights = st.lists(
    st.one_of(
        st.floats(min_value=0, max_value=1e300),
        st.floats(min_value=1e-300, max_value=1.0),
        st.just(0.0),
        st.integers(min_value=0, max_value=10**6),
    ),
    min_size=0,
    max_size=40,
).flatmap(lambda w: st.permutations(w + [1.0]))  # at least one positive weight
_any_weights = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-3, max_value=10**6)),
    min_size=0,
    max_size=40,
)
# Mostly valid weights, so that most examples reach the sampling kernels.
weights_strategy = st.one_of(
    _valid_weights,
    _valid_weights,
    _valid_weights,
    _any_weights,
    st.builds(lambda n: np.ones(n), st.integers(min_value=0, max_value=3)),
    st.sampled_from(["x", None, [[1.0]], 3]),
)

size_strategy = st.one_of(
    st.integers(min_value=-2, max_value=50),
    st.tuples(st.integers(min_value=-1, max_value=12), st.integers(min_value=-1, max_value=12)),
    st.tuples(st.integers(0, 4), st.integers(0, 3), st.integers(0, 5)),
    st.just(2.5),
)


def _valid_samples(out: torch.Tensor, probs: torch.Tensor, size, unique: bool, exclude) -> None:
    shape = (size,) if isinstance(size, int) else tuple(size)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64 and tuple(out.shape) == shape
    if out.numel():
        assert out.min() >= 0 and out.max() < probs.numel()
        assert (probs[out] > 0).all()
    if unique and out.numel() and len(shape) >= 1:
        # Rows are the last dimension; a 1-D size with an exclusion list has
        # one row per element (nothing to keep distinct).
        if len(shape) == 1 and exclude is not None:
            return _check_excluded(out, shape, exclude)
        rows = out.reshape(-1, shape[-1]) if len(shape) >= 2 else out.reshape(1, -1)
        srt = rows.sort(dim=1).values
        assert (srt[:, 1:] != srt[:, :-1]).all()
    _check_excluded(out, shape, exclude)


def _check_excluded(out: torch.Tensor, shape, exclude) -> None:
    if exclude is not None and out.numel():
        ex = torch.as_tensor(exclude)
        ex = ex.reshape(ex.shape[0], -1)
        b = shape[0]
        assert not (out.reshape(b, -1, 1) == ex.reshape(b, 1, -1)).any()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    weights=weights_strategy,
    size=size_strategy,
    unique=st.booleans(),
    use_exclude=st.booleans(),
    exclude_width=st.integers(min_value=0, max_value=4),
    exclude_hi=st.integers(min_value=-2, max_value=45),
    seed=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from([-1, 2**64])),
    data=st.data(),
)
def test_fuzz_sampler_api(weights, size, unique, use_exclude, exclude_width, exclude_hi, seed, data):
    try:
        sampler = pyneg.AliasSampler(weights)
    except (ValueError, TypeError):
        event("weights rejected")
        return
    probs = sampler.probs
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9)
    exclude = None
    if use_exclude:
        rows = size if isinstance(size, int) else (size[0] if isinstance(size, tuple) else 1)
        rows = max(int(rows), 0) if isinstance(rows, int) else 1
        rows = data.draw(st.sampled_from([rows, rows, rows, rows + 1]))  # mostly matching
        shape = (rows, exclude_width) if exclude_width else (rows,)
        exclude = data.draw(
            st.lists(
                st.integers(min_value=-2, max_value=exclude_hi), min_size=math.prod(shape), max_size=math.prod(shape)
            )
        )
        exclude = torch.tensor(exclude, dtype=torch.int64).reshape(shape)
    try:
        out = sampler.sample(size, unique=unique, exclude=exclude, seed=seed)
    except (ValueError, TypeError):
        event("sample arguments rejected")
        return
    event("sampled")
    _valid_samples(out, probs, size, unique, exclude)
