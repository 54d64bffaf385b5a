"""``ganime benchmark eval``: seconds for SSIM + FID + KID over N generated/real pairs, ours vs the usual recipe.

The issue's target is the whole Kaggle validation split (3,545 pairs) in under 60 s on one GPU. Both
recipes compute the same metrics (tf.image.ssim settings; TF-Inception pool features after clean-fid's
resize; FID; KID with 100 subsets of 1000) on the same images, in the same run, and the benchmark checks
that their numbers agree. Times are per stage, from uint8 images in memory (decoding the PNGs is the data
benchmark's business; the real set's features are computed, not read from the cache):

- ours (``ganime.metrics`` as ``ganime evaluate`` runs it): SSIM in float64 on the device, 128 images a
  batch on a GPU; the clean resize on the device (torch's anti-aliased bicubic); Inception in batches of
  250 on a GPU (32 on the CPU); FID's trace root from two symmetric eigendecompositions on the device; KID
  from the full kernels, built once on the device.
- reference (clean-fid / torch-fidelity habits): SSIM per image pair on the CPU; PIL's resize per image and
  channel in the main process, Inception in batches of 32 on the device; ``scipy.linalg.sqrtm``; KID
  kernels recomputed for each subset (NumPy).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ganime.bench.common import PeakMemory, check_counts, default_source, log, machine, mb, sync


def _images(args, n: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(real, fake) uint8 NHWC: the colour halves of --data, else real illustrations from --source; the
    "generated" set is the real one degraded (blurred, colour-shifted, noisy), so FID/KID are non-trivial."""
    if args.data:
        from ganime.evaluate import load_pairs

        pairs, _, _ = load_pairs(args.data, size, n=n, seed=0)
        real, origin = pairs[:, 1], f"{args.data} (colour halves)"
    else:
        from ganime.data.pairs import resize_square
        from ganime.imageio import list_images, open_image

        src = args.source or default_source()
        files = list_images(src) if src else []
        if files:
            def load(i: int) -> np.ndarray:
                a = resize_square(np.asarray(open_image(files[i % len(files)])), size)
                return a[:, ::-1] if (i // len(files)) % 2 else a  # mirrored on a second pass

            with ThreadPoolExecutor(8) as ex:
                real = np.stack(list(ex.map(load, range(n))))
            origin = f"{src} ({len(files)} files{', mirrored copies' if n > len(files) else ''})"
        else:
            rng = np.random.default_rng(0)
            small = torch.from_numpy(rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)).float()
            real = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic").clamp(0, 255)
            real = real.round().byte().permute(0, 2, 3, 1).numpy()
            origin = "synthetic smooth paintings"
    t = torch.from_numpy(np.ascontiguousarray(real)).permute(0, 3, 1, 2).float()
    g = torch.Generator().manual_seed(0)
    blur = torch.nn.functional.avg_pool2d(t, 5, stride=1, padding=2, count_include_pad=False)
    fake = blur * torch.tensor([0.9, 1.0, 1.1]).view(1, 3, 1, 1) + 12 + 6 * torch.randn(t.shape, generator=g)
    fake = fake.clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()
    return np.ascontiguousarray(real), fake, origin


def _stage_timer(device, stages: dict, label: str | None = None):
    """timed(name, fn): run fn, record its seconds (device synchronised) in stages[name], return its value;
    with a ``label``, say when each stage starts (a round over 3,545 images takes minutes on a CPU)."""

    def timed(name, fn):
        if label:
            log(f"benchmark eval: {label}: {name} ...")
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        stages[name] = time.perf_counter() - t0
        return out

    return timed


def _ours(fake, real, device, stages: dict, label: str | None = None) -> dict:
    from ganime.metrics import InceptionFeatures, fid_from_features, kid_from_features, ssim

    timed = _stage_timer(device, stages, label)
    s = timed("ssim", lambda: ssim(fake, real, device=device))
    feats = InceptionFeatures(device=device)
    f_fake = timed("features", lambda: feats(fake))
    f_real = timed("features_real", lambda: feats(real))
    fid = timed("fid", lambda: fid_from_features(f_fake, f_real, device=device))
    kid = timed("kid", lambda: kid_from_features(f_fake, f_real, device=device))
    return {"ssim_mean": float(s.mean()), "fid": fid, "kid_mean": kid[0]}


def _reference(fake, real, device, stages: dict, label: str | None = None) -> dict:
    from ganime.metrics import fid_from_features, kid_from_features, load_inception, ssim
    from ganime.metrics.fid import resize_clean_pil

    def features(images: np.ndarray) -> np.ndarray:
        net = load_inception(str(device))
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), 32):
                batch = resize_clean_pil(x[i : i + 32].contiguous()).to(device) / 128.0 - 1.0
                out.append(net(batch).reshape(batch.shape[0], -1).double().cpu().numpy())
        return np.concatenate(out)

    timed = _stage_timer(device, stages, label)
    s = timed("ssim", lambda: torch.cat([ssim(fake[i], real[i], device="cpu") for i in range(len(fake))]))
    f_fake = timed("features", lambda: features(fake))
    f_real = timed("features_real", lambda: features(real))
    fid = timed("fid", lambda: fid_from_features(f_fake, f_real, method="sqrtm"))
    kid = timed("kid", lambda: kid_from_features(f_fake, f_real, method="subsets"))
    return {"ssim_mean": float(s.mean()), "fid": fid, "kid_mean": kid[0]}


def run(args) -> dict:
    from ganime.errors import InputError
    from ganime.metrics import InceptionFeatures, load_inception
    from ganime.train import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 2:
        raise InputError(f"--n {args.n}: FID and KID need at least 2 images")
    check_counts(args, rounds=1)
    device = resolve_device(args.device)
    real, fake, origin = _images(args, args.n, args.size)
    n = len(real)
    log(f"benchmark eval: {n} pairs at {args.size}px from {origin}, device {device}")
    load_inception(str(device))  # load and warm both paths on 2 images (not timed)
    _ours(fake[:2], real[:2], device, {})
    warm = InceptionFeatures(device=device)  # and Inception's first full batches, ours' and the reference's 32:
    for b in {warm.batch_size, 32}:  # a new shape's first call costs seconds more on the CPU
        warm(fake[:b])
    recipes = {"ours": _ours} if args.no_reference else {"ours": _ours, "reference": _reference}
    times = {k: [] for k in recipes}
    stages = {k: {} for k in recipes}
    values, peak = {}, {}
    for r in range(args.rounds):
        for name, fn in recipes.items():
            st: dict = {}
            with PeakMemory(device) as pm:
                t0 = time.perf_counter()
                values[name] = fn(fake, real, device, st, f"round {r + 1} {name}")
                times[name].append(time.perf_counter() - t0)
            peak[name] = max(peak.get(name, 0), pm.bytes)
            stages[name] = st
            log(f"benchmark eval: round {r + 1} {name:>9}: {times[name][-1]:8.2f} s  "
                + "  ".join(f"{k} {v:.2f}" for k, v in st.items()))
    result = {"benchmark": "eval", "n": n, "size": args.size, "images_from": origin, "rounds": args.rounds}
    ours_s = float(np.median(times["ours"]))
    result.update({"ours_s": round(ours_s, 2), "ours_img_s": round(n / ours_s, 1),
                   "ours_stages_s": {k: round(v, 3) for k, v in stages["ours"].items()},
                   "ours_peak_memory_mb": mb(peak["ours"]),
                   **{f"ours_{k}": v for k, v in values["ours"].items()}})
    if "reference" in times:
        ref_s = float(np.median(times["reference"]))
        o, ref = values["ours"], values["reference"]
        agree = {
            "ssim_mean_abs_diff": abs(o["ssim_mean"] - ref["ssim_mean"]),
            "fid_rel_diff": abs(o["fid"] - ref["fid"]) / max(abs(ref["fid"]), 1e-12),
            "kid_mean_abs_diff": abs(o["kid_mean"] - ref["kid_mean"]),
        }
        # the resize differs by round-off only (< 0.01 of 255), everything else is the same arithmetic
        match = agree["ssim_mean_abs_diff"] < 1e-9 and agree["fid_rel_diff"] < 1e-3 and agree["kid_mean_abs_diff"] < 1e-4
        result.update({"reference_s": round(ref_s, 2), "reference_img_s": round(n / ref_s, 1),
                       "ratio": round(ref_s / ours_s, 2),
                       "reference_stages_s": {k: round(v, 3) for k, v in stages["reference"].items()},
                       "reference_peak_memory_mb": mb(peak["reference"]),
                       **{f"reference_{k}": v for k, v in ref.items()},
                       **{k: float(f"{v:.3g}") for k, v in agree.items()}, "outputs_match": match})
    result.update(machine(device))
    return result
