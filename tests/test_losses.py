import math

import pytest
import torch

from ganime.methods import get_method
from ganime.methods.base import gan_loss
from tests.conftest import tiny_config


def test_gan_loss_values_on_fixed_logits():
    z = torch.zeros(2, 1, 30, 30)
    assert gan_loss(z, True).item() == pytest.approx(math.log(2))
    assert gan_loss(z, False).item() == pytest.approx(math.log(2))
    big = torch.full((1, 1, 4, 4), 20.0)
    assert gan_loss(big, True).item() == pytest.approx(0.0, abs=1e-8)
    assert gan_loss(big, False).item() == pytest.approx(20.0, abs=1e-6)
    mixed = torch.tensor([[[[2.0, -1.0]]]])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert gan_loss(mixed, True).item() == pytest.approx(expected)


def test_pix2pix_generator_loss_is_gan_plus_lambda_l1(monkeypatch):
    cfg = tiny_config()
    m = get_method("pix2pix")(cfg, torch.device("cpu"))
    # A discriminator that always answers 0 makes every GAN term log 2.
    for mod in (m.models["D"],):
        for p in mod.parameters():
            torch.nn.init.zeros_(p)
    x = torch.zeros(2, 3, 64, 64)
    y = torch.full((2, 3, 64, 64), 0.5)
    with torch.no_grad():
        fake = m.models["G"](x)
    expected_l1 = (fake - y).abs().mean().item()
    m.models["G"].eval()  # no dropout, BN running stats: same fake in the step
    torch.manual_seed(0)
    losses = m.train_step({"sketch": x, "color": y})
    assert losses["G_gan"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert losses["D_real"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert losses["G_l1"].item() == pytest.approx(expected_l1, rel=1e-4)


def test_unknown_method_lists_valid_names():
    from ganime.errors import InputError

    with pytest.raises(InputError, match="pix2pix"):
        get_method("pix3pix")


def test_hint_loss_is_the_mean_l1_over_hinted_pixels():
    cfg = tiny_config()
    cfg.net.hint_channels = 4
    cfg.options["lambda_hint"] = 10.0
    m = get_method("pix2pix")(cfg, torch.device("cpu"))
    m.models["G"].eval()  # no dropout, BN running stats: the same output inside the step
    x = torch.zeros(2, 3, 64, 64)
    y = torch.full((2, 3, 64, 64), 0.5)
    hints = torch.zeros(2, 4, 64, 64)
    hints[:, 3, 10:20, 10:20] = 1
    hints[:, :3, 10:20, 10:20] = 0.5
    with torch.no_grad():
        fake = m.models["G"](torch.cat([x, hints], 1))
    mask = hints[:, 3:]
    expected = ((fake - y).abs() * mask).sum() / (3 * mask.sum())
    losses = m.train_step({"sketch": x, "color": y, "hints": hints})
    assert losses["G_hint"].item() == pytest.approx(expected.item(), rel=1e-5)
    # Without hints in the batch (or with lambda_hint 0) there is no hint term.
    assert "G_hint" not in m.train_step({"sketch": x, "color": y})


def test_line_multiply_discriminator_sees_the_truth_under_the_same_lines():
    """Both pairs D judges carry the sketch's lines: the truth is multiplied by the sketch like the fake,
    so D cannot win on 'never brighter than the sketch'. L1 still compares the fake with the plain truth."""
    from ganime.nn.unet import multiply_lines

    cfg = tiny_config()
    cfg.net.line_multiply = True
    m = get_method("pix2pix")(cfg, torch.device("cpu"))
    m.models["G"].eval()
    seen = []
    m.models["D"].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    x[:, :, 20:24] = -1  # a black line
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        fake = m.models["G"](x)
    losses = m.train_step({"sketch": x, "color": y})
    fake_in, real_in, gen_in = seen
    assert torch.equal(real_in[:, :3], x) and torch.allclose(real_in[:, 3:], multiply_lines(y, x))
    assert torch.allclose(real_in[:, 3:, 20:24], torch.tensor(-1.0))
    assert torch.allclose(fake_in[:, 3:], fake, atol=1e-6) and torch.allclose(gen_in[:, 3:], fake, atol=1e-6)
    assert losses["G_l1"].item() == pytest.approx((fake - y).abs().mean().item(), rel=1e-4)


def test_ssim_loss_is_one_minus_the_metric_and_trains():
    """--lambda-ssim: the evaluation's SSIM (to the 8-bit quantisation), differentiable, logged as G_ssim."""
    from ganime.metrics.ssim import ssim, ssim_loss

    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 3, 40, 40, generator=g) * 2 - 1
    x = (y + 0.3 * torch.randn(2, 3, 40, 40, generator=g)).clamp(-1, 1)
    assert 1 - ssim_loss(x, y).item() == pytest.approx(ssim(x, y).mean().item(), abs=2e-3)
    assert ssim_loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    x.requires_grad_(True)
    ssim_loss(x, y).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    cfg = tiny_config()
    cfg.options["lambda_ssim"] = 5.0
    m = get_method("pix2pix")(cfg, torch.device("cpu"))
    m.models["G"].eval()
    xb, yb = torch.zeros(2, 3, 64, 64), torch.full((2, 3, 64, 64), 0.5)
    with torch.no_grad():
        expected = ssim_loss(m.models["G"](xb), yb).item()
    losses = m.train_step({"sketch": xb, "color": yb})
    assert losses["G_ssim"].item() == pytest.approx(expected, rel=1e-4)
