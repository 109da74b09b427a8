#!/usr/bin/env bash
# Set up the server on a fresh machine (venv + the project) and serve. Arguments go to
# `fal-onprem serve`, e.g. `bash scripts/serve.sh --tiny` or `bash scripts/serve.sh --pull`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! command -v fal-onprem >/dev/null 2>&1; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e .
  if command -v nvidia-smi >/dev/null 2>&1; then
    # onnxruntime-gpu provides the same module as onnxruntime; keep only the GPU build.
    python -m pip uninstall --quiet -y onnxruntime
    python -m pip install --quiet "onnxruntime-gpu>=1.17"
  fi
fi
exec fal-onprem serve "$@"
