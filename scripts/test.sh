#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, then unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
cd build
ctest --output-on-failure -j "${FL_TEST_JOBS:-2}" "$@"
../scripts/fuzz.sh
