import pytest
import torch

from ganime.config import make_config
from ganime.methods import get_method
from ganime.nn.layers import count_parameters
from ganime.nn.patchgan import PatchDiscriminator, receptive_field
from ganime.nn.unet import UNetGenerator


def test_paper_generator_matches_reference_parameter_count():
    assert count_parameters(UNetGenerator(3, 3, 64, 8, "batch", 0.5)) == 54_413_955


def test_paper_discriminator_parameter_count_and_30x30_output():
    d = PatchDiscriminator(6, 64, 3, "batch")
    assert count_parameters(d) == 2_768_705
    with torch.no_grad():
        assert d(torch.zeros(1, 6, 256, 256)).shape == (1, 1, 30, 30)


def test_patchgan_receptive_field_is_70_pixels():
    assert receptive_field(PatchDiscriminator(6, 64, 3)) == 70


def test_receptive_field_measured_by_gradient():
    """Independently of the formula: the input pixels that influence one output unit span 70x70."""
    d = PatchDiscriminator(1, 4, 3, norm="none")
    x = torch.randn(1, 1, 128, 128, requires_grad=True)
    y = d(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    cols = x.grad[0, 0].abs().sum(0).nonzero()
    assert rows.max() - rows.min() + 1 == 70
    assert cols.max() - cols.min() + 1 == 70


def test_unet_dropout_sits_in_decoder_layers_2_to_4_as_the_pytorch_reference():
    """As documented in ganime.nn.unet: not in the innermost up-convolution (the paper's CD512), but in the
    three decoder layers after it, each reading a 1024-channel concatenation at depth 8 and 64 channels."""
    g = UNetGenerator(3, 3, 64, 8, "batch", 0.5)
    blocks, b = [], g.model
    while b is not None:  # outermost -> innermost
        blocks.append(b)
        b = next((m for m in b.model if type(m).__name__ == "UNetBlock"), None)
    decoder = blocks[::-1]  # decoder layer k + 1 is the up path of decoder[k]
    has_dropout = [any(isinstance(m, torch.nn.Dropout) for m in b.model) for b in decoder]
    assert has_dropout == [False, True, True, True, False, False, False, False]
    ups = [next(m for m in b.model if isinstance(m, torch.nn.ConvTranspose2d)) for b in decoder[1:4]]
    assert [u.in_channels for u in ups] == [1024, 1024, 1024]


def test_unet_shapes_and_range():
    g = UNetGenerator(7, 3, 8, 6).eval()
    with torch.no_grad():
        y = g(torch.randn(2, 7, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    assert y.abs().max() <= 1


def test_pix2pix_paper_preset_builds_the_paper_networks():
    cfg = make_config("pix2pix", "paper")
    assert (cfg.train.lr, cfg.train.beta1, cfg.train.beta2, cfg.train.eps) == (2e-4, 0.5, 0.999, 1e-7)
    assert cfg.train.epochs == 150 and cfg.train.batch_size == 32
    assert round(cfg.train.size * cfg.train.jitter) == 286
    m = get_method("pix2pix")(cfg, torch.device("cpu"))
    assert m.options["lambda_l1"] == 100.0
    assert count_parameters(m.models["G"]) == 54_413_955
    assert count_parameters(m.models["D"]) == 2_768_705
    opt = m.optimizers["G"].param_groups[0]
    assert opt["betas"] == (0.5, 0.999) and opt["eps"] == 1e-7 and opt["lr"] == 2e-4


def test_small_preset_is_much_smaller():
    cfg = make_config("pix2pix", "small")
    g = get_method("pix2pix").build_generator(cfg)
    assert count_parameters(g) < 54_413_955 / 10


def test_line_multiply_keeps_the_sketch_lines_exactly():
    """A multiply layer: black sketch pixels stay black whatever the network says; white paper shows
    the generated colour; in between, colour x luminance (in [0, 1] terms)."""
    from ganime.nn.unet import multiply_lines

    torch.manual_seed(0)
    plain = UNetGenerator(7, 3, 8, 6).eval()
    mult = UNetGenerator(7, 3, 8, 6, line_multiply=True).eval()
    mult.load_state_dict(plain.state_dict())  # no weights of its own
    x = torch.rand(2, 7, 64, 64) * 2 - 1
    x[:, :3, 10:20] = -1  # a black line
    x[:, :3, 30:40] = 1  # white paper
    x[:, :3, 50:] = 0  # mid grey
    with torch.no_grad():
        c, y = plain(x), mult(x)
    assert torch.allclose(y[:, :, 10:20], torch.full_like(y[:, :, 10:20], -1))
    assert torch.allclose(y[:, :, 30:40], c[:, :, 30:40], atol=1e-6)
    assert torch.allclose((y[:, :, 50:] + 1) / 2, (c[:, :, 50:] + 1) / 4, atol=1e-6)
    assert y.abs().max() <= 1
    assert torch.equal(multiply_lines(c, x), y)


def test_line_multiply_is_a_pix2pix_setting_only():
    import pytest

    from ganime.errors import InputError

    cfg = make_config("pix2pix", "small")
    cfg.net.line_multiply = True
    assert get_method("pix2pix").build_generator(cfg).line_multiply
    cfg = make_config("cyclegan", "small")
    cfg.net.line_multiply = True
    with pytest.raises(InputError, match="line_multiply"):
        get_method("cyclegan").build_generator(cfg)


def test_color_blur_smooths_the_colour_layer_but_not_the_lines():
    from ganime.nn.unet import gaussian_blur, multiply_lines

    g = torch.Generator().manual_seed(0)
    c = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    b = gaussian_blur(c, 2.0)
    assert b.shape == c.shape and b.std() < 0.5 * c.std()  # noise flattened
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 32, 32), 0.3), 1.5), torch.tensor(0.3))  # flat stays flat
    x = torch.ones(1, 3, 64, 64)
    x[:, :, 30:32] = -1  # a black line on white paper
    y = multiply_lines(c, x, 2.0)
    assert torch.allclose(y[:, :, 30:32], torch.tensor(-1.0)) and torch.allclose(y[:, :, :20], b[:, :, :20], atol=1e-6)
    gen = UNetGenerator(3, 3, 8, 6, line_multiply=True, color_blur=2.0).eval()
    with torch.no_grad():
        assert gen(x).shape == (1, 3, 64, 64)


def test_color_flatten_evens_colour_within_regions_and_never_across_lines():
    from ganime.nn.unet import flatten_between_lines, flatten_iterations, multiply_lines

    g = torch.Generator().manual_seed(0)
    size = 48
    lum = torch.ones(1, 1, size, size)
    lum[..., :, 20] = 0.0  # a vertical black line
    for i in range(size):  # and a 1-px diagonal one (8-connected): 4-neighbours cannot step over it
        lum[..., i, min(size - 1, 30 + i // 4)] = 0.2
    left = torch.zeros(size, size, dtype=torch.bool)
    left[:, :20] = True
    c = torch.where(left, torch.tensor([0.8, -0.5, -0.5]).view(3, 1, 1), torch.tensor([-0.5, -0.5, 0.8]).view(3, 1, 1))
    c = (c + 0.3 * torch.randn(3, size, size, generator=g))[None]
    f = flatten_between_lines(c, lum, 5.0)
    assert f.shape == c.shape and f.dtype == c.dtype
    assert f[..., left].std(-1).max() < 0.4 * c[..., left].std(-1).min()  # noise evened out in the region
    # Nothing flows through a line: each region keeps its own amount of every colour.
    assert torch.allclose(f[..., left].sum(-1), c[..., left].sum(-1), rtol=1e-4, atol=1e-3)
    inner = torch.zeros(size, size, dtype=torch.bool)  # between the two lines, strictly inside
    for i in range(size):
        inner[i, 21:min(size - 1, 30 + i // 4)] = True
    assert torch.allclose(f[..., inner].sum(-1), c[..., inner].sum(-1), rtol=1e-4, atol=1e-3)
    assert abs(f[0, 0][left].mean() - 0.8) < 0.05 and abs(f[0, 2][left].mean() + 0.5) < 0.05  # red stays red
    # Without lines it is a blur of about sigma pixels; a flat layer stays flat; other dtypes come back as given.
    spread = flatten_between_lines(torch.zeros(1, 1, 41, 41).index_put_((torch.tensor(0), torch.tensor(0),
                                   torch.tensor(20), torch.tensor(20)), torch.tensor(1.0)), torch.ones(1, 1, 41, 41), 3.0)
    r = torch.arange(41.0) - 20
    var = (spread[0, 0].sum(0) * r * r).sum() / spread.sum()
    assert abs(var.sqrt() - 3.0) < 0.15 and abs(spread.sum() - 1) < 1e-5
    assert torch.allclose(flatten_between_lines(torch.full((1, 3, 16, 16), 0.3), torch.rand(1, 1, 16, 16), 4), torch.tensor(0.3))
    assert flatten_between_lines(c.bfloat16(), lum, 2).dtype == torch.bfloat16
    assert flatten_iterations(0) == 0 and flatten_iterations(5) == 53
    # The inference loop (no autograd) and the differentiable one compute the same numbers.
    with torch.no_grad():
        fast = flatten_between_lines(c, lum, 5.0)
    assert torch.equal(fast, f) and fast.is_contiguous()
    assert torch.equal(flatten_between_lines(c.requires_grad_(True), lum, 5.0).detach(), f)
    c = c.detach()
    # As the generator's output head: lines stay exactly black, gradients reach the colour layer.
    x = lum.expand(1, 3, size, size) * 2 - 1
    c.requires_grad_(True)
    out = multiply_lines(c, x, 0.0, 5.0)
    assert torch.allclose(out[..., :, 20], torch.tensor(-1.0))
    out.sum().backward()
    assert c.grad is not None and torch.isfinite(c.grad).all() and c.grad.abs().sum() > 0
    gen = UNetGenerator(3, 3, 8, 6, line_multiply=True, color_flatten=3.0).eval()
    with torch.no_grad():
        assert gen(torch.rand(1, 3, 64, 64) * 2 - 1).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("setting,words", [("color_blur", "blur"), ("color_flatten", "flattening")])
def test_colour_layer_smoothing_needs_a_line_multiply_generator_and_a_sane_sigma(setting, words):
    from ganime.errors import InputError

    with pytest.raises(ValueError, match="line_multiply generator only"):
        UNetGenerator(3, 3, 8, 6, **{setting: 2.0})
    cfg = make_config("pix2pix", "small")
    setattr(cfg.net, setting, 2.0)
    with pytest.raises(InputError, match=f"colour {words} smooths the colour layer of a --line-multiply"):
        cfg.validate()
    cfg.net.line_multiply = True
    setattr(cfg.net, setting, 17.0)
    with pytest.raises(InputError, match=rf"colour {words} must be in \[0, 16\]"):
        cfg.validate()


def test_recalibrate_batchnorm_averages_fresh_batch_statistics():
    from torch import nn

    from ganime.nn.layers import recalibrate_batchnorm

    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(nn.Identity(), bn).eval()
    bn.running_mean.fill_(7.0)  # a bad running average
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 5, 5, generator=g) * (i + 1) + i for i in range(3)]
    assert recalibrate_batchnorm(model, iter(batches)) == 3
    means = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-6) and torch.allclose(bn.running_var, variances, atol=1e-5)
    assert not model.training and bn.momentum == 0.1  # mode and momentum restored
    before = bn.running_mean.clone()
    assert recalibrate_batchnorm(model, iter([])) == 0 and torch.equal(bn.running_mean, before)  # nothing to average
