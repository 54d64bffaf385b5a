"""SSIM and PSNR with the settings of the GANime paper (Vu & Yang), i.e. those of ``tf.image.ssim``.

Settings: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range L = 255 on 8-bit RGB,
population (biased) local statistics, 'valid' filtering (only windows that lie wholly inside the image,
so an HxW image yields an (H-10)x(W-10) SSIM map), the map averaged per channel, then the channels
averaged. Per pixel, with local means mu, variances s^2 and covariance s_xy::

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (K1 L)^2, C2 = (K2 L)^2

This equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=-1)``: skimage filters the whole image
(reflecting at the borders) but then crops (win_size - 1) / 2 = 5 pixels from every side before
averaging, which leaves exactly TF's 'valid' windows. The tests check this to 1e-4 on real images.

Images: see :mod:`ganime.metrics._images` (uint8 NHWC, or float NCHW in [-1, 1] quantised to 8 bits).
Everything is computed in float64; results are per image so that callers can report mean and std.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ganime.errors import InputError
from ganime.metrics._images import as_uint8_nchw, check_pair, metric_device

WINDOW = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, centred (as TF's ``_fspecial_gauss``), float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (coords / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of NCHW float64, 'valid' positions only, each channel alone."""
    c = x.shape[1]
    kh = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    kw = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n - k + 1) x n matrix whose rows are the k taps of ``g`` shifted by one: a 'valid' filter as a matmul."""
    m = torch.zeros(n - len(g) + 1, n, dtype=g.dtype, device=g.device)
    for i in range(len(g)):
        torch.diagonal(m, offset=i).fill_(g[i])
    return m


#: Up to this side the filter runs as two banded float64 matmuls (BLAS / tensor cores; 1.45x the grouped
#: float64 convolution per pair on the CPU at 256 px, docs/performance.md); above it the band's wasted zeros
#: cost more than they gain.
MATMUL_MAX_SIDE = 512


def _ssim_batch(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    if max(x.shape[2], x.shape[3]) <= MATMUL_MAX_SIDE:
        q = torch.stack([x, y, x * x, y * y, x * y])  # the five local statistics in one pair of matmuls
        mx, my, xx, yy, xy = _band(x.shape[2], g) @ (q @ _band(x.shape[3], g).T)
    else:
        mx, my = _filter_valid(x, g), _filter_valid(y, g)
        xx, yy, xy = _filter_valid(x * x, g), _filter_valid(y * y, g), _filter_valid(x * y, g)
    sxx = xx - mx * mx
    syy = yy - my * my
    sxy = xy - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.mean(dim=(2, 3)).mean(dim=1)


def ssim(fake, real, batch_size: int | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """SSIM of each output against its ground truth: a float64 tensor of shape (N,), on the CPU.

    ``fake`` and ``real`` are batches of equal shape, each uint8 NHWC or float NCHW in [-1, 1]
    (float is quantised to 8 bits first). Images must be at least 11x11 pixels. The filtering runs in
    float64 on ``device``, ``batch_size`` images at a time (default 1 on the CPU, where larger batches
    were slower: 0.54 s for 48 pairs at 256 px one at a time, 0.80 s in batches of 16, 2 threads; 128 on a
    GPU); only uint8 images travel to the device.
    """
    x = as_uint8_nchw(fake, "outputs")
    y = as_uint8_nchw(real, "ground truth")
    check_pair(x, y)
    if min(x.shape[2], x.shape[3]) < WINDOW:
        raise InputError(f"SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {x.shape[3]}x{x.shape[2]}")
    device = metric_device(device)
    bs = batch_size or (1 if device.type == "cpu" else 128)
    if bs < 1:
        raise InputError(f"batch_size must be at least 1, got {bs}")
    g = gaussian_window().to(device)
    out = [
        _ssim_batch(x[i : i + bs].to(device).double(), y[i : i + bs].to(device).double(), g).cpu()
        for i in range(0, x.shape[0], bs)
    ]
    return torch.cat(out)


def ssim_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM of float NCHW images in [-1, 1], differentiable (a training loss, e.g. Zhao et al.
    2017, "Loss Functions for Image Restoration with Neural Networks"). The metric's definition (window,
    constants, 8-bit data range, 'valid' windows) in float32 without the 8-bit quantisation: its value
    is within ~1e-3 of 1 - :func:`ssim` of the same images."""
    if min(fake.shape[2], fake.shape[3]) < WINDOW:
        raise InputError(f"SSIM needs images of at least {WINDOW}x{WINDOW} pixels, got {fake.shape[3]}x{fake.shape[2]}")
    g = gaussian_window().to(device=fake.device, dtype=torch.float32)
    scale = DATA_RANGE / 2
    return 1 - _ssim_batch((fake.float() + 1) * scale, (real.float() + 1) * scale, g).mean()


def psnr(fake, real) -> torch.Tensor:
    """PSNR in dB of each output against its ground truth (data range 255, MSE over all pixels and
    channels, as ``tf.image.psnr``): float64 tensor of shape (N,). Identical images give +inf."""
    x = as_uint8_nchw(fake, "outputs")
    y = as_uint8_nchw(real, "ground truth")
    check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 2, 3))
    with torch.no_grad():
        return 20 * math.log10(DATA_RANGE) - 10 * torch.log10(mse)
