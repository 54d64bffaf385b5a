"""KID (Binkowski et al., 2018): the unbiased MMD^2 between two feature sets with the cubic polynomial
kernel ``k(x, y) = (x . y / d + 1)^3``, estimated on random subsets.

Unlike FID, KID is unbiased, so it is meaningful on a few hundred images; its expectation is 0 when both
sets come from one distribution (single estimates may then be slightly negative). Mean and std are over
``num_subsets`` subsets of ``subset_size`` vectors drawn without replacement from each set, with a seeded
generator, as in clean-fid and torch-fidelity (subset size 1000 clipped to the smaller set, 100 subsets).

Speed: the reference implementations recompute three m x m kernels for every subset (100 subsets of 1000
are ~1.2 TFLOP in float64 at D = 2048). Here the three kernels over all vectors are built once (N1 x N1,
N2 x N2, N1 x N2; 154 GFLOP for 3,545 images) in float64 on ``device``, and each subset's MMD^2 is read
from them (see :func:`_mmd2_from_full_kernels`): the same subsets (same seeded draws) and the same value
to round-off. Sets larger than :data:`FULL_KERNEL_MAX` vectors fall back to per-subset kernels (memory).
"""

from __future__ import annotations

import numpy as np
import torch

from ganime.errors import InputError
from ganime.metrics._images import features_on, metric_device

#: Largest set for which the full kernels are built (3 x N^2 float64: 2.4 GB at 10,000).
FULL_KERNEL_MAX = 10_000


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.mean())


def kid_from_features(features1, features2, subset_size: int = 1000, num_subsets: int = 100, seed: int = 0,
                      device: str | torch.device = "cpu", method: str = "auto") -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over subsets; features are (N1, D) and (N2, D) arrays. When
    ``subset_size`` is at least N1 and N2, every subset is the whole of both sets and the std is 0 by
    construction (:func:`ganime.metrics.compute_all` then reports it as None, with a note).

    ``method``: "full" (kernels over all vectors once, on ``device``), "subsets" (kernels per subset, the
    reference recipe, NumPy) or "auto" ("full" up to :data:`FULL_KERNEL_MAX` vectors per set).
    """
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise InputError(f"KID needs two feature sets (N, D) of one width, got shapes {f1.shape} and {f2.shape}")
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        raise InputError("KID features contain NaN or infinite values")
    for name, value, least in (("subset_size", subset_size, 2), ("num_subsets", num_subsets, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"KID's {name} must be a whole number of at least {least}, got {value!r}")
    device = metric_device(device)
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise InputError(f"KID needs at least 2 feature vectors in each set, got {f1.shape[0]} and {f2.shape[0]}")
    if method not in ("auto", "full", "subsets"):
        raise InputError(f"unknown KID method {method!r}; choose auto, full or subsets")
    rng = np.random.default_rng(seed)
    draws = [(rng.choice(f1.shape[0], m, replace=False), rng.choice(f2.shape[0], m, replace=False))
             for _ in range(num_subsets)]
    if method == "subsets" or (method == "auto" and max(f1.shape[0], f2.shape[0]) > FULL_KERNEL_MAX):
        vals = np.array([_mmd2_unbiased(f1[i], f2[j]) for i, j in draws])
    else:
        vals = _mmd2_from_full_kernels(f1, f2, draws, device)
    return float(vals.mean()), float(vals.std())


def _mmd2_from_full_kernels(f1: np.ndarray, f2: np.ndarray, draws, device: torch.device) -> np.ndarray:
    """Every subset's MMD^2 from the full kernels: with c the 0/1 indicator of a subset (drawn without
    replacement), the sum of a kernel over the subset's pairs is c^T K c, so all subsets at once are
    ``((C K) * C).sum(1)`` for the indicator matrix C (subsets x N), and their diagonals ``C diag(K)``."""
    x, y = features_on(f1, device), features_on(f2, device)
    d = x.shape[1]
    m = len(draws[0][0])
    cx = torch.zeros(len(draws), x.shape[0], dtype=torch.float64)
    cy = torch.zeros(len(draws), y.shape[0], dtype=torch.float64)
    for k, (i, j) in enumerate(draws):
        cx[k, torch.from_numpy(i)] = 1
        cy[k, torch.from_numpy(j)] = 1
    cx, cy = cx.to(device), cy.to(device)

    def pair_sum(a, b, ca, cb) -> tuple[torch.Tensor, torch.Tensor]:  # (each subset's kernel sum, the kernel)
        k = (a @ b.T / d + 1) ** 3
        return ((ca @ k) * cb).sum(1), k

    sxx, kxx = pair_sum(x, x, cx, cx)
    sxx = sxx - cx @ kxx.diagonal()
    del kxx
    syy, kyy = pair_sum(y, y, cy, cy)
    syy = syy - cy @ kyy.diagonal()
    del kyy
    sxy, _ = pair_sum(x, y, cx, cy)
    return ((sxx + syy) / (m * (m - 1)) - 2 * sxy / (m * m)).cpu().numpy()
