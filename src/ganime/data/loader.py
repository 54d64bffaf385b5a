"""The training loader: batches from an in-memory uint8 pair array, augmented on the device.

No worker processes and no per-step image decoding: the prepared cache is loaded once (pinned host
memory, or the GPU itself when it fits), each epoch draws a fresh permutation, and each batch is
gathered, moved, converted to [-1, 1] floats and jittered on the training device. An epoch is
``n // (batch_size * world_size)`` full batches per process: the last partial batch is dropped (as
with ``drop_last``), so every process takes the same number of equal steps; the reshuffle makes it
different pairs each epoch, none seen twice within one.

Every random choice comes from generators seeded by (seed, epoch) for the order and (seed, global
step) for augmentation, so resuming at any step reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ganime.data.augment import augment_pair, zoom_out
from ganime.data.sketch import random_extract


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``seed`` and integers, stable across runs and platforms."""
    h = seed & 0xFFFFFFFFFFFF
    for p in parts:
        h = (h * 6364136223846793005 + 1442695040888963407 + p) % (1 << 63)
    return h


class PairLoader:
    """Iterate augmented training batches over ``pairs`` ((N, 2, S, S, 3) uint8).

    Args:
        batch_size: images per step (per process under DDP).
        size, load_size, flip: the paper's jitter (crop ``size`` from a ``load_size`` resize, mirror).
        sketch_augment: probability of replacing a pair's sketch by one re-extracted from its colour.
        zoom_out, zoom_min: probability of shrinking a pair (by a factor in [zoom_min, 1]) onto white paper.
        rank, world_size: this process's share of each epoch's permutation under DDP.
        hint_sampler: optional callable (color, generator) -> hint map, for hint-aware models.
    """

    def __init__(self, pairs: np.ndarray | torch.Tensor, batch_size: int, device: torch.device, seed: int = 0,
                 size: int | None = None, load_size: int | None = None, flip: bool = True,
                 sketch_augment: float = 0.0, rank: int = 0, world_size: int = 1, hint_sampler=None,
                 on_device: bool | None = None, zoom_out: float = 0.0, zoom_min: float = 0.4):
        data = torch.from_numpy(np.ascontiguousarray(pairs)) if isinstance(pairs, np.ndarray) else pairs
        self.n = data.shape[0]
        self.src_size = data.shape[2]
        self.size = size or self.src_size
        self.load_size = load_size or self.size
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.flip, self.sketch_augment = flip, sketch_augment
        self.zoom_out, self.zoom_min = zoom_out, zoom_min
        self.rank, self.world_size = rank, world_size
        self.hint_sampler = hint_sampler
        if on_device is None:
            on_device = device.type == "cuda" and data.numel() < 0.25 * _free_memory(device)
        if on_device:
            data = data.to(device)
        elif device.type == "cuda":
            data = data.pin_memory()
        self.data = data

    @classmethod
    def for_training(cls, pairs, train, device: torch.device, batch_size: int | None = None, **kw) -> "PairLoader":
        """The loader of a run's training recipe (``train``: its TrainConfig): seed, size, the paper's
        jitter and mirror, sketch re-extraction and zoom-out; ``kw`` adds rank, world_size, hint_sampler."""
        return cls(pairs, batch_size or train.batch_size, device, seed=train.seed, size=train.size,
                   load_size=int(round(train.size * train.jitter)), flip=train.flip,
                   sketch_augment=train.sketch_augment, zoom_out=train.zoom_out, zoom_min=train.zoom_min, **kw)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step_seed(self.seed, 1, epoch))
        perm = torch.randperm(self.n, generator=g)
        return perm[self.rank :: self.world_size]

    def epoch(self, epoch: int, start_step: int = 0, global_step0: int = 0):
        """Yield (step_in_epoch, batch dict) from ``start_step``; ``global_step0`` is the epoch's first step."""
        perm = self.order(epoch)
        B = self.batch_size
        for step in range(start_step, self.steps_per_epoch):
            idx = perm[step * B : (step + 1) * B]
            yield step, self.make_batch(idx, global_step0 + step)

    def make_batch(self, idx: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
        dev = self.device
        raw = self.data[idx.to(self.data.device)]
        raw = raw.to(dev, non_blocking=True)  # B x 2 x S x S x 3 uint8
        x = raw.permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)  # B x 2 x 3 x S x S
        sketch, color = x[:, 0], x[:, 1]
        g = torch.Generator().manual_seed(step_seed(self.seed, 2, self.rank, global_step))
        if self.sketch_augment > 0:
            pick = (torch.rand(sketch.shape[0], generator=g) < self.sketch_augment).nonzero().flatten()
            redo = random_extract((color[pick.to(dev)] + 1) / 2, generator=g) * 2 - 1
            if pick.numel():
                sketch = sketch.clone()
                sketch[pick.to(dev)] = redo
        sketch, color = augment_pair(sketch, color, self.size, self.load_size, self.flip, g)
        if self.zoom_out > 0:
            pick = (torch.rand(sketch.shape[0], generator=g) < self.zoom_out).nonzero().flatten()
            both = zoom_out(torch.cat([sketch, color], 1), pick, self.zoom_min, g)
            sketch, color = both[:, : sketch.shape[1]], both[:, sketch.shape[1] :]
        batch = {"sketch": sketch.contiguous(), "color": color.contiguous()}
        if self.hint_sampler is not None:
            batch["hints"] = self.hint_sampler(color, g)
        return batch


def _free_memory(device: torch.device) -> int:
    try:
        free, _ = torch.cuda.mem_get_info(device)
        return free
    except Exception:
        return 0
