#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds, then unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# The code's format (.clang-format): a file that clang-format would change fails the run.
if git rev-parse --git-dir > /dev/null 2>&1; then
  git ls-files -z '*.cc' '*.h'
else
  find . -path ./build -prune -o \( -name '*.cc' -o -name '*.h' \) -print0
fi | xargs -0 clang-format --dry-run --Werror --style=file
scripts/build.sh
cd build
ctest --output-on-failure -j "${FL_TEST_JOBS:-2}" "$@"
../scripts/fuzz.sh
