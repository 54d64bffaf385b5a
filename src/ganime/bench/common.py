"""Shared helpers of the benchmarks: interleaved timing, memory, the machine, synthetic Kaggle-layout data.

Every benchmark measures GANime's recipe ("ours") and the reference recipe of the pix2pix/CycleGAN
reference code in the same process, on the same device and weights, interleaved round by round, and
reports medians: on a shared machine the load changes from second to second, and interleaving makes
both recipes see the same load.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def median(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def check_counts(args, **minimums: int) -> None:
    """One InputError sentence for the first option under its minimum, e.g. ``check_counts(args, rounds=1)``:
    zero rounds or repetitions time nothing (medians of nothing, or a variable never set)."""
    from ganime.errors import InputError

    for name, least in minimums.items():
        value = getattr(args, name)
        if value < least:
            raise InputError(f"--{name.replace('_', '-')} {value}: must be at least {least}")


# ---- memory -----------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_MALLOC_SET = False


def precise_rss() -> None:
    """Make host RSS follow live memory: glibc then maps every block over 128 KiB separately and
    returns it on free (by default it keeps freed blocks up to 32 MiB, hiding later peaks)."""
    global _MALLOC_SET
    if _MALLOC_SET:
        return
    _MALLOC_SET = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic growth)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above the starting point while the block runs: CUDA allocator peak, or host RSS."""

    def __init__(self, device):
        self.device = device
        self.bytes = 0

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            precise_rss()
            self.ok = reset_peak_rss()
            self.start = rss_bytes() if self.ok else 0  # Windows has neither /proc nor the resource module
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.bytes = max(0, peak_rss_bytes() - self.start) if self.ok else 0


def mb(n: int) -> float:
    return round(n / 2**20, 1)


# ---- the machine ------------------------------------------------------------------------------------
def machine(device) -> dict:
    import torch

    info = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
    }
    try:
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # AttributeError: Windows has no load average
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now() -> float:
    return time.perf_counter()


# ---- synthetic Kaggle-layout data --------------------------------------------------------------------
def default_source() -> Path | None:
    """Real colour images to build pairs from: $GANIME_BENCH_IMAGES, else ../shared/data/anime-busts/train."""
    env = os.environ.get("GANIME_BENCH_IMAGES")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    for up in here.parents:
        candidates.append(up.parent / "shared" / "data" / "anime-busts" / "train")
    candidates.append(Path.cwd().parent / "shared" / "data" / "anime-busts" / "train")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def make_pairs(out: Path, n: int, side: int = 512, source: str | os.PathLike | None = None) -> dict:
    """Write ``n`` side-by-side PNGs (colour LEFT | sketch RIGHT, ``side`` x ``2*side``: the Kaggle layout).

    Colours are real illustrations from ``source`` (resized to ``side``, so PNG compression behaves
    like the real dataset's); sketches are the project's XDoG line art of them. Without a source,
    smooth synthetic paintings are used instead (and the result says so).
    """
    from PIL import Image

    from ganime.data.sketchify import sketchify_image
    from ganime.imageio import list_images, open_image

    out.mkdir(parents=True, exist_ok=True)
    src = Path(source) if source else default_source()
    files = list_images(src)[:n] if src and src.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(n):
        if files:
            im = open_image(files[i % len(files)]).resize((side, side), Image.BICUBIC)
            color = np.asarray(im)
        else:
            color = _smooth_painting(rng, side)
        sketch = sketchify_image(color, "xdog")
        Image.fromarray(np.concatenate([color, sketch], axis=1)).save(out / f"{i:05d}.png")
    return {"pairs": n, "png_size": f"{side}x{2 * side}", "source": str(src) if files else "synthetic"}


def _smooth_painting(rng, side: int) -> np.ndarray:
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    from PIL import Image

    return np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
