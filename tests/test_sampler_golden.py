"""Pinned outputs of the CPU sampling kernels.

The per-draw logic is shared with the CUDA kernels (csrc/cpu/alias_draw.h), so
a seed's samples are part of pyneg's contract: these digests of plain,
excluding and unique draws (including the exact-CDF and race fallbacks and the
prefetching path of DRAM-sized tables) must never change.
"""

from __future__ import annotations

import hashlib

import numpy as np

import pyneg
from pyneg._core import _testing

GOLDEN = {
    "plain1000_1": "b129d18507d93463",
    "plain1000_s7_1": "0c1fd48bbdcb73fb",
    "plain1000_2": "b129d18507d93463",
    "plain1000_s7_2": "0c1fd48bbdcb73fb",
    "ex1000": "7c82254df1acacc1",
    "ex2_1000": "327ea19a904ab1e1",
    "uniq1000": "1aeeb3fb67eb38e0",
    "uniqex1000": "2757b66021dbe317",
    "plain300000_1": "abb82bfb0915a989",
    "plain300000_s7_1": "f5d62bee9d759422",
    "plain300000_2": "abb82bfb0915a989",
    "plain300000_s7_2": "f5d62bee9d759422",
    "ex300000": "01c93d850756a8e9",
    "ex2_300000": "4b9f55829bfe11cc",
    "uniq300000": "351af722e3b8fb5f",
    "uniqex300000": "4039ba416bcaab04",
    "cdf": "e918573b8af8ecd3",
    "race": "5eaf61422647f85f",
    "race_ex": "0adaf12e364da8bf",
    "race_ex_tries": "[189782, 189782, 178970, 178970]",
    "race_notries": "bbe6d3e271251f6e",
    "rej_heavy": "8ec4fd1fb31e4c6b",
}


def zipf(v, s=1.1):
    return 1.0 / np.arange(1, v + 1) ** s


def h(*arrs):
    m = hashlib.sha256()
    for a in arrs:
        m.update(np.ascontiguousarray(a).tobytes())
    return m.hexdigest()[:16]


def digests():
    res = {}
    NO = np.full((1, 1), -1, np.int64)
    res = {}
    for v in (1000, 300_000):
        t = pyneg.AliasSampler(np.random.default_rng(v).random(v) * zipf(v))._table
        for th in (1, 2):
            o = np.empty(100_001, np.int64)
            _testing.alias_table_sample(t, 0xDEADBEEF, 3, o, th)
            res[f"plain{v}_{th}"] = h(o)
            o = np.empty(100_001, np.int64)
            _testing.alias_table_sample(t, 7, 0, o, th)
            res[f"plain{v}_s7_{th}"] = h(o)
        ex = (np.arange(300, dtype=np.int64) * 7 % v).reshape(-1, 1)
        o = np.empty((300, 37), np.int64)
        _testing.alias_table_sample_excluding(t, 11, 5, ex, 37, o, 2)
        res[f"ex{v}"] = h(o)
        ex2 = np.random.default_rng(1).integers(-1, 20, (60, 9)).astype(np.int64)
        o = np.empty((120, 13), np.int64)
        _testing.alias_table_sample_excluding(t, 12, 0, ex2, 13, o, 2)
        res[f"ex2_{v}"] = h(o)
        o = np.empty((200, 50), np.int64)
        tr = np.empty(200, np.int64)
        _testing.alias_table_sample_unique(t, 13, 2, NO, 50, o, tr, 2)
        res[f"uniq{v}"] = h(o, tr)
        o = np.empty((120, 13), np.int64)
        tr = np.empty(120, np.int64)
        _testing.alias_table_sample_unique(t, 14, 0, ex2, 13, o, tr, 1)
        res[f"uniqex{v}"] = h(o, tr)
    # heavy exclusion -> exact CDF path
    w = np.ones(2000)
    w[5] = 1e6
    w[9] = 1e5
    t = pyneg.AliasSampler(w)._table
    ex = np.array([[5, 9], [5, -1], [9, -1], [-1, -1]], np.int64)
    o = np.empty((40, 25), np.int64)
    _testing.alias_table_sample_excluding(t, 21, 0, ex, 25, o, 2)
    res["cdf"] = h(o)
    # race fallback: k close to V with skewed weights
    t = pyneg.AliasSampler(zipf(300, 2.0))._table
    o = np.empty((6, 290), np.int64)
    tr = np.empty(6, np.int64)
    _testing.alias_table_sample_unique(t, 31, 0, NO, 290, o, tr, 2)
    res["race"] = h(o, tr)
    ex = np.array([[0, 1, 2, -1], [3, -1, -1, -1]], np.int64)
    o = np.empty((4, 280), np.int64)
    tr = np.empty(4, np.int64)
    _testing.alias_table_sample_unique(t, 32, 0, ex, 280, o, tr, 1)
    res["race_ex"] = h(o, tr)
    res["race_ex_tries"] = str(tr.tolist())
    o = np.empty((4, 280), np.int64)
    _testing.alias_table_sample_unique(t, 33, 0, ex, 280, o, None, 1)
    res["race_notries"] = h(o)
    # many-redraws (>1024 attempts very unlikely); mass just above 1/16 to stress rejection
    w = np.ones(1000)
    w[0] = 14.0 * 999
    t = pyneg.AliasSampler(w)._table
    o = np.empty((50, 100), np.int64)
    _testing.alias_table_sample_excluding(t, 41, 0, np.zeros((50, 1), np.int64), 100, o, 2)
    res["rej_heavy"] = h(o)
    return res


def test_cpu_samples_are_pinned():
    assert digests() == GOLDEN
