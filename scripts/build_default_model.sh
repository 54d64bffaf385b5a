#!/usr/bin/env bash
# Rebuild GANime's shipped default model (the hint-aware Pix2Pix in src/ganime/weights/).
#
#   scripts/build_default_model.sh WORK [--preset small|paper] [--epochs N] [--device auto|cpu|cuda] [extra train args]
#
# Data (../shared/data, never committed): anime-busts/train sketchified with randomized extractors
# (seed 0), plus every third file of kaggle-sample in sorted order (i % 3 == 0, 11 pairs); the other
# 22 Kaggle pairs are held out for the model card. The 11 Kaggle training pairs are repeated
# KAGGLE_REPEAT times (default 30) so the model also learns their full-body, white-paper look, which
# the 3,200 busts lack. The generator paints a colour layer under the sketch's lines (--line-multiply),
# and each epoch's checkpoint gets recomputed BatchNorm statistics (the default --bn-recalibrate 50).
# Every VAL_EVERY-th sketchified bust (default 32: 100 of 3,200; 0: none) is held out as a validation
# set: each epoch is evaluated on it, and the checkpoint with the best KEEP_BEST metric (default lpips,
# which needs the LPIPS weights: without them the run is refused; set KEEP_BEST=ssim there, as
# scripts/gpu_session.sh does) is the one exported (WORK/run/best.pt, else last.pt).
# Resumable: rerunning continues the run in WORK/run; the fp16 weights land in WORK/default.safetensors.
set -euo pipefail
work=${1:?usage: build_default_model.sh WORK [train args]}; shift
data=${GANIME_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
mkdir -p "$work"
ganime data sketchify "$data/anime-busts/train" "$work/busts-train-pairs" --seed 0 --no-progress
"$(dirname "$0")/kaggle_split.sh" "$data" "$work"  # WORK/kaggle-train, WORK/kaggle-heldout
# links only: remade, so a changed VAL_EVERY (or sort order) never leaks a held-out bust
rm -rf "$work/mixed" "$work/busts-val"
mkdir -p "$work/mixed" "$work/busts-val"
val_every=${VAL_EVERY:-32}
i=0
while IFS= read -r f; do
  if (( val_every > 0 && i % val_every == val_every - 1 )); then dst="$work/busts-val"; else dst="$work/mixed"; fi
  ln -sf "$(readlink -f "$f")" "$dst/$(basename "$f")"
  i=$((i + 1))
done < <(printf '%s\n' "$work"/busts-train-pairs/*.png | LC_ALL=C sort)
for r in $(seq 1 "${KAGGLE_REPEAT:-30}"); do
  for f in "$work"/kaggle-train/*.png; do ln -sf "$(readlink -f "$f")" "$work/mixed/r$r-$(basename "$f")"; done
done
ganime data prepare "$work/mixed" "$work/cache" --no-progress
resume=(); [[ -f "$work/run/config.json" ]] && resume=(--resume)  # also a run killed before its first last.pt
val=(); (( val_every > 0 )) && val=(--val-data "$work/busts-val" --keep-best "${KEEP_BEST:-lpips}")
ganime train pix2pix --data "$work/cache" --out "$work/run" --hints --lambda-hint 20 --sketch-augment 0.5 \
  --line-multiply --save-every-steps 50 --log-every 10 "${val[@]}" "${resume[@]}" "$@"
# the shipped weights: fp16, the colour layer evened out between the lines (sigma 5 px; chosen on training pairs)
ckpt="$work/run/last.pt"; [[ -f "$work/run/best.pt" ]] && ckpt="$work/run/best.pt"
echo "build_default_model: exporting $ckpt"
ganime export safetensors --checkpoint "$ckpt" --out "$work/default.safetensors" --color-flatten 5 --overwrite
