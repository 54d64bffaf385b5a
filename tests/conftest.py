"""Shared fixtures: tiny synthetic pairs, tiny configurations and checkpoints (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

# One thread: tiny test models gain nothing from more, and two threads thrash on a shared 2-core machine.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthetic_color(seed: int, size: int = 64) -> Image.Image:
    """A flat-shaded 'character': coloured shapes with dark outlines on white."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = rng.integers(0, size // 2, 2)
        x1, y1 = x0 + rng.integers(size // 4, size // 2), y0 + rng.integers(size // 4, size // 2)
        fill = tuple(int(v) for v in rng.integers(40, 255, 3))
        d.ellipse([x0, y0, x1, y1], fill=fill, outline=(20, 20, 20), width=2)
    return im


def synthetic_sketch(color: Image.Image) -> Image.Image:
    arr = np.asarray(color.convert("L"))
    dark = arr < 60
    out = np.where(dark, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([out] * 3, -1))


def side_by_side(color: Image.Image, sketch: Image.Image) -> Image.Image:
    w, h = color.size
    im = Image.new("RGB", (2 * w, h))
    im.paste(color, (0, 0))
    im.paste(sketch, (w, 0))
    return im


@pytest.fixture
def make_pairs(tmp_path):
    """make_pairs(n, size=64, folder=None) -> folder of side-by-side PNGs (colour left, sketch right)."""

    def make(n: int = 8, size: int = 64, folder: Path | None = None, start: int = 0) -> Path:
        folder = folder or (tmp_path / "pairs")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            c = synthetic_color(i, size)
            side_by_side(c, synthetic_sketch(c)).save(folder / f"pair_{i:03d}.png")
        return folder

    return make


def tiny_config(method: str = "pix2pix", size: int = 64, **train):
    """A configuration small enough for CPU tests: 64px, depth 6, 8 base channels."""
    from ganime.config import make_config

    defaults = dict(batch_size=2, epochs=2, size=size, log_every=1)
    defaults.update(train)
    cfg = make_config(method, "small", **defaults)
    cfg.net.gen_base, cfg.net.disc_base, cfg.net.gen_depth = 8, 8, 6
    return cfg


def tiny_pairs(n: int = 8, size: int = 64) -> np.ndarray:
    arr = []
    for i in range(n):
        c = synthetic_color(i, size)
        arr.append(np.stack([np.asarray(synthetic_sketch(c)), np.asarray(c)]))
    return np.stack(arr)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A Pix2Pix checkpoint of a tiny model trained for two steps."""
    from ganime.train import Trainer

    out = tmp_path_factory.mktemp("run") / "run"
    cfg = tiny_config(epochs=1)
    Trainer(cfg, tiny_pairs(4), out, device="cpu", progress=False).fit()
    return out / "last.pt"


def one_line_error(capsys) -> str:
    """The captured stderr, asserted to be a single 'ganime: error:' line (no traceback)."""
    err = capsys.readouterr().err.strip()
    bars = ("colorize:", "prepare", "sketchify", "load cache")
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith(bars)]
    assert len(lines) == 1, err
    assert lines[0].startswith("ganime: error:"), err
    assert "Traceback" not in err
    return lines[0]


def pytest_collection_modifyitems(config, items):
    """GPU-only tests are skipped, with the reason, where no CUDA GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
