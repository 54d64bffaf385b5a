"""``ganime benchmark data``: ``ganime data prepare`` throughput, and the training loader vs the reference.

prepare: images/s decoding, splitting and resizing side-by-side PNGs into the uint8 cache, with all
cores (the default) and, for comparison, with one process. Each round writes a fresh cache.
loader: augmented training batches/s of :class:`~ganime.data.loader.PairLoader` (in-memory cache,
jitter on the device) vs the reference DataLoader (per-sample PIL decode + resize + crop + flip in
``--workers`` processes, :mod:`ganime.bench.reference`), interleaved round by round.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ganime.bench.common import check_counts, log, machine, make_pairs, median, sync


def run(args) -> dict:
    from ganime.data.loader import PairLoader
    from ganime.data.pairs import PairCache, prepare
    from ganime.imageio import list_images
    from ganime.train import resolve_device

    from ganime.bench.reference import forever, reference_gate, reference_loader
    from ganime.bench.train import _our_batches

    check_counts(args, batch_size=1, batches=1, rounds=1, workers=0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cores = args.prepare_workers or os.cpu_count() or 1
    B, S = args.batch_size, args.size
    load = int(round(S * 286 / 256))
    n = max(args.pairs, B)
    with tempfile.TemporaryDirectory(prefix="ganime-bench-") as tmp:
        tmp = Path(tmp)
        log(f"benchmark data: writing {n} side-by-side PNGs ({args.png_size}x{2 * args.png_size})")
        made = make_pairs(tmp / "png", n, args.png_size, args.source)
        png_mb = sum(f.stat().st_size for f in (tmp / "png").iterdir()) / 2**20

        prep = {"all_cores": [], "one_process": []}
        for r in range(args.rounds):
            for name, workers in (("all_cores", cores), ("one_process", 1)):
                out = tmp / f"cache-{name}-{r}"
                t0 = time.perf_counter()
                prepare(tmp / "png", out, size=S, workers=workers, progress=False)
                prep[name].append(n / (time.perf_counter() - t0))
                log(f"benchmark data: prepare round {r + 1} {name:>11}: {prep[name][-1]:7.1f} img/s")
                if r < args.rounds - 1:
                    shutil.rmtree(out)
        cache = tmp / f"cache-all_cores-{args.rounds - 1}"
        pairs = PairCache(cache).load()
        files = list_images(tmp / "png")
        gate = reference_gate()  # the reference's workers decode only in its own rounds
        loaders = {
            "ours": _our_batches(PairLoader(pairs, B, device, seed=0, size=S, load_size=load, flip=True)),
            "reference": forever(reference_loader(files, B, S, load, args.workers, device, gate), device),
        }
        for it in loaders.values():  # warm-up: worker start-up, first allocations
            next(it)
        rates = {k: [] for k in loaders}
        for r in range(args.rounds):
            for name, it in loaders.items():
                gate.set() if name == "reference" else gate.clear()
                sync(device)
                t0 = time.perf_counter()
                for _ in range(args.batches):
                    batch = next(it)
                sync(device)
                rates[name].append(args.batches * B / (time.perf_counter() - t0))
                log(f"benchmark data: loader round {r + 1} {name:>9}: {rates[name][-1]:8.1f} img/s")
            assert batch["sketch"].shape == (B, 3, S, S)
    p = {k: round(median(v), 1) for k, v in prep.items()}
    ld = {k: round(median(v), 1) for k, v in rates.items()}
    return {
        "benchmark": "data",
        "prepare_img_s": p["all_cores"], "prepare_one_process_img_s": p["one_process"],
        "prepare_workers": cores, "prepare_speedup": round(p["all_cores"] / p["one_process"], 2),
        "ours_img_s": ld["ours"], "reference_img_s": ld["reference"], "ratio": round(ld["ours"] / ld["reference"], 2),
        "ours_batches_s": round(ld["ours"] / B, 2), "reference_batches_s": round(ld["reference"] / B, 2),
        "reference_workers": args.workers, "batch_size": B, "size": S, "load_size": load,
        "pairs": n, "png_size": made["png_size"], "png_mb": round(png_mb, 1), "pairs_source": made["source"],
        "rounds": args.rounds, **machine(device),
    }
