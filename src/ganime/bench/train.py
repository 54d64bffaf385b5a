"""``ganime benchmark train``: Pix2Pix training images/s end to end, ours vs the reference recipe.

Ours: the prepared uint8 cache in memory (on the GPU when it fits), jitter on the device
(:class:`ganime.data.loader.PairLoader`), bf16 autocast + channels-last + fused Adam on CUDA
(``Method``), optional ``--compile``; no host synchronisation inside a round.
Reference: the same networks and losses in float32, NCHW, eager, plain Adam, fed by a DataLoader that
decodes and jitters each 512x1024 PNG with PIL in worker processes (:mod:`ganime.bench.reference`).

Both run in the same process on the same device, round after round (``--steps`` each), and the
medians over rounds are reported. One step = generator forward, discriminator step, generator step.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import torch

from ganime.bench.common import PeakMemory, check_counts, log, machine, make_pairs, mb, median, sync


def _our_batches(loader):
    gs = 0
    for epoch in itertools.count():
        for _, batch in loader.epoch(epoch, 0, gs):
            gs += 1
            yield batch


def run(args) -> dict:
    from ganime.config import make_config
    from ganime.data.loader import PairLoader
    from ganime.data.pairs import PairCache, prepare
    from ganime.imageio import list_images
    from ganime.methods import get_method
    from ganime.train import resolve_device

    from ganime.bench.reference import forever, reference_gate, reference_loader

    check_counts(args, steps=1, rounds=1, workers=0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    B, S = args.batch_size, args.size
    load = int(round(S * 286 / 256))
    cfg = make_config("pix2pix", args.preset, batch_size=B, size=S).validate()
    n_pairs = max(args.pairs, B)
    with tempfile.TemporaryDirectory(prefix="ganime-bench-") as tmp:
        tmp = Path(tmp)
        log(f"benchmark train: writing {n_pairs} side-by-side PNGs ({args.png_size}x{2 * args.png_size})")
        made = make_pairs(tmp / "png", n_pairs, args.png_size, args.source)
        prepare(tmp / "png", tmp / "cache", size=S, progress=False)
        pairs = PairCache(tmp / "cache").load()
        files = list_images(tmp / "png")

        torch.manual_seed(0)
        ours = get_method("pix2pix")(cfg, device)
        if args.compile:
            for k in ours.models:
                ours.models[k] = torch.compile(ours.models[k])
        our_data = _our_batches(PairLoader(pairs, B, device, seed=0, size=S, load_size=load, flip=True))
        recipes = {"ours": (ours, our_data)}
        gate = reference_gate()  # the reference's workers decode only in its own rounds
        if not args.no_reference:
            ref_cfg = make_config("pix2pix", args.preset, batch_size=B, size=S, amp=False, channels_last=False)
            torch.manual_seed(0)
            ref = get_method("pix2pix")(ref_cfg, device)
            t = ref_cfg.train
            for k, m in ref.models.items():  # the reference's plain Adam (not fused)
                ref.optimizers[k] = torch.optim.Adam(m.parameters(), lr=t.lr, betas=(t.beta1, t.beta2))
            ref_data = forever(reference_loader(files, B, S, load, args.workers, device, gate), device)
            recipes["reference"] = (ref, ref_data)

        for name, (method, data) in recipes.items():  # warm-up (worker start-up, allocator, compile)
            gate.set() if name == "reference" else gate.clear()
            method.train_mode(True)
            for _ in range(args.warmup):
                method.train_step(next(data))
            sync(device)
        rates = {k: [] for k in recipes}
        peaks = {k: 0 for k in recipes}
        for r in range(args.rounds):
            for name, (method, data) in recipes.items():
                gate.set() if name == "reference" else gate.clear()
                with PeakMemory(device) as pm:
                    sync(device)
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        losses = method.train_step(next(data))
                    sync(device)
                    dt = time.perf_counter() - t0
                peaks[name] = max(peaks[name], pm.bytes)
                rates[name].append(args.steps * B / dt)
                log(f"benchmark train: round {r + 1} {name:>9}: {rates[name][-1]:8.2f} img/s")
            assert all(torch.isfinite(v).all() for v in losses.values())
    ips = {k: round(median(v), 2) for k, v in rates.items()}
    result = {
        "benchmark": "train", "ours_img_s": ips["ours"], "reference_img_s": ips.get("reference"),
        "ratio": round(ips["ours"] / ips["reference"], 2) if "reference" in ips else None,
        "preset": args.preset, "batch_size": B, "size": S, "load_size": load, "steps": args.steps,
        "rounds": args.rounds, "reference_workers": args.workers, "compile": args.compile,
        "amp_bf16": device.type == "cuda" and cfg.train.amp, "channels_last": device.type == "cuda",
        "shapes": {"sketch": [B, 3, S, S], "color": [B, 3, S, S], "png": made["png_size"]},
        "pairs": n_pairs, "pairs_source": made["source"],
        "peak_memory_mb": {k: mb(v) for k, v in peaks.items()},
        "memory_kind": "cuda allocator peak" if device.type == "cuda" else "host RSS peak above the round's start",
        **machine(device),
    }
    return result
