"""Colour hints: sparse user colour strokes as an extra generator input.

A hint map is N x 4 x H x W: RGB in [-1, 1] where a hint is painted (0 elsewhere) and a 0/1 mask.
During training, hints are sampled from the ground-truth colour image as a random number of small
patches, each filled with the mean colour of the image under it (as in user-guided colorization,
Zhang et al. 2017). The count is often zero, so the model also works with no hints at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class HintSampler:
    """Callable (color N x 3 x H x W in [-1, 1], generator) -> hint map N x 4 x H x W.

    Args:
        max_hints: most patches per image.
        p_none: probability that an image gets no hint at all.
        mean_hints: the count (given at least one) is geometric with this mean, capped at ``max_hints``.
        min_size, max_size: patch side range in pixels at 256x256 (scaled with the image size).
    """

    def __init__(self, max_hints: int = 16, p_none: float = 0.3, mean_hints: float = 6.0,
                 min_size: int = 4, max_size: int = 14):
        self.max_hints, self.p_none, self.mean_hints = max_hints, p_none, mean_hints
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, color: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = color.shape
        dev = color.device
        K = self.max_hints
        scale = min(h, w) / 256
        lo, hi = max(1, round(self.min_size * scale)), max(1, round(self.max_size * scale))
        # Draw everything on the CPU generator (deterministic), then move.
        none = torch.rand(n, generator=generator) < self.p_none
        p = 1.0 / self.mean_hints
        u = torch.rand(n, generator=generator).clamp_min(1e-6)
        count = (torch.log(u) / torch.log(torch.tensor(1 - p))).floor().long() + 1
        count = torch.where(none, torch.zeros_like(count), count.clamp(1, K))
        sizes_h = torch.randint(lo, hi + 1, (n, K), generator=generator)
        sizes_w = torch.randint(lo, hi + 1, (n, K), generator=generator)
        cy = (torch.rand(n, K, generator=generator) * h).long()
        cx = (torch.rand(n, K, generator=generator) * w).long()
        valid = torch.arange(K)[None] < count[:, None]
        y0, x0 = (cy - sizes_h // 2).clamp(0, h - 1), (cx - sizes_w // 2).clamp(0, w - 1)
        y1, x1 = (y0 + sizes_h).clamp(max=h), (x0 + sizes_w).clamp(max=w)
        ys = torch.arange(h, device=dev)[None, None, :, None]
        xs = torch.arange(w, device=dev)[None, None, None, :]
        boxes = ((ys >= y0.to(dev)[..., None, None]) & (ys < y1.to(dev)[..., None, None])
                 & (xs >= x0.to(dev)[..., None, None]) & (xs < x1.to(dev)[..., None, None])
                 & valid.to(dev)[..., None, None])  # N x K x H x W
        # Mean colour under each patch: box sums over an integral image.
        c = color.float()
        ii = F.pad(c.cumsum(2).cumsum(3), (1, 0, 1, 0))  # N x 3 x H+1 x W+1
        def at(yy, xx):
            idx = (yy.to(dev) * (w + 1) + xx.to(dev))[:, None, :].expand(-1, 3, -1)
            return ii.flatten(2).gather(2, idx)  # N x 3 x K
        area = ((y1 - y0) * (x1 - x0)).clamp_min(1).to(dev).float()[:, None, :]
        mean = (at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)) / area  # N x 3 x K
        # Later patches paint over earlier ones.
        weight = boxes.float() * torch.arange(1, K + 1, device=dev).float()[None, :, None, None]
        top = weight.argmax(1)  # N x H x W
        mask = boxes.any(1, keepdim=True).float()
        rgb = mean.gather(2, top.flatten(1)[:, None, :].expand(-1, 3, -1)).view(n, 3, h, w) * mask
        return torch.cat([rgb, mask], 1).to(color.dtype)
