#!/usr/bin/env bash
# The demo federation: three simulated hospitals with different label sets, scanners and sizes
# (A: 1,500 images, all 8 findings; B: 500, cardiomegaly and effusions; C: 80, infiltrates and
# atelectasis, MONOCHROME1) on the study phantom (subtle findings, varied anatomy, 5% label
# noise: scripts/study_lib.sh). It is a short run of the federation study (scripts/fed_study.sh,
# one seed, no server-optimizer or head variants): each hospital alone, FedAvg, FedAvg fine-tuned
# at each hospital, and a pooled site holding every hospital's data (the upper bound), all over
# mutual TLS with real daemons. Every model is evaluated at each hospital on a held-out test set
# of its own (FL_DEMO_TEST_IMAGES images, default 400); the table gives AUROC with bootstrap 95%
# intervals over those test images. One seed on a short budget cannot show what the study
# shows: the intervals cover the test images, not the training's own variation, and no arm
# has converged (see the printout). About 3 minutes on 2 cores once built.
# Installs what is missing, builds, provisions, generates phantom DICOM data, trains, reports.
# Writes build/demo/summary.json, the FedAvg model to build/demo/model/ and its job's report
# (flctl report) to build/demo/report.html. Environment:
# FL_DEMO_ROUNDS (30), FL_DEMO_STEPS (10), FL_DEMO_SCALE (multiplies the hospitals' images, 1),
# FL_DEMO_TEST_IMAGES (400), FL_DEMO_SEED (1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
scripts/deps.sh
scripts/build.sh
D=$ROOT/build/demo
rm -rf "$D"
mkdir -p "$D"
SCALE=${FL_DEMO_SCALE:-1}
SEED=${FL_DEMO_SEED:-1}
echo "== the federation study, short: one seed; each hospital alone, FedAvg, FedAvg + local fine-tuning, pooled"
FL_FED_BIN=$ROOT/build/bin FL_FED_OUT=$D/study FL_FED_SEEDS=$SEED FL_FED_VARIANTS="" \
  FL_FED_COUNTS="$((1500 * SCALE)) $((500 * SCALE)) $((80 * SCALE))" \
  FL_FED_ROUNDS=${FL_DEMO_ROUNDS:-30} FL_FED_FED_ROUNDS=${FL_DEMO_ROUNDS:-30} \
  FL_FED_PATIENCE=${FL_DEMO_PATIENCE:-10} FL_FED_STEPS=${FL_DEMO_STEPS:-10} FL_FED_FT_ROUNDS=5 \
  FL_FED_FT_PATIENCE=0 FL_FED_FT_LR=0.0005 \
  FL_FED_TEST_IMAGES=${FL_DEMO_TEST_IMAGES:-400} FL_FED_BOOTSTRAP=500 FL_FED_VERBOSE=1 \
  scripts/fed_study.sh > "$D/study.log"  || { cat "$D/study.log"; exit 1; }
grep -v '^|\|^$\|^Seeds\|^Training\|^Wall\|^Mean\|^Differences\|^Per finding\|^Convergence\|^Curves\|^     round ' \
  "$D/study.log" || true
cp -r "$D/study/seed-$SEED/models/fedavg" "$D/model"
cp "$D/study/seed-$SEED/reports/fedavg.html" "$D/report.html"
cp -r "$D/study/seed-$SEED/logs" "$D/logs"
/usr/bin/python3 scripts/demo_summary.py "$D" "$D/study" "seed-$SEED" hospital-a hospital-b hospital-c
echo "The FedAvg job's report (flctl report): $D/report.html"
