#!/usr/bin/env bash
# Trains one arm of a finished scripts/fed_study.sh run again with a larger budget, to see where
# an arm that had not converged would end: usage
#   scripts/fed_study_longer.sh STUDY_DIR ARM ROUNDS [SEED...]
# ARM is pooled or fedavg; the new arm is ARM-xROUNDS (e.g. pooled-x240), run by
# scripts/fed_study_arm.sh. Then run `scripts/fed_study.py summarize STUDY_DIR` again.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,6p "$0"; exit 2; }
D=$1 ARM=$2 ROUNDS=$3
shift 3
FL_FED_ARM_SEEDS="$*" exec "$(dirname "$0")/fed_study_arm.sh" "$D" "$ARM-x$ROUNDS" "$ARM" \
  rounds="$ROUNDS"
