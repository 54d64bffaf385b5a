#!/usr/bin/env bash
# (Re)make WORK/kaggle-train and WORK/kaggle-heldout, links to the pairs of DATA/kaggle-sample: the shipped
# model trains on every third pair of the byte-wise sorted list (i % 3 == 0) and is tested on the others.
# Used by build_default_model.sh and model_card.sh, so the two can never disagree on the held-out pairs.
#
#   scripts/kaggle_split.sh DATA WORK
set -euo pipefail
data=${1:?usage: kaggle_split.sh DATA WORK}; work=${2:?usage: kaggle_split.sh DATA WORK}
rm -rf "$work/kaggle-train" "$work/kaggle-heldout"  # links only: remade, so a changed rule never leaks a pair
mkdir -p "$work/kaggle-train" "$work/kaggle-heldout"
# sorted byte-wise (LC_ALL=C), whatever the machine's locale; absolute targets, so a relative DATA works
i=0
while IFS= read -r f; do
  if (( i % 3 == 0 )); then dst="$work/kaggle-train"; else dst="$work/kaggle-heldout"; fi
  ln -sf "$(readlink -f "$f")" "$dst/$(basename "$f")"
  i=$((i + 1))
done < <(printf '%s\n' "$data/kaggle-sample"/*.png | LC_ALL=C sort)
