#!/usr/bin/env bash
# The privacy-utility-fairness study: the same federated job (same sites, data and seed) trained
# without DP and with DP-SGD at target epsilon 1, 3 and 8. As in published DP work on chest
# radiographs, which starts from networks pretrained on public data (domain-specific pretraining,
# e.g. on MIMIC-CXR, comes closest to non-private), every run starts from a model pretrained
# (non-privately) on public data: here a fourth, public phantom archive from another population
# and scanner, trained by its own fl-client in a job of its own. Each final model is exported and
# evaluated by `flctl evaluate` on every site's own held-out test set (generated with another
# seed, the site's own labels), where the data lies. Writes build/study/study.json and
# build/study/study.md (AUROC per label and mean, relative drop from non-private, accuracy and
# statistical parity difference per sex and age group, Pearson r between epsilon and SPD).
#
# Environment: FL_STUDY_BIN (folder with flctl, fl-coordinator, fl-client; default: build with
# scripts/build.sh and use build/bin), FL_STUDY_OUT (default build/study), FL_STUDY_IMAGES
# (images per site, default 12000), FL_STUDY_TEST_IMAGES (default 400), FL_STUDY_ROUNDS (30),
# FL_STUDY_STEPS (local steps per round, 10), FL_STUDY_BATCH (expected batch, 256),
# FL_STUDY_SIZE (image size in pixels, 32), FL_STUDY_MODEL (smallcnn),
# FL_STUDY_OPTIMIZER (local optimizer: adam or sgd), FL_STUDY_LR (0.002), FL_STUDY_MOMENTUM
# (sgd only, 0), FL_STUDY_CLIP (1.0), FL_STUDY_EPSILONS ("1 3 8"),
# FL_STUDY_DELTA (default 1e-4: below 1 / the smallest site's train split),
# FL_STUDY_PUBLIC_IMAGES (images of the public archive, default 12000; 0: no pretraining, every
# run starts from the seeded initialisation), FL_STUDY_PRETRAIN_ROUNDS (40).
# The defaults are the best of the settings tried on 2 cores (see README): DP's noise costs less
# the more images a site has, so the images are many and small.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fl_prepare_run "${FL_STUDY_BIN:-}" "${FL_STUDY_OUT:-$ROOT/build/study}"
mkdir -p "$D/logs" "$D/data" "$D/test" "$D/eval" "$D/models"
IMAGES=${FL_STUDY_IMAGES:-12000}
TEST_IMAGES=${FL_STUDY_TEST_IMAGES:-400}
ROUNDS=${FL_STUDY_ROUNDS:-30}
STEPS=${FL_STUDY_STEPS:-10}
BATCH=${FL_STUDY_BATCH:-256}
SIZE=${FL_STUDY_SIZE:-32}
MODEL=${FL_STUDY_MODEL:-smallcnn}
OPTIMIZER=${FL_STUDY_OPTIMIZER:-adam}
LR=${FL_STUDY_LR:-0.002}
MOMENTUM=${FL_STUDY_MOMENTUM:-0}
CLIP=${FL_STUDY_CLIP:-1.0}
EPSILONS=${FL_STUDY_EPSILONS:-1 3 8}
DELTA=${FL_STUDY_DELTA:-1e-4}
PUBLIC_IMAGES=${FL_STUDY_PUBLIC_IMAGES:-12000}
PRETRAIN_ROUNDS=${FL_STUDY_PRETRAIN_ROUNDS:-40}
SITES=(hospital-a hospital-b hospital-c)
PUBLIC=public-archive
ALL_SITES=("${SITES[@]}")
[ "$PUBLIC_IMAGES" -gt 0 ] && ALL_SITES+=("$PUBLIC")
START=$(date +%s)
PORT=$(fl_free_port)

echo "== provisioning (CA, coordinator, ${#ALL_SITES[@]} sites, 1 admin; site budget caps high enough for all jobs)"
"$BIN/flctl" provision --out "$D/pki" --coordinator-address "127.0.0.1:$PORT" \
  --sites "$(IFS=,; echo "${ALL_SITES[*]}")" --admins operator --data-root "$D/data" \
  --max-epsilon 1000 --delta "$DELTA" --allow-non-dp > "$D/logs/provision.log"  # its non-private arm

ALL=cardiomegaly,congestion,effusion_right,effusion_left,infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left
declare -A SITE_ARGS=(
  [hospital-a]="--labels $ALL"
  [hospital-b]="--labels cardiomegaly,effusion_right,effusion_left --contrast 0.8 --noise 0.07"
  [hospital-c]="--labels infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left --contrast 1.2 --noise 0.1 --photometric MONOCHROME1"
)
echo "== phantom data: $IMAGES training and $TEST_IMAGES held-out test images per site ($SIZE px)"
seed=100
for site in "${SITES[@]}"; do
  seed=$((seed + 1))
  # shellcheck disable=SC2086  # SITE_ARGS holds several words on purpose
  "$BIN/flctl" phantom --out "$D/data/$site" --count "$IMAGES" --size "$SIZE" --seed "$seed" \
    --site "$site" ${SITE_ARGS[$site]} | sed "s/^/   /"
  # shellcheck disable=SC2086
  "$BIN/flctl" phantom --out "$D/test/$site" --count "$TEST_IMAGES" --size "$SIZE" \
    --seed "$((seed + 500))" --site "$site-test" ${SITE_ARGS[$site]} > "$D/logs/test-$site.log"
done

ADMIN=$D/pki/admins/operator/admin.conf

# job_spec NAME EPSILON ROUNDS SITE... (EPSILON 0: no DP); INITIAL, when set, is the model to
# start from.
job_spec() {
  local name=$1 eps=$2 rounds=$3
  shift 3
  {
    echo "name: \"$name\" model: \"$MODEL\" image_size: $SIZE rounds: $rounds local_steps: $STEPS"
    echo "batch_size: $BATCH min_sites: $# round_deadline_seconds: 3600 seed: 5"
    echo "start_timeout_seconds: 600"
    echo "local_optimizer { name: \"$OPTIMIZER\" learning_rate: $LR momentum: $MOMENTUM }"
    IFS=, read -ra L <<< "$ALL"; for l in "${L[@]}"; do echo "labels: \"$l\""; done
    for site in "$@"; do echo "sites: \"$site\""; done
    [ -n "${INITIAL:-}" ] && echo "initial_model: \"$INITIAL\""
    if [ "$eps" != 0 ]; then
      echo "dp { enabled: true clip_norm: $CLIP target_epsilon: $eps delta: $DELTA }"
    fi
  } > "$D/$name.job"
  "$BIN/flctl" job submit --config "$ADMIN" --spec "$D/$name.job"
}

# finish_run NAME ID: waits for the job, keeps its status, exports its model and evaluates it at
# each hospital on its own held-out data (only the aggregate report comes back).
finish_run() {
  local name=$1 id=$2 site
  "$BIN/flctl" job wait "$id" --config "$ADMIN" > "$D/logs/$name.wait.log" || true
  tail -n 2 "$D/logs/$name.wait.log" | sed "s/^/   /"
  "$BIN/flctl" job status "$id" --config "$ADMIN" --json > "$D/$name.status.json"
  if ! "$BIN/flctl" export "$id" --config "$ADMIN" --out "$D/models/$name" > /dev/null; then
    echo "   no model to export for $name: left out of the table"
    return 1
  fi
  mkdir -p "$D/eval/$name"
  for site in "${SITES[@]}"; do
    "$BIN/flctl" evaluate "$D/models/$name/model.safetensors" --data "$D/test/$site" \
      --threshold prevalence --json > "$D/eval/$name/$site.json"
  done
}

echo "== starting fl-coordinator"
fl_start_coordinator "$BIN" "$D"
: > "$D/jobs.tsv"
INITIAL=
if [ "$PUBLIC_IMAGES" -gt 0 ]; then
  echo "== public archive: $PUBLIC_IMAGES images from another population and scanner"
  "$BIN/flctl" phantom --out "$D/data/$PUBLIC" --count "$PUBLIC_IMAGES" --size "$SIZE" \
    --seed 99 --site "$PUBLIC" --labels "$ALL" --contrast 0.9 --noise 0.04 --prevalence 0.25 \
    --male-fraction 0.6 --min-age 30 --max-age 85 | sed "s/^/   /"
  echo "== pretraining on the public archive (non-private): $PRETRAIN_ROUNDS rounds of $STEPS local steps"
  fl_start_clients "$BIN" "$D" "$PUBLIC"
  id=$(job_spec public-pretrained 0 "$PRETRAIN_ROUNDS" "$PUBLIC")
  finish_run public-pretrained "$id" || { echo "pretraining failed" >&2; exit 1; }
  printf 'public-pretrained\tpublic\t%s\n' "$id" >> "$D/jobs.tsv"
  INITIAL=$D/models/public-pretrained/model.safetensors
fi

# The jobs run one after another on the coordinator, in submission order; they are all queued
# before the hospitals' clients start, which leave once no job is left.
printf 'non-private\t0\t%s\n' "$(job_spec non-private 0 "$ROUNDS" "${SITES[@]}")" > "$D/runs.tsv"
for eps in $EPSILONS; do
  printf 'dp-eps%s\t%s\t%s\n' "$eps" "$eps" \
    "$(job_spec "dp-eps$eps" "$eps" "$ROUNDS" "${SITES[@]}")" >> "$D/runs.tsv"
done
echo "== starting ${#SITES[@]} hospital fl-client daemons"
fl_start_clients "$BIN" "$D" "${SITES[@]}"
while IFS=$'\t' read -r -u 3 name eps id; do
  echo "== $name (target epsilon $eps): $ROUNDS rounds of $STEPS local steps, batch $BATCH"
  finish_run "$name" "$id" || true
  printf '%s\t%s\t%s\n' "$name" "$eps" "$id" >> "$D/jobs.tsv"
done 3< "$D/runs.tsv"

echo "== study finished in $(( $(date +%s) - START )) s"
/usr/bin/python3 scripts/dp_study.py "$D" --seconds "$(( $(date +%s) - START ))"
