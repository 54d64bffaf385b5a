"""U-Net generator of Pix2Pix (Isola et al. 2017), the paper's C-GAN generator.

Structure (``depth`` = number of stride-2 downsamplings, 8 at 256x256 so the bottleneck is 1x1):
encoder ``C64-C128-C256-C512-C512-C512-C512-C512`` (4x4 convs, stride 2, LeakyReLU 0.2, no norm on
the first, nor on the innermost, whose 1x1 output a BatchNorm over a batch of one would zero), decoder mirrored with transposed convs, ReLU, skip concatenations, dropout 0.5 in the
three innermost non-bottleneck decoder blocks, tanh output in [-1, 1]. With BatchNorm, convolutions
followed by a norm carry no bias; with 3-channel input/output and 64 base channels this has exactly
54,413,955 parameters, as the reference implementation.

Two differences from the paper:

- Dropout sits in decoder layers 2-4 counted from the bottleneck, as in the PyTorch reference
  (pytorch-CycleGAN-and-pix2pix). The paper's decoder ``CD512-CD1024-CD1024-C1024-...`` (Isola et al.,
  appendix 6.1.1) and its Lua code put it in layers 1-3, the innermost up-convolution (1x1 -> 2x2)
  included. Same weights either way; only where the noise enters during training differs.
- GANime generates with the network in eval mode: no dropout, and BatchNorm's stored statistics
  (recomputed before each checkpoint, :func:`ganime.nn.layers.recalibrate_batchnorm`). The paper runs
  inference exactly as training, dropout on and BatchNorm on the test batch's own statistics
  (section 3.3), and so does the reference's ``test.py`` unless given ``--eval``;
  docs/model-card.md records that the test batch's statistics did worse here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ganime.nn.layers import norm_layer


class UNetBlock(nn.Module):
    """One level of the U: down(x) -> inner -> up, output concatenated with x (except outermost)."""

    def __init__(
        self,
        outer: int,
        inner: int,
        in_channels: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        dropout: float = 0.0,
        out_channels: int | None = None,
    ):
        super().__init__()
        self.outermost = outermost
        in_channels = outer if in_channels is None else in_channels
        bias = norm != "batch"
        down_conv = nn.Conv2d(in_channels, inner, 4, 2, 1, bias=bias)
        up_in = inner if innermost else inner * 2
        if outermost:
            up_conv = nn.ConvTranspose2d(up_in, out_channels or outer, 4, 2, 1)
            down = [down_conv]
            up = [nn.ReLU(True), up_conv, nn.Tanh()]
        elif innermost:
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer, 4, 2, 1, bias=bias), norm_layer(norm, outer)]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv, norm_layer(norm, inner)]
            up = [nn.ReLU(True), nn.ConvTranspose2d(up_in, outer, 4, 2, 1, bias=bias), norm_layer(norm, outer)]
            if dropout > 0:
                up.append(nn.Dropout(dropout))
        layers = down + ([submodule] if submodule is not None else []) + up
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UNetGenerator(nn.Module):
    """Sketch (plus optional hint channels) -> colour image in [-1, 1].

    Args:
        in_channels: input channels (3 for an RGB sketch; 3 + 4 with colour hints RGB + mask).
        out_channels: output channels (3).
        base: channels after the first conv (the paper's ``ngf`` = 64).
        depth: number of downsamplings; input sides must be multiples of ``2**depth``.
        norm: ``"batch"`` (paper), ``"instance"`` or ``"none"``.
        dropout: dropout in the ``depth - 5`` decoder blocks just outside the innermost one (3 at depth 8;
            0.5 in the paper, where it is the noise z; placement: see the module docstring).
        line_multiply: treat the network's output as a colour layer under the sketch's lines, as an
            artist's multiply layer: output = colour x sketch luminance (in [0, 1] terms; see
            :func:`multiply_lines`). The lines then reach the output exactly and the network only has
            to predict flat colour. No extra weights (beyond the paper).
        color_blur: with ``line_multiply``, a Gaussian blur (sigma in pixels of the input) of the colour
            layer before the multiply: flatter fills without the transposed convolutions' checkerboard,
            while the lines stay sharp. No weights either; 0 = off.
        color_flatten: with ``line_multiply``, an edge-aware smoothing of the colour layer (see
            :func:`flatten_between_lines`; about this sigma in pixels within a region, nothing across the
            sketch's lines): flat fills that stop at the lines, as in cel colouring. No weights; 0 = off.
    """

    def __init__(self, in_channels=3, out_channels=3, base=64, depth=8, norm="batch", dropout=0.5,
                 line_multiply=False, color_blur=0.0, color_flatten=0.0):
        super().__init__()
        if depth < 5:
            raise ValueError(f"U-Net depth must be at least 5, got {depth}")
        if line_multiply and (in_channels < 3 or out_channels != 3):
            raise ValueError("line_multiply needs an RGB sketch input and an RGB output")
        self.in_channels, self.out_channels, self.depth = in_channels, out_channels, depth
        if (color_blur or color_flatten) and not line_multiply:
            raise ValueError("color_blur and color_flatten smooth the colour layer of a line_multiply generator only")
        self.line_multiply, self.color_blur, self.color_flatten = line_multiply, float(color_blur), float(color_flatten)
        block = UNetBlock(base * 8, base * 8, innermost=True, norm=norm)
        for _ in range(depth - 5):
            block = UNetBlock(base * 8, base * 8, submodule=block, norm=norm, dropout=dropout)
        block = UNetBlock(base * 4, base * 8, submodule=block, norm=norm)
        block = UNetBlock(base * 2, base * 4, submodule=block, norm=norm)
        block = UNetBlock(base, base * 2, submodule=block, norm=norm)
        self.model = UNetBlock(
            base, base, in_channels=in_channels, submodule=block, outermost=True, norm=norm,
            out_channels=out_channels,
        )

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_head(self.model(x), x)

    def output_head(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The result from the U-Net's tanh output ``y`` and the input ``x``: ``y`` itself, or with
        ``line_multiply`` the colour layer ``y`` (smoothed by ``color_blur``, ``color_flatten``) under the
        sketch's lines."""
        return multiply_lines(y, x, self.color_blur, self.color_flatten) if self.line_multiply else y


def multiply_lines(color: torch.Tensor, x: torch.Tensor, blur: float = 0.0, flatten: float = 0.0) -> torch.Tensor:
    """``color`` (N x 3 x H x W in [-1, 1]) multiplied by the luminance of the sketch in ``x[:, :3]``.

    In [0, 1] terms ``out = c * l`` with ``l`` the sketch's channel mean: white paper (l = 1) shows the
    colour, a black line (l = 0) stays black. ``blur`` > 0 first smooths ``color`` with a Gaussian of
    that sigma (pixels); ``flatten`` > 0 then smooths it between the sketch's lines only
    (:func:`flatten_between_lines`). Returned in [-1, 1], in ``color``'s dtype.
    """
    if blur > 0:
        color = gaussian_blur(color, blur)
    lum = x[:, :3].to(color.dtype).mean(1, keepdim=True)
    if flatten > 0:
        color = flatten_between_lines(color, (lum + 1) * 0.5, flatten)
    return (color + 1) * (lum + 1) * 0.5 - 1


#: Sketch luminance (in [0, 1]) at and below which a pixel fully blocks :func:`flatten_between_lines`,
#: and at and above which it conducts fully (paper); linear in between.
FLATTEN_INK, FLATTEN_PAPER = 0.6, 0.9
#: Step of the explicit diffusion (stable up to 0.25 with four neighbours).
_FLATTEN_STEP = 0.24


def flatten_iterations(sigma: float) -> int:
    """Diffusion steps whose spread in open paper is a Gaussian of ``sigma`` pixels (variance 2 step k)."""
    return max(1, math.ceil(sigma * sigma / (2 * _FLATTEN_STEP))) if sigma > 0 else 0


def flatten_between_lines(color: torch.Tensor, lum: torch.Tensor, sigma: float) -> torch.Tensor:
    """Edge-aware smoothing of a colour layer: heat diffusion between 4-neighbours whose conductance is
    the product of the two pixels' "paperness" (sketch luminance ``lum``, N x 1 x H x W in [0, 1], mapped
    from FLATTEN_INK -> 0 to FLATTEN_PAPER -> 1). Within a region enclosed by lines the colour evens out
    (about a Gaussian of ``sigma`` pixels in open paper); across a line it does not flow, since an
    8-connected line of ink separates 4-neighbours. Computed in float32 (many small steps); returned
    in ``color``'s dtype. Slicing and padding only, so it exports to ONNX.
    """
    import torch.nn.functional as F

    steps = flatten_iterations(sigma)
    if steps == 0:
        return color
    # Plain NCHW float32: the slices below are far slower on channels-last memory (the fast path's layout).
    c = color.float().contiguous()
    w = ((lum.float().contiguous() - FLATTEN_INK) / (FLATTEN_PAPER - FLATTEN_INK)).clamp(0, 1)
    gx = w[..., :, 1:] * w[..., :, :-1] * _FLATTEN_STEP  # between (i, j) and (i, j + 1)
    gy = w[..., 1:, :] * w[..., :-1, :] * _FLATTEN_STEP  # between (i, j) and (i + 1, j)
    # Each pixel's weights for its left, right, upper and lower neighbour (0 at the border) and itself.
    gl, gr, gu, gd = F.pad(gx, (1, 0)), F.pad(gx, (0, 1)), F.pad(gy, (0, 0, 1, 0)), F.pad(gy, (0, 0, 0, 1))
    g0 = 1 - gl - gr - gu - gd
    if c.requires_grad or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        for _ in range(steps):  # out-of-place steps: differentiable and traceable
            p = F.pad(c, (1, 1, 1, 1))
            c = (c * g0).addcmul_(p[..., 1:-1, :-2], gl).addcmul_(p[..., 1:-1, 2:], gr)
            c = c.addcmul_(p[..., :-2, 1:-1], gu).addcmul_(p[..., 2:, 1:-1], gd)
        return c.to(color.dtype)
    # Inference: the same arithmetic between two zero-bordered buffers, without a pad copy per step (~20% faster).
    a = F.pad(c, (1, 1, 1, 1))
    b = torch.zeros_like(a)
    for _ in range(steps):
        inner = b[..., 1:-1, 1:-1]
        torch.mul(a[..., 1:-1, 1:-1], g0, out=inner)
        inner.addcmul_(a[..., 1:-1, :-2], gl).addcmul_(a[..., 1:-1, 2:], gr)
        inner.addcmul_(a[..., :-2, 1:-1], gu).addcmul_(a[..., 2:, 1:-1], gd)
        a, b = b, a
    return a[..., 1:-1, 1:-1].contiguous().to(color.dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an N x C x H x W tensor (radius 3 sigma, reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype).to(x.device)
    n, c, h, w = x.shape
    y = nn.functional.pad(x.reshape(n * c, 1, h, w), (radius, radius, radius, radius), mode="reflect")
    y = nn.functional.conv2d(y, k.view(1, 1, 1, -1))  # channels as batch: one constant kernel (ONNX-friendly)
    return nn.functional.conv2d(y, k.view(1, 1, -1, 1)).reshape(n, c, h, w)
