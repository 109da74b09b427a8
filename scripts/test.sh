#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine (venv, Python and npm packages), then run
# ruff and pytest. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k client -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[dev]"
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi

ruff check .
ruff format --check .
python -m pytest "$@"
