#!/usr/bin/env bash
# The learning curve of one site training alone on the study phantom (scripts/study_lib.sh):
# test AUROC of all eight findings against the number of the site's images, from 30 to 3,000.
# Each size is a site of its own holding the first N images of one draw (so the sets are
# nested); each trains alone with the same budget, and every model is evaluated on one held-out
# test set (clean labels). Writes build/learning_curve/learning_curve.{md,json}.
#
# Environment: FL_LC_BIN (binaries; default: build), FL_LC_OUT [build/learning_curve],
# FL_LC_SIZES ["30 100 300 1000 3000"], FL_LC_TEST_IMAGES [1000], FL_LC_SIZE [32],
# FL_LC_MODEL [smallcnn], FL_LC_ROUNDS [80], FL_LC_STEPS [30], FL_LC_BATCH [32], FL_LC_LR
# [0.003], FL_LC_SEED [1], and the phantom's FL_PHANTOM_* (scripts/study_lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fl_prepare_run "${FL_LC_BIN:-}" "${FL_LC_OUT:-$ROOT/build/learning_curve}"
mkdir -p "$D/logs" "$D/data" "$D/eval" "$D/models" "$D/status"
read -ra NS <<< "${FL_LC_SIZES:-30 100 300 1000 3000}"
TEST_IMAGES=${FL_LC_TEST_IMAGES:-1000}
SIZE=${FL_LC_SIZE:-32}
SEED=${FL_LC_SEED:-1}
START=$(date +%s)
# shellcheck source=scripts/study_lib.sh
. scripts/study_lib.sh

MAX=0
for n in "${NS[@]}"; do [ "$n" -gt "$MAX" ] && MAX=$n; done
echo "== phantom: $MAX training images (finding strength $FL_PHANTOM_STRENGTH, variation" \
  "$FL_PHANTOM_VARIATION, label noise $FL_PHANTOM_LABEL_NOISE), $TEST_IMAGES test images"
study_phantom "$BIN" "$D/full" "$MAX" "$SIZE" $((SEED * 1000 + 1)) lc TRAIN | sed 's/^/   /'
study_phantom "$BIN" "$D/test" "$TEST_IMAGES" "$SIZE" $((SEED * 1000 + 501)) lc-test TEST \
  > "$D/logs/test.log"
SITES=()
for n in "${NS[@]}"; do  # the first n images (hard links) and their rows of labels.csv
  mkdir -p "$D/data/n$n"
  (cd "$D/full" && seq 0 $((n - 1)) | xargs printf 'img_%06d.dcm\n' | xargs ln -t "$D/data/n$n/")
  head -n $((n + 1)) "$D/full/labels.csv" > "$D/data/n$n/labels.csv"
  SITES+=("n$n")
done
PORT=$(fl_free_port)
"$BIN/flctl" provision --out "$D/pki" --coordinator-address "127.0.0.1:$PORT" \
  --sites "$(IFS=,; echo "${SITES[*]}")" --admins operator --data-root "$D/data" \
  --allow-non-dp > "$D/logs/provision.log"
ADMIN=$D/pki/admins/operator/admin.conf
fl_start_daemons "$BIN" "$D" "${SITES[@]}"
IDS=()
for n in "${NS[@]}"; do
  study_job_spec "$D/n$n.job" "alone-n$n" "n$n" model="${FL_LC_MODEL:-smallcnn}" size="$SIZE" \
    rounds="${FL_LC_ROUNDS:-80}" steps="${FL_LC_STEPS:-30}" batch="${FL_LC_BATCH:-32}" \
    lr="${FL_LC_LR:-0.003}" seed="$SEED"
  IDS+=("$("$BIN/flctl" job submit --config "$ADMIN" --spec "$D/n$n.job")")
done
for k in "${!NS[@]}"; do
  n=${NS[$k]} id=${IDS[$k]}
  "$BIN/flctl" job wait "$id" --config "$ADMIN" > "$D/logs/n$n.wait.log" || true
  echo "   $n images: $(tail -n 1 "$D/logs/n$n.wait.log")"
  "$BIN/flctl" job status "$id" --config "$ADMIN" --json > "$D/status/n$n.json"
  "$BIN/flctl" export "$id" --config "$ADMIN" --out "$D/models/n$n" > /dev/null
  study_evaluate "$BIN" "$D/models/n$n" "$D/test" "$D/eval/$n"
done
echo "== learning curve finished in $(( $(date +%s) - START )) s"
/usr/bin/python3 scripts/fed_study.py learning-curve "$D"
