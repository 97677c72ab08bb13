#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: sets everything up first (dev tools, mosquitto).
# Two stages, each timed: the fast suite (tiny random models), then the tests marked `slow`
# that load the real default model (SmolLM2-135M-Instruct; the first run fetches and converts it).
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# One pytest worker per core (pytest-xdist), each test file on one worker so that a module's fixtures
# (a broker, a server process, a loaded model) are built once. SPECDEC_TEST_WORKERS=0 runs in one process.
# (Counted before OMP_NUM_THREADS is set: nproc honours it.)
WORKERS=${SPECDEC_TEST_WORKERS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PARALLEL=()
if [ "$WORKERS" -gt 1 ]; then
    PARALLEL=(-n "$WORKERS" --dist loadfile)
fi
PYTEST=(.venv/bin/python -m pytest -q --timeout=600 "${PARALLEL[@]}" "$@")

set +e
start=$SECONDS
echo "test: lint: ruff and mypy (scripts/lint.sh)"
bash scripts/lint.sh
lint=$?
echo "test: lint took $((SECONDS - start)) s (exit $lint)"
start=$SECONDS
echo "test: stage 1/2: the suite on tiny random models (-m 'not slow')"
"${PYTEST[@]}" -m "not slow"
fast=$?
echo "test: stage 1/2 took $((SECONDS - start)) s (exit $fast)"
start=$SECONDS
echo "test: stage 2/2: the default model (-m slow)"
"${PYTEST[@]}" -m slow
slow=$?
echo "test: stage 2/2 took $((SECONDS - start)) s (exit $slow)"
set -e
[ "$lint" -eq 0 ] && [ "$fast" -eq 0 ] && [ "$slow" -eq 0 ]
