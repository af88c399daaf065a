#!/usr/bin/env bash
# What federation is for (issue 10): on the same data and the same held-out test sets, for each
# of several seeds (data draw and training), four arms with real daemons over mutual TLS:
#   alone      each hospital trains on its own data only
#   fedavg     the three hospitals federated (FedAvg, label heads, each site weighted by its
#              train split); also, as FL_FED_VARIANTS says, fedadam, fedyogi (server
#              optimizers), siteheads (FedAvg with private heads) and equal (fedavg-equal: every
#              site's update weighted the same)
#   finetune   the FedAvg model fine-tuned at each hospital on its own data (what it would deploy)
#   pooled     one site holding every hospital's training data (the upper bound)
# Every arm trains until its validation AUROC (each site's own held-out split, evaluated on
# every round's model) has not improved for FL_FED_PATIENCE rounds, or FL_FED_ROUNDS rounds
# (FL_FED_FED_ROUNDS for the federated arms, which need more) of FL_FED_STEPS steps of
# FL_FED_BATCH images per site; each arm's model is its best by validation (JobSpec
# early_stopping, flctl export --best), the same rule for all. Fine-tuning starts from the best
# FedAvg model (FL_FED_FT_ROUNDS at most, patience FL_FED_FT_PATIENCE). The summary shows the
# curves and how flat each was. Each chosen model is evaluated at each hospital on a
# held-out test set of its own (clean labels) with per-image scores; scripts/fed_study.py computes
# AUROC per site and finding, bootstrap 95% intervals over seeds and test images, and the paired
# differences between arms, and writes study.md, study.json and plots/ARM.png; each job's
# `flctl report` is in seed-N/reports/ARM.html.
#
# Environment (defaults in brackets): FL_FED_BIN (folder with the binaries; default: build),
# FL_FED_OUT [build/fed_study], FL_FED_SEEDS ["1 2 3"], FL_FED_COUNTS (training images of
# hospital-a, -b, -c) ["1500 500 80"], FL_FED_TEST_IMAGES [600], FL_FED_SIZE [32],
# FL_FED_MODEL [smallcnn], FL_FED_ROUNDS [400], FL_FED_FED_ROUNDS [600], FL_FED_PATIENCE [60]
# (0: every round), FL_FED_STEPS [30], FL_FED_BATCH [32], FL_FED_LR [0.003],
# FL_FED_FT_ROUNDS [200], FL_FED_FT_PATIENCE [30], FL_FED_FT_LR [0.001],
# FL_FED_VARIANTS ["fedadam siteheads"] (of fedadam fedyogi siteheads equal), FL_FED_BOOTSTRAP [1000],
# FL_FED_VERBOSE (set: print the FedAvg job's rounds),
# and the phantom's FL_PHANTOM_STRENGTH, FL_PHANTOM_VARIATION, FL_PHANTOM_LABEL_NOISE
# (scripts/study_lib.sh). The defaults took 63 minutes for three seeds on 2 shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fl_prepare_run "${FL_FED_BIN:-}" "${FL_FED_OUT:-$ROOT/build/fed_study}"
SEEDS=${FL_FED_SEEDS:-1 2 3}
read -ra COUNTS <<< "${FL_FED_COUNTS:-1500 500 80}"
TEST_IMAGES=${FL_FED_TEST_IMAGES:-600}
SIZE=${FL_FED_SIZE:-32}
MODEL=${FL_FED_MODEL:-smallcnn}
ROUNDS=${FL_FED_ROUNDS:-400}
FED_ROUNDS=${FL_FED_FED_ROUNDS:-600}
PATIENCE=${FL_FED_PATIENCE:-60}
STEPS=${FL_FED_STEPS:-30}
BATCH=${FL_FED_BATCH:-32}
LR=${FL_FED_LR:-0.003}
FT_ROUNDS=${FL_FED_FT_ROUNDS:-200}
FT_PATIENCE=${FL_FED_FT_PATIENCE:-30}
FT_LR=${FL_FED_FT_LR:-0.001}
VARIANTS=${FL_FED_VARIANTS-fedadam siteheads}  # set and empty: no variants
POOLED=pooled
START=$(date +%s)
# shellcheck source=scripts/study_lib.sh
. scripts/study_lib.sh
SITES=("${STUDY_SITES[@]}")


cat > "$D/config.json" <<EOF
{"seeds": "$SEEDS", "counts": "${COUNTS[*]}", "test_images": $TEST_IMAGES, "size": $SIZE,
 "model": "$MODEL", "rounds": $ROUNDS, "fed_rounds": $FED_ROUNDS, "patience": $PATIENCE,
 "steps": $STEPS, "batch": $BATCH, "lr": $LR, "ft_rounds": $FT_ROUNDS,
 "ft_patience": $FT_PATIENCE, "ft_lr": $FT_LR, "variants": "$VARIANTS",
 "finding_strength": $FL_PHANTOM_STRENGTH, "variation": $FL_PHANTOM_VARIATION,
 "label_noise": $FL_PHANTOM_LABEL_NOISE}
EOF

# evaluate_arm SEED_DIR ARM JOB_ID: the arm's model(s) at each hospital it concerns, on the
# hospital's held-out test set, into SEED_DIR/eval/GROUP/SITE.{json,scores.csv}.
evaluate_arm() {
  local S=$1 arm=$2 id=$3 site
  case $arm in
    fedavg|fedadam|fedyogi|pooled)
      mkdir -p "$S/eval/$arm"
      for site in "${SITES[@]}"; do
        study_evaluate "$BIN" "$S/models/$arm" "$S/test/$site" "$S/eval/$arm/$site"
      done ;;
    siteheads)  # the global backbone with each site's private head, at that site
      mkdir -p "$S/eval/$arm"
      for site in "${SITES[@]}"; do
        /usr/bin/python3 scripts/fed_study.py combine-head "$S/models/$arm" \
          "$S/pki/sites/$site/state/heads/$id.safetensors" "$S/models/$arm-$site"
        study_evaluate "$BIN" "$S/models/$arm-$site" "$S/test/$site" "$S/eval/$arm/$site"
      done ;;
    alone-*|finetune-*)
      site=${arm#*-}
      mkdir -p "$S/eval/${arm%%-*}"
      study_evaluate "$BIN" "$S/models/$arm" "$S/test/$site" "$S/eval/${arm%%-*}/$site" ;;
  esac
}

# run_seed SEED: every arm of one seed under $D/seed-SEED.
run_seed() {
  local seed=$1 S=$D/seed-$1 site port admin
  mkdir -p "$S/logs" "$S/data" "$S/test" "$S/jobs" "$S/models" "$S/eval" "$S/status"
  port=$(fl_free_port)
  "$BIN/flctl" provision --out "$S/pki" --coordinator-address "127.0.0.1:$port" \
    --sites "$(IFS=,; echo "${SITES[*]},$POOLED")" --admins operator --data-root "$S/data" \
    --allow-non-dp > "$S/logs/provision.log"
  admin=$S/pki/admins/operator/admin.conf
  study_hospital_data "$BIN" "$S" "$seed" "$SIZE" "$TEST_IMAGES" "${COUNTS[@]}"
  study_pool_data "$S/data" "$POOLED" "${SITES[@]}"

  fl_start_coordinator "$BIN" "$S"
  local common=(model="$MODEL" size="$SIZE" rounds="$ROUNDS" steps="$STEPS" batch="$BATCH"
                lr="$LR" seed="$seed" patience="$PATIENCE")
  # submit ARM SITES(comma) MIN_SITES KEY=VALUE...: queues a job, records it in runs.tsv.
  submit() {
    local arm=$1 sites=$2 min=$3 id
    shift 3
    study_job_spec "$S/jobs/$arm.job" "$arm" "$sites" "${common[@]}" min_sites="$min" "$@"
    id=$("$BIN/flctl" job submit --config "$admin" --spec "$S/jobs/$arm.job")
    printf '%s\t%s\t%s\n' "$arm" "$sites" "$id" >> "$S/runs.tsv"
  }
  : > "$S/runs.tsv"
  local all_sites
  all_sites=$(IFS=,; echo "${SITES[*]}")
  submit fedavg "$all_sites" 3 rounds="$FED_ROUNDS"
  local v
  for v in $VARIANTS; do
    case $v in
      fedadam|fedyogi) submit "$v" "$all_sites" 3 rounds="$FED_ROUNDS" server="$v" ;;
      siteheads) submit siteheads "$all_sites" 3 rounds="$FED_ROUNDS" heads=site ;;
      equal) submit fedavg-equal "$all_sites" 3 rounds="$FED_ROUNDS" weighting=equal ;;
      *) echo "unknown variant $v" >&2; return 1 ;;
    esac
  done
  for site in "${SITES[@]}"; do submit "alone-$site" "$site" 1; done
  submit pooled "$POOLED" 1 rounds="$FED_ROUNDS"
  # The sites' clients start once every job is queued (a client leaves when no job is left).
  local -A client_pid
  for site in "${SITES[@]}" "$POOLED"; do
    fl_start_clients "$BIN" "$S" "$site"
    client_pid[$site]=${FL_PIDS[-1]}
  done

  # finish ARM ID: waits, keeps the job's status (the curves), exports its model.
  finish() {
    "$BIN/flctl" job wait "$2" --config "$admin" > "$S/logs/$1.wait.log" || true
    "$BIN/flctl" job status "$2" --config "$admin" --json > "$S/status/$1.json"
    if [ -n "${FL_FED_VERBOSE:-}" ] && [ "$1" = fedavg ]; then sed 's/^/   /' "$S/logs/$1.wait.log"; fi
    echo "   seed $seed: $1: $(tail -n 1 "$S/logs/$1.wait.log")"
    # The best model by validation; with private heads the last (the heads a site keeps are
    # its last round's).
    local which=--best
    [ "$1" = siteheads ] && which=
    "$BIN/flctl" export "$2" --config "$admin" --out "$S/models/$1" $which > /dev/null
    mkdir -p "$S/reports"
    "$BIN/flctl" report "$2" --config "$admin" --out "$S/reports/$1.html" > /dev/null
  }
  local arm sites id i=0 runs
  mapfile -t runs < "$S/runs.tsv"
  while [ "$i" -lt "${#runs[@]}" ]; do
    IFS=$'\t' read -r arm sites id <<< "${runs[$i]}"
    i=$((i + 1))
    finish "$arm" "$id"
    evaluate_arm "$S" "$arm" "$id"
    if [ "$arm" = fedavg ]; then  # queued behind the others, so the sites never go idle
      for site in "${SITES[@]}"; do
        submit "finetune-$site" "$site" 1 rounds="$FT_ROUNDS" lr="$FT_LR" patience="$FT_PATIENCE" \
          initial="$S/models/fedavg/model.safetensors"
      done
      mapfile -t runs < "$S/runs.tsv"
      for site in "${SITES[@]}"; do  # a site whose last job ended meanwhile has left: back
        if ! kill -0 "${client_pid[$site]}" 2>/dev/null; then
          "$BIN/fl-client" --config "$S/pki/sites/$site/client.conf" >> "$S/logs/$site.log" 2>&1 &
          FL_PIDS+=($!)
          client_pid[$site]=$!
        fi
      done
    fi
  done
  "$BIN/flctl" sites --config "$admin" --json > "$S/sites.json"
  fl_stop_daemons
  FL_PIDS=()
  echo "== seed $seed done after $(( $(date +%s) - START )) s"
}

for seed in $SEEDS; do
  echo "== seed $seed: data, then $(( 5 + $(wc -w <<< "$VARIANTS") + 3 )) jobs"
  run_seed "$seed"
done
SECONDS_TAKEN=$(( $(date +%s) - START ))
echo "== study finished in $SECONDS_TAKEN s"
/usr/bin/python3 scripts/fed_study.py summarize "$D" --seconds "$SECONDS_TAKEN" \
  --bootstrap "${FL_FED_BOOTSTRAP:-1000}"
