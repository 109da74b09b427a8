#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine (venv with the locked Python packages, npm
# packages), then run ruff and pytest. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k client -x`.
# CPU or GPU onnxruntime: see scripts/env.sh (FAL_ONPREM_ACCEL).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

ensure_venv
# exact: the venv ends up with the lock's set for these extras and nothing else; --locked: fail when
# pyproject.toml changed without a refreshed uv.lock
sync --locked --extra "$(accel)" --extra dev
if command -v npm >/dev/null 2>&1; then
  phase "installing the JS client's packages (tests/js, package-lock.json)"
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
else
  phase "npm not found: the JS client tests will be skipped"
fi

# shellcheck disable=SC1091
. "$VENV/bin/activate"
phase "checking the installed set (one OpenCV, one onnxruntime, no broken requirement)"
"$UV" pip check --python "$VENV/bin/python"
phase "ruff"
ruff check .
ruff format --check .
phase "pytest $*"
python -m pytest "$@"
