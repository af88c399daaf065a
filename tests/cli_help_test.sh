#!/usr/bin/env bash
# Every program and command answers --help with exit 0 and its options; unknown options and
# missing values are usage errors (exit 2) that name the option. Usage: cli_help_test.sh BIN_DIR
set -uo pipefail
BIN="$1"
failures=0
expect() {  # expect CODE WORD -- COMMAND...: exit CODE, WORD in stdout or stderr
  local code="$1" word="$2"
  shift 3
  local out
  out=$("$@" 2>&1)
  local got=$?
  if [ "$got" -ne "$code" ] || ! grep -q -- "$word" <<< "$out"; then
    echo "FAIL: $* exited $got (want $code), output without '$word':"
    echo "$out" | head -20
    failures=$((failures + 1))
  fi
}
expect 0 "privacy" -- "$BIN/flctl" --help
expect 0 "provision" -- "$BIN/flctl" help
expect 2 "Usage" -- "$BIN/flctl"
expect 0 "--sample-rate" -- "$BIN/flctl" privacy epsilon --help
expect 0 "--sample-rate" -- "$BIN/flctl" help privacy noise
expect 0 "--ledger" -- "$BIN/flctl" privacy ledger --help
expect 0 "epsilon" -- "$BIN/flctl" privacy --help
expect 0 "--config" -- "$BIN/flctl" job submit --help
expect 0 "JOB_ID" -- "$BIN/flctl" job wait --help
expect 0 "--interval" -- "$BIN/flctl" job watch --help
expect 0 "--installed" -- "$BIN/flctl" provision --help
expect 0 "--json" -- "$BIN/flctl" sites --help
expect 0 "--out" -- "$BIN/flctl" export --help
expect 0 "--coordinator-address" -- "$BIN/flctl" provision --help
expect 0 "--finding-strength" -- "$BIN/flctl" phantom --help
expect 0 "--threshold" -- "$BIN/flctl" evaluate --help
expect 0 "--labels" -- "$BIN/flctl" data check --help
expect 0 "CERT" -- "$BIN/flctl" cert fingerprint --help
expect 2 "--bogus" -- "$BIN/flctl" privacy epsilon --sample-rate 0.01 --noise-multiplier 1 \
  --steps 10 --delta 1e-5 --bogus
expect 2 "--delta" -- "$BIN/flctl" privacy epsilon --sample-rate 0.01 --noise-multiplier 1 \
  --steps 10 --delta
expect 2 "--delta" -- "$BIN/flctl" privacy epsilon --sample-rate 0.01 --noise-multiplier 1 \
  --steps 10 --delta 2
expect 2 "unknown command" -- "$BIN/flctl" nosuch
expect 0 "." -- "$BIN/flctl" privacy epsilon --sample-rate=0.01 --noise-multiplier 1.1 \
  --steps 1000 --delta 1e-5
expect 0 "transfer" -- "$BIN/fl-bench" --help
expect 0 "--chunk_kib" -- "$BIN/fl-bench" transfer --help
expect 0 "--sites" -- "$BIN/fl-bench" aggregate --help
expect 0 "--norms" -- "$BIN/fl-bench" dp --help
expect 0 "--fit_model" -- "$BIN/fl-bench" load --help
expect 2 "--bogus" -- "$BIN/fl-bench" aggregate --bogus 1
expect 2 "--mib" -- "$BIN/fl-bench" aggregate --mib 0
expect 2 "unknown benchmark" -- "$BIN/fl-bench" nosuch
for daemon in fl-coordinator fl-client; do
  expect 0 "--config" -- "$BIN/$daemon" --help
  expect 2 "--config" -- "$BIN/$daemon"
  expect 2 "--bogus" -- "$BIN/$daemon" --config x.conf --bogus
done
if [ "$failures" -gt 0 ]; then
  echo "$failures failed"
  exit 1
fi
echo "all command lines answered as expected"
