"""Paired data: the Kaggle side-by-side layout, other source layouts, and the prepared cache.

Source layouts understood by :func:`discover`:

(a) Kaggle "Anime Sketch Colorization Pair": ``SRC/train/*.png`` and ``SRC/val/*.png``, each file the
    colour drawing on the LEFT half and its sketch on the RIGHT half (512x1024 in the original);
(b) a flat folder of such side-by-side files (one split, ``train``);
(c) ``SRC/sketch/`` and ``SRC/color/`` (or ``colour``) holding files with matching names.

The cache written by :func:`prepare` is one folder: ``index.json`` plus uint8 shards
``{split}-{k:05d}-{key}.npy`` of shape (n, 2, S, S, 3) — ``[:, 0]`` the sketch, ``[:, 1]`` the colour —
so training memory-maps or loads them and never decodes an image per step. Each shard's name carries
a hash of its inputs, so an interrupted or repeated prepare reuses finished shards and never serves a
stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ganime.errors import InputError
from ganime.imageio import atomic_write, atomic_write_bytes, list_images, open_image

CACHE_FORMAT = "ganime-pairs"
CACHE_VERSION = 1
SHARD_SIZE = 1024


@dataclass(frozen=True)
class PairItem:
    """One training pair in a source folder: a side-by-side file, or two files."""

    name: str
    sbs: str | None = None
    sketch: str | None = None
    color: str | None = None

    def files(self) -> list[str]:
        return [self.sbs] if self.sbs else [self.sketch, self.color]


def split_side_by_side(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H x W x 3 side-by-side image -> (colour LEFT half, sketch RIGHT half); an odd middle column is dropped."""
    w = arr.shape[1]
    half = w // 2
    return arr[:, :half], arr[:, w - half :]


def discover(src: str | os.PathLike) -> tuple[str, dict[str, list[PairItem]]]:
    """Find the pairs under ``src``: returns (layout name, {split: [items]})."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: no such folder")
    if not src.is_dir():
        raise InputError(f"{src}: is a file, expected a folder of pairs")
    sub = {p.name.lower(): p for p in src.iterdir() if p.is_dir()}
    if "train" in sub or "val" in sub:
        splits = {}
        for name in ("train", "val"):
            if name in sub:
                splits[name] = [PairItem(p.name, sbs=str(p)) for p in list_images(sub[name])]
        return "kaggle", splits
    color_dir = sub.get("color") or sub.get("colour") or sub.get("colors") or sub.get("colours")
    sketch_dir = sub.get("sketch") or sub.get("sketches")
    if color_dir is not None and sketch_dir is not None:
        colors = {p.stem: p for p in list_images(color_dir)}
        items = [
            PairItem(p.name, sketch=str(p), color=str(colors[p.stem]))
            for p in list_images(sketch_dir)
            if p.stem in colors
        ]
        return "folders", {"train": items}
    return "flat", {"train": [PairItem(p.name, sbs=str(p)) for p in list_images(src)]}


def load_pair(item: PairItem, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair as (sketch, colour) uint8 H x W x 3 arrays, resized to ``size`` if given."""
    if item.sbs:
        arr = np.asarray(open_image(item.sbs))
        if arr.shape[1] < 2 * 8 or arr.shape[0] < 8:
            raise InputError(f"{item.sbs}: too small ({arr.shape[1]}x{arr.shape[0]}) for a side-by-side pair")
        color, sketch = split_side_by_side(arr)
    else:
        sketch, color = np.asarray(open_image(item.sketch)), np.asarray(open_image(item.color))
        (hs, ws), (hc, wc) = sketch.shape[:2], color.shape[:2]
        if abs(ws / hs - wc / hc) > 0.02 * max(ws / hs, wc / hc):  # resizing both to a square would misalign them
            raise InputError(f"{item.sketch}: sketch is {ws}x{hs} but its colour image {item.color} is {wc}x{hc}, "
                             "a different shape")
    if size is not None:
        sketch, color = resize_square(sketch, size), resize_square(color, size)
    return sketch, color


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return np.ascontiguousarray(arr)
    im = Image.fromarray(np.ascontiguousarray(arr))
    return np.asarray(im.resize((size, size), Image.BICUBIC, reducing_gap=None))


def stretched_note(stretched: list[str], size: int) -> str:
    """One line about the pairs (``'name (WxH halves)'``) whose non-square halves were stretched to a square."""
    more = f" and {len(stretched) - 1} more" if len(stretched) > 1 else ""
    what = "1 pair has" if len(stretched) == 1 else f"{len(stretched)} pairs have"
    return f"{what} non-square halves, stretched to {size}x{size}: {stretched[0]}{more}"


def _load_for_cache(args):
    """-> (name, stacked pair or None, why it was skipped or None, ``'name (WxH halves)'`` if its non-square
    halves were stretched to the square, else None: an entry of :func:`stretched_note`)."""
    item, size = args
    try:
        s, c = load_pair(item, None)
        h, w = c.shape[:2]
        stretched = f"{item.name} ({w}x{h} halves)" if abs(w - h) > 0.02 * max(w, h) else None
        s, c = resize_square(s, size), resize_square(c, size)
        return item.name, np.stack([s, c]), None, stretched
    except InputError as e:
        return item.name, None, str(e), None
    except Exception as e:  # keep going on anything a single file can throw
        return item.name, None, f"{item.files()[0]}: {type(e).__name__}: {e}", None


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Decoding processes that leave Ctrl-C to the main process: it reaches the whole process group, and a
    worker waiting for its next file printed a KeyboardInterrupt traceback of its own (two, with two workers,
    above 'ganime: interrupted'). Shut it down with ``cancel_futures=True`` so that an interrupt waits only for
    the files being read."""
    return ProcessPoolExecutor(workers, initializer=_ignore_interrupts)


def _shard_key(items: list[PairItem], size: int) -> str:
    h = hashlib.sha1(f"{CACHE_VERSION}:{size}".encode())
    for it in items:
        for f in it.files():
            st = os.stat(f)
            # surrogateescape: a name that is not UTF-8 as its bytes on disk (valid names hash as before)
            h.update(f"{it.name}|{f}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:12]


def prepare(src: str | os.PathLike, out: str | os.PathLike, size: int = 256, workers: int | None = None,
            progress: bool = True, shard_size: int = SHARD_SIZE) -> dict:
    """Decode, split, resize and store every pair under ``src`` into the cache folder ``out``.

    Returns the written index. Unreadable or odd files are skipped and listed in the index
    (``skipped``); pairs whose halves are not square are stretched to the square size, as pix2pix
    does, and listed (``stretched``); raises :class:`InputError` only when nothing usable was found.
    """
    from ganime.progress import progress_bar

    if size < 16 or size > 4096:
        raise InputError(f"--size {size}: must be between 16 and 4096")
    layout, splits = discover(src)
    total = sum(len(v) for v in splits.values())
    if total == 0:
        from ganime.data.download import find_split_root

        nested = find_split_root(Path(src))  # an unzipped Kaggle archive keeps train/ one level down (data/)
        where = f"; {nested} holds a train/ folder: prepare that one" if nested and nested != Path(src) else ""
        raise InputError(f"{src}: no image files found (expected side-by-side PNGs, train/ and val/, or sketch/ and "
                         f"color/){where}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if Path(src).resolve() in out.resolve().parents:  # e.g. SRC/val: a new split of cache files next time
        raise InputError(f"{out}: is inside the source folder {src}; a later prepare or evaluation could read it "
                         "as part of the data: choose another output folder")
    if out.is_dir() and not _is_cache_folder(out):
        raise InputError(f"{out}: folder is not empty and is not a GANime cache; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1

    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "size": size, "layout": layout,
             "source": str(Path(src).resolve()), "splits": {}, "skipped": [], "stretched": []}
    keep: set[str] = set()
    bar = progress_bar(total=total, desc=f"prepare {size}px", unit="img", disable=not progress)
    pool = worker_pool(workers) if workers > 1 else None
    try:
        for split, items in splits.items():
            shards, count = [], 0
            for k in range(0, len(items), shard_size):
                chunk = items[k : k + shard_size]
                key = _shard_key(chunk, size)
                fname = f"{split}-{k // shard_size:05d}-{key}.npy"
                names_file = out / (fname[:-4] + ".json")
                if (out / fname).exists() and names_file.exists():  # finished earlier: reuse
                    meta = json.loads(names_file.read_text())
                    bar.update(len(chunk))
                else:
                    jobs = [(it, size) for it in chunk]
                    results = pool.map(_load_for_cache, jobs, chunksize=8) if pool else map(_load_for_cache, jobs)
                    # each pair goes straight into the shard, which is written from there: one shard in memory
                    data = np.empty((len(chunk), 2, size, size, 3), np.uint8)
                    names, skipped, stretched = [], [], []
                    for name, arr, err, note in results:
                        bar.update(1)
                        if arr is None:
                            skipped.append(err)
                        else:
                            data[len(names)] = arr
                            names.append(name)
                            if note:
                                stretched.append(note)
                    atomic_write(out / fname, lambda f: np.save(f, data[: len(names)]))
                    del data
                    meta = {"names": names, "skipped": skipped, "stretched": stretched}
                    atomic_write_bytes(names_file, json.dumps(meta).encode())
                keep.update({fname, names_file.name})
                index["skipped"].extend(meta["skipped"])
                index["stretched"].extend(meta.get("stretched", []))
                if meta["names"]:
                    shards.append({"file": fname, "count": len(meta["names"]), "names": meta["names"]})
                    count += len(meta["names"])
            index["splits"][split] = {"count": count, "shards": shards}
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)  # after Ctrl-C: the files being read finish, no more start
    usable = sum(s["count"] for s in index["splits"].values())
    index["count"] = usable
    if usable == 0:
        raise InputError(
            f"{src}: none of the {total} image files could be used ({index['skipped'][0] if index['skipped'] else ''})"
        )
    atomic_write_bytes(out / "index.json", json.dumps(index, indent=1).encode())
    # Shards of earlier runs that no longer belong to the index are ours to remove (nothing else is).
    for p in out.iterdir():
        if _ours(p.name) and p.name not in keep and p.name != "index.json":
            p.unlink()
    return index


#: A shard or its names file, as :func:`prepare` names them: ``{split}-{k:05d}-{key}.npy`` / ``.json``.
SHARD_NAME = re.compile(r"[A-Za-z]+-\d{5}-[0-9a-f]{12}\.(npy|json)")


def _ours(name: str) -> bool:
    """A file prepare writes: a shard, its names, or one's temporary left by a killed prepare."""
    if name.startswith(".") and name.endswith(".tmp"):  # atomic_write: .{name}.XXXXXXXX.tmp
        name = name[1:].rsplit(".", 2)[0]
    return name == "index.json" or bool(SHARD_NAME.fullmatch(name))


def _is_cache_folder(out: Path) -> bool:
    """Empty, a finished cache (its index.json is ours), or an interrupted prepare (only our shards)."""
    try:
        if json.loads((out / "index.json").read_text()).get("format") == CACHE_FORMAT:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    return all(_ours(p.name) for p in out.iterdir())


class PairCache:
    """A prepared cache folder (see :func:`prepare`), read through memory maps."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        idx = self.path / "index.json"
        if not self.path.exists():
            raise InputError(f"{self.path}: no such data folder")
        if not idx.exists():
            if self.path.is_dir() and any(discover(self.path)[1].values()):  # the pairs themselves: prepare into
                # another folder (prepare refuses to write a cache into a folder of images)
                raise InputError(f"{self.path}: is a folder of pairs, not a prepared cache; run 'ganime data prepare "
                                 f"{self.path} CACHE' and give CACHE instead")
            raise InputError(
                f"{self.path}: not a prepared cache (no index.json); run 'ganime data prepare SRC {self.path}' first"
            )
        try:
            self.index = json.loads(idx.read_text())
        except ValueError:
            raise InputError(f"{idx}: corrupt cache index (not JSON); run 'ganime data prepare' again") from None
        if self.index.get("format") != CACHE_FORMAT:
            raise InputError(f"{idx}: not a GANime pairs cache")
        self.size = int(self.index["size"])

    @property
    def splits(self) -> list[str]:
        return [s for s, v in self.index["splits"].items() if v["count"]]

    def count(self, split: str | None = None) -> int:
        if split is None:
            return int(self.index["count"])
        return int(self.index["splits"].get(split, {}).get("count", 0))

    def names(self, split: str) -> list[str]:
        return [n for sh in self._split(split)["shards"] for n in sh["names"]]

    def fingerprint(self, split: str | None = None) -> str:
        """What the pairs of ``split`` (default: every split) are, cheaply, from the index alone: their number
        and a hash of their names in order. A cache moved, or prepared again from the same files, keeps it."""
        names = [n for s in ([split] if split else self.splits) for n in self.names(s)]
        digest = hashlib.sha1("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()[:12]
        return f"{len(names)} pairs, names sha1 {digest}"

    def _split(self, split: str) -> dict:
        if split not in self.index["splits"] or not self.index["splits"][split]["count"]:
            raise InputError(f"{self.path}: cache has no {split!r} split (has: {', '.join(self.splits)})")
        return self.index["splits"][split]

    def arrays(self, split: str) -> list[np.ndarray]:
        """Memory-mapped (n, 2, S, S, 3) uint8 shards of ``split``."""
        out = []
        for sh in self._split(split)["shards"]:
            f = self.path / sh["file"]
            try:
                a = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(f"{f}: unreadable cache shard ({e}); run 'ganime data prepare' again") from None
            if a.shape[1:] != (2, self.size, self.size, 3) or a.shape[0] != sh["count"]:
                raise InputError(f"{f}: cache shard has shape {a.shape}, index expects ({sh['count']}, 2, {self.size}, {self.size}, 3)")
            out.append(a)
        return out

    def load(self, split: str | None = None, progress: bool = False) -> np.ndarray:
        """All pairs of ``split`` (default: every split) as one in-memory (N, 2, S, S, 3) uint8 array.
        ``progress``: a bar over the pairs read (the full Kaggle training split is 5.6 GB at 256 px: tens of
        seconds from a disk before training shows anything)."""
        from ganime.progress import progress_bar

        arrays = [a for s in ([split] if split else self.splits) for a in self.arrays(s)]
        out = np.empty((sum(len(a) for a in arrays), 2, self.size, self.size, 3), np.uint8)
        with progress_bar(total=len(out), desc="load cache", unit="pair", disable=not progress, leave=False) as bar:
            i = 0
            for a in arrays:
                for k in range(0, len(a), 256):  # 100 MB at a time at 256 px, so that the bar moves
                    part = a[k : k + 256]
                    out[i : i + len(part)] = part
                    i += len(part)
                    bar.update(len(part))
        return out


def open_pairs(path: str | os.PathLike, size: int = 256, split: str | None = None,
               select=None, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """Pairs from a prepared cache or a folder of side-by-side files, as ((N, 2, S, S, 3) uint8, names).

    ``select(total) -> indices``, if given, keeps only those of the ``total`` pairs (of a folder: files
    found; an unreadable one chosen is skipped); only they are read and resized (a full Kaggle cache is
    7 GB at 256 px, 28 GB as float to resize; its val/ folder 3,545 PNGs of 512x1024).
    Used by evaluation; unreadable files in a folder are skipped with a warning on stderr. ``progress``:
    a bar over a folder's files (Kaggle's val/ takes a minute or two to decode).
    """
    p = Path(path)
    if (p / "index.json").exists():
        cache = PairCache(p)
        splits = [split] if split else cache.splits
        names = [n for s in splits for n in cache.names(s)]
        arrays = [a for s in splits for a in cache.arrays(s)]  # memory-mapped
        if not names:
            raise InputError(f"{p}: cache holds no pairs")
        if select is None:
            arr = np.concatenate(arrays, axis=0)
        else:
            idx = np.asarray(select(len(names)), dtype=np.int64)
            starts = np.cumsum([0] + [len(a) for a in arrays])
            shard = np.searchsorted(starts, idx, side="right") - 1
            arr = np.stack([arrays[k][i - starts[k]] for i, k in zip(idx, shard)])
            names = [names[i] for i in idx]
        if cache.size != size:
            import torch
            import torch.nn.functional as F

            out = np.empty((len(arr), 2, size, size, 3), np.uint8)
            for i in range(0, len(arr), 256):  # a chunk at a time: float copies of the whole set need not fit
                t = torch.from_numpy(np.asarray(arr[i : i + 256])).float()
                t = t.reshape(-1, cache.size, cache.size, 3).permute(0, 3, 1, 2)
                t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
                out[i : i + 256] = t.round().clamp(0, 255).byte().permute(0, 2, 3, 1).reshape(-1, 2, size, size, 3).numpy()
            arr = out
        return arr, names
    _, splits = discover(p)
    if split and not splits.get(split):
        found = ", ".join(s for s, v in splits.items() if v) or "none"
        raise InputError(f"{p}: folder has no {split!r} split (has: {found})")
    items = splits.get(split, []) if split else [i for v in splits.values() for i in v]
    if select is not None and items:  # only the chosen files are decoded (an unreadable one among them is skipped)
        items = [items[i] for i in select(len(items))]
    arrays, names, stretched = [], [], []
    # PIL releases the GIL while decoding and resizing, so threads scale without pickling the pixels
    workers = min(8, os.cpu_count() or 1) if len(items) > 16 else 1
    from ganime.progress import progress_bar

    with ThreadPoolExecutor(workers) as ex, progress_bar(total=len(items), desc="read pairs", unit="pair",
                                                         disable=not progress or len(items) <= 16, leave=False) as bar:
        for name, arr, err, note in ex.map(_load_for_cache, [(it, size) for it in items]):
            bar.update(1)
            if err is not None:
                bar.write(f"ganime: warning: skipped {err}", file=sys.stderr)
                continue
            arrays.append(arr)
            names.append(name)
            if note:
                stretched.append(note)
    if stretched:
        print(f"ganime: warning: {stretched_note(stretched, size)}", file=sys.stderr)
    if not arrays:
        raise InputError(f"{p}: no usable pairs found")
    return np.stack(arrays), names
