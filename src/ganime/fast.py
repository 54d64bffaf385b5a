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
4. on the CPU, for the U-Net (:class:`PackedUNet`): every convolution runs through oneDNN's fused
   ops (``torch.ops.mkldnn._convolution_pointwise`` / ``_convolution_transpose_pointwise``) with its
   weight **prepacked once** into oneDNN's blocked layout for the input shape (eager PyTorch
   re-packs every weight on every call, ~40% of the bf16 convolution time), the activations fused
   into the convolution that produces their input (LeakyReLU, ReLU, Tanh), and each skip
   concatenation written once, with its ReLU, into a preallocated buffer. Packing takes about a
   second for the paper generator, once per input shape (a few shapes are cached). Any generator
   that is not a plain U-Net, or a device other than the CPU, uses the eager path (1-3).
5. optional ``compile=True``: ``torch.compile`` with Inductor's weight freezing (prepacked oneDNN
   weights, fused elementwise ops) instead of 4. The first call compiles for a minute or more on a
   small CPU, and on the CPU it is no faster than 4.

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


class PackedUNet(nn.Module):
    """A folded U-Net run by oneDNN with prepacked weights and fused activations (CPU only).

    Built by :meth:`build` from a BatchNorm-folded :class:`~ganime.nn.unet.UNetGenerator` (``None``
    when the network is not that exact pattern, e.g. with InstanceNorm). The U-Net's dataflow, in
    the reference implementation's terms (its LeakyReLUs are in place, so a skip carries the
    activated tensor)::

        z_1 = conv_1(x)                       z_i = conv_i(leaky(z_{i-1}))  (BN folded into conv_i)
        u_D = convT_D(relu(z_D))              u_i = convT_i(relu(cat(leaky(z_i), u_{i+1})))
        out = tanh(u_1)

    Since ``relu(leaky(z)) = relu(z)``, each level computes ``a_i = leaky(z_i)`` inside conv_i (the
    innermost computes ``relu(z_D)``), each transposed conv fuses the ReLU its consumer applies (the
    outermost its Tanh), and the next up-convolution's input ``[relu(a_i), u]`` is written once into
    one channels-last buffer instead of an in-place ReLU plus ``torch.cat``.
    """

    #: Input shapes whose packed weights are kept (each holds a copy of the weights).
    MAX_SHAPES = 2

    def __init__(self, downs: list, ups: list, slopes: list[float], dtype: torch.dtype, head=None):
        super().__init__()
        self.downs, self.ups, self.slopes, self.dtype = downs, ups, slopes, dtype
        #: The generator's output head (UNetGenerator.output_head: tanh output, input -> result), or None.
        self.head = head
        self._packs: dict[tuple, list] = {}

    @classmethod
    def build(cls, folded: nn.Module, dtype: torch.dtype) -> "PackedUNet | None":
        from ganime.nn.unet import UNetBlock, UNetGenerator

        if not (isinstance(folded, UNetGenerator) and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
            return None
        downs, ups, slopes = [], [], []
        block, outermost = folded.model, True
        while block is not None:
            if not isinstance(block, UNetBlock) or block.outermost != outermost:
                return None
            layers = [m for m in block.model if not isinstance(m, nn.Identity)]
            subs = [m for m in layers if isinstance(m, UNetBlock)]
            kinds = [type(m) for m in layers if not isinstance(m, UNetBlock)]
            want = ([nn.Conv2d, nn.ReLU, nn.ConvTranspose2d, nn.Tanh] if outermost
                    else [nn.LeakyReLU, nn.Conv2d, nn.ReLU, nn.ConvTranspose2d])
            if kinds != want or len(subs) > 1:
                return None
            if not outermost:
                slopes.append(float(layers[0].negative_slope))
            conv = next(m for m in layers if isinstance(m, nn.Conv2d))
            convt = next(m for m in layers if isinstance(m, nn.ConvTranspose2d))
            if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or convt.groups != 1:
                return None
            downs.append(conv)
            ups.append(convt)
            block, outermost = (subs[0] if subs else None), False
        if len(downs) < 2:
            return None

        def dense(m):  # the weight is packed from m.weight (made contiguous only while packing)
            b = m.bias.detach().to(dtype) if m.bias is not None else None
            return m.weight, b, m

        return cls([dense(m) for m in downs], [dense(m) for m in ups], slopes, dtype, head=folded.output_head)

    def _packed(self, shape: tuple) -> list:
        packs = self._packs.pop(shape, None)
        if packs is not None:
            self._packs[shape] = packs  # most recently used last
            return packs
        reorder = torch._C._nn.mkldnn_reorder_conv2d_weight
        reorder_t = torch.ops.mkldnn._reorder_convolution_transpose_weight
        n, c, h, w = shape
        down, up = [], []
        with torch.no_grad():
            for wd, b, m in self.downs:
                down.append(reorder(wd.detach().to(self.dtype).contiguous().to_mkldnn(), list(m.padding), list(m.stride), list(m.dilation), m.groups,
                                    [n, c, h, w]))
                c = m.out_channels
                h = (h + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
                w = (w + 2 * m.padding[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[1] + 1
            for i in reversed(range(len(self.ups))):
                wt, b, m = self.ups[i]
                up.append(reorder_t(wt.detach().to(self.dtype).contiguous(), list(m.padding), list(m.output_padding), list(m.stride), list(m.dilation),
                                    m.groups, [n, m.in_channels, h, w]))
                h = (h - 1) * m.stride[0] - 2 * m.padding[0] + m.dilation[0] * (m.kernel_size[0] - 1) + m.output_padding[0] + 1
                w = (w - 1) * m.stride[1] - 2 * m.padding[1] + m.dilation[1] * (m.kernel_size[1] - 1) + m.output_padding[1] + 1
            up.reverse()
        while len(self._packs) >= self.MAX_SHAPES:
            self._packs.pop(next(iter(self._packs)))
        self._packs[shape] = packs = [down, up]
        return packs

    def prepare(self, shape: tuple) -> None:
        """Pack the weights for inputs of ``shape`` (N, C, H, W) now rather than on the first call."""
        self._packed(tuple(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: channels-last, in this network's dtype; returns channels-last, same dtype."""
        conv = torch.ops.mkldnn._convolution_pointwise
        conv_t = torch.ops.mkldnn._convolution_transpose_pointwise
        down, up = self._packed(tuple(x.shape))
        depth, sketch = len(down), x
        acts = []
        for i, (wp, (_, b, m)) in enumerate(zip(down, self.downs)):
            attr, scalars = ("leaky_relu", [self.slopes[i]]) if i < depth - 1 else ("relu", [])
            x = conv(x, wp, b, list(m.padding), list(m.stride), list(m.dilation), m.groups, attr, scalars, "")
            acts.append(x)
        for i in reversed(range(depth)):
            _, b, m = self.ups[i]
            attr = "tanh" if i == 0 else "relu"
            u = conv_t(x, up[i], b, list(m.padding), list(m.output_padding), list(m.stride), list(m.dilation),
                       m.groups, attr, [], "")
            if i == 0:
                return self.head(u, sketch) if self.head is not None else u
            a = acts[i - 1]
            ca = a.shape[1]
            x = torch.empty((a.shape[0], ca + u.shape[1], a.shape[2], a.shape[3]), dtype=a.dtype,
                            memory_format=torch.channels_last)
            torch.clamp_min(a, 0, out=x[:, :ca])
            x[:, ca:].copy_(u)
        return x


class FastGenerator(nn.Module):
    """An inference-only generator: folded, channels-last, fp32 or bf16; prepacked oneDNN or compiled.

    Call it like the original (float NCHW in, float32 NCHW out); gradients are not supported.
    """

    def __init__(self, folded: nn.Module, device: torch.device, precision: str, compiled: bool,
                 packed: PackedUNet | None = None):
        super().__init__()
        self.net = folded
        self.device, self.precision, self.compiled = device, precision, compiled
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.packed = packed
        self._run = torch.compile(self.net) if compiled else (packed if packed is not None else self.net)

    def prepare(self, shape: tuple) -> None:
        """Do the one-off work (weight packing) for inputs of ``shape`` now, not on the first call."""
        if self.packed is not None and not self.compiled:
            with torch.inference_mode():
                self.packed.prepare(tuple(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            try:
                y = self._run(x)
            except (RuntimeError, NotImplementedError) as e:
                if self._run is not self.packed:
                    raise
                # A oneDNN build without these fused ops: fall back to the eager channels-last path.
                import warnings

                warnings.warn(f"ganime.fast: prepacked oneDNN path failed ({str(e)[:100]}); using eager", stacklevel=2)
                self.packed = None
                self._run = self.net
                y = self._run(x)
        return y.float().contiguous()

    def extra_repr(self) -> str:
        return (f"precision={self.precision}, compiled={self.compiled}, prepacked={self.packed is not None}, "
                f"device={self.device}")


def optimize_generator(generator: nn.Module, device: str | torch.device = "cpu", precision: str = "auto",
                       compile: bool = False, pack: bool = True) -> FastGenerator:
    """The fast inference version of a trained ``generator`` (see the module docstring).

    ``pack=False`` keeps the eager channels-last path on the CPU (for comparison).
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    folded = fold_batchnorm(generator).to(device)
    for p in folded.parameters():
        p.requires_grad_(False)
    folded = folded.to(memory_format=torch.channels_last)
    if precision == "bf16":
        folded = folded.to(torch.bfloat16)
    packed = None
    if compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # constant weights: prepacked once, conv+BN+activation fused
    elif pack and device.type == "cpu":
        packed = PackedUNet.build(folded, folded_dtype(folded))
    return FastGenerator(folded, device, precision, compile, packed)


def folded_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
