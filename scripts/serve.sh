#!/usr/bin/env bash
# Set up the server on a fresh machine (venv with the locked packages) and serve. Arguments go to
# `fal-onprem serve`, e.g. `bash scripts/serve.sh --tiny` or `bash scripts/serve.sh --pull`.
# Reinstalls only when uv.lock / pyproject.toml / the CPU-GPU choice changed since the last install
# (a stamp in the venv), so a later start needs no network. CPU or GPU: see scripts/env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

variant=$(accel)
stamp="$VENV/.fal-onprem-installed"
want=$(lock_digest "$variant")
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  ensure_venv
  # inexact: keeps the dev tools that scripts/test.sh may have put into the same venv
  sync --frozen --inexact --extra "$variant"
  echo "$want" >"$stamp"
else
  phase "installed set is up to date with uv.lock ($variant)"
fi
phase "starting: fal-onprem serve $*"
exec "$VENV/bin/fal-onprem" serve "$@"
