#!/usr/bin/env bash
# Set-up, build and run every CPU test (what CI runs). GPU tests (label gpu) run on the
# device through scripts/device/build_and_test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR=${DFSSM_BUILD_DIR:-build}
ctest --test-dir "${BUILD_DIR}" --output-on-failure -LE gpu -j "${DFSSM_JOBS:-$(nproc)}"
