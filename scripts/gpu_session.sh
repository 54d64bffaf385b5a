#!/usr/bin/env bash
# The one prepared run for a session lent an H100/H200 (15 minutes of device time in all, one command of
# at most 10 minutes): GPU tests, the GPU benchmarks of docs/performance.md, and a GPU retrain of the
# shipped default model (docs/model-card.md), each stage logged and skipped when its time is gone.
#
#   here:    scripts/gpu_carry.sh                      # stage the training data in .gpu/ (git-ignored)
#   device:  run(command="bash scripts/gpu_session.sh", carry=[".gpu"], timeout_s=540)
#   here:    cat <files_at>/default.safetensors.part-* > src/ganime/weights/default.safetensors
#            scripts/model_card.sh WORK                 # measure the model card's figures on the CPU
# A second, short call measures evaluation speed (the FID network cannot travel with the data):
#   here:    scripts/gpu_carry.sh eval                 # .gpu-eval/: float16 copy of the Inception network
#   device:  run(command="STAGES=eval bash scripts/gpu_session.sh", carry=[".gpu-eval"], timeout_s=300)
# Budget: call 1 about 1.5 min start + BUDGET (480 s), call 2 (on the still-warm machine if made within
# 30 s, else another start) about 4 min: inside the 15 minutes of device time.
#
# Results in $OUT (at most 8 files of 16 MiB come back): session.log, gpu-tests.txt, bench-train.json,
# bench-infer.json, train-log.jsonl, samples.png, default.safetensors.part-00, -01 (15 MB parts);
# call 2: session.log, bench-eval.json.
# Settings (environment): STAGES (tests,bench,model; or eval), BUDGET seconds for the whole script (480), DEVICE (cuda; "cpu" for a dry run
# here with TINY=1: tiny sizes, a few steps), PRESET (medium: the largest generator whose fp16 weights
# fit the package's 30 MB), EPOCHS cap (150), BATCH (32).
set -uo pipefail
OUT=${OUT:?set OUT to the folder for the results}
BUDGET=${BUDGET:-480}
STAGES=${STAGES:-tests,bench,model}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-medium}
EPOCHS=${EPOCHS:-150}
BATCH=${BATCH:-32}
TINY=${TINY:-0}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
stage() { echo; echo "=== $1 (t=$((SECONDS - start)) s, $(left) s left)"; }
export PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 GANIME_DATA=$root/.gpu/data
# the benchmarks' real illustrations: there is no ../shared/data on the device, only what .gpu carried
export GANIME_BENCH_IMAGES=${GANIME_BENCH_IMAGES:-$GANIME_DATA/anime-busts/train}
ganime() { python3 -m ganime "$@"; }  # no console script there: the package runs from src/
export -f ganime  # for build_default_model.sh (timeout and other programs need "python3 -m ganime")
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
want() { [[ ,$STAGES, == *,$1,* ]]; }
if want model && [[ ! -d $GANIME_DATA/anime-busts/train ]]; then
  echo "gpu_session: $GANIME_DATA: no data (run scripts/gpu_carry.sh and carry .gpu)"; exit 1
fi

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if (( TINY )); then
  bench_train=(--preset small --batch-size 2 --steps 1 --rounds 1 --warmup 1 --pairs 4 --png-size 128 --workers 1)
  bench_infer=(--preset small --size 256 --reps 1 --no-small --no-onnx)
else
  bench_train=(--preset paper --batch-size 32 --steps 20 --rounds 3 --warmup 3 --pairs 64 --workers 8)
  bench_infer=(--size 512 --reps 20 --no-onnx)
fi

if want tests; then
stage "1. GPU tests"
if [[ $DEVICE == cuda ]]; then
  timeout 120 python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu-tests.txt"
else
  echo "skipped (DEVICE=$DEVICE)"
fi
fi

if want bench; then
stage "2. benchmark train (paper preset, batch 32, 256 px)"
timeout 150 python3 -m ganime benchmark train --device "$DEVICE" "${bench_train[@]}" --json | tail -1 > "$OUT/bench-train.json"
cat "$OUT/bench-train.json"

stage "3. benchmark infer (one 512x512 sketch)"
timeout 60 python3 -m ganime benchmark infer --device "$DEVICE" "${bench_infer[@]}" --json | tail -1 > "$OUT/bench-infer.json"
cat "$OUT/bench-infer.json"
fi

if want eval; then
stage "eval. benchmark eval (SSIM + FID + KID over 3,545 pairs; FID network: float16 copy, timing only)"
inception=$root/.gpu-eval/inception16.pt
if [[ -f $inception ]]; then
  n=3545; (( TINY )) && n=4
  GANIME_INCEPTION_FILE=$inception timeout 270 python3 -m ganime benchmark eval --device "$DEVICE" --n "$n" --json \
    | tail -1 > "$OUT/bench-eval.json"
  cat "$OUT/bench-eval.json"
else
  echo "skipped: $inception missing (scripts/gpu_carry.sh eval, carry .gpu-eval)"
fi
fi

if want model; then
stage "4. the shipped model: data"
work=/tmp/ganime-default
rm -rf "$work"
# no mid-epoch checkpoints (build_default_model.sh's every-50-steps would cost a 200 MB write per second
# on an H200); last.pt is still written at every epoch end and at the time limit
train_args=(--preset "$PRESET" --device "$DEVICE" --batch-size "$BATCH" --epochs "$EPOCHS" --no-progress
            --save-every-steps 0 --log-every 50)
(( TINY )) && train_args=(--preset small --device "$DEVICE" --batch-size 2 --epochs 1 --no-progress --max-steps 2)
# build_default_model.sh prepares the data (16 cores) and trains; the time left minus 90 s for the export
train_min=$(awk -v s="$(left)" 'BEGIN { m = (s - 150) / 60; if (m < 0.5) m = 0.5; printf "%.2f", m }')
stage "4. the shipped model: train ${train_args[*]} --time-limit $train_min"
# the device has no LPIPS weights (they cannot travel beside the data): best.pt by validation SSIM there
KEEP_BEST=${KEEP_BEST:-ssim} bash scripts/build_default_model.sh "$work" "${train_args[@]}" --time-limit "$train_min"
echo "train exit $?"
cp "$work/run/log.jsonl" "$OUT/train-log.jsonl" 2>/dev/null
cat "$work/run/best.json" 2>/dev/null
last=$(ls "$work/run/samples/" 2>/dev/null | tail -1)
[[ -n $last ]] && cp "$work/run/samples/$last" "$OUT/samples.png"

stage "5. the fp16 weights (exported by build_default_model.sh), split for the trip back"
if [[ -s "$work/default.safetensors" ]]; then  # written by build_default_model.sh
  ls -l "$work/default.safetensors"
  sha256sum "$work/default.safetensors"
  (cd "$OUT" && split -b 15M -d -a 2 "$work/default.safetensors" default.safetensors.part-)
  ls -l "$OUT"
fi
fi
stage "done"
