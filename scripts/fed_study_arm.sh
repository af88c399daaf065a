#!/usr/bin/env bash
# Trains one more arm on a finished scripts/fed_study.sh run, from the same kits, data and test
# sets: usage
#   scripts/fed_study_arm.sh STUDY_DIR NAME ARM [KEY=VALUE...]
# ARM says which sites train: pooled, fedavg (the three hospitals) or one hospital's name (alone;
# with initial=MODEL, a fine-tuning). KEY=VALUE override the study's job settings (the keys of
# study_job_spec in scripts/study_lib.sh: rounds, steps, lr, opt, momentum, server, server_lr,
# server_momentum, patience, initial, ...); `{seed}` in a value is replaced by the seed. The
# model exported is the best by validation (flctl export --best). The new arm NAME is evaluated
# into STUDY_DIR/seed-N/eval/NAME/ (at the hospital a one-site arm belongs to; else at all),
# with its curve in status/. FL_FED_ARM_SEEDS: the seeds (default: all of the study's). Restarts
# each seed's coordinator and the sites the arm needs. Then run
# `scripts/fed_study.py summarize STUDY_DIR` again. FL_FED_BIN: the binaries (build/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$(cd "${FL_FED_BIN:-$ROOT/build/bin}" && pwd)
D=$(cd "$1" && pwd)
NAME=$2
ARM=$3
shift 3
OVERRIDES=("$@")
read -ra SEEDS <<< "${FL_FED_ARM_SEEDS:-}"
[ ${#SEEDS[@]} -eq 0 ] && SEEDS=($(cd "$D" && ls -d seed-* | sed 's/seed-//'))
SITES=(hospital-a hospital-b hospital-c)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
# shellcheck source=scripts/study_lib.sh
. scripts/study_lib.sh
EVAL_SITES=("${SITES[@]}")
case $ARM in
  pooled) JOB_SITES=(pooled) ;;
  fedavg) JOB_SITES=("${SITES[@]}") ;;
  hospital-a|hospital-b|hospital-c) JOB_SITES=("$ARM") EVAL_SITES=("$ARM") ;;
  *) echo "ARM must be pooled, fedavg or a hospital" >&2; exit 2 ;;
esac
cfg() { /usr/bin/python3 -c "import json,sys; print(json.load(open('$D/config.json'))[sys.argv[1]])" "$1"; }
JOB=$NAME  # one hospital's arm: one job per hospital, NAME-HOSPITAL
[ ${#JOB_SITES[@]} -eq 1 ] && [ "$ARM" != pooled ] && JOB=$NAME-$ARM
for seed in "${SEEDS[@]}"; do
  S=$D/seed-$seed
  admin=$S/pki/admins/operator/admin.conf
  rm -f "$S/coordinator.port"
  "$BIN/fl-coordinator" --config "$S/pki/coordinator/coordinator.conf" \
    >> "$S/logs/coordinator.log" 2>&1 &
  FL_PIDS+=($!)
  for _ in $(seq 100); do [ -s "$S/coordinator.port" ] && break; sleep 0.1; done
  study_job_spec "$S/jobs/$JOB.job" "$JOB" "$(IFS=,; echo "${JOB_SITES[*]}")" \
    model="$(cfg model)" size="$(cfg size)" rounds="$(cfg rounds)" steps="$(cfg steps)" \
    batch="$(cfg batch)" lr="$(cfg lr)" seed="$seed" min_sites="${#JOB_SITES[@]}" \
    "${OVERRIDES[@]//\{seed\}/$seed}"
  id=$("$BIN/flctl" job submit --config "$admin" --spec "$S/jobs/$JOB.job")
  for site in "${JOB_SITES[@]}"; do  # the kits' configs already say exit_when_idle, cpu
    "$BIN/fl-client" --config "$S/pki/sites/$site/client.conf" >> "$S/logs/$site.log" 2>&1 &
    FL_PIDS+=($!)
  done
  "$BIN/flctl" job wait "$id" --config "$admin" > "$S/logs/$JOB.wait.log" || true
  echo "   seed $seed: $JOB: $(tail -n 1 "$S/logs/$JOB.wait.log")"
  "$BIN/flctl" job status "$id" --config "$admin" --json > "$S/status/$JOB.json"
  "$BIN/flctl" export "$id" --config "$admin" --out "$S/models/$JOB" --best > /dev/null
  mkdir -p "$S/eval/$NAME"
  for site in "${EVAL_SITES[@]}"; do
    study_evaluate "$BIN" "$S/models/$JOB" "$S/test/$site" "$S/eval/$NAME/$site"
  done
  fl_stop_daemons
  FL_PIDS=()
done
