#!/usr/bin/env bash
# Lint, format, type and stub checks; fails on the first failing one.
#   ruff check / ruff format --check   pyproject.toml [tool.ruff]
#   mypy                               pyproject.toml [tool.mypy] (the pyneg package)
#   mypy.stubtest                      pyneg/_core.pyi (and pyneg/_cuda.pyi when the
#                                      CUDA module is built) against the compiled modules
# Needs the `lint` extra (pip install ".[lint]") and a built pyneg: the installed
# one, or the checkout's own build (an editable install, or _core*.so in pyneg/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
PATHS=(pyneg tests bench examples)

echo "== ruff check"
"$PY" -m ruff check "${PATHS[@]}"
echo "== ruff format --check"
"$PY" -m ruff format --check "${PATHS[@]}"
echo "== mypy"
"$PY" -m mypy

echo "== stubtest"
# Which compiled modules to check: stubtest imports them. A checkout without its
# own build must not shadow the installed pyneg (pyneg refuses to import from a
# source tree), so keep the current directory off sys.path then (Python >= 3.11).
if ! compgen -G "pyneg/_core*.so" > /dev/null; then
  export PYTHONSAFEPATH=1
fi
MODULES=(pyneg._core)
if "$PY" -c "import pyneg._cuda" 2>/dev/null; then
  MODULES+=(pyneg._cuda)
else
  echo "(pyneg._cuda is not built here: pyneg/_cuda.pyi is not checked)"
fi
"$PY" -c "import pyneg, sys; print('stubs in pyneg/*.pyi checked against', sys.argv[1:], 'from', pyneg.__file__.rsplit('/', 1)[0])" "${MODULES[@]}"
"$PY" -m mypy.stubtest --mypy-config-file .ci/mypy-stubtest.ini --allowlist .ci/stubtest-allowlist.txt "${MODULES[@]}"
echo "== lint: all checks passed"
