"""Reliability of the samplers (issue 10): nothing a user does crashes pyneg, hangs it
or silently corrupts a sampler's state.

* Round trips (deepcopy, pickle, torch.save/torch.load, weights_only state_dict)
  give identical next draws; another class's or size's state is refused.
* A refused call leaves the sampler (and torch's generator) as it was.
* Handed-out tensors are copies: writing them changes nothing (crash suite).
* Concurrent writers of the caller's inputs cannot crash a kernel (crash suite).
* Several Python threads sampling one sampler get the serial results.
"""

from __future__ import annotations

import copy
import io
import pickle
import threading

import numpy as np
import pytest
import torch

import pyneg
from pyneg import _core, _validation
from pyneg._core import _testing

COUNTS = (torch.arange(1, 41, dtype=torch.float64) ** -1.1) * 1000


def make_samplers():
    return {
        "alias": pyneg.AliasSampler(COUNTS.flip(0)),
        "unigram": pyneg.UnigramSampler(COUNTS, power=0.6),
        "uniform": pyneg.UniformSampler(40),
        "loguniform": pyneg.LogUniformSampler(40),
    }


def draws(s, generator_seed=None):
    """A fingerprint of a sampler's next draws on every path (plain, excluding, unique)."""
    ex = torch.tensor([[0, 1, -1], [5, 5, 6], [39, -1, -1]])
    out = [
        s.sample((3, 7), seed=11),
        s.sample((3, 7), seed=11, offset=5, exclude=ex),
        s.sample((3, 7), seed=12, exclude=ex, unique=True),
        s.log_prob(torch.arange(40)),
        s.expected_count(torch.arange(40), 7, num_tries=9),
    ]
    if generator_seed is not None:  # the default-generator path
        torch.manual_seed(generator_seed)
        out.append(s.sample(50))
    return out


def assert_same_draws(a, b):
    for x, y in zip(draws(a, 3), draws(b, 3)):
        assert torch.equal(x, y)


def state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


# ------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", ["alias", "unigram", "uniform", "loguniform"])
def test_copies_draw_exactly_as_the_original(name, tmp_path):
    s = make_samplers()[name]
    copies = [copy.deepcopy(s), copy.copy(s), pickle.loads(pickle.dumps(s))]
    path = tmp_path / "s.pt"
    torch.save(s, path)
    copies.append(torch.load(path, weights_only=False))
    for c in copies:
        assert type(c) is type(s)
        assert_same_draws(s, c)
        state_equal(c.state_dict(), s.state_dict())
        assert torch.equal(c.probs, s.probs)
    if name == "unigram":
        assert all(c.power == s.power == 0.6 for c in copies)


@pytest.mark.parametrize("name", ["alias", "unigram", "uniform", "loguniform"])
def test_state_dict_loads_weights_only(name):
    s = make_samplers()[name]
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    fresh = {
        "alias": lambda: pyneg.AliasSampler(torch.ones(40)),
        "unigram": lambda: pyneg.UnigramSampler(torch.ones(40), power=1.0),
        "uniform": lambda: pyneg.UniformSampler(40),
        "loguniform": lambda: pyneg.LogUniformSampler(40),
    }[name]()
    fresh.load_state_dict(sd)
    assert_same_draws(s, fresh)
    state_equal(fresh.state_dict(), s.state_dict())


def test_copies_are_independent():
    s = pyneg.AliasSampler([1.0, 2.0, 3.0])
    c = copy.deepcopy(s)
    c.load_state_dict(pyneg.AliasSampler([3.0, 2.0, 1.0]).state_dict())
    assert torch.allclose(s.probs, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) / 6)
    assert torch.allclose(c.probs, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) / 6)


# --------------------------------------------------------- refused states
def _refused_states(s):
    sd = s.state_dict()
    analytic = isinstance(s, (pyneg.UniformSampler, pyneg.LogUniformSampler))
    key = "num_classes" if analytic else "entries"
    bad = {
        "not a dict": [(key, sd[key])],
        f"missing {key}": {k: v for k, v in sd.items() if k != key},
        "missing sampler": {k: v for k, v in sd.items() if k != "sampler"},
        "extra key": {**sd, "step": 3},
        "wrong class": {**sd, "sampler": "UniformSampler" if type(s) is not pyneg.UniformSampler else "AliasSampler"},
    }
    if analytic:
        bad.update(
            {
                "zero classes": {**sd, "num_classes": 0},
                "negative classes": {**sd, "num_classes": -3},
                "string classes": {**sd, "num_classes": "40"},
                "float classes": {**sd, "num_classes": 40.5},
                "bool classes": {**sd, "num_classes": True},
                "other size": {**sd, "num_classes": 41},
                "past 2**50": {**sd, "num_classes": 2**50 + 1},
                # A state of an older pyneg (probs), normalised and valid, but not this distribution.
                "other distribution": {
                    "sampler": sd["sampler"],
                    "probs": pyneg.AliasSampler(torch.arange(1, 41.0)).probs,
                },
            }
        )
    else:
        e = sd["entries"]
        out_of_range = e.clone()
        out_of_range[3] = (40 << 32) | 5  # alias 40 >= V
        negative_alias = e.clone()
        negative_alias[5] = -1  # alias 2**32 - 1
        p = pyneg.AliasSampler(torch.arange(1, 41.0)).probs
        legacy = {k: v for k, v in sd.items() if k != "entries"}
        bad.update(
            {
                "float64 entries": {**sd, "entries": e.double()},
                "int32 entries": {**sd, "entries": e.int()},
                "2-D entries": {**sd, "entries": e.unsqueeze(0)},
                "list entries": {**sd, "entries": e.tolist()},
                "short entries": {**sd, "entries": e[:-1]},
                "long entries": {**sd, "entries": torch.cat([e, e])},
                "alias out of range": {**sd, "entries": out_of_range},
                "alias 2**32 - 1": {**sd, "entries": negative_alias},
                "meta entries": {**sd, "entries": e.to("meta")},
                "sparse entries": {**sd, "entries": e.to_sparse()},
                # States of an older pyneg (probs instead of entries) are checked as before.
                "nan probs": {
                    **{k: v for k, v in sd.items() if k != "entries"},
                    "probs": torch.where(torch.arange(40) == 3, float("nan"), p),
                },
                "unnormalised probs": {**legacy, "probs": p * 2},
                "float32 probs": {**legacy, "probs": p.float()},
            }
        )
    if isinstance(s, pyneg.UnigramSampler):
        bad["nan power"] = {**sd, "power": float("nan")}
        bad["negative power"] = {**sd, "power": -1.0}
        bad["string power"] = {**sd, "power": "0.75"}
    return bad


@pytest.mark.parametrize("name", ["alias", "unigram", "uniform", "loguniform"])
def test_bad_states_are_refused_and_change_nothing(name):
    s = make_samplers()[name]
    before_state, before_draws = s.state_dict(), draws(s)
    for what, bad in _refused_states(s).items():
        with pytest.raises((ValueError, TypeError), match="state_dict") as info:
            s.load_state_dict(bad)
        if what != "not a dict":
            assert info.type is ValueError, what
        state_equal(s.state_dict(), before_state)
        for x, y in zip(draws(s), before_draws):
            assert torch.equal(x, y), what


def test_cross_class_states_are_refused():
    samplers = make_samplers()
    for a in samplers.values():
        for b in samplers.values():
            if type(a) is type(b):
                continue
            with pytest.raises(ValueError, match="state_dict"):
                b.load_state_dict(a.state_dict())
    # The case the issue names: a LogUniformSampler must refuse a UniformSampler's state.
    with pytest.raises(ValueError, match="UniformSampler"):
        pyneg.LogUniformSampler(40).load_state_dict(pyneg.UniformSampler(40).state_dict())


def test_other_sizes_are_refused():
    with pytest.raises(ValueError, match="classes"):
        pyneg.AliasSampler(torch.ones(5)).load_state_dict(pyneg.AliasSampler(torch.ones(6)).state_dict())
    with pytest.raises(ValueError, match="classes"):
        pyneg.UniformSampler(5).load_state_dict(pyneg.UniformSampler(6).state_dict())


# --------------------------------------------------------- handed-out data
def test_probs_is_a_copy():
    s = pyneg.UnigramSampler(COUNTS)
    p = s.probs
    lp = s.log_prob(torch.arange(40))
    before = draws(s)
    p.fill_(1.0)
    s.state_dict()["entries"].zero_()
    lp.fill_(0.0)
    for x, y in zip(draws(s), before):
        assert torch.equal(x, y)
    assert torch.allclose(s.probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(pickle.loads(pickle.dumps(s)).probs, s.probs)
    with pytest.raises(AttributeError):
        s.power = 2.0  # read-only: it must keep describing the probs


def test_table_views_are_read_only():
    s = pyneg.AliasSampler([1.0, 2.0])
    with pytest.raises(ValueError):
        _testing.alias_table_entries(s._table)[0] = 0
    before = s.sample(100, seed=1)
    _testing.alias_table_mass(s._table)[0] = 0  # the masses are derived: a fresh array
    s.state_dict()["entries"][0] = 2**40  # the state holds a copy
    assert torch.equal(s.sample(100, seed=1), before)


# ------------------------------------------------------ accepted and refused
def test_valid_inputs_the_issue_names_are_accepted():
    assert torch.equal(pyneg.AliasSampler([1e-310, 1e-310]).probs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    sub = pyneg.AliasSampler([1e-320, 3e-320]).probs
    assert torch.allclose(sub, torch.tensor([0.25, 0.75], dtype=torch.float64), rtol=1e-3)
    s = pyneg.UnigramSampler([1.0, 4.0], power=np.float32(0.5))
    assert s.power == 0.5 and torch.allclose(s.probs, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    # counts ** power overflows float64, the distribution does not.
    big = pyneg.UnigramSampler([1e300, 1e299], power=2)
    assert torch.allclose(big.probs, torch.tensor([1 / 1.01, 0.01 / 1.01], dtype=torch.float64))
    assert torch.equal(pyneg.UnigramSampler([0.0, 0.0], power=0).probs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    u = pyneg.UniformSampler(np.int64(7))
    out = u.sample((np.int64(2), 3), seed=np.uint64(5), offset=np.int32(1), unique=np.bool_(True))
    assert torch.equal(out, u.sample((2, 3), seed=5, offset=1, unique=True))
    assert u.expected_count([0], np.int64(2), num_tries=np.float32(3)).item() == pytest.approx(1 - (6 / 7) ** 3)


@pytest.mark.parametrize(
    "call, err, name",
    [
        (lambda: pyneg.UniformSampler(2**50 + 1), ValueError, "num_classes"),
        (lambda: pyneg.LogUniformSampler(2**51), ValueError, "num_classes"),
        (lambda: pyneg.AliasSampler(np.broadcast_to(1.0, (2**31,))), ValueError, "weights"),
        (lambda: pyneg.UnigramSampler([1.0], power=True), TypeError, "power"),
        (lambda: pyneg.UnigramSampler([1.0], power=10**400), ValueError, "power"),
        (lambda: pyneg.UnigramSampler([1.0, float("inf")], power=0.5), ValueError, "counts"),
        (lambda: pyneg.AliasSampler(torch.ones(3, device="meta")), ValueError, "weights"),
        (lambda: pyneg.AliasSampler(torch.ones(3).to_sparse()), TypeError, "weights"),
        (lambda: pyneg.AliasSampler([2**64]), TypeError, "weights"),
    ],
)
def test_constructor_errors_name_the_argument(call, err, name):
    with pytest.raises(err, match=name):
        call()


S = pyneg.AliasSampler([1.0, 2.0, 0.0, 5.0])


@pytest.mark.parametrize(
    "call, err, name",
    [
        (lambda: S.sample(2**63), ValueError, "size"),
        (lambda: S.sample((2**32, 2**32)), ValueError, "size"),
        (lambda: S.sample((2**62, 2**62, 0)), ValueError, "size"),
        (lambda: S.sample(3, offset=2**64), ValueError, "offset"),
        (lambda: S.sample(3, offset=2**64 - 2), ValueError, "offset"),
        (lambda: S.sample(3, offset=-1), ValueError, "offset"),
        (lambda: S.sample(3, seed=2**64), ValueError, "seed"),
        (lambda: S.sample(3, unique="no"), TypeError, "unique"),
        (lambda: S.sample(3, unique=1), TypeError, "unique"),
        (lambda: S.sample(3, device="meta"), ValueError, "device"),
        (lambda: S.sample(3, generator=3), TypeError, "generator"),
        (lambda: S.sample((2, 2), exclude=np.array([[2**64 - 1], [0]], dtype=np.uint64)), ValueError, "exclude"),
        (lambda: S.sample((2, 2), exclude=torch.zeros(2, 1, dtype=torch.int64, device="meta")), ValueError, "exclude"),
        (lambda: S.sample((2, 2), exclude=torch.zeros(2, 1, dtype=torch.int64).to_sparse()), TypeError, "exclude"),
        (lambda: S.sample((2, 2), exclude=torch.zeros(2, 1)), TypeError, "exclude"),
        (lambda: S.log_prob(np.array([2**64 - 1], dtype=np.uint64)), ValueError, "ids"),
        (lambda: S.log_prob(torch.tensor([2**64 - 1], dtype=torch.uint64)), ValueError, "ids"),
        (lambda: S.log_prob([2**64]), TypeError, "ids"),
        (lambda: S.log_prob(torch.zeros(2, dtype=torch.int64, device="meta")), ValueError, "ids"),
        (lambda: S.log_prob(torch.zeros(2, dtype=torch.int64).to_sparse()), TypeError, "ids"),
        (lambda: S.log_prob([True]), TypeError, "ids"),
        (lambda: S.expected_count([0], 2, num_tries=float("nan")), ValueError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries=float("inf")), ValueError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries=-3), ValueError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries=0.5), ValueError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries="3"), TypeError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries=True), TypeError, "num_tries"),
        (lambda: S.expected_count([0, 1], 2, num_tries=torch.tensor([3, 4, 5])), ValueError, "num_tries"),
        (lambda: S.expected_count([[0, 1]], 2, num_tries=torch.ones(1, 1, 1)), ValueError, "num_tries"),
        (lambda: S.expected_count([0, 1], 2, num_tries=torch.tensor([3.0, float("nan")])), ValueError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries=torch.tensor([True])), TypeError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries=torch.ones(1, device="meta")), ValueError, "num_tries"),
        (lambda: S.expected_count([0], 2, num_tries=torch.ones(1, dtype=torch.complex64)), TypeError, "num_tries"),
        (lambda: S.expected_count([0], 0), ValueError, "num_sampled"),
        (lambda: S.sample_candidates(2**62), ValueError, "num_sampled"),
        (lambda: S.sample_candidates(3, true_classes=[7]), ValueError, "true_classes"),
        (lambda: S.sample_candidates(3, unique="yes"), TypeError, "unique"),
    ],
)
def test_call_errors_name_the_argument(call, err, name):
    before = S.state_dict()
    torch.manual_seed(0)
    with pytest.raises(err, match=name):
        call()
    state_equal(S.state_dict(), before)
    # A refused call did not advance torch's default generator either.
    after = S.sample(20)
    torch.manual_seed(0)
    assert torch.equal(after, S.sample(20))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=(2, 2), exclude=[[0, 1, 3], [-1, -1, -1]]),  # row 0 leaves only zero weight
        dict(size=(2, 2), exclude=[[0, 1, -1], [3, -1, -1]], unique=True),  # row 0: one id left for two
    ],
)
def test_kernel_refusals_leave_the_generator_alone(kwargs):
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="exclude|size"):
        S.sample(**kwargs, generator=g)
    with pytest.raises(ValueError, match="exclude|size"):
        S.sample(**kwargs)
    assert torch.equal(g.get_state(), state)
    after = S.sample(20)
    torch.manual_seed(1)
    assert torch.equal(after, S.sample(20))


def test_empty_id_lists():
    assert S.log_prob([]).shape == (0,)
    assert S.log_prob(torch.empty(0, 3, dtype=torch.int64)).shape == (0, 3)
    assert S.expected_count([], 3, num_tries=2).shape == (0,)
    c = S.sample_candidates(2, true_classes=[], seed=1)
    assert c.true_expected_count.shape == (0,)
    with pytest.raises(ValueError, match="must not be empty"):
        _validation.as_index_tensor([], "ids", 4, allow_empty=False)


def test_expected_counts_are_never_nan():
    for s in (
        pyneg.UniformSampler(1),
        pyneg.LogUniformSampler(1),
        pyneg.AliasSampler([1e-300, 1.0, 0.0]),
        pyneg.LogUniformSampler(1000),
    ):
        ids = torch.arange(s.num_classes)
        p = s.probs
        for tries in (1, 2, 10**6, 1e300, torch.full((s.num_classes,), 3.0)):
            got = s.expected_count(ids, 5, num_tries=tries)
            assert not torch.isnan(got).any()
            t = tries if isinstance(tries, torch.Tensor) else torch.tensor(float(tries), dtype=torch.float64)
            ref = -torch.expm1(t * torch.log1p(-p))
            assert torch.allclose(got, ref, rtol=1e-9, atol=0)
        assert torch.allclose(s.expected_count(ids, 5), 5 * p, rtol=1e-12, atol=0)


def test_out_buffers_are_checked_and_left_untouched():
    ex = torch.tensor([[0, -1], [1, -1]])
    shared = torch.zeros(8, dtype=torch.int64)
    cases = [
        (torch.full((2, 3), -7, dtype=torch.int32), TypeError),
        (torch.full((3, 2), -7, dtype=torch.int64), ValueError),
        (torch.full((3, 2), -7, dtype=torch.int64).t(), ValueError),
        (torch.empty((2, 3), dtype=torch.int64, device="meta"), ValueError),
        (torch.full((2, 3), -7, dtype=torch.int64).to_sparse(), TypeError),
    ]
    for out, err in cases:
        with pytest.raises(err, match="out"):
            S.sample((2, 3), exclude=ex, out=out, seed=1)
        if out.layout == torch.strided and out.device.type == "cpu":
            assert (out == -7).all()
    # out overlapping the exclusion list.
    ex2 = shared[:2].view(2, 1)
    with pytest.raises(ValueError, match="overlaps exclude"):
        S.sample((2, 3), exclude=ex2, out=shared[1:7].view(2, 3), seed=1)
    exn = np.zeros((2, 1), dtype=np.int64)
    with pytest.raises(ValueError, match="overlaps exclude"):
        S.sample((2, 1), exclude=exn, out=torch.from_numpy(exn), seed=1)
    # Neighbouring (non-overlapping) parts of one buffer are fine.
    got = S.sample((2, 3), exclude=ex2, out=shared[2:8].view(2, 3), seed=1)
    assert torch.equal(got, S.sample((2, 3), exclude=torch.zeros(2, 1, dtype=torch.int64), seed=1))


def test_unbounded_ids_helper():
    v = _validation.as_index_tensor
    big = np.array([2**63 - 1, 0], dtype=np.uint64)
    assert v(big, "ids", None).tolist() == [2**63 - 1, 0]
    with pytest.raises(ValueError, match="ids holds id 18446744073709551615"):
        v(np.array([2**64 - 1], dtype=np.uint64), "ids", None, allow_padding=True)
    with pytest.raises(ValueError, match="ids holds id -2"):
        v([-2, 5], "ids", None, allow_padding=True)
    assert v([-1, 5], "ids", None, allow_padding=True).tolist() == [-1, 5]
    src = torch.tensor([3, 4])
    got = v(src, "ids", None)
    src[0] = -9  # the result is a copy
    assert got.tolist() == [3, 4]


def test_shares_memory_helper():
    x = torch.arange(20)
    assert _validation.shares_memory(x[:5], x[4:6])
    assert not _validation.shares_memory(x[:5], x[5:9])
    assert _validation.shares_memory(x.view(4, 5)[:, 0], x[10:11])
    assert not _validation.shares_memory(x, torch.arange(20))
    assert not _validation.shares_memory(x[:0], x)


def test_max_classes_matches_the_core():
    assert _validation.MAX_CLASSES == _core.MAX_CLASSES


# ---------------------------------------------------------------- threads
def test_threads_sampling_one_sampler_get_the_serial_results():
    s = pyneg.UnigramSampler(torch.arange(1, 2001, dtype=torch.float64))
    ex = torch.randint(0, 2000, (64, 5), generator=torch.Generator().manual_seed(0))

    def work(i):
        return [
            s.sample((64, 50), seed=i),
            s.sample((64, 20), seed=i, exclude=ex),
            s.sample((64, 20), seed=i, exclude=ex, unique=True),
            s.log_prob(ex + 0),
            s.sample_candidates(30, ex[0], seed=i).sampled_candidates,
        ]

    serial = [work(i) for i in range(16)]
    results = [None] * 16
    errors = []

    def run(i):
        try:
            for _ in range(3):
                got = work(i)
                assert all(torch.equal(a, b) for a, b in zip(got, serial[i]))
            results[i] = got
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(r is not None for r in results)


def test_load_state_dict_while_other_threads_sample():
    a = pyneg.AliasSampler(torch.arange(1, 101, dtype=torch.float64))
    b_state = pyneg.AliasSampler(torch.arange(100, 0, -1, dtype=torch.float64)).state_dict()
    a_state = a.state_dict()
    ref_a, ref_b = a.sample(500, seed=4), pyneg.AliasSampler(torch.arange(100, 0, -1.0)).sample(500, seed=4)
    lp_a, lp_b = (
        a.log_prob(torch.arange(100)),
        pyneg.AliasSampler(torch.arange(100, 0, -1.0)).log_prob(torch.arange(100)),
    )
    stop = threading.Event()
    bad = []

    def loader():
        i = 0
        while not stop.is_set():
            a.load_state_dict(b_state if i % 2 else a_state)
            i += 1

    def sampler():
        for _ in range(300):
            got = a.sample(500, seed=4)
            if not (torch.equal(got, ref_a) or torch.equal(got, ref_b)):
                bad.append("draws")
            lp = a.log_prob(torch.arange(100))
            if not (torch.equal(lp, lp_a) or torch.allclose(lp, lp_b, rtol=1e-12)):
                bad.append("log_prob")

    t = threading.Thread(target=loader)
    t.start()
    workers = [threading.Thread(target=sampler) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    stop.set()
    t.join(timeout=60)
    assert not bad
    # Whatever state was loaded last, probs and log_prob agree with it.
    assert torch.allclose(a.log_prob(torch.arange(100)), torch.log(a.probs), rtol=1e-12)


# ------------------------------------------------------------ crash suite
_PRELUDE = """
import threading, numpy as np, torch, pyneg
from pyneg._core import _testing
from scipy import stats
def chi2_ok(x, p):
    counts = np.bincount(x.reshape(-1).numpy(), minlength=len(p))
    keep = p > 0
    assert counts[~keep].sum() == 0, "drew a zero-weight class"
    return stats.chisquare(counts[keep], counts.sum() * p[keep] / p[keep].sum()).pvalue > 1e-4
"""


def test_writes_through_every_handed_out_tensor(run_child):
    proc = run_child(
        _PRELUDE
        + """
w = np.arange(1, 51, dtype=np.float64); w[7] = 0.0
p_ref = w / w.sum()
for s in (pyneg.AliasSampler(w), pyneg.UnigramSampler(w, power=1.0)):
    ref_lp = torch.log(torch.from_numpy(p_ref))
    handed = [s.probs, s.state_dict()["entries"], s.log_prob(torch.arange(50)),
              s.expected_count(torch.arange(50), 4), s.log_expected_count(torch.arange(50), 4, num_tries=7),
              s.sample(100, seed=1)]
    c = s.sample_candidates(10, true_classes=[1, 2], seed=3)
    handed += [c.sampled_candidates, c.true_expected_count, c.sampled_expected_count]
    for t in handed:  # ids far out of range, NaN, negative probabilities
        t.fill_(-10**9) if not t.is_floating_point() else t.fill_(float("nan"))
    table = s._table
    for t in (_testing.alias_table_entries(table),):  # the C++ table is read-only
        try:
            t[0] = 2**40
            raise SystemExit("a table view was writable")
        except ValueError:
            pass
    x = s.sample((400, 50), seed=5)
    assert chi2_ok(x, p_ref), "draws no longer follow the weights"
    assert torch.allclose(s.log_prob(torch.arange(50)), ref_lp, rtol=1e-9)  # the table's resolution
    assert torch.allclose(s.probs, torch.from_numpy(p_ref), rtol=2**-30, atol=2**-32)
    import pickle
    assert torch.equal(pickle.loads(pickle.dumps(s)).sample(1000, seed=2), s.sample(1000, seed=2))
    ex = s.sample((400, 5), seed=6, exclude=torch.full((400, 1), 3), unique=True)
    assert not (ex == 3).any() and not (ex == 7).any()
print("handed-out writes harmless")
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "handed-out writes harmless" in proc.stdout


def test_concurrent_writer_of_the_exclusion_list(run_child):
    proc = run_child(
        _PRELUDE
        + """
V = 64
s = pyneg.UniformSampler(V)
ex = torch.arange(48).repeat(32, 1)  # rows exclude 0..47: only 48..63 may be drawn
orig = ex.clone()
stop = threading.Event()
def writer():
    g = np.random.default_rng(0)
    bad = torch.tensor([V + 5, -7, 2**62, -2**63])
    while not stop.is_set():
        i, j = int(g.integers(32)), int(g.integers(48))
        ex[i, j] = bad[int(g.integers(4))]          # invalid for a moment ...
        ex[i, j] = orig[i, j]                       # ... then the original id again
t = threading.Thread(target=writer); t.start()
ok = refused = 0
for it in range(400):
    unique = it % 2 == 1
    try:
        x = s.sample((32, 8), seed=it, exclude=ex, unique=unique)
    except ValueError as e:
        assert "exclude" in str(e), e
        refused += 1
        continue
    # A call that ran saw only original ids (the writer writes nothing else that is valid).
    assert int(x.min()) >= 48 and int(x.max()) < V, "drew an excluded id"
    if unique:
        assert all(len(set(r)) == 8 for r in x.tolist())
    ok += 1
# The binding itself copies what its kernels read with the GIL released.
ex_np = ex.numpy()
table = pyneg.AliasSampler(np.ones(V))._table  # (UniformSampler has no table)
buf = np.empty((32, 8), dtype=np.int64)
for it in range(300):
    try:
        _testing.alias_table_sample_excluding(table, it, 0, ex_np, 8, buf.reshape(-1), 2)
    except ValueError as e:
        assert "exclude" in str(e), e
        continue
    assert buf.min() >= 48 and buf.max() < V, "the binding drew an excluded id"
ids = torch.arange(V).repeat(4)
lp = torch.full((V,), -np.log(V), dtype=torch.float64).repeat(4)
for it in range(300):
    try:
        got = s.log_prob(ids)
        assert torch.allclose(got, lp), "log_prob read an unchecked id"
    except ValueError as e:
        assert "ids" in str(e)
stop.set(); t.join()
print("exclude writer", ok, refused)
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ok = int(proc.stdout.split("exclude writer")[1].split()[0])
    assert ok > 0, proc.stdout


def test_concurrent_writer_of_ids_and_weights(run_child):
    proc = run_child(
        _PRELUDE
        + """
V = 64
s = pyneg.AliasSampler(np.arange(1, V + 1, dtype=np.float64))
ref = torch.log(torch.arange(1, V + 1, dtype=torch.float64) / (V * (V + 1) / 2))
ids = torch.arange(V).repeat(50)
w = torch.ones(20_000, dtype=torch.float64)
stop = threading.Event()
def writer():
    g = np.random.default_rng(1)
    vals = [10**9, -1, -2**63, 2**62]
    while not stop.is_set():
        k = int(g.integers(ids.numel()))
        ids[k] = vals[int(g.integers(4))]; ids[k] = k % V
        m = int(g.integers(w.numel()))
        w[m] = float("nan"); w[m] = -1.0; w[m] = 1.0
t = threading.Thread(target=writer); t.start()
built = 0
for it in range(100):
    try:
        got = s.log_prob(ids)
        assert torch.allclose(got, ref.repeat(50), rtol=1e-12), "log_prob disagrees"
    except ValueError as e:
        assert "ids" in str(e)
    try:
        u = pyneg.AliasSampler(w)
        assert abs(float(u.probs.sum()) - 1) < 1e-9
        built += 1
    except ValueError as e:
        assert "weights" in str(e)
stop.set(); t.join()
print("ids writer done", built)
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ids writer done" in proc.stdout


def test_concurrent_writer_of_out_and_state(run_child):
    proc = run_child(
        _PRELUDE
        + """
s = pyneg.LogUniformSampler(1000)
out = torch.empty(64, 100, dtype=torch.int64)
stop = threading.Event()
def writer():
    while not stop.is_set():
        out.fill_(-5)
t = threading.Thread(target=writer); t.start()
for it in range(100):
    s.sample((64, 100), seed=it, out=out)
stop.set(); t.join()
x = s.sample((64, 100), seed=3, out=out)
assert torch.equal(x, s.sample((64, 100), seed=3))
p = s.probs.numpy()
assert chi2_ok(s.sample((2000, 100), seed=9), p)
# load_state_dict racing with sampling in other threads
a = pyneg.UniformSampler(1000)
sd = a.state_dict()
def loader():
    for _ in range(100):
        a.load_state_dict(sd)
t = threading.Thread(target=loader); t.start()
for it in range(100):
    y = a.sample((8, 50), seed=it, exclude=torch.arange(8), unique=True)
    assert int(y.max()) < 1000 and int(y.min()) >= 0
t.join()
print("out writer done")
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "out writer done" in proc.stdout


def test_concurrent_writer_of_the_weights_and_of_analytic_exclusions(run_child):
    # Issue 25 item 4 (samplers): the weights are copied once and the copy is checked
    # and built from; a writer flipping entries between valid and invalid values gives
    # either a refusal naming weights or a valid table, never a crash or a table that
    # disagrees with itself. The analytic samplers' exclusion lists likewise.
    proc = run_child(
        _PRELUDE
        + """
from pyneg import _core
V = 200_000
w = torch.ones(V, dtype=torch.float64)
stop = threading.Event()
def writer():
    g = np.random.default_rng(1)
    vals = torch.tensor([float("nan"), -1.0, float("inf"), 1e300, 0.0, 1.0], dtype=torch.float64)
    while not stop.is_set():
        i = int(g.integers(V))
        w[i] = vals[int(g.integers(6))]
        w[i] = 1.0
t = threading.Thread(target=writer); t.start()
built = refused = 0
for it in range(60):
    try:
        s = pyneg.AliasSampler(w)
    except ValueError as e:
        assert "weights" in str(e), e
        refused += 1
        continue
    m = np.empty(V, dtype=np.int64)
    _core.alias_class_masses(s.state_dict()["entries"].numpy(), m)
    assert int(m.astype(object).sum()) == V * 2**32, "table masses do not sum to V * 2**32"
    x = s.sample(10_000, seed=it)
    assert int(x.min()) >= 0 and int(x.max()) < V
    built += 1
z = pyneg.LogUniformSampler(2**40)
ex = torch.arange(8).repeat(16, 1)
orig = ex.clone()
def writer2():
    g = np.random.default_rng(2)
    while not stop.is_set():
        i, j = int(g.integers(16)), int(g.integers(8))
        ex[i, j] = 2**41
        ex[i, j] = orig[i, j]
stop.set(); t.join(); stop.clear()
t = threading.Thread(target=writer2); t.start()
for it in range(300):
    try:
        x = z.sample((16, 6), seed=it, exclude=ex, unique=it % 2 == 1)
    except ValueError as e:
        assert "exclude" in str(e), e
        continue
    assert int(x.min()) >= 8, "drew an excluded id"
stop.set(); t.join()
print("weights writer", built, refused)
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights writer" in proc.stdout
