#!/usr/bin/env bash
# A GPU session's one prepared call: builds the dp benchmark (run.sh), times the DP step with each
# way of computing per-sample norms, with and without TF32 matrix products, then profiles one step
# of each kind per op. Usage: bench/gpu/matrix.sh OUT_DIR (e.g. $OUT of the device tool).
set -uo pipefail
out=${1:?usage: bench/gpu/matrix.sh OUT_DIR}
cd "$(dirname "$0")/../.."
bench/gpu/run.sh 2>&1 | tee "$out/auto.txt"  # builds build-gpu/ on the way
run() { LD_LIBRARY_PATH="$PWD/build-gpudeps/lib" build-gpu/fl-bench-gpu dp "$@"; }
for flags in "--tf32 on" "--norms ghost" "--norms materialise" "--norms ghost --tf32 on" \
             "--norms materialise --tf32 on"; do
  echo "== $flags"
  run $flags 2>&1 | tee "$out/$(echo "$flags" | tr -d ' -').txt"
done
echo "== profile (CUDA_LAUNCH_BLOCKING=1)"
CUDA_LAUNCH_BLOCKING=1 run --steps 1 --profile "$out" > "$out/profile.txt" 2>&1
python3 bench/op_profile.py "$out/plain.json" "$out/dp.json" 2>&1 | tee "$out/ops.txt" | head -40
