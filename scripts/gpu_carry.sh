#!/usr/bin/env bash
# Stage the data that scripts/gpu_session.sh needs on a lent GPU machine into .gpu/ (git-ignored), so
# that one device call carries it: anime-busts/train (46 MB) and kaggle-sample (3 MB) from ../shared/data.
# With the tracked tree (~9 MB) that stays under the device's 64 MiB working-tree limit.
#
#   scripts/gpu_carry.sh        # then: run(command="bash scripts/gpu_session.sh", carry=[".gpu"], timeout_s=570)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${GANIME_DATA:-$root/../shared/data}
carry=$root/.gpu
for d in anime-busts/train kaggle-sample; do
  [[ -d $data/$d ]] || { echo "gpu_carry: $data/$d: missing (set GANIME_DATA)" >&2; exit 1; }
done
rm -rf "$carry"
mkdir -p "$carry/data/anime-busts"
cp -r "$data/anime-busts/train" "$carry/data/anime-busts/train"
cp -r "$data/kaggle-sample" "$carry/data/kaggle-sample"
tree_mb=$(git -C "$root" ls-files -z | (cd "$root" && xargs -0 du -cb 2>/dev/null) | tail -1 | cut -f1)
carry_mb=$(du -sb "$carry" | cut -f1)
echo "gpu_carry: .gpu $((carry_mb / 1048576)) MiB + tracked tree $((tree_mb / 1048576)) MiB (device limit 64 MiB)"
(( carry_mb + tree_mb < 64 * 1048576 )) || { echo "gpu_carry: over the device's 64 MiB limit" >&2; exit 1; }
