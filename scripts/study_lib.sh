# Shared by scripts/learning_curve.sh, scripts/fed_study.sh and scripts/demo.sh (sourced after
# scripts/lib.sh): the study phantom, job specs, export and evaluation with per-image scores.
#
# The study phantom is the regime where federation matters: findings subtle enough
# (FL_PHANTOM_STRENGTH, default 0.35 of the demo's) that tens of images cannot learn them,
# patients and acquisitions that vary (FL_PHANTOM_VARIATION, 1.5), and training labels read with
# errors (FL_PHANTOM_LABEL_NOISE, 0.05 of labels flipped). Test sets are labelled without noise
# (a reference standard read by a panel). docs/STUDY.md has the learning curve.
FL_PHANTOM_STRENGTH=${FL_PHANTOM_STRENGTH:-0.35}
FL_PHANTOM_VARIATION=${FL_PHANTOM_VARIATION:-1.5}
FL_PHANTOM_LABEL_NOISE=${FL_PHANTOM_LABEL_NOISE:-0.05}
FL_ALL_LABELS=cardiomegaly,congestion,effusion_right,effusion_left,infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left

# study_phantom BIN OUT COUNT SIZE SEED SITE TRAIN|TEST ARGS...: a phantom dataset of the study's
# regime; TEST data gets no label noise.
study_phantom() {
  local bin=$1 out=$2 count=$3 size=$4 seed=$5 site=$6 kind=$7 noise=$FL_PHANTOM_LABEL_NOISE
  shift 7
  [ "$kind" = TEST ] && noise=0
  "$bin/flctl" phantom --out "$out" --count "$count" --size "$size" --seed "$seed" --site "$site" \
    --finding-strength "$FL_PHANTOM_STRENGTH" --variation "$FL_PHANTOM_VARIATION" \
    --label-noise "$noise" "$@"
}

# study_job_spec FILE NAME SITES(comma) KEY=VALUE...: writes a job spec. Keys: model size rounds
# steps batch lr opt (adam|sgd) momentum (sgd) seed min_sites server (fedavg|fedadam|fedyogi)
# server_lr server_momentum (fedavg) heads (label|site) patience (early stopping, rounds; 0: off)
# initial labels (comma list; default all eight) weighting (train_size|equal) dp_epsilon (> 0: DP-SGD
# at each site, its noise calibrated to this epsilon over all the job's rounds) dp_delta dp_clip.
study_job_spec() {
  local file=$1 name=$2 sites=$3
  shift 3
  local -A k=([model]=smallcnn [size]=32 [rounds]=20 [steps]=20 [batch]=32 [lr]=0.002 [seed]=1
              [min_sites]=1 [opt]=adam [momentum]=0 [server]=fedavg [server_lr]=0 [heads]=label
              [server_momentum]=0 [patience]=0 [initial]="" [weighting]=train_size
              [dp_epsilon]=0 [dp_delta]=1e-5 [dp_clip]=1.0
              [labels]=$FL_ALL_LABELS)
  local kv
  for kv in "$@"; do k[${kv%%=*}]=${kv#*=}; done
  {
    echo "name: \"$name\" model: \"${k[model]}\" image_size: ${k[size]} rounds: ${k[rounds]}"
    echo "local_steps: ${k[steps]} batch_size: ${k[batch]} min_sites: ${k[min_sites]}"
    echo "round_deadline_seconds: 3600 start_timeout_seconds: 900 seed: ${k[seed]}"
    echo "local_optimizer { name: \"${k[opt]}\" learning_rate: ${k[lr]} momentum: ${k[momentum]} }"
    echo "server_optimizer { kind: ${k[server]^^} learning_rate: ${k[server_lr]}"
    echo "                   momentum: ${k[server_momentum]} }"
    echo "early_stopping { patience_rounds: ${k[patience]} }"
    echo "head_mode: HEAD_MODE_${k[heads]^^} weighting: WEIGHTING_${k[weighting]^^}"
    local l s label_list site_list
    IFS=, read -ra label_list <<< "${k[labels]}"
    for l in "${label_list[@]}"; do echo "labels: \"$l\""; done
    IFS=, read -ra site_list <<< "$sites"
    for s in "${site_list[@]}"; do echo "sites: \"$s\""; done
    if [ "${k[dp_epsilon]}" != 0 ]; then
      echo "dp { enabled: true target_epsilon: ${k[dp_epsilon]} delta: ${k[dp_delta]}"
      echo "     clip_norm: ${k[dp_clip]} }"
    fi
    [ -n "${k[initial]}" ] && echo "initial_model: \"${k[initial]}\""
    true
  } > "$file"
}

# study_evaluate BIN MODEL_DIR TEST_DIR OUT_PREFIX: the exported model on a held-out test set;
# writes OUT_PREFIX.json (the report) and OUT_PREFIX.scores.csv (per-image scores, for the
# bootstrap; in a real consortium the bootstrap runs at the site, where the scores stay).
study_evaluate() {
  "$1/flctl" evaluate "$2/model.safetensors" --data "$3" --threshold prevalence --json \
    --scores "$4.scores.csv" > "$4.json"
}

# study_pool_data DATA_ROOT POOLED SITE...: a site that holds every SITE's images (hard links)
# under DATA_ROOT/POOLED/SITE/, and one labels.csv over the union of their columns (a finding
# a site does not label is unknown for its images).
study_pool_data() {
  local root=$1 pooled=$2
  shift 2
  rm -rf "${root:?}/$pooled"
  mkdir -p "$root/$pooled"
  local site
  for site in "$@"; do cp -al "$root/$site" "$root/$pooled/$site"; done
  /usr/bin/python3 "$(dirname "${BASH_SOURCE[0]}")/fed_study.py" merge-labels \
    "$root/$pooled/labels.csv" "${@/#/$root/}"
}

# The study's three hospitals: the findings each labels, and how their scanners and populations
# differ (contrast, noise, MONOCHROME1, prevalence).
STUDY_SITES=(hospital-a hospital-b hospital-c)
declare -A STUDY_LABELS=([hospital-a]=$FL_ALL_LABELS
                         [hospital-b]=cardiomegaly,effusion_right,effusion_left
                         [hospital-c]=infiltrate_right,infiltrate_left,atelectasis_right,atelectasis_left)
declare -A STUDY_SCANNER=([hospital-a]="--prevalence 0.3"
                          [hospital-b]="--contrast 0.8 --noise 0.07 --prevalence 0.4"
                          [hospital-c]="--contrast 1.2 --noise 0.1 --photometric MONOCHROME1 --prevalence 0.25")

# study_hospital_data BIN DIR SEED SIZE TEST_IMAGES COUNT_A COUNT_B COUNT_C: each hospital's
# training data in DIR/data/SITE and its held-out test set (clean labels) in DIR/test/SITE;
# logs in DIR/logs/.
study_hospital_data() {
  local bin=$1 dir=$2 seed=$3 size=$4 test_images=$5 k=0 site
  shift 5
  local counts=("$@")
  for site in "${STUDY_SITES[@]}"; do
    # shellcheck disable=SC2086  # STUDY_SCANNER holds several words on purpose
    study_phantom "$bin" "$dir/data/$site" "${counts[$k]}" "$size" $((seed * 1000 + k + 1)) \
      "$site" TRAIN --labels "${STUDY_LABELS[$site]}" ${STUDY_SCANNER[$site]} \
      > "$dir/logs/data-$site.log"
    # shellcheck disable=SC2086
    study_phantom "$bin" "$dir/test/$site" "$test_images" "$size" $((seed * 1000 + 500 + k + 1)) \
      "$site-test" TEST --labels "${STUDY_LABELS[$site]}" ${STUDY_SCANNER[$site]} \
      > "$dir/logs/test-$site.log"
    k=$((k + 1))
  done
}
