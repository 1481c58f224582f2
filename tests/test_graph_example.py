"""examples/kge.py runs end to end (smoke size) and learns: TransE on Nations
beats a random ranking's filtered MRR, and the link predictor runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kge.py"


@pytest.mark.slow
def test_kge_example_quick(tmp_path):
    pytest.importorskip("pykeen")  # its wheel ships Nations
    import pyneg

    root = str(Path(pyneg.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "kge.json"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--no-pykeen", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    # A random ranking of Nations' 14 entities has a realistic MRR of about 0.23.
    assert res["pyneg"]["mrr"] > 0.3
    assert 0 < res["link_prediction"]["mrr"] <= 1
