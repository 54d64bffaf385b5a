#!/usr/bin/env bash
# Measure the figures of docs/model-card.md for a model (default: the shipped one).
#
#   scripts/model_card.sh WORK [--checkpoint CKPT]
#
# BACKGROUND=paper evaluates the model with `--background paper` (results in WORK/card-paper).
# Test sets (../shared/data, never committed): anime-busts/test sketchified with the random extractor
# and seed 2026 (100 pairs), and the 22 Kaggle pairs held out by scripts/build_default_model.sh
# (WORK/kaggle-heldout, remade here by scripts/kaggle_split.sh, which that script uses: the model may have been built on another
# machine, as scripts/gpu_session.sh does). Floors (sketch as output, all-white) are measured beside.
set -euo pipefail
work=${1:?usage: model_card.sh WORK [--checkpoint CKPT]}; shift
data=${GANIME_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
model=(--method default); [[ ${1:-} == --checkpoint ]] && model=(--method pix2pix --checkpoint "$2")
ganime data sketchify "$data/anime-busts/test" "$work/busts-test-pairs" --seed 2026 --no-progress
"$(dirname "$0")/kaggle_split.sh" "$data" "$work"  # the pairs build_default_model.sh held out
bg=${BACKGROUND:-model}
card="$work/card"; [[ $bg != model ]] && card="$work/card-$bg"
mkdir -p "$card"
kinds=(model identity white); [[ $bg != model ]] && kinds=(model)  # the floors do not depend on it
for set in busts-test-pairs kaggle-heldout; do
  for m in "${kinds[@]}"; do
    out="$card/$set-$m"
    args=("${model[@]}" --background "$bg"); [[ $m != model ]] && args=(--method "$m")
    ganime evaluate "${args[@]}" --data "$work/$set" --out "$out" --overwrite --no-progress > /dev/null
    python3 - "$out/metrics.json" "$set" "$m" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
f = lambda k, d=3: "n/a" if m.get(k) is None else f"{m[k]:.{d}f}"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {m['n']} | {f('ssim_mean')} ± {f('ssim_std')} | {f('psnr_mean', 2)} | "
      f"{f('lpips_mean')} | {f('fid', 1)} | {f('kid_mean', 4)} |")
PY
  done
done
