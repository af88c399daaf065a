#!/usr/bin/env bash
# The privacy-utility-fairness study: the same federated job (same sites, data and seed) trained
# without DP and with DP-SGD at target epsilon 1, 3 and 8; each final model is exported and
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
# FL_STUDY_DELTA (default 1e-4: below 1 / the smallest site's train split).
# The defaults are the best of the settings tried on 2 cores (see README): DP's noise costs less
# the more images a site has, so the images are many and small.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -z "${FL_STUDY_BIN:-}" ]; then
  scripts/deps.sh
  scripts/build.sh
  BIN=$ROOT/build/bin
else
  BIN=$(cd "$FL_STUDY_BIN" && pwd)
fi
D=${FL_STUDY_OUT:-$ROOT/build/study}
mkdir -p "$D" && D=$(cd "$D" && pwd)
rm -rf "${D:?}"/*
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
SITES=(hospital-a hospital-b hospital-c)
START=$(date +%s)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PORT=$(fl_free_port)

echo "== provisioning (CA, coordinator, ${#SITES[@]} sites, 1 admin; site budget caps high enough for all jobs)"
"$BIN/flctl" provision --out "$D/pki" --coordinator-address "127.0.0.1:$PORT" \
  --sites "$(IFS=,; echo "${SITES[*]}")" --admins operator --data-root "$D/data" \
  --max-epsilon 1000 --delta "$DELTA" > "$D/logs/provision.log"

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

echo "== starting fl-coordinator and ${#SITES[@]} fl-client daemons"
fl_start_daemons "$BIN" "$D" "${SITES[@]}"
ADMIN=$D/pki/admins/operator/admin.conf

job_spec() {  # name, target epsilon (0: no DP)
  {
    echo "name: \"$1\" model: \"$MODEL\" image_size: $SIZE rounds: $ROUNDS local_steps: $STEPS"
    echo "batch_size: $BATCH min_sites: ${#SITES[@]} round_deadline_seconds: 3600 seed: 5"
    echo "start_timeout_seconds: 600"
    echo "local_optimizer { name: \"$OPTIMIZER\" learning_rate: $LR momentum: $MOMENTUM }"
    IFS=, read -ra L <<< "$ALL"; for l in "${L[@]}"; do echo "labels: \"$l\""; done
    if [ "$2" != 0 ]; then
      echo "dp { enabled: true clip_norm: $CLIP target_epsilon: $2 delta: $DELTA }"
    fi
  } > "$D/$1.job"
  "$BIN/flctl" job submit --config "$ADMIN" --spec "$D/$1.job"
}
# The jobs run one after another on the coordinator, in submission order.
: > "$D/jobs.tsv"
printf 'non-private\t0\t%s\n' "$(job_spec non-private 0)" >> "$D/jobs.tsv"
for eps in $EPSILONS; do
  printf 'dp-eps%s\t%s\t%s\n' "$eps" "$eps" "$(job_spec "dp-eps$eps" "$eps")" >> "$D/jobs.tsv"
done

while IFS=$'\t' read -r -u 3 name eps id; do
  echo "== $name (target epsilon $eps): $ROUNDS rounds of $STEPS local steps, batch $BATCH"
  "$BIN/flctl" job wait "$id" --config "$ADMIN" > "$D/logs/$name.wait.log" || true
  tail -n 2 "$D/logs/$name.wait.log" | sed "s/^/   /"
  "$BIN/flctl" job status "$id" --config "$ADMIN" --json > "$D/$name.status.json"
  if ! "$BIN/flctl" export "$id" --config "$ADMIN" --out "$D/models/$name" > /dev/null; then
    echo "   no model to export for $name: left out of the table"
    continue
  fi
  mkdir -p "$D/eval/$name"
  for site in "${SITES[@]}"; do
    # At the site, on its own held-out data: only the aggregate report comes back.
    "$BIN/flctl" evaluate "$D/models/$name/model.safetensors" --data "$D/test/$site" \
      --threshold prevalence --json > "$D/eval/$name/$site.json"
  done
done 3< "$D/jobs.tsv"

echo "== study finished in $(( $(date +%s) - START )) s"
/usr/bin/python3 scripts/dp_study.py "$D" --seconds "$(( $(date +%s) - START ))"
