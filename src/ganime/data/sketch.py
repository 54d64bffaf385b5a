"""Line-art extractors: pure functions from colour images to sketches, batched in torch.

They run on any device, so training can re-extract sketches on the GPU every step
(``--sketch-augment``) and a model trained on extracted line art does not over-fit one extractor.

Input: N x 3 x H x W float in [0, 1] (colour). Output: N x 3 x H x W float in [0, 1] (grey lines on
white, replicated to 3 channels like the Kaggle sketches). Parameters may be floats (one value for
the batch) or tensors of shape (N,) (one value per image).

- ``xdog``: eXtended Difference of Gaussians (Winnemöller et al. 2012) in its thresholded-DoG form
  ``U = G_sigma - tau * G_{k sigma}``, ink where ``U < eps`` with a ``tanh`` ramp of steepness ``phi``:
  flat regions, dark or light, stay white, so only edges become lines (as in Kaggle's sketches).
- ``pencil``: "dilate minus grey": the classic grey-dilation edge map, inverted to dark lines.
- ``sobel``: gradient magnitude of a lightly blurred grey image, inverted.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

#: Parameter ranges sampled by :func:`random_extract` (uniform within each range).
PARAM_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "xdog": {"sigma": (0.4, 1.0), "k": (1.6, 1.6), "tau": (0.97, 0.995), "eps": (-0.015, 0.0), "phi": (60.0, 250.0)},
    "pencil": {"radius": (1.0, 2.0), "gain": (2.5, 5.0), "gamma": (0.8, 1.6)},
    "sobel": {"sigma": (0.5, 1.2), "gain": (1.5, 4.0)},
}


def to_grey(img: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W -> N x 1 x H x W luminance (ITU-R 601 weights)."""
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"line-art extractors take N x 3 x H x W colour images, got shape {tuple(img.shape)} "
                         "(drop an alpha channel by compositing on white first)")
    w = img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def _per_sample(v, n: int, ref: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
    return t.expand(n).reshape(n) if t.dim() == 0 else t.reshape(n)


def gaussian_blur(grey: torch.Tensor, sigma) -> torch.Tensor:
    """Separable Gaussian blur of N x 1 x H x W with a per-sample sigma (reflect padding)."""
    n = grey.shape[0]
    s = _per_sample(sigma, n, grey).clamp_min(1e-3)
    radius = max(1, int(math.ceil(3 * float(s.max()))))
    x = torch.arange(-radius, radius + 1, device=grey.device, dtype=grey.dtype)
    k = torch.exp(-(x[None] ** 2) / (2 * s[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # N x K
    h, w = grey.shape[-2:]
    pad_mode = "reflect" if min(h, w) > radius else "replicate"
    g = F.pad(grey.reshape(1, n, h, w), (radius, radius, radius, radius), mode=pad_mode)
    g = F.conv2d(g, k.view(n, 1, 1, -1), groups=n)
    g = F.conv2d(g, k.view(n, 1, -1, 1), groups=n)
    return g.view(n, 1, h, w)


def xdog(img: torch.Tensor, sigma=0.6, k=1.6, tau=0.98, eps=-0.005, phi=150.0) -> torch.Tensor:
    n = img.shape[0]
    grey = to_grey(img)
    s = _per_sample(sigma, n, grey)
    g1 = gaussian_blur(grey, s)
    g2 = gaussian_blur(grey, s * _per_sample(k, n, grey))
    t_, e_, f_ = (_per_sample(v, n, grey).view(n, 1, 1, 1) for v in (tau, eps, phi))
    u = g1 - t_ * g2
    out = torch.where(u >= e_, torch.ones_like(u), 1 + torch.tanh(f_ * (u - e_)))
    return out.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def pencil(img: torch.Tensor, radius=1.0, gain=3.5, gamma=1.0) -> torch.Tensor:
    n = img.shape[0]
    grey = to_grey(img)
    r = _per_sample(radius, n, grey)
    # Grey dilation with a per-sample radius: blend the two neighbouring integer radii.
    lo = r.floor().clamp_min(1)
    hi = lo + 1
    w_hi = (r - lo).clamp(0, 1).view(n, 1, 1, 1)
    out = None
    cache = {}
    for rad in sorted(set(lo.long().tolist()) | set(hi.long().tolist())):
        cache[rad] = F.max_pool2d(F.pad(grey, (rad,) * 4, mode="replicate"), 2 * rad + 1, stride=1)
    dil_lo = torch.stack([cache[int(v)][i] for i, v in enumerate(lo.tolist())])
    dil_hi = torch.stack([cache[int(v)][i] for i, v in enumerate(hi.tolist())])
    dil = dil_lo * (1 - w_hi) + dil_hi * w_hi
    edges = ((dil - grey) * _per_sample(gain, n, grey).view(n, 1, 1, 1)).clamp(0, 1)
    out = (1 - edges).clamp_min(1e-6) ** _per_sample(gamma, n, grey).view(n, 1, 1, 1)
    return out.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def sobel(img: torch.Tensor, sigma=0.8, gain=2.5) -> torch.Tensor:
    n = img.shape[0]
    grey = gaussian_blur(to_grey(img), sigma)
    kx = grey.new_tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3) / 4
    g = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(g, kx), F.conv2d(g, kx.transpose(2, 3))
    mag = (gx**2 + gy**2).sqrt() * _per_sample(gain, n, grey).view(n, 1, 1, 1)
    return (1 - mag.clamp(0, 1)).expand(-1, 3, -1, -1).contiguous()


EXTRACTORS: dict[str, Callable[..., torch.Tensor]] = {"xdog": xdog, "pencil": pencil, "sobel": sobel}


def sample_params(name: str, n: int, generator: torch.Generator | None = None, device=None) -> dict[str, torch.Tensor]:
    """Per-image parameters drawn uniformly from :data:`PARAM_RANGES`."""
    out = {}
    for key, (lo, hi) in PARAM_RANGES[name].items():
        u = torch.rand(n, generator=generator, device="cpu")
        out[key] = (lo + (hi - lo) * u).to(device)
    return out


def extract(img: torch.Tensor, name: str, **params) -> torch.Tensor:
    if name not in EXTRACTORS:
        from ganime.errors import InputError

        raise InputError(f"unknown extractor {name!r}: choose one of {', '.join(EXTRACTORS)}, or random")
    return EXTRACTORS[name](img, **params)


def random_extract(img: torch.Tensor, generator: torch.Generator | None = None,
                   names: tuple[str, ...] = ("xdog", "pencil", "sobel")) -> torch.Tensor:
    """Each image gets a random extractor with random parameters (deterministic for a generator)."""
    n = img.shape[0]
    choice = torch.randint(len(names), (n,), generator=generator)
    out = torch.empty_like(img)
    for i, name in enumerate(names):
        idx = (choice == i).nonzero().flatten()
        params = sample_params(name, n, generator, img.device)  # drawn for all, for determinism
        if idx.numel():
            sub = {k: v[idx.to(v.device)] for k, v in params.items()}
            out[idx.to(img.device)] = EXTRACTORS[name](img[idx.to(img.device)], **sub)
    return out
