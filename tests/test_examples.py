"""examples/two_tower.py: two gloo processes (torchrun, CPU) with the global-batch
losses report the metrics of one process that sees the same global batches."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "two_tower.py"
# float64 so that one and two processes agree to rounding; every method, so every
# global-batch loss (in-batch, + logQ, bank, sampled, mined) is exercised.
QUICK = ["--quick", "--dtype", "float64", "--batch-size", "256", "--bank-size", "512"]


def _run(cmd, tmp_path: Path, name: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        cmd + ["--json", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = _run([sys.executable, str(EXAMPLE)] + QUICK, tmp_path, "one")
    two = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(EXAMPLE)] + QUICK,
        tmp_path,
        "two",
    )
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert set(one["results"]) == {"in-batch", "+ logQ", "+ bank", "mixed", "+ mined"}
    for method, metrics in one["results"].items():
        for name in ("Recall@10", "Recall@50", "NDCG@10"):
            assert two["results"][method][name] == pytest.approx(metrics[name], abs=1e-9), (method, name)


WORD2VEC = Path(__file__).resolve().parents[1] / "examples" / "word2vec.py"


def _run_word2vec(args, tmp_path: Path) -> str:
    # The child imports the pyneg these tests import (an installed one, or a checkout built in place).
    import pyneg

    root = str(Path(pyneg.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(WORD2VEC)] + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_word2vec_example_trains_both_objectives(tmp_path):
    pytest.importorskip("gensim")  # the example reads WordSim-353 from gensim's test data
    rng = random.Random(0)
    words = [f"w{i}" for i in range(200)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(" ".join(rng.choice(words[: 20 + rng.randrange(180)]) for _ in range(12)) for _ in range(300))
    )
    common = ["--corpus", str(corpus), "--no-gensim", "--epochs", "1", "--dim", "16", "--min-count", "1"]
    out = _run_word2vec(common + ["--words", "w1"], tmp_path)
    rows = [line.split() for line in out.splitlines() if line.startswith("pyneg ")]
    assert [r[1] for r in rows[:2]] == ["ns", "hs"], out
    assert all(len(r) == 10 for r in rows[:2]), out  # WS353, SimLex-999, analogy, words/s, seconds
    neighbours = [line for line in out.splitlines() if line.startswith(("  pyneg ns", "  pyneg hs"))]
    assert len(neighbours) == 2 and all(len(line.split(",")) == 5 for line in neighbours), out
    # The autograd + torch.optim path trains the same model.
    out = _run_word2vec(common + ["--autograd", "--words", "w1"], tmp_path)
    assert [line.split()[1] for line in out.splitlines() if line.startswith("pyneg ")] == ["ns", "hs"], out
    # Hogwild per-pair steps (word2vec's threading, the example's --hogwild default batch of 1).
    out = _run_word2vec(common + ["--hogwild", "--threads", "2", "--words", "w1"], tmp_path)
    rows = [line.split() for line in out.splitlines() if line.startswith("pyneg ")]
    assert [r[1] for r in rows] == ["ns", "hs"] and all(float(r[8].replace(",", "")) > 0 for r in rows), out
    assert "load average" in out, out


def _two_tower_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("two_tower_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["two_tower_example"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_two_tower_hard_negatives_run_and_never_hold_a_positive(tmp_path):
    tt = _two_tower_module()
    out = tmp_path / "hard.json"
    small = ["--quick", "--batch-size", "256", "--dim", "16", "--mine-k", "8", "--mine-lo", "2", "--mine-hi", "60"]
    assert tt.main(small + ["--methods", "+ logQ", "+ mined", "--mine-perc-pos", "0.95", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"+ logQ", "+ mined"}
    assert all(0.0 <= v <= 1.0 for m in res.values() for k, vs in m.items() if k.startswith("Recall") for v in vs)
    assert res["+ mined"]["mining_s_per_epoch"][0] > 0.0
    # The mined negatives themselves: never one of the user's training items (so never a row's positive).
    split = tt.Split(tt._power_law(num_users=60, num_items=300, per_user=20, seed=3))
    args = tt.parse(small + ["--mine-perc-pos", "0.95", "--max-steps", "5"])
    model, _, mining_s = tt.train("+ mined", split, args, seed=0)
    assert mining_s > 0.0
    for perc in (None, 0.95):
        args.mine_perc_pos = perc
        mined = tt.mine_negatives(model, split, args, seed=1, offset=0)
        assert mined.ids.shape == (split.num_users, 8)
        for u in range(split.num_users):
            got = set(mined.ids[u][mined.ids[u] >= 0].tolist())
            positives = set(split.user_items[u][split.user_items[u] >= 0].tolist())
            assert got and not got & positives, (u, got & positives)
        pad = mined.ids < 0
        assert torch.isinf(mined.log_q[pad]).all() and torch.isfinite(mined.log_q[~pad]).all()
    rows = torch.arange(len(split.train_users))
    assert not (mined.ids[split.train_users[rows]] == split.train_items[rows].unsqueeze(1)).any()
