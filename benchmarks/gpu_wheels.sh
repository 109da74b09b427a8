#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels a GPU host without network lacks, for gpu_check.sh to install.
# Run on a machine that reaches PyPI; PY is the GPU host's Python version (its image has torch, timm,
# transformers, onnxruntime, opencv; it lacks the serving stack, diffusers and insightface).
#   bash benchmarks/gpu_wheels.sh [PY=3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pkgs=(diffusers fastapi starlette uvicorn h11 pydantic pydantic-core pydantic-settings python-dotenv
      annotated-types typing-inspection pynacl cffi pycparser python-multipart prettytable easydict albumentations)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${plat[@]}" -d .whl "${pkgs[@]}"
# insightface ships only as a source archive; the GPU image has Cython, numpy and a compiler to build it
python3 -m pip download --quiet --no-deps --no-binary=:all: -d .whl insightface
du -sh .whl
