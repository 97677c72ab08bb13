#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: sets everything up first.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --timeout=600 "$@"
