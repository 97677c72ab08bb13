#!/usr/bin/env bash
# Set up specdec on a fresh machine: a virtualenv in .venv with torch and the package.
# Usage: bash scripts/setup.sh          runtime only (what `specdec generate` needs)
#        bash scripts/setup.sh --dev    plus the test tools (pytest, scipy, aiomqtt, ...) and mosquitto
# Idempotent: quick when already set up. Progress is shown (pip's own bars).
# torch: on a machine with an NVIDIA GPU (nvidia-smi works) the default PyPI build (CUDA) is
# installed and an existing CUDA build is kept; elsewhere a CPU build (set TORCH_INDEX_URL to
# pick a wheel index, e.g. https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "setup: installing torch from $TORCH_INDEX_URL"
    "${PIP[@]}" install torch --index-url "$TORCH_INDEX_URL"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: installing torch (CUDA build: an NVIDIA GPU is present)"
    "${PIP[@]}" install "torch>=2.4"
  else
    # torch==2.13.0 is a CPU build where this machine keeps one on disk; a plain
    # `pip install torch` would pull a multi-GB CUDA build instead.
    echo "setup: installing torch (CPU build)"
    "${PIP[@]}" install "torch==2.13.0" || "${PIP[@]}" install "torch>=2.4"
  fi
else
  echo "setup: keeping torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "CUDA" if torch.version.cuda else "CPU")')"
fi

extras=""; [ "$DEV" = 1 ] && extras="[dev]"
stamp="$VENV/.specdec-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing specdec$extras (torch stays as installed)"
  "${PIP[@]}" install -e ".$extras"
  touch "$stamp"
fi

# System packages the tests start themselves: mosquitto (MQTT tests) and Chromium with its driver
# (the HTTP page test). Debian/Ubuntu names; each is installed only where it is missing.
if [ "$DEV" = 1 ]; then
  missing=()
  { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || missing+=(mosquitto mosquitto-clients)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing ${missing[*]} (started by the MQTT and HTTP page tests)"
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
      $SUDO apt-get update
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}"
    else
      echo "setup: warning: ${missing[*]} missing and apt-get is not available; those tests will be skipped" >&2
    fi
  fi
fi
echo "setup: ready ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
