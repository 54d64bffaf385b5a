"""The one input convention shared by every metric.

Metrics accept a batch of images in either of the two forms the rest of GANime uses:

- ``uint8`` images, NHWC (numpy array or torch tensor), values 0..255, RGB;
- floating-point tensors (or arrays), NCHW, values in [-1, 1] (what the generators output).

Float batches are quantised to 8 bits exactly as :func:`ganime.imageio.tensor_to_uint8` does
(clamp, ``(x + 1) * 127.5``, round half to even), because the paper's figures and every saved PNG are
8-bit: a metric measured on the floats would not be the metric of the images users see. The clamp is
for a generator's slight overshoot: floats further than :data:`FLOAT_SLACK` outside [-1, 1] (a 0..255
image passed as float) are refused, since clamping them would score a white page.
A single image (HWC uint8 or CHW float) is treated as a batch of one.
"""

from __future__ import annotations

import numpy as np
import torch

from ganime.errors import InputError

#: How far outside [-1, 1] float pixels may lie and still be clamped (overshoot, not another range).
FLOAT_SLACK = 0.5


def as_uint8_nchw(images, name: str = "images") -> torch.Tensor:
    """Any accepted image batch -> uint8 torch tensor, NCHW, 3 channels, on the CPU."""
    if isinstance(images, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        t = images.detach().cpu()
    else:
        raise InputError(f"{name}: expected a numpy array or torch tensor, got {type(images).__name__}")
    if t.dtype == torch.uint8:
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4 or t.shape[-1] != 3:
            raise InputError(f"{name}: uint8 images must be NHWC with 3 channels, got shape {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2).contiguous()
    if t.is_floating_point():
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4 or t.shape[1] != 3:
            raise InputError(f"{name}: float images must be NCHW with 3 channels in [-1, 1], got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise InputError(f"{name}: contains NaN or infinite values")
        if t.numel() and t.abs().max() > 1 + FLOAT_SLACK:
            raise InputError(f"{name}: float images must be in [-1, 1], got values in [{float(t.min()):g}, "
                             f"{float(t.max()):g}]; pass 0..255 images as uint8 NHWC")
        return t.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).contiguous()
    raise InputError(f"{name}: expected uint8 (NHWC, 0..255) or float (NCHW, [-1, 1]) images, got dtype {t.dtype}")


def metric_device(device: str | torch.device) -> torch.device:
    """The ``device`` a metric was asked to run on; a name torch does not know (``"gpu"``) or CUDA on a
    machine without a GPU is one sentence, not torch's error."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r}: not a device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA GPU is available here; use 'cpu'")
    return dev


def features_on(f: np.ndarray, device: torch.device) -> torch.Tensor:
    """Feature vectors as a tensor on ``device``, sharing the array's memory on the CPU; a read-only array
    (cached Inception features) is copied first, which torch would otherwise warn about on every call."""
    return torch.from_numpy(f if f.flags.writeable else f.copy()).to(device)


def check_pair(fake: torch.Tensor, real: torch.Tensor) -> None:
    """Paired metrics need equal shapes: same count, same size."""
    if fake.shape != real.shape:
        raise InputError(
            f"outputs {tuple(fake.shape)} and ground truth {tuple(real.shape)} differ in shape (N, C, H, W): "
            "paired metrics need one output per ground-truth image, at the same size"
        )
    if fake.shape[0] == 0:
        raise InputError("no images to evaluate")
