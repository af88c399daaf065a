#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, clang + ASan/UBSan, a build of its own), replays
# the checked-in corpora as a regression test, then fuzzes each target for a bounded time.
#   FL_FUZZ_SECONDS   seconds of fuzzing per target (default 30; 0: replay only)
#   FL_FUZZ_BUILD     build folder (default build/fuzz)
# New inputs go to <build>/corpus-<target>/, crashes to <build>/artifacts/; the checked-in
# corpus under tests/fuzz/corpus/ is only read. Exits non-zero on any crash, leak or timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FL_FUZZ_SECONDS:-30}"
build="${FL_FUZZ_BUILD:-build/fuzz}"
targets=(update_decoder config_parser)
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"

fuzzer_runtime() {
  local lib
  lib="$(clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null || true)"
  [ -f "$lib" ] || lib="$(clang++ --print-runtime-dir 2>/dev/null)/libclang_rt.fuzzer-x86_64.a"
  [ -f "$lib" ]
}

if ! command -v clang++ >/dev/null || ! fuzzer_runtime; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "fuzz.sh: clang++ with libFuzzer is missing; install clang and libclang-rt-14-dev" >&2
    exit 1
  fi
  echo "fuzz.sh: installing clang and libclang-rt-14-dev"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    clang libclang-rt-14-dev
  fuzzer_runtime || { echo "fuzz.sh: libFuzzer runtime still missing" >&2; exit 1; }
fi

if [ ! -f "$build/build.ninja" ]; then
  cmake -S tests/fuzz -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_C_COMPILER=clang -DFL_ROOT="$PWD" >/dev/null
fi
if ! cmake --build "$build" -j "${FL_BUILD_JOBS:-$(nproc)}" \
    --target "${targets[@]/#/fuzz_}" >"$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log" >&2
  echo "fuzz.sh: building the fuzz targets failed; see $build/build.log" >&2
  exit 1
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
common=(-rss_limit_mb=2048 -timeout=10)
mkdir -p "$build/artifacts"
status=0

# Regression: every checked-in input must still pass (a crash found once stays fixed).
for t in "${targets[@]}"; do
  log="$build/replay-$t.log"
  if ! "$build/bin/fuzz_$t" "${common[@]}" -runs=0 \
      -artifact_prefix="$build/artifacts/$t-" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    echo "fuzz.sh: fuzz_$t fails on its checked-in corpus; see $log" >&2
    tail -n 40 "$log" >&2
    status=1
  else
    echo "fuzz_$t: replayed $(ls "tests/fuzz/corpus/$t" | wc -l) checked-in inputs, all pass"
  fi
done
[ "$status" -eq 0 ] || exit "$status"
[ "$seconds" -gt 0 ] || exit 0

# Bounded fuzzing, the targets side by side, each over a copy of its corpus.
pids=()
for t in "${targets[@]}"; do
  work="$build/corpus-$t"
  mkdir -p "$work"
  cp -n "tests/fuzz/corpus/$t"/* "$work"/
  "$build/bin/fuzz_$t" "${common[@]}" -max_total_time="$seconds" \
    -artifact_prefix="$build/artifacts/$t-" "$work" >"$build/fuzz-$t.log" 2>&1 &
  pids+=($!)
done
for i in "${!targets[@]}"; do
  t="${targets[$i]}"
  log="$build/fuzz-$t.log"
  if wait "${pids[$i]}"; then
    echo "fuzz_$t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)" \
         "corpus now $(ls "$build/corpus-$t" | wc -l) inputs; no crash"
  else
    status=1
    echo "fuzz.sh: fuzz_$t FAILED; log $log" >&2
    grep -E 'ERROR:|FUZZ_CHECK|runtime error|SUMMARY' "$log" | head -n 5 >&2 || true
    grep -E '^ +#[0-9]+ 0x' "$log" | head -n 8 >&2 || true
    sed -n 's/.*Test unit written to \(.*\)/reproducer: \1/p' "$log" >&2
    echo "replay with: $build/bin/fuzz_$t <reproducer>" >&2
  fi
done
exit "$status"
