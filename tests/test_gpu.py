"""GPU-only checks (skipped without CUDA): bf16 autocast, channels_last, on-device data and augmentation."""

import pytest
import torch

from ganime.checkpoint import load_checkpoint
from ganime.train import Trainer
from tests.conftest import tiny_config, tiny_pairs

pytestmark = pytest.mark.gpu


def test_cuda_training_keeps_data_on_gpu_and_losses_finite(tmp_path):
    t = Trainer(tiny_config(epochs=1), tiny_pairs(8), tmp_path / "r", device="cuda", progress=False)
    assert t.loader.data.device.type == "cuda"
    batch = t.loader.make_batch(torch.arange(2), 0)
    assert batch["sketch"].device.type == "cuda"
    res = t.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in res.last_losses.values())
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert all(v.device.type == "cpu" for v in ck["models"]["G"].values())


def test_cuda_checkpoint_resumes_on_cpu(tmp_path):
    Trainer(tiny_config(epochs=1), tiny_pairs(4), tmp_path / "r", device="cuda", progress=False).fit()
    cfg = tiny_config(epochs=2)
    res = Trainer(cfg, tiny_pairs(4), tmp_path / "r", device="cpu", progress=False, resume=True).fit()
    assert res.epochs_done == 2


def test_metrics_on_the_gpu_equal_the_cpu():
    """SSIM, FID (eigh route) and KID (full kernels) on CUDA against their CPU / reference routes."""
    import numpy as np

    from ganime import metrics as M

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 64, 80, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    assert torch.allclose(M.ssim(a, b, device="cuda"), M.ssim(a, b), rtol=0, atol=1e-9)
    x = np.abs(rng.normal(size=(300, 64)))
    y = np.abs(rng.normal(size=(280, 64))) + 0.05
    assert M.fid_from_features(x, y, method="eigh", device="cuda") == pytest.approx(
        M.fid_from_features(x, y, method="sqrtm"), rel=1e-7)
    assert M.kid_from_features(x, y, 100, 10, device="cuda") == pytest.approx(
        M.kid_from_features(x, y, 100, 10, method="subsets"), rel=1e-9, abs=1e-12)
