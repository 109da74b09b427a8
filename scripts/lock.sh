#!/usr/bin/env bash
# Refresh uv.lock after a change to the dependencies in pyproject.toml (keeps every pin that still
# satisfies it; `bash scripts/lock.sh --upgrade` or `--upgrade-package NAME` moves versions on purpose).
# Non-interactive; needs only PyPI. Commit pyproject.toml and uv.lock together.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

ensure_venv
phase "resolving pyproject.toml into uv.lock (linux x86_64; extras cpu | gpu, dev, postgres, s3)"
"$UV" lock "$@"
