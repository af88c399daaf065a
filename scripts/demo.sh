#!/usr/bin/env bash
# The demo federation: three simulated hospitals with different label sets train one
# chest-radiograph model over mutual TLS, then each trains alone for comparison. Every model is
# evaluated at each site on the site's held-out test set (FL_DEMO_TEST_IMAGES images, default 300,
# drawn apart from its training data), where a few dozen images would make AUROC a coin toss.
# Installs what is missing, builds, provisions, generates phantom DICOM data, trains, reports.
# Writes build/demo/summary.json. Environment: FL_DEMO_ROUNDS, FL_DEMO_STEPS, FL_DEMO_SCALE,
# FL_DEMO_TEST_IMAGES.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/deps.sh
scripts/build.sh
BIN=$ROOT/build/bin
D=$ROOT/build/demo
rm -rf "$D"
mkdir -p "$D/logs" "$D/data"
ROUNDS=${FL_DEMO_ROUNDS:-30}
STEPS=${FL_DEMO_STEPS:-30}
SCALE=${FL_DEMO_SCALE:-1}
TEST_IMAGES=${FL_DEMO_TEST_IMAGES:-300}
SITES=(hospital-a hospital-b hospital-c)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PORT=$(fl_free_port)

echo "== provisioning the consortium (CA, coordinator, 3 sites, 1 admin)"
"$BIN/flctl" provision --out "$D/pki" --coordinator-address "127.0.0.1:$PORT" \
  --sites hospital-a,hospital-b,hospital-c --admins operator --data-root "$D/data" \
  --allow-non-dp > "$D/logs/provision.log"  # the demo's jobs train without DP

echo "== generating phantom chest radiographs (DICOM): training data and a held-out test set per site"
ALL=cardiomegaly,congestion,effusion_right,effusion_left,infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left
declare -A LABELS=([hospital-a]="$ALL" [hospital-b]="cardiomegaly,effusion_right,effusion_left"
                   [hospital-c]="infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left")
declare -A SCANNER=([hospital-a]="" [hospital-b]="--contrast 0.8 --noise 0.07"
                    [hospital-c]="--contrast 1.2 --noise 0.1 --photometric MONOCHROME1")
declare -A COUNT=([hospital-a]=600 [hospital-b]=400 [hospital-c]=60)
seed=0
for site in "${SITES[@]}"; do
  seed=$((seed + 11))
  # shellcheck disable=SC2086  # SCANNER holds several words on purpose
  "$BIN/flctl" phantom --out "$D/data/$site" --count $((COUNT[$site] * SCALE)) --size 128 \
    --seed $seed --labels "${LABELS[$site]}" ${SCANNER[$site]} --site "$site"
  # shellcheck disable=SC2086
  "$BIN/flctl" phantom --out "$D/test/$site" --count "$TEST_IMAGES" --size 128 \
    --seed $((seed + 500)) --labels "${LABELS[$site]}" ${SCANNER[$site]} --site "$site-test" \
    > "$D/logs/test-$site.log"
done

echo "== starting fl-coordinator and three fl-client daemons"
fl_start_daemons "$BIN" "$D" "${SITES[@]}"

ADMIN=$D/pki/admins/operator/admin.conf

job_spec() {  # name, labels (comma list), sites (comma list or empty), min sites
  {
    echo "name: \"$1\" model: \"smallcnn\" image_size: 64 rounds: $ROUNDS local_steps: $STEPS"
    echo "batch_size: 32 min_sites: $4 round_deadline_seconds: 300 seed: 5"
    echo "local_optimizer { name: \"adam\" learning_rate: 0.003 }"
    IFS=, read -ra L <<< "$2"; for l in "${L[@]}"; do echo "labels: \"$l\""; done
    if [ -n "$3" ]; then IFS=, read -ra S <<< "$3"; for s in "${S[@]}"; do echo "sites: \"$s\""; done; fi
  } > "$D/$1.job"
  "$BIN/flctl" job submit --config "$ADMIN" --spec "$D/$1.job"
}
FED=$(job_spec federated "$ALL" "" 3)
declare -A ALONE
for site in "${SITES[@]}"; do ALONE[$site]=$(job_spec "alone-$site" "${LABELS[$site]}" "$site" 1); done

# evaluate MODEL_DIR NAME SITE...: the exported model evaluated at each SITE on its held-out test
# set, into eval/NAME/SITE.json (only the aggregate report leaves the site).
evaluate() {
  local model=$1 name=$2 site
  shift 2
  mkdir -p "$D/eval/$name"
  for site in "$@"; do
    "$BIN/flctl" evaluate "$model/model.safetensors" --data "$D/test/$site" --json \
      > "$D/eval/$name/$site.json"
  done
}

echo "== federated training: $ROUNDS rounds of $STEPS local steps"
"$BIN/flctl" job wait "$FED" --config "$ADMIN"
"$BIN/flctl" job status "$FED" --config "$ADMIN" --json > "$D/federated.json"
"$BIN/flctl" export "$FED" --config "$ADMIN" --out "$D/model"
evaluate "$D/model" federated "${SITES[@]}"
for site in "${SITES[@]}"; do
  id=${ALONE[$site]}
  echo "== $site alone: $id"
  "$BIN/flctl" job wait "$id" --config "$ADMIN" | tail -n 2
  "$BIN/flctl" export "$id" --config "$ADMIN" --out "$D/alone/$site" > /dev/null
  evaluate "$D/alone/$site" alone "$site"
done
"$BIN/flctl" sites --config "$ADMIN" --json > "$D/sites.json"
/usr/bin/python3 scripts/demo_summary.py "$D" "${SITES[@]}"
