#!/usr/bin/env bash
# On a GPU machine with PyTorch (LibTorch) but none of the other dependencies: builds and runs the
# DP-SGD benchmark. Needs build-gpudeps/ (Abseil headers and libraries copied from Debian 12,
# each library also under its versioned name libabsl_X.so.20220623; and CLI11's headers,
# /usr/include/CLI of libcli11-dev, copied to build-gpudeps/include/CLI).
set -euo pipefail
cd "$(dirname "$0")/../.."
TORCH_DIR=$(python3 -c "import torch; print(torch.utils.cmake_prefix_path)")
cmake -S bench/gpu -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_DIR" \
  -DFL_ABSL_DIR="$PWD/build-gpudeps" > /dev/null
cmake --build build-gpu -j "$(nproc)" 2>&1 | grep -E "error|warning: unused|Error" || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
LD_LIBRARY_PATH="$PWD/build-gpudeps/lib" build-gpu/fl-bench-gpu dp "$@"
