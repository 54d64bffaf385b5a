"""The inference pipeline used by ``ganime colorize``, evaluation and the web app alike.

Any input (size, aspect, mode) is fitted into the model's square working size keeping its aspect
ratio, padded with white paper, coloured, cropped back and resized to the input's own size.
Optional colour hints are an RGBA image of painted strokes (alpha = where a hint is) at the input's
size; they are mapped through the same geometry.
"""

from __future__ import annotations

import numbers
import os
import sys
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganime.checkpoint import load_checkpoint
from ganime.config import DEFAULT_MAX_SIZE, MAX_SMOOTHING_SIGMA, RunConfig
from ganime.errors import CheckpointError, InputError
from ganime.imageio import check_not_input, list_images, missing, open_image, outputs_to_write, save_png
from ganime.methods import get_method


def hint_map_from_rgba(hints: Image.Image) -> torch.Tensor:
    """RGBA strokes -> 4 x H x W hint tensor: RGB in [-1, 1] where painted (0 elsewhere) and a 0/1 mask."""
    rgba = np.asarray(hints.convert("RGBA"), dtype=np.float32) / 255.0
    mask = (rgba[..., 3:4] > 0.5).astype(np.float32)
    rgb = (rgba[..., :3] * 2 - 1) * mask
    return torch.from_numpy(np.concatenate([rgb, mask], -1)).permute(2, 0, 1)


def resize_hints(hints: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGBA strokes resized to ``size``: a shrunk pixel is painted where any painted pixel falls in it, with
    their mean colour, so thin strokes on a large sketch survive (nearest-neighbour dropped every other
    1-px line); enlarged, nearest-neighbour (no colours blended at a stroke's edge)."""
    hints = hints.convert("RGBA")
    if size[0] >= hints.width and size[1] >= hints.height:
        return hints.resize(size, Image.NEAREST)
    from PIL import ImageChops

    # Band by band in Pillow: one float copy of one band at a time (a 4096 px hint image is 64 MB a float band)
    painted_src = hints.getchannel("A").point(lambda v: 255 if v > 127 else 0)  # as hint_map_from_rgba reads it

    def box(band: Image.Image) -> np.ndarray:  # the mean over each shrunk pixel, in [0, 255]
        return np.asarray(band.convert("F").resize(size, Image.BOX))

    cover = box(painted_src) / 255.0
    painted = cover > 1e-6
    rgb = np.stack([box(ImageChops.multiply(hints.getchannel(c), painted_src)) for c in "RGB"], -1)
    rgb /= np.maximum(cover, 1e-6)[..., None]
    out = np.concatenate([rgb.round().clip(0, 255), 255.0 * painted[..., None]], -1)
    return Image.fromarray(out.astype(np.uint8), "RGBA")


def paper_background(sketch: np.ndarray, ink: float = 0.8, gap: int = 2, max_iter: int = 4096) -> np.ndarray:
    """Mask (H x W bool) of the blank paper around a drawing: the paper connected to the image border.

    Lines are thickened by ``gap`` pixels first so that the fill does not leak into the character
    through small breaks in its outline; the mask is then grown back up to the lines. Pure function of
    the sketch (uint8 H x W x 3 or H x W).
    """
    import torch.nn.functional as F

    g = torch.from_numpy(np.asarray(sketch, dtype=np.float32))
    g = g.mean(-1) if g.dim() == 3 else g
    inked = (g / 255.0 < ink)[None, None].float()
    k = 2 * gap + 1
    paper = F.max_pool2d(inked, k, 1, gap) < 0.5
    seed = torch.zeros_like(paper)
    seed[..., 0, :], seed[..., -1, :], seed[..., :, 0], seed[..., :, -1] = (
        paper[..., 0, :], paper[..., -1, :], paper[..., :, 0], paper[..., :, -1])
    for i in range(max_iter):
        grown = (F.max_pool2d(seed.float(), 3, 1, 1) > 0.5) & paper
        if i % 8 == 7 and torch.equal(grown, seed):
            break
        seed = grown
    back = (F.max_pool2d(seed.float(), k, 1, gap) > 0.5) & (inked < 0.5)
    return back[0, 0].numpy()


class Colorizer:
    """A loaded sketch -> colour generator.

    Build with :meth:`from_checkpoint` (training ``.pt`` of any method with a sketch -> colour
    generator, or an exported ``.safetensors``). Thread-safe: calls are serialised by a lock.
    The constructor's ``max_size`` defaults to None (always the training size); :meth:`from_checkpoint`'s
    to ``DEFAULT_MAX_SIZE`` (1024), as ``ganime colorize``.
    """

    def __init__(self, generator: torch.nn.Module, cfg: RunConfig, method: str, device: torch.device,
                 source: str = "", fast: str | None = None, background: str = "model", max_size: int | None = None):
        self.generator = generator.eval().to(device)
        self.cfg, self.method, self.device, self.source = cfg, method, device, source
        if background not in BACKGROUNDS:
            raise InputError(f"unknown background {background!r}: choose one of {', '.join(BACKGROUNDS)}")
        #: "paper": keep the sketch's blank paper (connected to the border) as it is; "model": as generated.
        self.background = background
        #: The model's training size: the smallest working size, and the one evaluation uses.
        self.size = cfg.train.size
        #: Largest working size: a bigger sketch is coloured at the multiple of the U-Net's input
        #: multiple nearest to its longest side (up to this), so its lines keep the thickness the
        #: model was trained on instead of fading when shrunk to the training size. None: always ``size``.
        #: Rounded down to that multiple: the U-Net takes no other side.
        self.multiple = cfg.net.size_multiple
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, numbers.Integral)
                                     or max_size < 1):
            raise InputError(f"max_size {max_size!r}: must be a whole number of pixels of at least 1, "
                             "or None for the training size")
        self.max_size = max(self.size, max_size // self.multiple * self.multiple) if max_size else self.size
        self.hint_channels = cfg.net.hint_channels
        if fast and fast != "off":
            # Fast path (ganime.fast): "fp32" (same outputs to ~1e-6), "bf16" or "auto" (bf16 where the
            # hardware has it: outputs within ~2 8-bit levels), "+compile" optional. The CLI's default is
            # "auto"; the library's default (None) is the plain eager model.
            from ganime.fast import optimize_generator

            precision, _, comp = fast.partition("+")
            in_channels = getattr(self.generator, "in_channels", None)
            self.generator = optimize_generator(self.generator, device, precision, compile=comp == "compile")
            if in_channels:  # pack the weights for the one input shape now, not on the first image
                self.generator.prepare((1, in_channels, self.size, self.size))
        from ganime.nn.unet import UNetGenerator

        #: The modules whose output head flattens the colour layer (per-call ``flatten``; none without one).
        self._heads = [m for m in self.generator.modules() if isinstance(m, UNetGenerator) and m.line_multiply]
        self._lock = threading.Lock()

    @property
    def flatten(self) -> float | None:
        """The colour flattening (sigma, pixels) of a model with a colour layer, else None."""
        return self._heads[0].color_flatten if self._heads else None

    def check_options(self, flatten: float | None = None, background: str | None = None) -> None:
        """One-line InputError for per-call options this model cannot take."""
        if background is not None and background not in BACKGROUNDS:
            raise InputError(f"unknown background {background!r}: choose one of {', '.join(BACKGROUNDS)}")
        if flatten is not None:
            if not self._heads:
                raise InputError(f"this model ({self.method}) has no colour layer to flatten")
            if not isinstance(flatten, numbers.Real):
                raise InputError(f"flatten {flatten!r}: must be a number of pixels, not {type(flatten).__name__}")
            if not 0 <= flatten <= MAX_SMOOTHING_SIGMA:
                raise InputError(f"flatten {flatten:g}: must be between 0 and {MAX_SMOOTHING_SIGMA} pixels")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device: str | torch.device = "auto",
                        fast: str | None = None, background: str = "model",
                        max_size: int | None = DEFAULT_MAX_SIZE, flatten: float | None = None,
                        color_blur: float | None = None, option_names: dict[str, str] | None = None) -> "Colorizer":
        """Load ``path`` (a run's ``last.pt`` or run folder, an exported ``.safetensors``; None: the
        shipped default model). ``max_size``: the largest working size, as ``ganime colorize --max-size``
        (None: always the training size, as evaluation works). ``flatten`` and ``color_blur`` (not None) replace a line-multiply model's weight-free colour-layer
        smoothing (``color_flatten``, ``color_blur``: sigma in pixels; 0: off) in its config and network; a
        model without a colour layer refuses them. ``option_names`` names them in messages (by config
        field; default ``--flatten`` and ``--color-blur``)."""
        from ganime.train import resolve_device

        dev = resolve_device(device)
        path = default_checkpoint() if path is None else path
        ckpt = load_checkpoint(path)
        try:
            method_cls = get_method(ckpt["method"])
        except InputError as e:
            raise CheckpointError(f"{path}: {e} (a model of another GANime version?)") from None
        try:
            cfg = RunConfig.from_dict(ckpt["config"])
        except (TypeError, InputError) as e:
            raise CheckpointError(f"{path}: checkpoint configuration is not understood ({e})") from None
        names = {"color_flatten": "--flatten", "color_blur": "--color-blur", **(option_names or {})}
        for field_name, value in (("color_flatten", flatten), ("color_blur", color_blur)):
            if value is None:
                continue
            if not cfg.net.line_multiply:
                raise InputError(f"{path}: {names[field_name]} smooths the colour layer of a model trained with "
                                 "--line-multiply; this one has none")
            setattr(cfg.net, field_name, float(value))
            try:
                cfg.validate()
            except InputError as e:
                raise InputError(f"{names[field_name]} {value:g}: {e}".replace("invalid configuration: ", "")) from None
        gen = method_cls.build_generator(cfg)
        state = ckpt["models"].get(method_cls.generator_key)
        if state is None:
            raise CheckpointError(f"{path}: checkpoint has no {method_cls.generator_key} generator weights")
        try:
            gen.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit the network in its own config ({' '.join(str(e).split())[:120]})") from None
        return cls(gen, cfg, ckpt["method"], dev, source=str(path), fast=fast, background=background,
                   max_size=max_size)

    def working_size(self, w: int, h: int) -> int:
        """The square side the generator sees for a ``w`` x ``h`` input (see ``max_size``)."""
        nearest = int(round(max(w, h) / self.multiple)) * self.multiple
        return min(self.max_size, max(self.size, nearest))

    def _fit(self, im: Image.Image, resample, fill, s: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
        w, h = im.size
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(im.mode, (s, s), fill)
        x0, y0 = (s - nw) // 2, (s - nh) // 2
        canvas.paste(im.resize((nw, nh), resample), (x0, y0))
        return canvas, (x0, y0, x0 + nw, y0 + nh)

    def prepare(self, sketch: Image.Image, hints: Image.Image | None = None) -> tuple[torch.Tensor, tuple]:
        """The generator input (1 x C x S x S) for ``sketch`` and the box to crop the output to."""
        from ganime.imageio import pil_to_tensor

        s = self.working_size(*sketch.size)
        rgb = sketch.convert("RGB")
        if s / max(sketch.size) < 2 / 3:
            # Shrinking thin dark lines fades them to grey; widen them by a pixel first (a min filter)
            # so they reach the model as lines. Measured: far fewer texture artefacts on real sketches.
            from PIL import ImageFilter

            rgb = rgb.filter(ImageFilter.MinFilter(3))
        fitted, box = self._fit(rgb, Image.BICUBIC, (255, 255, 255), s)
        x = pil_to_tensor(fitted)[None]
        if self.hint_channels:
            if hints is not None:
                if hints.size != sketch.size:
                    (hw, hh), (sw, sh) = hints.size, sketch.size
                    if abs(hw * sh - hh * sw) > max(sw, sh, hw, hh):  # more than a pixel of rounding off
                        # stretched onto the sketch, each stroke would land away from where it was painted
                        raise InputError(f"hints are {hw}x{hh} but the sketch is {sw}x{sh}; paint hints at the "
                                         "sketch's size (or a scaled copy of the same shape)")
                hfit = Image.new("RGBA", (s, s), (0, 0, 0, 0))
                hfit.paste(resize_hints(hints, (box[2] - box[0], box[3] - box[1])), box[:2])
                hm = hint_map_from_rgba(hfit)[None]
            else:
                hm = torch.zeros(1, self.hint_channels, s, s)
            x = torch.cat([x, hm], 1)
        elif hints is not None:
            raise InputError(f"this model ({self.method}) does not take colour hints")
        return x, box

    @torch.no_grad()
    def __call__(self, sketch, hints=None, flatten: float | None = None,
                 background: str | None = None) -> Image.Image:
        """Colour ``sketch``; returns an RGB PIL image at the sketch's own size.

        ``sketch``: a PIL image of any size and mode (transparency is composited on white paper), a
        uint8 array (H x W, H x W x 3 or x 4) or a path. ``hints``: colour strokes on a transparent layer
        (an RGBA PIL image, H x W x 4 uint8 array or a path), for a model trained with hints.
        ``flatten`` and ``background`` override the model's colour flattening and this colorizer's
        background for this call only (see :meth:`check_options`)."""
        from ganime.imageio import tensor_to_pil

        sketch = as_image(sketch, "sketch")
        hints = None if hints is None else as_image(hints, "hints", hints=True)
        self.check_options(flatten, background)
        x, box = self.prepare(sketch, hints)
        with self._lock:
            saved = [m.color_flatten for m in self._heads]
            try:
                if flatten is not None:
                    for m in self._heads:
                        m.color_flatten = float(flatten)
                y = self.generator(x.to(self.device)).float().cpu()[0]
            finally:
                for m, v in zip(self._heads, saved):
                    m.color_flatten = v
        out = tensor_to_pil(y).crop(box)
        out = out.resize(sketch.size, Image.BICUBIC) if out.size != sketch.size else out
        if (background or self.background) == "paper":
            out = keep_paper(sketch, out, fitted_size=(box[2] - box[0], box[3] - box[1]))
        return out


BACKGROUNDS = ("model", "paper")


def as_image(x, name: str, hints: bool = False) -> Image.Image:
    """A library caller's sketch (or ``hints``) as the CLI would read it: RGB on white paper (RGBA with
    transparency for hints), from a PIL image, a uint8 array or a path; else one InputError sentence."""
    from ganime.imageio import check_transparent, open_image, to_rgb, to_rgba

    if isinstance(x, (str, os.PathLike)):
        return open_image(x, keep_alpha=hints)
    if isinstance(x, np.ndarray):
        channels = 1 if x.ndim == 2 else x.shape[-1] if x.ndim == 3 else 0
        if x.dtype != np.uint8 or channels not in ((4,) if hints else (1, 3, 4)):
            want = "H x W x 4 (RGBA)" if hints else "H x W, H x W x 3 or H x W x 4"
            raise InputError(f"{name}: an array must be uint8 {want}, not {x.dtype} of shape {x.shape}")
        if 0 in x.shape:
            raise InputError(f"{name}: an empty image ({x.shape[1]}x{x.shape[0]} pixels)")
        x = Image.fromarray(np.ascontiguousarray(x[..., 0] if x.ndim == 3 and channels == 1 else x))
    if not isinstance(x, Image.Image):
        raise InputError(f"{name}: expected a PIL image, a uint8 array or a path, not {type(x).__name__}")
    if 0 in x.size:
        raise InputError(f"{name}: an empty image ({x.width}x{x.height} pixels)")
    if hints:
        check_transparent(x, name)
        return to_rgba(x)
    return to_rgb(x)


def keep_paper(sketch: Image.Image, out: Image.Image, fitted_size: tuple[int, int] | None = None) -> Image.Image:
    """``out`` with the sketch's blank paper (see :func:`paper_background`) copied back from the sketch.

    The mask is found at ``fitted_size`` (the model's working resolution) and scaled to the output.
    """
    small = sketch.convert("RGB")
    if fitted_size and fitted_size != sketch.size:
        small = small.resize(fitted_size, Image.BILINEAR)
    mask = Image.fromarray(paper_background(np.asarray(small)).astype(np.uint8) * 255)
    if mask.size != out.size:
        mask = mask.resize(out.size, Image.NEAREST)
    return Image.composite(sketch.convert("RGB"), out, mask)


def looks_coloured(im: Image.Image) -> bool:
    """True when over a quarter of the pixels are clearly chromatic: a colour picture, not line art."""
    small = np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.int16)
    chroma = small.max(-1) - small.min(-1)
    return bool((chroma > 40).mean() > 0.25)


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Files and folders (their images, not recursive) -> image paths, with one-line errors. A file named
    twice (``colorize DIR DIR/a.png``, ``a.png ./a.png``) is taken once; a link to a file under another
    name (``b.png -> a.png``) is a file of its own (its result is ``b.png``)."""
    files: list[Path] = []
    for s in inputs:
        p = Path(s)
        if not p.exists():
            raise missing(p, "file or folder")
        if p.is_dir():
            found = list_images(p)
            if not found:
                deeper = next((d for d in sorted(p.iterdir()) if d.is_dir() and list_images(d)), None)
                where = f" (only its subfolders do, which are not searched: name them, as {deeper})" if deeper else ""
                raise InputError(f"{p}: folder holds no image files{where}")
            files.extend(found)
        else:
            files.append(p)
    unique: dict[tuple, Path] = {}
    for f in files:
        unique.setdefault((f.resolve(), f.name), f)
    return list(unique.values())


#: How ``colorize`` completes '--skip-existing to ...' in its refusal of existing results.
SKIP_WHAT = "colour only the sketches without a result"


def colorize_files(colorizer: Colorizer, inputs: list[str], out: str | os.PathLike, overwrite: bool = False,
                   progress: bool = True, suffix: str = "", skip_existing: bool = False) -> dict:
    """Colour every input into ``out/<stem><suffix>.png``. Bad files are reported and skipped.

    Returns ``{"written": [...], "failed": [...], "kept": [...]}``; never replaces an existing file unless
    ``overwrite``. ``skip_existing`` colours only the inputs whose output is missing (outputs are written
    whole, so one that exists is complete: a run stopped by Ctrl-C continues).
    """
    from ganime.progress import progress_bar

    files = collect_inputs(inputs)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    targets = [out / f"{f.stem}{suffix}.png" for f in files]
    seen: dict[str, Path] = {}
    for f, t in zip(files, targets):
        check_not_input(f, t, "the input sketch")
        if t.name.casefold() in seen:  # A.png and a.png: one file on macOS and Windows, which ignore case
            raise InputError(f"{f} and {seen[t.name.casefold()]} would both be written to {t}; colour them into "
                             "separate folders")
        seen[t.name.casefold()] = f
    todo, kept = outputs_to_write(list(zip(files, targets)), overwrite, skip_existing, SKIP_WHAT)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for f, t in progress_bar(todo, desc="colorize", unit="img", disable=not progress or len(todo) < 2):
        try:
            im = open_image(f)
        except InputError as e:
            failed.append(str(e))
            print(f"ganime: skipped {e}", file=sys.stderr)
            continue
        if looks_coloured(im):
            print(f"ganime: warning: {f}: looks like a colour image, not line art; the result may be poor",
                  file=sys.stderr)
        save_png(colorizer(im), t, overwrite=overwrite)
        written.append(str(t))
    return {"written": written, "failed": failed, "kept": [str(t) for t in kept]}


#: Where the shipped default model lives inside the package.
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "default.safetensors"


def default_checkpoint() -> Path:
    """The shipped default model, or a one-line error saying how to get a checkpoint."""
    if DEFAULT_WEIGHTS.exists():
        return DEFAULT_WEIGHTS
    raise InputError(
        "no --checkpoint given and this install ships no default model; "
        "train one with 'ganime train pix2pix' and pass --checkpoint RUN/last.pt"
    )
