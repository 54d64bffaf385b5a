"""KID (Binkowski et al., 2018): the unbiased MMD^2 between two feature sets with the cubic polynomial
kernel ``k(x, y) = (x . y / d + 1)^3``, estimated on random subsets.

Unlike FID, KID is unbiased, so it is meaningful on a few hundred images; its expectation is 0 when both
sets come from one distribution (single estimates may then be slightly negative). Mean and std are over
``num_subsets`` subsets of ``subset_size`` vectors drawn without replacement from each set, with a seeded
generator, as in clean-fid and torch-fidelity (subset size 1000 clipped to the smaller set, 100 subsets).
"""

from __future__ import annotations

import numpy as np

from ganime.errors import InputError


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.mean())


def kid_from_features(features1, features2, subset_size: int = 1000, num_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over subsets; features are (N1, D) and (N2, D) arrays."""
    f1 = np.asarray(features1, dtype=np.float64)
    f2 = np.asarray(features2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise InputError(f"KID needs two feature sets (N, D) of one width, got shapes {f1.shape} and {f2.shape}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise InputError(f"KID needs at least 2 feature vectors in each set, got {f1.shape[0]} and {f2.shape[0]}")
    if num_subsets < 1:
        raise InputError(f"num_subsets must be at least 1, got {num_subsets}")
    rng = np.random.default_rng(seed)
    vals = np.array([
        _mmd2_unbiased(f1[rng.choice(f1.shape[0], m, replace=False)], f2[rng.choice(f2.shape[0], m, replace=False)])
        for _ in range(num_subsets)
    ])
    return float(vals.mean()), float(vals.std())
