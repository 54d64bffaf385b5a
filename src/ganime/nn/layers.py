"""Small shared layers and initialisation."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: choose batch, instance or none")


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Pix2Pix initialisation: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every BatchNorm in ``model`` by their plain average over
    ``inputs`` (batches run in training mode), then restore the model's mode; returns the batch count.

    Why ("precise BN", Wu & Johnson 2021): inference uses the running statistics, an exponential
    average (momentum 0.1) over the last few dozen training batches of a network that keeps changing.
    In a U-Net with batch 8 the innermost layers normalise over 8 values per channel, so that average
    is noisy enough to wreck a checkpoint's eval-mode output while its training losses look fine
    (measured: docs/model-card.md). Averaging fresh batch statistics of the final weights fixes it.
    Training itself never reads the running statistics, so this does not change the trajectory.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    was, momenta = model.training, [b.momentum for b in bns]
    n = 0
    try:
        for x in inputs:
            if n == 0:  # only now: with no batches at all, the old statistics stay
                model.train()
                for b in bns:
                    b.reset_running_stats()
                    b.momentum = None  # cumulative average
            model(x)
            n += 1
    finally:
        for b, m in zip(bns, momenta):
            b.momentum = m
        model.train(was)
    return n
