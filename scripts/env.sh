# Shared by scripts/serve.sh, scripts/test.sh and scripts/lock.sh (sourced, not run): one place that
# creates the venv and installs the locked dependency set (uv.lock) into it.
#
#   FAL_ONPREM_ACCEL=cpu|gpu   which onnxruntime build to install (default: gpu when `nvidia-smi -L` lists
#                              a GPU, else cpu). Both scripts choose the same way, so `test.sh` never swaps
#                              out the GPU build that `serve.sh` installed in the same venv.
#   FAL_ONPREM_VENV            the venv (default: .venv in the repository root)

UV_VERSION=0.13.9 # the uv that writes and reads uv.lock (scripts/lock.sh uses the same)
VENV=${FAL_ONPREM_VENV:-$PWD/.venv}
export UV_PROJECT_ENVIRONMENT=$VENV
# uv reads uv.toml / UV_* only; it does not read pip.conf, so machine-wide pip settings cannot change the set
export UV_PYTHON_DOWNLOADS=never

phase() { printf '==> %s\n' "$*" >&2; }

accel() {
  case "${FAL_ONPREM_ACCEL:-auto}" in
    cpu | gpu) echo "$FAL_ONPREM_ACCEL" ;;
    auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo gpu; else echo cpu; fi ;;
    *) echo "FAL_ONPREM_ACCEL must be cpu, gpu or auto (got ${FAL_ONPREM_ACCEL})" >&2 && return 1 ;;
  esac
}

# The venv, with the pinned uv inside it (uv then installs everything else from the lock).
ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    phase "creating the venv $VENV ($(python3 --version))"
    python3 -m venv "$VENV"
  fi
  if [ "$("$VENV/bin/uv" --version 2>/dev/null | cut -d" " -f2)" != "$UV_VERSION" ]; then
    phase "installing uv $UV_VERSION into the venv"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar on "uv==$UV_VERSION"
  fi
  UV="$VENV/bin/uv"
}

# Install the locked set (uv.lock) into the venv; arguments go to `uv sync`, e.g. `--extra cpu --extra dev`.
# --compile-bytecode: the .pyc files are written once here (~25 s on 2 cores, then only what changed), so a
# process never compiles torch/diffusers/transformers at start, also where PYTHONDONTWRITEBYTECODE is set
# or the venv is read-only (without them each worker start spent ~5 s of CPU compiling).
sync() {
  phase "installing the locked dependencies (uv.lock: uv sync --compile-bytecode $*) into $VENV"
  if ! "$UV" sync --compile-bytecode "$@"; then
    echo "uv sync failed. If uv.lock is out of date with pyproject.toml, refresh it: bash scripts/lock.sh" >&2
    return 1
  fi
}

# A digest of what decides the installed set: the lock, the project metadata and the chosen extras.
lock_digest() {
  cat uv.lock pyproject.toml | sha256sum | cut -d' ' -f1 | sed "s/\$/ $*/"
}
