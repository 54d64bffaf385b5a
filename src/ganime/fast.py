"""Fast inference for trained generators: BatchNorm folding, channels-last, bf16, optional torch.compile.

:func:`optimize_generator` turns an eval-mode generator into a :class:`FastGenerator` with the same
call signature (N x C x H x W float in, N x 3 x H x W float out, NCHW):

1. **BatchNorm folding** (:func:`fold_batchnorm`). At inference a BatchNorm is a per-channel affine
   map, so ``BN(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` (per output channel: dim 0 of
   a Conv2d weight, dim 1 of a ConvTranspose2d weight) and ``b' = (b - m) * g / sqrt(v + eps) + beta``.
   In the U-Net and the PatchGAN every BatchNorm directly follows a conv or transposed conv in the
   same ``nn.Sequential``, which is the only pattern folded; eval-mode Dropout is dropped.
2. **channels-last** activations and weights: oneDNN's fast convolution layout on x86 CPUs and the
   tensor-core layout on CUDA.
3. **precision**: ``fp32`` keeps float32 (same outputs as the eager model up to rounding, ~1e-6);
   ``bf16`` runs the network in bfloat16, which uses AMX / AVX512-BF16 on recent x86 CPUs and tensor
   cores on CUDA (outputs within ~1e-2 of float32: under one 8-bit grey level on average).
   ``auto`` picks bf16 where the hardware has native bf16 (CUDA with bf16, or a CPU with
   AVX512-BF16/AMX) and fp32 elsewhere.
4. optional ``compile=True``: ``torch.compile`` with Inductor's weight freezing (prepacked oneDNN
   weights, fused elementwise ops). Fastest per call, but the first call compiles for a minute or
   more on a small CPU: worth it for a long-running server, not for colouring a few files.

Measured figures are in docs/performance.md (``ganime benchmark infer``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every conv/convT -> BatchNorm pair folded into the conv."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        items = list(seq._modules.items())
        for (_, conv), (bn_name, bn) in zip(items, items[1:]):
            foldable_conv = isinstance(conv, nn.Conv2d) or (isinstance(conv, nn.ConvTranspose2d) and conv.groups == 1)
            if (foldable_conv and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                    and bn.track_running_stats and bn.running_mean is not None):
                _fold_into(conv, bn)
                seq._modules[bn_name] = nn.Identity()
        for name, m in items:
            if isinstance(m, nn.Dropout):
                seq._modules[name] = nn.Identity()
    return model


@torch.no_grad()
def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        shift = shift + bn.bias.double()
    w = conv.weight.double()
    shape = [1] * w.dim()
    shape[1 if isinstance(conv, nn.ConvTranspose2d) else 0] = -1
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    conv.weight = nn.Parameter((w * scale.view(shape)).to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype), requires_grad=False)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions natively (fast), not by emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, n, None) for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(c is not None and c() for c in checks) and torch.backends.mkldnn.is_available()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        from ganime.errors import InputError

        raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


class FastGenerator(nn.Module):
    """An inference-only generator: folded, channels-last, fp32 or bf16, optionally compiled.

    Call it like the original (float NCHW in, float32 NCHW out); gradients are not supported.
    """

    def __init__(self, folded: nn.Module, device: torch.device, precision: str, compiled: bool):
        super().__init__()
        self.net = folded
        self.device, self.precision, self.compiled = device, precision, compiled
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._run = torch.compile(self.net) if compiled else self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            y = self._run(x)
        return y.float().contiguous()

    def extra_repr(self) -> str:
        return f"precision={self.precision}, compiled={self.compiled}, device={self.device}"


def optimize_generator(generator: nn.Module, device: str | torch.device = "cpu", precision: str = "auto",
                       compile: bool = False) -> FastGenerator:
    """The fast inference version of a trained ``generator`` (see the module docstring)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    folded = fold_batchnorm(generator).to(device)
    for p in folded.parameters():
        p.requires_grad_(False)
    folded = folded.to(memory_format=torch.channels_last)
    if precision == "bf16":
        folded = folded.to(torch.bfloat16)
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant weights: prepacked once, conv+BN+activation fused
    return FastGenerator(folded, device, precision, compile)
