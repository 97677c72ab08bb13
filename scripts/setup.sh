#!/usr/bin/env bash
# Set up everything specdec needs on a fresh machine: a virtualenv in .venv with a CPU
# build of torch where one is available, the package with its dev extras, and the
# mosquitto broker + clients the MQTT tests start themselves.
# Usage: bash scripts/setup.sh            (idempotent; quick when already set up)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # torch==2.13.0 is a CPU build where this machine keeps one on disk; a plain
  # `pip install torch` would pull a multi-GB CUDA build instead.
  echo "setup: installing torch (CPU build)"
  # Elsewhere, point TORCH_INDEX_URL at a CPU wheel index to keep it small.
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" install torch --index-url "$TORCH_INDEX_URL"
  else
    "${PIP[@]}" install "torch==2.13.0" || "${PIP[@]}" install "torch>=2.4"
  fi
fi

stamp="$VENV/.specdec-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing specdec and its dev dependencies"
  "${PIP[@]}" install -e ".[dev]"
  touch "$stamp"
fi

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing mosquitto (broker for the MQTT tests)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  else
    echo "setup: warning: mosquitto is missing and apt-get is not available; MQTT tests will be skipped" >&2
  fi
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
