#!/usr/bin/env bash
# Lint: ruff (rules in pyproject.toml) over the repository, then mypy over the four import packages.
# Usage: bash scripts/lint.sh [--fix]     (--fix lets ruff apply its safe fixes first)
# Needs the dev extra (ruff, mypy): bash scripts/setup.sh installs it into .venv.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
status=0

echo "== ruff"
if [ "${1:-}" = "--fix" ]; then
    "$PY" -m ruff check --fix . || true
fi
"$PY" -m ruff check . || status=1

echo "== mypy"
# The folders install under other names (pyproject's package-dir: drafts/ is specdec.drafts, ...), which
# mypy cannot read from setuptools. Lay them out as installed, with symlinks, and check that tree.
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir "$TREE/specdec"
for entry in "$ROOT"/specdec/*; do
    ln -s "$entry" "$TREE/specdec/$(basename "$entry")"
done
ln -s "$ROOT/drafts" "$TREE/specdec/drafts"
ln -s "$ROOT/streaming" "$TREE/specdec/streaming"
ln -s "$ROOT/bench" "$TREE/specdec/bench"
# Report the paths of the repository, not of the tree.
(cd "$TREE" && "$PY" -m mypy --config-file "$ROOT/pyproject.toml" --cache-dir "$ROOT/.mypy_cache") \
    | sed -e 's#^specdec/drafts/#drafts/#' -e 's#^specdec/streaming/#streaming/#' -e 's#^specdec/bench/#bench/#'
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
