"""Small shared layers and initialisation."""

from __future__ import annotations

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
