"""Unpaired data for CycleGAN: two independent image domains, sketches X and colour images Y.

Sources:

- two folders (``ganime train cyclegan --sketches DIR --colors DIR``) of any sizes, with unrelated
  file names and counts: every image is decoded once, centre-cropped to a square and resized to the
  training size into one uint8 array per domain (unreadable files are skipped with a warning);
- a prepared paired cache (``--data CACHE``): its sketches and colour images are used as two
  domains and their pairing is ignored, because each domain is shuffled on its own.

:class:`UnpairedLoader` mirrors :class:`~ganime.data.loader.PairLoader` (in-memory uint8, batches
gathered and jittered on the training device, every random choice derived from ``step_seed``) with
two differences:

- each domain gets its own permutation per epoch, and its own crop/mirror per image;
- an epoch is ``max(n_sketches, n_colors)`` images long, as in the CycleGAN reference's unaligned
  dataset: the smaller domain wraps around, drawing a fresh permutation each time it runs out, so
  every image of the larger domain is seen once per epoch (but for the last partial batch, dropped as
  by :class:`~ganime.data.loader.PairLoader`) and no image of the smaller one is seen twice before
  all the others were seen once.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ganime.data.augment import crop_params, resize_crop_flip
from ganime.data.loader import _free_memory, step_seed
from ganime.errors import InputError
from ganime.imageio import list_images, open_image

#: step_seed stream tags (PairLoader uses 1 for order and 2 for augmentation).
_ORDER_X, _ORDER_Y = 11, 12
_AUGMENT = 13


def square_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 uint8 -> size x size x 3: centre crop to a square (no distortion), then bicubic resize."""
    from PIL import Image

    h, w = arr.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    arr = arr[y0 : y0 + s, x0 : x0 + s]
    if s == size:
        return np.ascontiguousarray(arr)
    im = Image.fromarray(np.ascontiguousarray(arr))
    return np.asarray(im.resize((size, size), Image.BICUBIC, reducing_gap=None))


def load_folder(folder: str | os.PathLike, size: int, what: str = "images", progress: bool = True) -> np.ndarray:
    """Every image in ``folder`` (not recursive) as an (N, size, size, 3) uint8 array.

    Unreadable files are skipped with a warning on stderr (printed after decoding); a missing folder, or one without a single
    usable image, is an :class:`InputError` naming the folder and ``what`` it should hold.
    """
    from ganime.progress import progress_bar

    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder (expected a folder of {what})")
    if not folder.is_dir():
        raise InputError(f"{folder}: is a file, expected a folder of {what}")
    files = list_images(folder)
    if not files:
        raise InputError(f"{folder}: no image files found (expected a folder of {what})")
    out = np.empty((len(files), size, size, 3), np.uint8)
    n, skipped = 0, []
    for f in progress_bar(files, desc=f"load {what}", unit="img", disable=not progress or len(files) < 2):
        try:
            out[n] = square_resize(np.asarray(open_image(f)), size)
        except InputError as e:
            skipped.append(str(e))
            continue
        n += 1
    if n == 0:
        raise InputError(f"{folder}: none of the {len(files)} image files could be read ({skipped[0]})")
    for e in skipped:  # after the bar, and only when training goes ahead (an error stays one line)
        print(f"ganime: warning: skipped {e}", file=sys.stderr)
    return out[:n]


def folders_fingerprint(sketches: str | os.PathLike, colors: str | os.PathLike) -> str:
    """What the two domains' folders hold, cheaply: the number of image files in each and a hash of their names
    (not their pixels), as :meth:`ganime.data.pairs.PairCache.fingerprint` for a cache; a folder moved or copied
    keeps it. A missing folder counts as empty (loading it then says what is wrong)."""
    import hashlib

    names = [[f.name for f in list_images(d)] if Path(d).is_dir() else [] for d in (sketches, colors)]
    digest = hashlib.sha1("\n".join(names[0] + ["|"] + names[1]).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{len(names[0])} sketches and {len(names[1])} colour images, names sha1 {digest}"


def load_unpaired(sketches: str | os.PathLike, colors: str | os.PathLike, size: int,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sketch domain X and colour domain Y from two folders, each (N_i, size, size, 3) uint8."""
    x = load_folder(sketches, size, "sketches", progress)
    y = load_folder(colors, size, "colour images", progress)
    return x, y


def split_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A paired (N, 2, S, S, 3) array -> (sketches, colours); the loader shuffles them independently."""
    return np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])


class UnpairedLoader:
    """Iterate batches ``{"sketch": x, "color": y}`` where x and y are drawn independently.

    Args:
        sketches, colors: (N_x, S, S, 3) and (N_y, S, S, 3) uint8 arrays (or tensors); counts may differ.
        batch_size: images per domain per step (per process under DDP).
        size, load_size, flip: the paper's jitter (crop ``size`` from a ``load_size`` resize, mirror),
            drawn independently for every image of both domains.
        rank, world_size: this process's share of each epoch's order under DDP.
        on_device: keep the arrays on the GPU (default: when they fit in a quarter of its free memory).

    The interface is what :class:`~ganime.train.Trainer` needs: ``n``, ``steps_per_epoch`` and
    ``epoch(epoch, start_step, global_step0)``.
    """

    def __init__(self, sketches, colors, batch_size: int, device: torch.device, seed: int = 0,
                 size: int | None = None, load_size: int | None = None, flip: bool = True,
                 rank: int = 0, world_size: int = 1, on_device: bool | None = None):
        xs = [torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in (sketches, colors)]
        for a, what in zip(xs, ("sketches", "colour images")):
            if a.dim() != 4 or a.shape[-1] != 3 or a.shape[1] != a.shape[2] or a.dtype != torch.uint8:
                raise ValueError(f"{what}: expected (N, S, S, 3) uint8, got {tuple(a.shape)} {a.dtype}")
            if a.shape[0] == 0:
                raise InputError(f"no {what} to train on")
        if xs[0].shape[1] != xs[1].shape[1]:
            raise ValueError(f"sketches are {xs[0].shape[1]}px but colour images {xs[1].shape[1]}px")
        self.n_sketches, self.n_colors = xs[0].shape[0], xs[1].shape[0]
        #: Images per domain in one epoch: the larger domain's count (the smaller one wraps around).
        self.n = max(self.n_sketches, self.n_colors)
        self.src_size = xs[0].shape[1]
        self.size = size or self.src_size
        self.load_size = load_size or self.size
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.flip = flip
        self.rank, self.world_size = rank, world_size
        if on_device is None:
            total = xs[0].numel() + xs[1].numel()
            on_device = device.type == "cuda" and total < 0.25 * _free_memory(device)
        if on_device:
            xs = [a.to(device) for a in xs]
        elif device.type == "cuda":
            xs = [a.pin_memory() for a in xs]
        self.sketches, self.colors = xs

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def _sequence(self, tag: int, count: int, epoch: int) -> torch.Tensor:
        """``self.n`` indices into a domain of ``count`` images: fresh permutations, concatenated."""
        parts = []
        for k in range(math.ceil(self.n / count)):
            g = torch.Generator().manual_seed(step_seed(self.seed, tag, epoch, k))
            parts.append(torch.randperm(count, generator=g))
        return torch.cat(parts)[: self.n]

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's (sketch indices, colour indices) for ``epoch``, independent of each other."""
        ox = self._sequence(_ORDER_X, self.n_sketches, epoch)
        oy = self._sequence(_ORDER_Y, self.n_colors, epoch)
        return ox[self.rank :: self.world_size], oy[self.rank :: self.world_size]

    def epoch(self, epoch: int, start_step: int = 0, global_step0: int = 0):
        """Yield (step_in_epoch, batch dict) from ``start_step``; ``global_step0`` is the epoch's first step."""
        ox, oy = self.order(epoch)
        B = self.batch_size
        for step in range(start_step, self.steps_per_epoch):
            sl = slice(step * B, (step + 1) * B)
            yield step, self.make_batch(ox[sl], oy[sl], global_step0 + step)

    def _take(self, data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        raw = data[idx.to(data.device)].to(self.device, non_blocking=True)  # B x S x S x 3 uint8
        return raw.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)

    def make_batch(self, ix: torch.Tensor, iy: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
        x, y = self._take(self.sketches, ix), self._take(self.colors, iy)
        g = torch.Generator().manual_seed(step_seed(self.seed, _AUGMENT, self.rank, global_step))
        x, y = augment_one(x, self.size, self.load_size, self.flip, g), augment_one(y, self.size, self.load_size, self.flip, g)
        return {"sketch": x.contiguous(), "color": y.contiguous()}

    def sample_pairs(self, k: int = 8) -> np.ndarray:
        """The first ``k`` sketches and colour images, side by side as (k, 2, S, S, 3) uint8, for sample grids."""
        k = min(k, self.n_sketches, self.n_colors)
        return torch.stack([self.sketches[:k].cpu(), self.colors[:k].cpu()], 1).numpy()


def augment_one(images: torch.Tensor, size: int, load_size: int, flip: bool,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's jitter (resize, random crop, mirror) with its own draw for every image."""
    if load_size == size and not flip:
        return images
    ox, oy, fl = crop_params(images.shape[0], size, load_size, flip, generator)
    return resize_crop_flip(images, size, load_size, ox, oy, fl)
