"""How pyneg is imported and versioned: one version, no mixing of a source tree with a build."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyneg

ROOT = Path(__file__).resolve().parents[1]


def test_version_matches_the_installed_distribution():
    # pyproject.toml reads the version from pyneg/__init__.py (scikit-build-core's
    # regex provider), so the metadata pip recorded and the module agree.
    assert pyneg.__version__ == importlib.metadata.version("pyneg")
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", pyneg.__version__)


def test_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=", pyproject, flags=re.M), "version is dynamic, read from pyneg/__init__.py"
    assert re.search(r'^dynamic = \["version"\]', pyproject, flags=re.M)
    init = (ROOT / "pyneg" / "__init__.py").read_text()
    assert len(re.findall(r"^__version__ = ", init, flags=re.M)) == 1


def test_source_tree_without_build_refuses_with_instructions(tmp_path):
    # A copy of the package's Python files without any compiled module stands for a
    # fresh checkout. It comes first on the child's path, followed by the folder of
    # the compiled core this session imported: pyneg must not borrow that core, but
    # say what to do. -S keeps site's hooks (an editable install's import redirect)
    # out, so the copy is what `import pyneg` finds.
    from pyneg import _core

    src = Path(pyneg.__file__).parent
    shutil.copytree(src, tmp_path / "pyneg", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    elsewhere = Path(_core.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(elsewhere)]))
    proc = subprocess.run(
        [sys.executable, "-S", "-P", "-c", "import pyneg"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: pyneg's compiled module pyneg._core is missing"), proc.stderr
    assert str(tmp_path / "pyneg") in last
    assert "source tree" in last and "pip install --no-build-isolation -e ." in last
