#!/usr/bin/env bash
# Issue #3's GPU runs in two prepared phases, for a lent GPU machine that has no data, no
# fluidsynth and no package index (README, "On a lent GPU"). Run from the repo root:
#
#   experiments/device/s2i_gpu.sh prep   # sound classifier + image judge on the pack, then `cmav bench s2i`
#   experiments/device/s2i_gpu.sh s2i    # S2I-C recipe, SEEDS at once on the one GPU, each stopped after
#                                        # MINUTES of training and judged every 500 iterations; then
#                                        # `cmav evaluate` on each run's last checkpoint
#
# Everything it reports lands in $OUT/results.tgz (one file: a device call returns at most 8).
# QUICK=1 runs the same steps at toy sizes on a CPU: check the script here before spending device time.
# Environment: DATA (default data/default_pack, from `cmav data pack data/default -o data/default_pack`),
# RUNS (runs/device), OUT (outputs/device), PY (python3), SEEDS ("0 1 2"), MINUTES (5).
set -euo pipefail
phase=${1:?usage: s2i_gpu.sh prep|s2i}
DATA=${DATA:-data/default_pack}
RUNS=${RUNS:-runs/device}
OUT=${OUT:-outputs/device}
PY=${PY:-python3}
SEEDS=${SEEDS:-0 1 2}
MINUTES=${MINUTES:-5}
QUICK=${QUICK:-0}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/results" "$RUNS"

if [ -d .whl ] && [ "$QUICK" = 0 ]; then
  # the device image lacks these (kornia, soundfile, jsonargparse and their needs): carried as wheels
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
cmav() { "$PY" -m cmav "$@"; }
[ -f "$DATA/cmav_pack.json" ] || [ -d "$DATA/chunk" ] || { echo "no data at $DATA: cmav data pack data/default -o $DATA" >&2; exit 2; }

if [ "$QUICK" = 1 ]; then
  clf=(--trainer.max_steps 20 --trainer.limit_val_batches 2)
  judge=(--trainer.max_steps 20 --trainer.limit_val_batches 2)
  s2i=(--trainer.max_epochs 2 --trainer.limit_train_batches 5 --trainer.limit_val_batches 2
       --model.init_args.sample_every_n_steps 0
       --model.init_args.generator.base_channels 8 --model.init_args.generator.max_channels 32
       --model.init_args.discriminator.base_channels 8 --model.init_args.discriminator.max_channels 32)
  every=1 bench=(--steps 2 --warmup 1 --channels 8) precision=32
else
  clf=() judge=() s2i=() every=10 bench=() precision=bf16-mixed   # 10 epochs of data/default = 570 iterations
fi

case "$phase" in
prep)
  cmav fit --config experiments/audio_classifier.yaml --data.root "$DATA" \
      --trainer.default_root_dir "$RUNS/audio_classifier" --trainer.enable_progress_bar false "${clf[@]}" \
      2>&1 | tee "$OUT/results/audio_classifier.log"
  cmav fit --config experiments/image_judge.yaml --data.root "$DATA" \
      --trainer.default_root_dir "$RUNS/image_judge" --trainer.enable_progress_bar false "${judge[@]}" \
      2>&1 | tee "$OUT/results/image_judge.log"
  for opts in "" "--bf16" "--bf16 --channels-last"; do
    name=bench${opts// /}
    # shellcheck disable=SC2086
    cmav bench s2i --root "$DATA" $opts "${bench[@]}" -o "$OUT/results/${name//--/_}.json" 2>&1 | tee -a "$OUT/results/bench.log"
  done
  ;;
s2i)
  for seed in $SEEDS; do
    cmav fit --config experiments/s2i_c.yaml --config experiments/s2i_stable.yaml --config experiments/s2i_recipe.yaml \
        --data.root "$DATA" --seed_everything "$seed" --model.init_args.seed "$seed" --trainer.precision "$precision" \
        --model.init_args.audio_encoder_ckpt "$RUNS/audio_classifier/checkpoints/last.ckpt" \
        --trainer.default_root_dir "$RUNS/s2i_c_s$seed" --trainer.max_time "00:00:$(printf %02d "$MINUTES"):00" \
        --trainer.max_epochs -1 --trainer.enable_progress_bar false \
        --trainer.callbacks+=cmav.evaluation.JudgedAccuracyMonitor \
        --trainer.callbacks.judge_ckpt="$RUNS/image_judge/checkpoints/last.ckpt" \
        --trainer.callbacks.every_n_epochs="$every" "${s2i[@]}" > "$OUT/results/s2i_c_s$seed.log" 2>&1 &
  done
  wait
  for seed in $SEEDS; do
    cp "$RUNS/s2i_c_s$seed/val_judged_acc.csv" "$OUT/results/val_judged_acc_s$seed.csv" || echo "seed $seed: no readings"
    cmav evaluate --ckpt "$RUNS/s2i_c_s$seed/checkpoints/last.ckpt" --root "$DATA" \
        --image-judge "$RUNS/image_judge/checkpoints/last.ckpt" -o "$OUT/results/evaluate_s$seed" \
        2>&1 | tail -30 > "$OUT/results/evaluate_s$seed.txt"
  done
  ;;
*) echo "unknown phase $phase: prep or s2i" >&2; exit 2 ;;
esac
tar czf "$OUT/results.tgz" -C "$OUT" results
echo "wrote $OUT/results.tgz"
