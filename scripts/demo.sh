#!/usr/bin/env bash
# The demo federation: three simulated hospitals with different label sets train one
# chest-radiograph model over mutual TLS, then each trains alone for comparison.
# Installs what is missing, builds, provisions, generates phantom DICOM data, trains, reports.
# Writes build/demo/summary.json. Environment: FL_DEMO_ROUNDS, FL_DEMO_STEPS, FL_DEMO_SCALE.
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
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PORT=$(fl_free_port)

echo "== provisioning the consortium (CA, coordinator, 3 sites, 1 admin)"
"$BIN/flctl" provision --out "$D/pki" --coordinator-address "127.0.0.1:$PORT" \
  --sites hospital-a,hospital-b,hospital-c --admins operator --data-root "$D/data" > "$D/logs/provision.log"

echo "== generating phantom chest radiographs (DICOM)"
ALL=cardiomegaly,congestion,effusion_right,effusion_left,infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left
"$BIN/flctl" phantom --out "$D/data/hospital-a" --count $((600 * SCALE)) --size 128 --seed 11 \
  --labels "$ALL" --site hospital-a
"$BIN/flctl" phantom --out "$D/data/hospital-b" --count $((400 * SCALE)) --size 128 --seed 22 \
  --labels cardiomegaly,effusion_right,effusion_left --contrast 0.8 --noise 0.07 --site hospital-b
"$BIN/flctl" phantom --out "$D/data/hospital-c" --count $((60 * SCALE)) --size 128 --seed 33 --noise 0.1 \
  --labels infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left --contrast 1.2 \
  --photometric MONOCHROME1 --site hospital-c

echo "== starting fl-coordinator and three fl-client daemons"
fl_start_daemons "$BIN" "$D" hospital-a hospital-b hospital-c
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
A=$(job_spec alone-hospital-a "$ALL" hospital-a 1)
B=$(job_spec alone-hospital-b cardiomegaly,effusion_right,effusion_left hospital-b 1)
C=$(job_spec alone-hospital-c infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left hospital-c 1)

echo "== federated training: $ROUNDS rounds of $STEPS local steps"
"$BIN/flctl" job wait "$FED" --config "$ADMIN"
"$BIN/flctl" job status "$FED" --config "$ADMIN" --json > "$D/federated.json"
"$BIN/flctl" export "$FED" --config "$ADMIN" --out "$D/model"
for id in "$A" "$B" "$C"; do
  echo "== each site alone: $id"
  "$BIN/flctl" job wait "$id" --config "$ADMIN" | tail -n 2
  "$BIN/flctl" job status "$id" --config "$ADMIN" --json > "$D/$id.json"
done
"$BIN/flctl" sites --config "$ADMIN" --json > "$D/sites.json"
/usr/bin/python3 scripts/demo_summary.py "$D" "$D/federated.json" "$D/$A.json" "$D/$B.json" "$D/$C.json"
