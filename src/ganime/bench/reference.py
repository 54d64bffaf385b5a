"""The reference recipe's data path: pix2pix's AlignedDataset in torch DataLoader worker processes.

Per sample, in a worker: open the side-by-side PNG with PIL, split it, resize both halves to
``load_size`` (bicubic), take the same random ``size`` crop, mirror at random, convert to a float
tensor in [-1, 1]. Batches are collated in the worker and moved to the device by the main process.

The workers decode ahead of the main process (``prefetch_factor`` batches each). Left alone while
another recipe is timed, they would decode on the same cores during its round and hand the
reference's next round batches made in that time; a benchmark therefore passes a ``gate``
(:func:`reference_gate`), opens it only for the reference's own rounds, and the workers wait at the
next sample while it is closed.
"""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class ReferencePairs(Dataset):
    def __init__(self, files: list[Path], size: int, load_size: int, flip: bool = True, gate=None):
        self.files, self.size, self.load_size, self.flip = [str(f) for f in files], size, load_size, flip
        self.gate = gate

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.gate is not None:
            self.gate.wait()  # closed while the other recipe is timed
        ab = Image.open(self.files[i]).convert("RGB")
        w, h = ab.size
        half = w // 2
        color, sketch = ab.crop((0, 0, half, h)), ab.crop((half, 0, w, h))  # Kaggle: colour LEFT, sketch RIGHT
        x = random.randint(0, self.load_size - self.size)
        y = random.randint(0, self.load_size - self.size)
        flip = self.flip and random.random() < 0.5
        return {"sketch": self._transform(sketch, x, y, flip), "color": self._transform(color, x, y, flip)}

    def _transform(self, im: Image.Image, x: int, y: int, flip: bool) -> torch.Tensor:
        im = im.resize((self.load_size, self.load_size), Image.BICUBIC)
        im = im.crop((x, y, x + self.size, y + self.size))
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        return t.float().div_(127.5).sub_(1.0)


def reference_gate():
    """An open gate for :func:`reference_loader`: ``clear()`` before timing another recipe, ``set()`` before
    the reference's own round."""
    gate = multiprocessing.get_context().Event()
    gate.set()
    return gate


def reference_loader(files, batch_size: int, size: int, load_size: int, workers: int, device,
                     gate=None) -> DataLoader:
    ds = ReferencePairs(files, size, load_size, gate=gate)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def forever(loader: DataLoader, device):
    """Endless batches on ``device`` (epoch after epoch)."""
    while True:
        for batch in loader:
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}
