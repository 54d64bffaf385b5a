#!/usr/bin/env bash
# Stage what scripts/gpu_session.sh needs on a lent GPU machine in git-ignored folders, one per device
# call (each call may carry 64 MiB with the tracked tree, ~9 MB):
#
#   scripts/gpu_carry.sh        # .gpu/: anime-busts/train (46 MB) + kaggle-sample (3 MB) from ../shared/data
#                               # call 1: run(command="bash scripts/gpu_session.sh", carry=[".gpu"], timeout_s=540)
#   scripts/gpu_carry.sh eval   # .gpu-eval/: a float16 copy of the FID Inception network (44 MB; the 87 MB
#                               # original cannot travel), for call 2:
#                               # run(command="STAGES=eval bash scripts/gpu_session.sh", carry=[".gpu-eval"], timeout_s=300)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree_bytes() { git -C "$root" ls-files -z | (cd "$root" && xargs -0 du -cb 2>/dev/null) | tail -1 | cut -f1; }
if [[ ${1:-} == eval ]]; then
  rm -rf "$root/.gpu-eval"
  mkdir -p "$root/.gpu-eval"
  python3 -c 'import sys; from ganime.metrics.fid import write_fp16_copy; print("wrote", write_fp16_copy(sys.argv[1]))' \
    "$root/.gpu-eval/inception16.pt"
  carry=$(du -sb "$root/.gpu-eval" | cut -f1)
  echo "gpu_carry: .gpu-eval $((carry / 1048576)) MiB + tracked tree $(($(tree_bytes) / 1048576)) MiB (device limit 64 MiB)"
  exit 0
fi
data=${GANIME_DATA:-$root/../shared/data}
carry=$root/.gpu
for d in anime-busts/train kaggle-sample; do
  [[ -d $data/$d ]] || { echo "gpu_carry: $data/$d: missing (set GANIME_DATA)" >&2; exit 1; }
done
rm -rf "$carry"
mkdir -p "$carry/data/anime-busts"
cp -r "$data/anime-busts/train" "$carry/data/anime-busts/train"
cp -r "$data/kaggle-sample" "$carry/data/kaggle-sample"
tree_mb=$(tree_bytes)
carry_mb=$(du -sb "$carry" | cut -f1)
echo "gpu_carry: .gpu $((carry_mb / 1048576)) MiB + tracked tree $((tree_mb / 1048576)) MiB (device limit 64 MiB)"
(( carry_mb + tree_mb < 64 * 1048576 )) || { echo "gpu_carry: over the device's 64 MiB limit" >&2; exit 1; }
