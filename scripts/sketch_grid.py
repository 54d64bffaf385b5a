"""Colour every sketch of a folder with a model and write one grid image: sketch | result per row.

    python scripts/sketch_grid.py SKETCHES OUT.png [--checkpoint CKPT] [--side 192] [--background model|paper]

Used for the model card's grid on ../shared/data/sketches.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ganime.colorize import Colorizer, default_checkpoint
from ganime.config import DEFAULT_MAX_SIZE
from ganime.imageio import list_images, open_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sketches")
    ap.add_argument("out")
    ap.add_argument("--checkpoint")
    ap.add_argument("--side", type=int, default=192)
    ap.add_argument("--background", default="model")
    ap.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="as ganime colorize --max-size")
    args = ap.parse_args()
    files = list_images(args.sketches) if Path(args.sketches).is_dir() else []
    if not files:
        sys.exit(f"sketch_grid.py: {args.sketches}: not a folder with sketch images")
    col = Colorizer.from_checkpoint(args.checkpoint or default_checkpoint(), "cpu", fast="auto",
                                    background=args.background, max_size=args.max_size)
    rows = []
    for f in files:
        sk = open_image(f)
        pair = [np.asarray(im.resize((args.side, args.side), Image.BICUBIC)) for im in (sk, col(sk))]
        rows.append(np.concatenate(pair, axis=1))
    cols = 2
    while len(rows) % cols:
        rows.append(np.full_like(rows[0], 255))
    grid = np.concatenate([np.concatenate(rows[i : i + cols], axis=1) for i in range(0, len(rows), cols)], axis=0)
    Image.fromarray(grid).save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(files)} sketches)")


if __name__ == "__main__":
    main()
