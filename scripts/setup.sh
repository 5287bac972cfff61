#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine:
#   1. Debian packages (compiler, CMake, SentencePiece, HDF5, nlohmann-json, yaml-cpp, Catch2, ccache;
#      optionally Gloo's headers, for CPU data parallelism over c10d's ProcessGroupGloo);
#   2. a project-local venv (.venv) with the pinned torch wheel (its LibTorch is what dfssm links)
#      plus transformers/safetensors/numpy (reference data in tests) and matplotlib (plots);
#   3. configure and build into build/.
# Works as root or through sudo. Re-running skips what is already done.
# Env: DFSSM_BUILD_DIR (default build), DFSSM_JOBS (default nproc), DFSSM_CMAKE_ARGS (extra args).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
PY_PINS="torch==${TORCH_VERSION} transformers==5.17.0 safetensors==0.8.0 numpy==2.4.6 matplotlib==3.11.2"
BUILD_DIR=${DFSSM_BUILD_DIR:-build}
JOBS=${DFSSM_JOBS:-$(nproc)}

log() { printf '\n== setup: %s\n' "$*"; }

# ---- 1. Debian packages -------------------------------------------------------------------
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: not root and no sudo; install packages manually" >&2; exit 1; }
  SUDO="sudo"
fi
PKGS="build-essential cmake pkg-config ccache git libsentencepiece-dev libhdf5-dev nlohmann-json3-dev libyaml-cpp-dev catch2"
# Optional: without it CPU data parallelism uses the TCP-store all-reduce (slower, same results).
OPT_PKGS="libgloo-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing="$missing python3-venv"; fi
opt_missing=""
for p in $OPT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || opt_missing="$opt_missing $p"
done
if [ -n "$missing$opt_missing" ]; then $SUDO apt-get update -qq; fi
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
else
  log "Debian packages present"
fi
if [ -n "$opt_missing" ]; then
  log "installing optional Debian packages:$opt_missing"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $opt_missing \
    || log "could not install$opt_missing; continuing without (see README, Build)"
fi

# ---- 2. Python venv with the pinned torch wheel -------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python - <<PY 2>/dev/null
import importlib.metadata as m
pins = "${PY_PINS}".split()
assert all(m.version(p.split("==")[0]) == p.split("==")[1] for p in pins)
PY
then
  log "installing ${PY_PINS} into .venv (the torch wheel is large; a few minutes)"
  .venv/bin/python -m pip install -q --disable-pip-version-check ${PY_PINS}
else
  log ".venv has ${PY_PINS}"
fi

# ---- 3. Configure and build ---------------------------------------------------------------
log "configuring ${BUILD_DIR}"
mkdir -p "${BUILD_DIR}"
cmake -S . -B "${BUILD_DIR}" -DCMAKE_BUILD_TYPE=Release ${DFSSM_CMAKE_ARGS:-} >"${BUILD_DIR}/configure.log" 2>&1 \
  || { cat "${BUILD_DIR}/configure.log"; exit 1; }
grep -E "^-- dfssm" "${BUILD_DIR}/configure.log" || true
log "building with ${JOBS} jobs"
cmake --build "${BUILD_DIR}" -j "${JOBS}"
log "done: ${BUILD_DIR}/bin/dfssm"
