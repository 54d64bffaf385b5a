"""``ganime data sketchify``: turn colour illustrations into side-by-side training pairs.

Each output file is ``colour | sketch`` side by side (the Kaggle layout), so the result can be fed
to ``ganime data prepare`` like the real dataset. Outputs that already exist are kept (reruns only
fill in what is missing; ``OUT/.sketchify.json`` records the settings, and a rerun with others is refused
rather than mixing two kinds of pairs); the extractor and its parameters are drawn from ``--seed`` and the file's
name, so a rerun produces the same pairs, whatever other files SRC holds then.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganime.data.sketch import EXTRACTORS, PARAM_RANGES, extract, random_extract
from ganime.data.loader import step_seed
from ganime.data.pairs import worker_pool
from ganime.errors import InputError
from ganime.imageio import atomic_write_bytes, list_images, open_image, save_png

#: The settings of the pairs in an output folder, for reruns to check.
SETTINGS_FILE = ".sketchify.json"


def sketchify_image(img: np.ndarray, extractor: str = "random", seed: int = 0, params: dict | None = None) -> np.ndarray:
    """H x W x 3 uint8 colour -> H x W x 3 uint8 sketch."""
    t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if extractor == "random":
            s = random_extract(t, generator=g)
        else:
            if extractor not in EXTRACTORS:
                raise InputError(f"unknown extractor {extractor!r}: choose one of {', '.join(EXTRACTORS)}, or random")
            if params is None:
                params = {k: (lo + hi) / 2 for k, (lo, hi) in PARAM_RANGES[extractor].items()}
            s = extract(t, extractor, **params)
    return (s[0].permute(1, 2, 0) * 255).round().clamp(0, 255).byte().numpy()


def _sketchify_one(job) -> str | None:
    """Worker: write one pair file; returns an error sentence or None."""
    path, target, extractor, seed, size = job
    torch.set_num_threads(1)
    try:
        im = open_image(path)
    except InputError as e:
        return str(e)
    if size:
        im = im.resize((size, size), Image.BICUBIC)
    color = np.array(im)
    try:
        sketch = sketchify_image(color, extractor, seed)
    except (MemoryError, RuntimeError) as e:  # torch says "can't allocate memory" as a RuntimeError
        if isinstance(e, RuntimeError) and "alloc" not in str(e):
            raise
        return f"{path}: {im.width}x{im.height} is too large to sketchify in this memory; pass --size (e.g. 1024)"
    save_png(Image.fromarray(np.concatenate([color, sketch], axis=1)), target, overwrite=True)  # target is new
    return None


def _name_key(name: str) -> int:
    """A stable 63-bit integer for a file name (the per-file part of its seed): of its bytes on disk, so a
    name that is not UTF-8 (its undecodable bytes are surrogates in ``name``) has one too."""
    return int.from_bytes(hashlib.sha1(os.fsencode(name)).digest()[:8], "big") >> 1


def _flags(settings: dict) -> str:
    """The command-line options of recorded settings: ``--extractor xdog --size 256``."""
    return " ".join(f"--{k} {v}" for k, v in settings.items() if v is not None) or "no options"


def sketchify_folder(src, out, extractor: str = "random", seed: int = 0, size: int | None = None,
                     progress: bool = True, workers: int | None = None) -> dict:
    """Write ``out/<stem>.png`` = colour|sketch for every image in ``src``; returns counts and failures
    (``clashes``: files skipped because an earlier one by name has their stem, as ``a.jpg`` and ``a.png``;
    ``unrecorded``: PNGs ``out`` held with no record of their settings, kept but unchecked).

    The extractor and parameters of a file depend only on (seed, its name), whatever was done before
    and whatever else ``src`` holds.
    """
    from ganime.progress import progress_bar

    if extractor != "random" and extractor not in EXTRACTORS:
        raise InputError(f"unknown extractor {extractor!r}: choose one of {', '.join(EXTRACTORS)}, or random")
    if size is not None and not 16 <= size <= 4096:
        raise InputError(f"--size {size}: must be between 16 and 4096")
    src, out = Path(src), Path(out)
    if not src.exists():
        raise InputError(f"{src}: no such folder")
    if out.exists() and os.path.samefile(out, src.parent if src.is_file() else src):  # also "Busts" for "busts" on macOS
        raise InputError(f"{out}: is the source folder; write the pairs to another folder")
    files = [src] if src.is_file() else list_images(src)
    if not files:
        raise InputError(f"{src}: no image files found")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    settings = {"extractor": extractor, "size": size, **({"seed": seed} if extractor == "random" else {})}
    saved = out / SETTINGS_FILE
    recorded = saved.exists()
    pngs = sum(1 for _ in out.glob("*.png")) if out.is_dir() else 0
    unrecorded = 0 if recorded else pngs
    if recorded and pngs:  # settings alone (a run stopped before its first pair) bind nothing
        try:
            before = json.loads(saved.read_text())
        except ValueError:  # damaged: nothing known to compare with
            before = settings
        if before != settings:
            raise InputError(f"{out}: holds pairs made with {_flags(before)}, not {_flags(settings)}; rerun with "
                             "those to complete it, or write to another folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(saved, json.dumps(settings).encode())
    jobs, taken, clashes = [], {}, []
    for f in files:
        target = out / f"{f.stem}.png"
        key = target.name.casefold()  # A.png and a.png: one file on macOS and Windows, which ignore case
        if key in taken:  # a.jpg and a.png: one pair file; the first by name keeps it
            clashes.append(f"{f}: same name as {taken[key].name}, whose pair is {target}; rename one to keep both")
            continue
        taken[key] = f
        jobs.append((f, target, extractor, step_seed(seed, _name_key(f.name)), size))
    todo = [j for j in jobs if not j[1].exists()]
    kept = len(jobs) - len(todo)
    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = progress_bar(total=len(todo), desc="sketchify", unit="img", disable=not progress)
    failed = []
    pool = worker_pool(workers) if workers > 1 else None
    try:
        results = pool.map(_sketchify_one, todo, chunksize=4) if pool else map(_sketchify_one, todo)
        for err in results:
            bar.update(1)
            if err:
                failed.append(err)
    except BrokenProcessPool:  # a worker killed, by the system's out-of-memory killer most likely
        raise InputError(f"a sketchify process was killed (out of memory on a large image?) after {bar.n} of "
                         f"{len(todo)} images; the pairs written are kept: rerun with --size (e.g. 1024)") from None
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    written = len(todo) - len(failed)
    if written + kept == 0:
        raise InputError(f"{src}: none of the {len(files)} images could be read ({failed[0] if failed else ''})")
    return {"written": written, "kept": kept, "failed": failed, "clashes": clashes, "unrecorded": unrecorded}
