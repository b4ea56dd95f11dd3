#!/usr/bin/env bash
# Issue #3's GPU figures in ONE device call, for a lent GPU machine that has no data, no fluidsynth
# and no package index (docs/s2i.md, "On a lent GPU"). A machine goes back 30 s after a call, so nothing
# may rely on files an earlier call left there: this script trains everything it needs itself.
# Run from the repo root, carrying data/default_pack and .whl, with timeout_s 600:
#
#   experiments/device/s2i_gpu.sh [all]   # bench, then judges, then S2I-C seeds + evaluate, in BUDGET s
#   experiments/device/s2i_gpu.sh bench   # only `cmav bench s2i` (fp32, bf16, bf16 + channels-last)
#   experiments/device/s2i_gpu.sh judges  # only the sound classifier and the image judge
#   experiments/device/s2i_gpu.sh s2i     # only S2I-C seeds + evaluate: needs the judges in $RUNS
#
# Working files go to $WORK (outside $OUT: a device call returns at most 8 files); $OUT gets
# results.tgz (logs, status.tsv, bench JSON, judged-accuracy CSVs, evaluate folders, TensorBoard
# events; no checkpoints) and a copy of status.tsv. Each step runs under `timeout` and its exit code
# goes to status.tsv (124: stopped at its limit) whatever it is; the tarball is packed after each
# stage and on exit (also after SIGTERM/INT/HUP), so a failed or cut-short run returns what it has.
# The tool's own kill at timeout_s may be a SIGKILL, which no trap sees: BUDGET keeps the script
# well inside it, and the packing after each stage leaves the last stage's tarball in $OUT.
#
# QUICK=1 runs the same steps at toy sizes on a CPU: check the script here before spending device time.
# Environment: DATA (default data/default_pack, from `cmav data pack data/default -o data/default_pack`),
# WORK (/tmp/s2i_gpu), RUNS ($WORK/runs), OUT (outputs/device), PY (python3), SEEDS ("0 1 2"),
# BUDGET (seconds for the whole script: 540, QUICK 2160), JUDGE_S (training seconds of each judge: 100).
set -euo pipefail
phase=${1:-all}
case "$phase" in all | bench | judges | s2i) ;; *) echo "unknown phase $phase: all, bench, judges or s2i" >&2; exit 2 ;; esac
DATA=${DATA:-data/default_pack}
WORK=${WORK:-/tmp/s2i_gpu}
RUNS=${RUNS:-$WORK/runs}
OUT=${OUT:-outputs/device}
PY=${PY:-python3}
SEEDS=${SEEDS:-0 1 2}
QUICK=${QUICK:-0}
JUDGE_S=${JUDGE_S:-100}
# QUICK: a CPU is far slower at the fixed costs (imports, the judges' passes over the validation split):
# every step's limit below is taken SCALE times, and so is the budget
if [ "$QUICK" = 1 ]; then SCALE=4; else SCALE=1; fi
BUDGET=${BUDGET:-$((540 * SCALE))}
export PYTHONUNBUFFERED=1
RES=$WORK/results
rm -rf "$RES"
mkdir -p "$RES" "$RUNS" "$OUT"
: > "$WORK/pids"
touch "$WORK/started"
printf 'step\texit\tseconds\tlimit_s\tnote\n' > "$RES/status.tsv"

# results.tgz, written beside and then moved, so that a kill while packing leaves the previous one
pack() {
  local parent base
  parent=$(dirname "$RUNS") base=$(basename "$RUNS")
  cp "$RES/status.tsv" "$OUT/status.tsv" 2>/dev/null || true
  tar czf "$OUT/results.tgz.part" --exclude='*.ckpt' -C "$WORK" results -C "$parent" "$base" 2>/dev/null || true
  if [ "$(stat -c %s "$OUT/results.tgz.part" 2>/dev/null || echo 0)" -gt 15000000 ]; then
    # over a returned file's 16 MiB: the TensorBoard events (sample sheets) stay behind
    tar czf "$OUT/results.tgz.part" --exclude='*.ckpt' --exclude='events.out.tfevents*' \
        -C "$WORK" results -C "$parent" "$base" 2>/dev/null || true
  fi
  mv -f "$OUT/results.tgz.part" "$OUT/results.tgz" 2>/dev/null || true
}
on_exit() {
  local rc=$?
  # a step that failed or ran out of time fails the script too, after the others had their turn
  if [ "$rc" = 0 ] && awk -F'\t' 'NR > 1 && $2 != "0" { bad = 1 } END { exit !bad }' "$RES/status.tsv"; then
    rc=1
  fi
  pack
  echo "--- status.tsv (exit $rc after ${SECONDS} s)"
  cat "$RES/status.tsv"
  echo "wrote $OUT/results.tgz"
  exit "$rc"
}
on_signal() {
  trap - TERM INT HUP
  printf 'signal %s\t-\t%s\t-\n' "$1" "$SECONDS" >> "$RES/status.tsv"
  echo "$1 after ${SECONDS} s: stopping the steps, packing what there is" >&2
  # each step's `timeout` passes the signal on to its command's process group
  # shellcheck disable=SC2046
  kill -TERM $(cat "$WORK/pids") 2>/dev/null || true
  exit 143
}
trap on_exit EXIT
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal HUP' HUP

# step NAME LIMIT_S CMD...: CMD under `timeout` (SIGTERM at LIMIT_S, SIGKILL 10 s later), its output in
# results/NAME.log, its exit code and seconds in status.tsv; never stops the script. Started in the
# background and waited for, so that a signal reaches the trap at once. `step ... &` runs steps side by side.
step() {
  local name=$1 limit=$(($2 * SCALE)) t0=$SECONDS rc=0
  shift 2
  timeout -k 10 "$limit" "$@" > "$RES/$name.log" 2>&1 &
  echo $! >> "$WORK/pids"
  wait $! || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$RES/status.tsv"
  echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)"
}
skip() {
  printf '%s\tskipped\t0\t-\t%s\n' "$1" "$2" >> "$RES/status.tsv"
  echo "$1 skipped: $2" >&2
}
left() { echo $((BUDGET - SECONDS)); }
# a checkpoint written by this run, not one an earlier run left in $RUNS (on this CPU, say)
fresh() { [ -f "$1" ] && [ "$1" -nt "$WORK/started" ]; }
hms() { printf '00:%02d:%02d:%02d' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }

[ -f "$DATA/cmav_pack.json" ] || [ -d "$DATA/chunk" ] || { skip data "no data at $DATA: cmav data pack data/default -o $DATA"; exit 2; }
if [ -d .whl ] && [ "$QUICK" = 0 ]; then
  # the device image lacks these (experiments/device/wheels.txt): carried as wheels. ~10 s
  step wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
cmav=("$PY" -m cmav)
clf_ckpt=$RUNS/audio_classifier/checkpoints/last.ckpt
judge_ckpt=$RUNS/image_judge/checkpoints/last.ckpt

if [ "$QUICK" = 1 ]; then
  judges=(--trainer.max_steps 20 --trainer.limit_val_batches 2)
  s2i=(--trainer.max_epochs 2 --trainer.limit_train_batches 5 --trainer.limit_val_batches 2
       --model.init_args.sample_every_n_steps 0
       --model.init_args.generator.base_channels 8 --model.init_args.generator.max_channels 32
       --model.init_args.discriminator.base_channels 8 --model.init_args.discriminator.max_channels 32)
  every=1 bench=(--steps 2 --warmup 1 --channels 8 --batch-size 16 --threads 1) precision=32
else
  # judged every 5 epochs of data/default (285 iterations): about ten readings in the time S2I gets
  judges=() s2i=() every=5 bench=() precision=bf16-mixed
fi

# Each bench: ~15-25 s expected on an H100 (imports, unpacking the pack, 23 Lightning + 23 bare steps),
# 60 s at most.
run_bench() {
  local opts name
  for opts in "" "--bf16" "--bf16 --channels-last"; do
    name=bench${opts// /}
    name=${name//--/_}
    # shellcheck disable=SC2086
    step "$name" 60 "${cmav[@]}" bench s2i --root "$DATA" $opts "${bench[@]}" -o "$RES/$name.json"
  done
}

# The sound classifier and the image judge side by side, each stopped after JUDGE_S s of training
# (--trainer.max_time; their configs' 30 and 40 epochs may not all fit), 40 s more for start-up,
# the last validation and the checkpoint.
run_judges() {
  local max_time
  max_time=$(hms "$JUDGE_S")
  step audio_classifier $((JUDGE_S + 40)) "${cmav[@]}" fit --config experiments/audio_classifier.yaml --data.root "$DATA" \
      --trainer.default_root_dir "$RUNS/audio_classifier" --trainer.enable_progress_bar false \
      --trainer.max_time "$max_time" "${judges[@]}" &
  step image_judge $((JUDGE_S + 40)) "${cmav[@]}" fit --config experiments/image_judge.yaml --data.root "$DATA" \
      --trainer.default_root_dir "$RUNS/image_judge" --trainer.enable_progress_bar false \
      --trainer.max_time "$max_time" "${judges[@]}" &
  wait
}

# The S2I-C recipe, SEEDS side by side on the one GPU, trained for what BUDGET leaves after 75 s for
# `cmav evaluate` and 45 s for each fit's start-up, last judging and checkpoint; then evaluate
# (side by side, 75 s at most) on each seed's last checkpoint.
run_s2i() {
  local missing=() seed train_s ckpt
  for ckpt in "$clf_ckpt" "$judge_ckpt"; do
    # phase s2i alone takes the judges an earlier run left; phase all only the ones it just trained
    if [ "$phase" = all ] && ! fresh "$ckpt" || [ ! -f "$ckpt" ]; then missing+=("$ckpt"); fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    skip s2i "no (new) ${missing[*]}: the judges did not finish (results/audio_classifier.log, image_judge.log), or run the 'all' or 'judges' phase first"
    exit 3
  fi
  train_s=$(($(left) - (75 + 45) * SCALE))
  if [ "$train_s" -lt 30 ]; then
    skip s2i "$(left) s left of BUDGET=$BUDGET, too little to train"
    exit 3
  fi
  echo "S2I-C: $train_s s of training for seeds $SEEDS"
  for seed in $SEEDS; do
    step "s2i_c_s$seed" $((train_s / SCALE + 45)) "${cmav[@]}" fit --config experiments/s2i_c.yaml \
        --config experiments/s2i_stable.yaml --config experiments/s2i_recipe.yaml \
        --data.root "$DATA" --seed_everything "$seed" --model.init_args.seed "$seed" --trainer.precision "$precision" \
        --model.init_args.audio_encoder_ckpt "$clf_ckpt" \
        --trainer.default_root_dir "$RUNS/s2i_c_s$seed" --trainer.max_time "$(hms "$train_s")" \
        --trainer.max_epochs -1 --trainer.enable_progress_bar false \
        --trainer.callbacks+=cmav.evaluation.JudgedAccuracyMonitor \
        --trainer.callbacks.judge_ckpt="$judge_ckpt" \
        --trainer.callbacks.every_n_epochs="$every" "${s2i[@]}" &
  done
  wait
  pack
  for seed in $SEEDS; do
    if fresh "$RUNS/s2i_c_s$seed/checkpoints/last.ckpt"; then
      step "evaluate_s$seed" 75 "${cmav[@]}" evaluate --ckpt "$RUNS/s2i_c_s$seed/checkpoints/last.ckpt" --root "$DATA" \
          --image-judge "$judge_ckpt" -o "$RES/evaluate_s$seed" &
    else
      skip "evaluate_s$seed" "no $RUNS/s2i_c_s$seed/checkpoints/last.ckpt (results/s2i_c_s$seed.log)"
    fi
  done
  wait
  for seed in $SEEDS; do
    echo "--- seed $seed: $RUNS/s2i_c_s$seed/val_judged_acc.csv"
    cat "$RUNS/s2i_c_s$seed/val_judged_acc.csv" 2>/dev/null || echo "(none)"
  done
}

case "$phase" in
all)
  run_bench; pack
  run_judges; pack
  run_s2i
  ;;
bench) run_bench ;;
judges) run_judges ;;
s2i) run_s2i ;;
esac
grep -h "ratio" "$RES"/bench*.log 2>/dev/null || true
