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
