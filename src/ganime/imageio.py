"""Safe image reading and writing shared by every command.

Every reader here turns the usual ways an image file can be bad (missing, empty, not an image,
truncated, absurdly large, an odd mode) into one :class:`~ganime.errors.InputError` sentence.
Pixel conversions between PIL, uint8 arrays and [-1, 1] tensors live here too.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from ganime.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: The formats any command decodes (a camera's MPO opens as JPEG). Other Pillow plugins are never tried, so an
#: upload cannot reach a decoder nobody meant to expose (EPS would run Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
#: Largest image (in pixels) any command decodes; a header claiming more is refused before decoding.
MAX_PIXELS = 64 * 1024 * 1024

# We check sizes ourselves (before decoding) and give our own error, so PIL's own bomb guard is
# raised out of the way for the decode itself.
Image.MAX_IMAGE_PIXELS = None
# A PNG's text and ICC profile chunks are metadata we never use, yet Pillow refuses the whole image when one
# of them decompresses past 1 MB (a drawing program's workflow or XMP record can): one chunk may take the
# 64 MB that Pillow allows all of an image's text together (MAX_TEXT_MEMORY, which still bounds it).
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY)


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder`` (by suffix); hidden files are skipped."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_image_path(p) and not p.name.startswith("."))


def _grey_to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit integer grey image scaled to 8-bit L (LA when a ``tRNS`` colour marks transparent
    pixels); Pillow's own conversion clips every level above 255 to white. Other modes are returned as they are."""
    if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
        return im
    arr = np.asarray(im, dtype=np.float64)
    clear = arr == im.info["transparency"] if isinstance(im.info.get("transparency"), int) else None
    hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
    out = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if clear is not None:
        out.putalpha(Image.fromarray(np.where(clear, 0, 255).astype(np.uint8), "L"))
    return out


def to_rgba(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGBA with its transparency (hint strokes); 16-bit grey keeps its grey levels."""
    return _grey_to_8bit(im).convert("RGBA")


def to_rgb(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited over ``background`` (white paper), an
    alpha channel and a PNG's transparent colour (``tRNS``: grey, RGB, 16-bit) alike."""
    im = _grey_to_8bit(im)
    if im.mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")  # the colour the file marks as transparent
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        hi = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, tuple(background) + (255,))
        return Image.alpha_composite(bg, im).convert("RGB")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def check_transparent(im: Image.Image, name: str) -> None:
    """Hint strokes are painted on a transparent layer: an image without transparency would hint every
    pixel (a JPEG, or strokes flattened onto white), so it is refused in one sentence; so is one whose
    every pixel is opaque (an RGBA PNG exported with its white background layer)."""
    opaque = "A" not in im.getbands() and "transparency" not in im.info
    if not opaque:  # a hint is where alpha > 0.5 (colorize.hint_map_from_rgba): no pixel below that, all hinted
        opaque = im.convert("RGBA").getchannel("A").getextrema()[0] > 127
    if opaque:
        raise InputError(f"{name}: image has no transparency; hints are colour strokes on a "
                         "transparent layer (an RGBA PNG), anything unpainted left transparent")


class ImageTooLarge(InputError):
    """The image's header claims more pixels than allowed (checked before decoding)."""


def missing(path: Path, what: str = "file") -> InputError:
    """The error for a ``path`` that does not exist. A broken or looping link is named as one: ``exists()``
    follows links, so 'no such file' would deny a name the user sees in the folder."""
    if path.is_symlink():
        return InputError(f"{path}: a link to {os.readlink(path)}, which does not exist (or links back to itself)")
    return InputError(f"{path}: no such {what}")


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, keep_alpha: bool = False) -> Image.Image:
    """Read ``path`` as an 8-bit RGB PIL image, or raise one :class:`InputError` sentence.

    EXIF orientation is applied; alpha is composited on white (or kept, as RGBA, with ``keep_alpha``,
    which refuses an image without transparency: hint strokes are painted on a transparent layer);
    16-bit and palette images are converted. Only :data:`IMAGE_FORMATS` are decoded.
    """
    path = Path(path)
    if not path.exists():
        raise missing(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an image file")
    try:
        with open(path, "rb") as f:
            return decode_image(f, str(path), max_pixels, keep_alpha)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


def decode_image(source, name: str, max_pixels: int = MAX_PIXELS, keep_alpha: bool = False,
                 exif_orientation: bool = True) -> Image.Image:
    """Decode ``source`` (bytes or a binary file object) with the checks of :func:`open_image`.

    ``name`` stands for the input in messages (a path, or an upload's field name). The pixel limit is
    checked from the header before anything is decoded (:class:`ImageTooLarge`). ``exif_orientation=False``
    keeps the pixels as stored, ignoring the file's EXIF orientation tag (as some browsers show them).
    """
    import io

    f = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    start = f.tell()
    empty = not f.read(1)
    f.seek(start)
    if empty:
        raise InputError(f"{name}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(f, formats=IMAGE_FORMATS)
            w, h = im.size
            if w <= 0 or h <= 0:
                raise InputError(f"{name}: image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageTooLarge(f"{name}: image is {w}x{h} pixels, over the limit of {max_pixels:,} pixels")
            im.load()
            if keep_alpha:
                check_transparent(im, name)
            if exif_orientation:
                im = ImageOps.exif_transpose(im)
            return to_rgba(im) if keep_alpha else to_rgb(im)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{name}: image too large to decode") from None
    except Exception as e:  # PIL raises many types for bad data
        kind = type(e).__name__
        if "MAX_TEXT" in str(e):  # Pillow's caps on PNG text, not a fault in the pixels
            raise InputError(f"{name}: its PNG metadata (text or ICC profile chunks) decompresses to over "
                             f"{PngImagePlugin.MAX_TEXT_MEMORY / 2**20:g} MB, more than is read; save the image "
                             "again without metadata") from None
        if kind == "UnidentifiedImageError":
            raise InputError(f"{name}: not a readable image (unknown or corrupt format; "
                             "PNG, JPEG, WebP, BMP, GIF and TIFF are read)") from None
        raise InputError(f"{name}: corrupt or truncated image ({kind}: {e})") from None


def image_to_uint8(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def uint8_to_tensor(arr: np.ndarray | torch.Tensor) -> torch.Tensor:
    """HWC or NHWC uint8 -> CHW / NCHW float in [-1, 1]."""
    t = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)) if isinstance(arr, np.ndarray) else arr
    t = t.float().div_(127.5).sub_(1.0)
    return t.permute(2, 0, 1) if t.dim() == 3 else t.permute(0, 3, 1, 2)


def tensor_to_uint8(t: torch.Tensor) -> np.ndarray:
    """CHW / NCHW float in [-1, 1] -> HWC / NHWC uint8 (rounded, clamped)."""
    t = t.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    t = t.permute(1, 2, 0) if t.dim() == 3 else t.permute(0, 2, 3, 1)
    return t.contiguous().numpy()


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    return uint8_to_tensor(image_to_uint8(im))


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(tensor_to_uint8(t), "RGB")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Permissions of files we write: the usual 0666 less the user's umask (mkstemp alone gives 0600).
_FILE_MODE = 0o666 & ~_umask()


def check_not_input(src: Path, target: Path, what: str = "the input") -> None:
    """Refuse an output that is an input file itself (``what`` names it in the message): ``--overwrite``
    replaces earlier results, never an input."""
    # samefile, not equal resolved paths: on macOS and Windows "In/a.png" and "in/a.png" are one file
    if target.exists() and os.path.samefile(target, src):
        raise InputError(f"{target}: is {what} itself; choose another --out")


def outputs_to_write(jobs: list[tuple], overwrite: bool, skip_existing: bool, skip_what: str) -> tuple[list, list]:
    """Of ``jobs`` ((input, output path) pairs), those to do and the outputs kept: existing outputs are refused
    unless ``overwrite`` (replaced) or ``skip_existing`` (kept: written atomically, an existing output is
    complete, so a run stopped by Ctrl-C continues). ``skip_what`` completes '--skip-existing to ...'."""
    if overwrite and skip_existing:
        raise InputError("--overwrite and --skip-existing contradict each other; pass one")
    kept = [] if overwrite else [t for _, t in jobs if Path(t).exists()]
    if kept and not skip_existing:
        more = f" (and {len(kept) - 1} more)" if len(kept) > 1 else ""
        raise InputError(f"{kept[0]}: already exists{more}; pass --overwrite to replace, --skip-existing to {skip_what}, "
                         "or choose another --out")
    done = set(kept)
    return [(i, t) for i, t in jobs if t not in done], kept


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file (tmp + fsync + rename)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once complete (tmp + fsync + rename), for
    contents too large to hold twice in memory as bytes (``np.save(f, array)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)  # by name: os.fchmod is POSIX-only (Windows has it from Python 3.13)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None:  # e.g. a full disk: say which file failed
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def save_png(im: Image.Image, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Save ``im`` as PNG atomically; refuses to replace an existing file unless ``overwrite``."""
    import io

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (pass --overwrite to replace it)")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
