#!/usr/bin/env bash
# The generator study (issue 12): Medfusion's latent diffusion trained by the federation against
# the same generator trained on pooled data and at each hospital alone, without and with DP, on
# the federation study's three hospitals (scripts/study_lib.sh: subtle findings that a generator
# has to learn, in shape and place). Per seed, with real daemons over mutual TLS:
#   features   a FedAvg classifier of the three hospitals: the feature space of FID and
#              precision/recall (Inception cannot be fetched here), and the real-data reference
#              of the utility figure
#   ARM        for ARM in fedavg, pooled, alone-hospital-a/-b/-c, and for each PRIV in nodp, dp:
#              a variational autoencoder job, then a diffusion job on its latents conditioned on
#              FL_GEN_LABELS (dp: each stage at epsilon FL_GEN_STAGE_EPSILON, so the sites'
#              ledgers compose both, at most twice that), then flctl synth (FL_GEN_PER_CLASS
#              images per class), flctl synth-eval against the three hospitals' held-out test
#              images, and a classifier trained on the synthetic images alone (a "site" holding
#              them), evaluated on each hospital's real test set (train on synthetic, test on
#              real); and the memorisation check against the arm's own training images
# scripts/gen_study.py gathers study.md and study.json (means and 95% intervals over seeds) and
# a grid of samples per class per arm (PNG).
#
# Environment (defaults in brackets): FL_GEN_BIN (folder with the binaries; default: build),
# FL_GEN_OUT [build/gen_study], FL_GEN_SEEDS ["1 2 3"], FL_GEN_COUNTS (training images of
# hospital-a, -b, -c) ["600 300 80"], FL_GEN_TEST_IMAGES [200], FL_GEN_SIZE [32],
# FL_GEN_LABELS ["cardiomegaly,effusion_right,infiltrate_right"], FL_GEN_VAE_ROUNDS [60],
# FL_GEN_LDM_ROUNDS [150], FL_GEN_CLS_ROUNDS [80], FL_GEN_STEPS [20], FL_GEN_BATCH [16],
# FL_GEN_PATIENCE [20], FL_GEN_STAGE_EPSILON [4], FL_GEN_PER_CLASS [50], FL_GEN_SAMPLE_STEPS
# [50], FL_GEN_GUIDANCE [2], FL_GEN_ARMS ["fedavg pooled alone-hospital-a alone-hospital-b
# alone-hospital-c"], FL_GEN_PRIVACY ["nodp dp"], and the phantom's FL_PHANTOM_* knobs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
fl_prepare_run "${FL_GEN_BIN:-}" "${FL_GEN_OUT:-$ROOT/build/gen_study}"
# shellcheck source=scripts/study_lib.sh
. scripts/study_lib.sh
SEEDS=${FL_GEN_SEEDS:-1 2 3}
read -ra COUNTS <<< "${FL_GEN_COUNTS:-600 300 80}"
TEST_IMAGES=${FL_GEN_TEST_IMAGES:-200}
SIZE=${FL_GEN_SIZE:-32}
GEN_LABELS=${FL_GEN_LABELS:-cardiomegaly,effusion_right,infiltrate_right}
VAE_ROUNDS=${FL_GEN_VAE_ROUNDS:-60}
LDM_ROUNDS=${FL_GEN_LDM_ROUNDS:-150}
CLS_ROUNDS=${FL_GEN_CLS_ROUNDS:-80}
STEPS=${FL_GEN_STEPS:-20}
BATCH=${FL_GEN_BATCH:-16}
PATIENCE=${FL_GEN_PATIENCE:-20}
STAGE_EPSILON=${FL_GEN_STAGE_EPSILON:-4}
PER_CLASS=${FL_GEN_PER_CLASS:-50}
SAMPLE_STEPS=${FL_GEN_SAMPLE_STEPS:-50}
GUIDANCE=${FL_GEN_GUIDANCE:-2}
ARMS=${FL_GEN_ARMS:-fedavg pooled alone-hospital-a alone-hospital-b alone-hospital-c}
PRIVACY=${FL_GEN_PRIVACY:-nodp dp}
SITES=("${STUDY_SITES[@]}")
POOLED=pooled
export FL_EXIT_WHEN_IDLE=false  # the phases leave the queue empty in between
START=$(date +%s)
LATENT=$((SIZE / 4))  # the autoencoder's widths 32, 64, 64: x4

cat > "$D/config.json" <<EOF
{"seeds": "$SEEDS", "counts": "${COUNTS[*]}", "test_images": $TEST_IMAGES, "size": $SIZE,
 "labels": "$GEN_LABELS", "vae_rounds": $VAE_ROUNDS, "ldm_rounds": $LDM_ROUNDS,
 "cls_rounds": $CLS_ROUNDS, "steps": $STEPS, "batch": $BATCH, "patience": $PATIENCE,
 "stage_epsilon": $STAGE_EPSILON, "per_class": $PER_CLASS, "sample_steps": $SAMPLE_STEPS,
 "guidance": $GUIDANCE, "arms": "$ARMS", "privacy": "$PRIVACY"}
EOF

# sites_of ARM: the sites (comma list) that train in ARM.
sites_of() {
  case $1 in
    fedavg) (IFS=,; echo "${SITES[*]}") ;;
    pooled) echo "$POOLED" ;;
    alone-*) echo "${1#alone-}" ;;
  esac
}

# spec FILE NAME SITES PRIV WORKLOAD...: a job spec (common fields, then the workload's lines).
spec() {
  local file=$1 name=$2 sites=$3 priv=$4 s
  shift 4
  {
    echo "name: \"$name\" image_size: $SIZE local_steps: $STEPS batch_size: $BATCH"
    echo "min_sites: $(tr ',' '\n' <<< "$sites" | wc -l) seed: $SEED"
    echo "round_deadline_seconds: 3600 start_timeout_seconds: 900"
    echo "early_stopping { patience_rounds: $PATIENCE }"
    for s in ${sites//,/ }; do echo "sites: \"$s\""; done
    [ "$priv" = dp ] && echo "dp { enabled: true clip_norm: 1.0 target_epsilon: $STAGE_EPSILON delta: 1e-5 }"
    printf '%s\n' "$@"
  } > "$file"
}

# submit NAME SPEC_FILE: queues the job; prints its id.
submit() { "$BIN/flctl" job submit --config "$ADMIN" --spec "$2"; }

# finish NAME ID: waits for the job, keeps its status, exports its best model to models/NAME.
finish() {
  "$BIN/flctl" job wait "$2" --config "$ADMIN" > "$S/logs/$1.wait.log" || true
  "$BIN/flctl" job status "$2" --config "$ADMIN" --json > "$S/status/$1.json"
  echo "   seed $SEED: $1: $(tail -n 1 "$S/logs/$1.wait.log")"
  "$BIN/flctl" export "$2" --config "$ADMIN" --out "$S/models/$1" --best > /dev/null
}

run_seed() {
  SEED=$1
  S=$D/seed-$SEED
  mkdir -p "$S/logs" "$S/data" "$S/test" "$S/jobs" "$S/models" "$S/status" "$S/synthetic" \
    "$S/eval"
  local port arm priv run synth_sites=() id
  for arm in $ARMS; do
    for priv in $PRIVACY; do synth_sites+=("synth-$arm-$priv"); done
  done
  port=$(fl_free_port)
  "$BIN/flctl" provision --out "$S/pki" --coordinator-address "127.0.0.1:$port" \
    --sites "$(IFS=,; echo "${SITES[*]},$POOLED,${synth_sites[*]}")" --admins operator \
    --data-root "$S/data" --allow-non-dp --max-epsilon 1000 > "$S/logs/provision.log"
  ADMIN=$S/pki/admins/operator/admin.conf
  study_hospital_data "$BIN" "$S" "$SEED" "$SIZE" "$TEST_IMAGES" "${COUNTS[@]}"
  study_pool_data "$S/data" "$POOLED" "${SITES[@]}"
  mkdir -p "$S/test/all"  # every hospital's held-out images: the real side of FID
  for site in "${SITES[@]}"; do cp -al "$S/test/$site" "$S/test/all/$site"; done
  rm -f "$S"/test/all/*/labels.csv
  # A hospital's cap is raised: it takes part in several DP arms here, each of which reports its
  # own epsilon (a real site's ledger would stop it at its cap).
  fl_start_coordinator "$BIN" "$S"
  fl_start_clients "$BIN" "$S" "${SITES[@]}" "$POOLED"

  # Phase 1: the feature classifier and every autoencoder.
  local -A ids
  study_job_spec "$S/jobs/features.job" features "$(sites_of fedavg)" size="$SIZE" \
    rounds="$CLS_ROUNDS" steps="$STEPS" seed="$SEED" patience="$PATIENCE" min_sites=3
  ids[features]=$(submit features "$S/jobs/features.job")
  for arm in $ARMS; do
    for priv in $PRIVACY; do
      run=$arm-$priv
      spec "$S/jobs/vae-$run.job" "vae-$run" "$(sites_of "$arm")" "$priv" \
        "rounds: $VAE_ROUNDS local_optimizer { name: \"adam\" learning_rate: 0.002 }" \
        "autoencoder { variational: true widths: 32 widths: 64 widths: 64 latent_channels: 4 }"
      ids[vae-$run]=$(submit "vae-$run" "$S/jobs/vae-$run.job")
    done
  done
  finish features "${ids[features]}"
  for arm in $ARMS; do for priv in $PRIVACY; do
    finish "vae-$arm-$priv" "${ids[vae-$arm-$priv]}"
  done; done

  # Phase 2: the diffusion jobs, each on its own autoencoder.
  local label_lines
  label_lines=$(tr ',' '\n' <<< "$GEN_LABELS" | sed 's/.*/labels: "&"/' | tr '\n' ' ')
  for arm in $ARMS; do
    for priv in $PRIVACY; do
      run=$arm-$priv
      spec "$S/jobs/ldm-$run.job" "ldm-$run" "$(sites_of "$arm")" "$priv" \
        "rounds: $LDM_ROUNDS local_optimizer { name: \"adam\" learning_rate: 0.001 }" \
        "$label_lines" \
        "diffusion { autoencoder_job: \"${ids[vae-$run]}\" latent_channels: 4" \
        "            latent_size: $LATENT widths: 64 widths: 128 embedding_width: 128 }"
      ids[ldm-$run]=$(submit "ldm-$run" "$S/jobs/ldm-$run.job")
    done
  done
  for arm in $ARMS; do for priv in $PRIVACY; do
    finish "ldm-$arm-$priv" "${ids[ldm-$arm-$priv]}"
  done; done

  # Phase 3: sample, compare with the real test images, train on the synthetic images alone.
  for arm in $ARMS; do
    for priv in $PRIVACY; do
      run=$arm-$priv
      "$BIN/flctl" synth "$S/models/ldm-$run/model.safetensors" \
        --autoencoder "$S/models/vae-$run/model.safetensors" --out "$S/data/synth-$run" \
        --per-class "$PER_CLASS" --steps "$SAMPLE_STEPS" --guidance "$GUIDANCE" --seed "$SEED" \
        > "$S/logs/synth-$run.log"
      "$BIN/flctl" synth-eval --real "$S/test/all" --synthetic "$S/data/synth-$run" \
        --features "$S/models/features/model.safetensors" > "$S/eval/synth-eval-$run.txt"
      # Memorisation: against the images the arm trained on.
      local train=$POOLED
      [ "${arm#alone-}" != "$arm" ] && train=${arm#alone-}
      "$BIN/flctl" synth-eval --real "$S/data/$train" --synthetic "$S/data/synth-$run" \
        --features "$S/models/features/model.safetensors" > "$S/eval/synth-mem-$run.txt"
      fl_start_clients "$BIN" "$S" "synth-$run"
      study_job_spec "$S/jobs/tstr-$run.job" "tstr-$run" "synth-$run" size="$SIZE" \
        rounds="$CLS_ROUNDS" steps="$STEPS" seed="$SEED" patience="$PATIENCE" \
        labels="$GEN_LABELS"
      ids[tstr-$run]=$(submit "tstr-$run" "$S/jobs/tstr-$run.job")
    done
  done
  for arm in $ARMS; do for priv in $PRIVACY; do
    finish "tstr-$arm-$priv" "${ids[tstr-$arm-$priv]}"
  done; done
  for model in features $(for arm in $ARMS; do for priv in $PRIVACY; do
                            echo "tstr-$arm-$priv"; done; done); do
    mkdir -p "$S/eval/$model"
    for site in "${SITES[@]}"; do
      study_evaluate "$BIN" "$S/models/$model" "$S/test/$site" "$S/eval/$model/$site"
    done
  done
  for run in $(ls "$S/data" | grep '^synth-'); do  # a few images per class, for the grid
    mkdir -p "$S/grid/$run"
    for f in $(ls "$S/data/$run" | grep '\.dcm$'); do
      dcm2pnm --write-raw-pnm "$S/data/$run/$f" "$S/grid/$run/${f%.dcm}.pgm" 2>/dev/null || true
    done
  done
  fl_stop_daemons
  FL_PIDS=()
  echo "== seed $SEED done after $(( $(date +%s) - START )) s"
}

for seed in $SEEDS; do
  echo "== seed $seed"
  run_seed "$seed"
done
echo "== study finished in $(( $(date +%s) - START )) s"
/usr/bin/python3 scripts/gen_study.py "$D"
