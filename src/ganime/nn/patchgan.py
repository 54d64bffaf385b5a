"""PatchGAN discriminator (Isola et al. 2017): classifies overlapping 70x70 patches as real/fake.

``C64-C128-C256-C512`` then a 1-channel conv; 4x4 kernels, strides 2,2,2,1,1, LeakyReLU 0.2, no norm
on the first layer. With ``n_layers=3`` the receptive field of each output unit is 70x70 pixels and a
256x256 input gives a 30x30 logit map. For Pix2Pix the input is the (sketch, colour) pair
concatenated on channels (6 channels); with BatchNorm and 64 base channels it has 2,768,705 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from ganime.nn.layers import norm_layer


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels=6, base=64, n_layers=3, norm="batch"):
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = base
        for n in range(1, n_layers + 1):
            out = base * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=bias), norm_layer(norm, out), nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, one per patch (no sigmoid: use BCE-with-logits)."""
        return self.model(x)


def receptive_field(module: nn.Module) -> int:
    """Receptive field (pixels) of one output unit of a plain conv stack, from its conv layers."""
    rf, jump = 1, 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k, s = m.kernel_size[0], m.stride[0]
            rf += (k - 1) * jump
            jump *= s
    return rf
