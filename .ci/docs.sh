#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml, docs/) with warnings as errors.
# Needs the `docs` extra (pip install ".[docs]"); the API reference is read from
# the source files, so no build of pyneg is needed. Writes the site to $1
# (default: a temporary folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
SITE="${1:-$(mktemp -d)}"
"$PY" -m mkdocs build --strict --site-dir "$SITE"
test -s "$SITE/index.html" && test -s "$SITE/api/index.html" && test -s "$SITE/bench.png"
grep -q "AliasSampler" "$SITE/api/index.html" || { echo "the API reference lists no AliasSampler"; exit 1; }
echo "== docs: built $SITE with no warnings"
