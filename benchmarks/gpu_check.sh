#!/usr/bin/env bash
# One GPU check (benchmarks/gpu_check.py): versions, missing packages, `pytest -m cuda`, every pipeline's
# benchmark and the memory check within 8 minutes; JSON files + summary.md land in OUT.
#   bash benchmarks/gpu_check.sh [OUT]      (default: $OUT, else benchmarks/results/gpu_check)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results/gpu_check}}"
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
export PYTHONUNBUFFERED=1
exec "$py" -m benchmarks.gpu_check --out "$out"
