"""BatchNorm folding, the fast inference path, ONNX and safetensors exports, and their CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ganime.checkpoint import save_checkpoint
from ganime.cli import main
from ganime.config import make_config
from ganime.fast import fold_batchnorm, optimize_generator
from ganime.nn.layers import init_weights
from ganime.nn.patchgan import PatchDiscriminator
from ganime.nn.unet import UNetGenerator
from tests.conftest import one_line_error


def _with_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def small_unet():
    torch.manual_seed(0)
    return _with_stats(init_weights(UNetGenerator(3, 3, base=8, depth=6)))


def test_folding_removes_batchnorm_and_keeps_outputs(small_unet):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    folded = fold_batchnorm(small_unet)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in small_unet.modules())  # original untouched
    with torch.no_grad():
        assert torch.allclose(folded(x), small_unet(x), atol=1e-5)


def test_folding_the_patchgan():
    torch.manual_seed(0)
    d = _with_stats(init_weights(PatchDiscriminator(6, 8, 3)))
    x = torch.randn(2, 6, 70, 70)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(d)(x), d(x), atol=1e-5)


def test_fast_generator_fp32_and_bf16(small_unet):
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        ref = small_unet(x)
    fp32 = optimize_generator(small_unet, "cpu", "fp32")
    out = fp32(x)
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-5
    bf16 = optimize_generator(small_unet, "cpu", "bf16")
    assert (bf16(x) - ref).abs().max() < 6e-2


def test_unknown_precision_is_a_sentence(small_unet):
    from ganime.errors import InputError

    with pytest.raises(InputError, match="precision"):
        optimize_generator(small_unet, "cpu", "fp8")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from ganime.methods import get_method

    cfg = make_config("pix2pix", "small")
    cfg.net.gen_base, cfg.net.disc_base = 8, 8
    torch.manual_seed(0)
    method = get_method("pix2pix")(cfg, torch.device("cpu"))
    _with_stats(method.models["G"])
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, method="pix2pix", config=cfg.to_dict(), state=method.state(),
                    progress={"epoch": 1, "step": 0, "global_step": 1})
    return path


def test_colorizer_fast_path_matches(checkpoint):
    from ganime.colorize import Colorizer

    sketch = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    slow = Colorizer.from_checkpoint(checkpoint, "cpu")
    fast = Colorizer.from_checkpoint(checkpoint, "cpu", fast="fp32")
    a, b = np.asarray(slow(sketch), dtype=int), np.asarray(fast(sketch), dtype=int)
    assert a.shape == b.shape == (300, 200, 3)
    assert np.abs(a - b).max() <= 1  # float32 rounding may flip one 8-bit level
    auto = Colorizer.from_checkpoint(checkpoint, "cpu", fast="auto")
    assert np.abs(np.asarray(auto(sketch), dtype=int) - a).mean() < 2


def test_onnx_export_runs_in_onnxruntime(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from ganime.colorize import Colorizer
    from ganime.export import OnnxGenerator

    out = tmp_path / "g.onnx"
    assert main(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    gen = Colorizer.from_checkpoint(checkpoint, "cpu").generator
    x = torch.rand(2, 3, 512, 256) * 2 - 1  # dynamic batch, height and width
    with torch.no_grad():
        ref = gen(x)
    got = OnnxGenerator(out)(x)
    assert got.shape == ref.shape and (got - ref).abs().max() < 1e-4
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["ganime_method"] == "pix2pix" and "gen_base" in meta["ganime_config"]
    # refuses to overwrite, and wants the right suffix: one-line errors
    assert main(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(out)]) != 0
    assert main(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "g.pt")]) != 0
    assert "already exists" in capsys.readouterr().err


def test_colorize_with_an_onnx_export_names_it_as_one(checkpoint, tmp_path, capsys):
    """colorize/evaluate --checkpoint MODEL.onnx (just written by ganime export onnx) said 'not a readable
    checkpoint (not a PyTorch checkpoint file)', as of a damaged file."""
    pytest.importorskip("onnx")
    out = tmp_path / "g.onnx"
    assert main(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    capsys.readouterr()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "s.png")
    assert main(["colorize", str(tmp_path / "s.png"), "--checkpoint", str(out), "--out", str(tmp_path / "c")]) != 0
    assert "g.onnx: an ONNX export (for onnxruntime and other runtimes); give the run's last.pt" in one_line_error(capsys)


def test_onnx_export_of_a_line_multiply_generator(tmp_path):
    pytest.importorskip("onnxruntime")
    from ganime.export import OnnxGenerator, export_onnx
    from ganime.methods import get_method

    cfg = make_config("pix2pix", "small")
    cfg.net.gen_base, cfg.net.disc_base, cfg.net.hint_channels, cfg.net.line_multiply = 8, 8, 4, True
    torch.manual_seed(0)
    method = get_method("pix2pix")(cfg, torch.device("cpu"))
    gen = _with_stats(method.models["G"])
    save_checkpoint(tmp_path / "last.pt", method="pix2pix", config=cfg.to_dict(), state=method.state(),
                    progress={"epoch": 1, "step": 0, "global_step": 1})
    # the colour blur and flattening have no weights: set at export time, into the network and its stored config
    export_onnx(tmp_path / "last.pt", tmp_path / "g.onnx", color_blur=2.0, color_flatten=3.0)
    x = torch.rand(1, 7, 256, 256) * 2 - 1
    x[:, :3] = 1 - 0.1 * x[:, :3].abs()  # paper (the flattening acts there)
    x[:, :3, 100:110] = -1  # a black line stays black
    gen.color_blur, gen.color_flatten = 2.0, 3.0
    with torch.no_grad():
        ref = gen(x)
        gen.color_flatten = 0.0
        unflattened = gen(x)
        gen.color_flatten = 3.0
    assert (ref - unflattened).abs().max() > 1e-3  # the flattening is in the reference (tolerance below: 1e-4)
    got = OnnxGenerator(tmp_path / "g.onnx")(x)
    assert (got - ref).abs().max() < 1e-4 and got[:, :, 100:110].max() < -0.999
    from ganime.colorize import Colorizer
    from ganime.export import export_safetensors

    export_safetensors(tmp_path / "last.pt", tmp_path / "g.safetensors", color_blur=2.0, color_flatten=3.0)
    c = Colorizer.from_checkpoint(tmp_path / "g.safetensors", "cpu")
    assert c.cfg.net.color_blur == 2.0 and c.generator.color_blur == 2.0
    assert c.cfg.net.color_flatten == 3.0 and c.generator.color_flatten == 3.0
    with torch.no_grad():
        assert (c.generator(x) - ref).abs().max() < 2e-2  # fp16 weights
    # a plain generator has no colour layer to blur: one sentence
    cfg.net.line_multiply = False
    save_checkpoint(tmp_path / "plain.pt", method="pix2pix", config=cfg.to_dict(), state=method.state(),
                    progress={"epoch": 1, "step": 0, "global_step": 1})
    for flag in ("--color-blur", "--color-flatten"):
        assert main(["export", "safetensors", "--checkpoint", str(tmp_path / "plain.pt"), "--out",
                     str(tmp_path / "p.safetensors"), flag, "2"]) != 0
        assert not (tmp_path / "p.safetensors").exists()


def test_safetensors_export_is_fp16_and_loads(checkpoint, tmp_path):
    from safetensors.torch import load_file

    from ganime.colorize import Colorizer

    out = tmp_path / "g.safetensors"
    assert main(["export", "safetensors", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    tensors = load_file(out)
    assert {v.dtype for k, v in tensors.items() if "num_batches" not in k} == {torch.float16}
    c = Colorizer.from_checkpoint(out, "cpu")
    slow = Colorizer.from_checkpoint(checkpoint, "cpu")
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert (c.generator(x) - slow.generator(x)).abs().max() < 2e-2
    assert out.stat().st_size < 0.6 * sum(v.numel() * 4 for v in tensors.values())


def test_export_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", "onnx", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.onnx")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such checkpoint" in err[0]


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_export_to_a_folder_is_one_line(tiny_checkpoint, fmt, tmp_path, capsys):
    """A folder named like the file: it was 'already exists; pass --overwrite', and with --overwrite
    '.../.x.onnx.tmp -> x.onnx: Is a directory' (exit 1) once the export was done."""
    pytest.importorskip("onnx")
    folder = tmp_path / f"x.{fmt}"
    folder.mkdir()
    for extra in ([], ["--overwrite"]):
        assert main(["export", fmt, "--checkpoint", str(tiny_checkpoint), "--out", str(folder), *extra]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == f"ganime: error: --out {folder}: is a folder; name the .{fmt} file to write\n"
    assert folder.is_dir() and not list(folder.iterdir())


@pytest.mark.parametrize("size", ["0", "96", "-64"])
def test_export_size_off_the_networks_multiple_is_one_line(tiny_checkpoint, size, tmp_path, capsys):
    """--size 0 was taken as 'not given' and traced at the training size without a word."""
    pytest.importorskip("onnx")
    assert main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"),
                 "--size", size]) == 2
    assert capsys.readouterr().err == f"ganime: error: --size {size}: must be a multiple of 64 for a U-Net of depth 6\n"
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("opset", ["0", "99"])
def test_export_opset_out_of_range_is_one_line(tiny_checkpoint, opset, tmp_path, capsys):
    pytest.importorskip("onnx")
    assert main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"),
                 "--opset", opset]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"--opset {opset}: this torch exports ONNX opsets" in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_bn_batches_without_bn_data_is_one_line(tiny_checkpoint, fmt, tmp_path, capsys):
    """--bn-batches alone was silently ignored: the statistics were not recomputed."""
    out = tmp_path / f"x.{fmt}"
    assert main(["export", fmt, "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--bn-batches", "10"]) == 2
    assert capsys.readouterr().err == "ganime: error: --bn-batches 10: applies only with --bn-data CACHE\n"
    assert not out.exists()


# ---- prepacked oneDNN path (the CPU default of the fast path) ----------------------------------------

def test_cpu_fast_path_is_prepacked_and_matches_for_any_shape(small_unet):
    from ganime.bench.infer import TOLERANCE, MEAN_TOLERANCE

    fp32 = optimize_generator(small_unet, "cpu", "fp32")
    bf16 = optimize_generator(small_unet, "cpu", "bf16")
    eager = optimize_generator(small_unet, "cpu", "bf16", pack=False)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    assert fp32.packed is not None and bf16.packed is not None and eager.packed is None
    g = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 128, 128), (2, 3, 64, 192), (1, 3, 128, 128)]:  # batch, non-square, cached again
        x = torch.rand(*shape, generator=g) * 2 - 1
        with torch.no_grad():
            ref = small_unet(x)
        d32 = (fp32(x) - ref).abs()
        assert d32.max() < 1e-5, d32.max()
        d16 = (bf16(x) - ref).abs()
        assert d16.max() < TOLERANCE["bf16"] and d16.mean() < MEAN_TOLERANCE["bf16"], (d16.max(), d16.mean())
    assert len(fp32.packed._packs) == 2  # one packing per input shape


def test_prepacked_path_with_hint_channels_and_fallbacks():
    torch.manual_seed(0)
    hinted = _with_stats(init_weights(UNetGenerator(7, 3, base=8, depth=5)))
    x = torch.rand(1, 7, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = hinted(x)
    fast = optimize_generator(hinted, "cpu", "fp32")
    fast.prepare(x.shape)
    assert (fast(x) - ref).abs().max() < 1e-5
    # A multiply-layer output (line_multiply): packed, and the same outputs.
    for blur, flatten in ((0.0, 0.0), (1.5, 0.0), (0.0, 2.0)):
        mult = _with_stats(init_weights(UNetGenerator(7, 3, base=8, depth=5, line_multiply=True, color_blur=blur,
                                                      color_flatten=flatten)))
        with torch.no_grad():
            ref = mult(x)
        for pack in (True, False):
            fast = optimize_generator(mult, "cpu", "fp32", pack=pack)
            assert (fast.packed is not None) == pack and (fast(x) - ref).abs().max() < 1e-5
    # InstanceNorm cannot be folded: not the packed pattern, the eager fast path still matches.
    inst = init_weights(UNetGenerator(3, 3, base=8, depth=5, norm="instance")).eval()
    f = optimize_generator(inst, "cpu", "fp32")
    assert f.packed is None
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert (f(x) - inst(x)).abs().max() < 1e-5


def test_export_recalibrates_batchnorm_on_training_data(tiny_checkpoint, make_pairs, tmp_path, capsys):
    """--bn-data: a checkpoint with broken running statistics exports with fresh ones (and the same
    weights); a cache of the wrong size is one sentence."""
    from ganime.checkpoint import load_checkpoint
    from safetensors.torch import load_file

    ck = load_checkpoint(tiny_checkpoint)
    g = ck["models"]["G"]
    for k in g:
        if k.endswith("running_mean"):
            g[k] = g[k] + 100.0  # an average gone wrong
    save_checkpoint(tmp_path / "bad.pt", method="pix2pix", config=ck["config"], state={"models": ck["models"]},
                    progress=ck["progress"])
    assert main(["data", "prepare", str(make_pairs(6, 64)), str(tmp_path / "cache"), "--size", "64",
                 "--no-progress"]) == 0
    out = tmp_path / "g.safetensors"
    assert main(["export", "safetensors", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(out),
                 "--dtype", "fp32", "--bn-data", str(tmp_path / "cache"), "--bn-batches", "2"]) == 0
    fresh = load_file(out)
    means = [k for k in g if k.endswith("running_mean")]
    assert means and all(fresh[k].abs().max() < 50 for k in means)
    assert all(torch.equal(fresh[k], g[k]) for k in g if k.endswith("weight"))
    # As a library call: the same statistics, and the caller's random state is left as it was.
    from ganime.config import RunConfig
    from ganime.export import recalibrate
    from ganime.methods import get_method

    cfg = RunConfig.from_dict(ck["config"])
    gen = get_method("pix2pix").build_generator(cfg)
    gen.load_state_dict(g)
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    assert recalibrate(gen, cfg, tmp_path / "cache", batches=2) == 2
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(gen.state_dict()[k], fresh[k]) for k in means)
    assert main(["data", "prepare", str(make_pairs(4, 128, folder=tmp_path / "p128")), str(tmp_path / "c128"),
                 "--size", "128", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", "safetensors", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "x.safetensors"),
                 "--bn-data", str(tmp_path / "c128")]) != 0
    assert "trained at 64px" in capsys.readouterr().err


def test_export_bn_data_shows_its_progress_unless_no_progress(tiny_checkpoint, make_pairs, tmp_path, capsys):
    """--bn-data ran its batches without a word: 50 batches of 32 through the paper's generator are about
    6 minutes on one CPU core."""
    assert main(["data", "prepare", str(make_pairs(6, 64)), str(tmp_path / "cache"), "--size", "64",
                 "--no-progress"]) == 0
    capsys.readouterr()
    base = ["export", "safetensors", "--checkpoint", str(tiny_checkpoint), "--bn-data", str(tmp_path / "cache"),
            "--bn-batches", "2"]
    assert main([*base, "--out", str(tmp_path / "a.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "load cache" in err and "BatchNorm statistics" in err  # the (silent) load of the cache too
    assert main([*base, "--out", str(tmp_path / "b.safetensors"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    # a cache of another size is refused from its index, before it is loaded
    from ganime.data.pairs import PairCache

    assert main(["data", "prepare", str(tmp_path / "pairs"), str(tmp_path / "c32"), "--size", "32",
                 "--no-progress"]) == 0
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(PairCache, "load", lambda *a, **k: pytest.fail("cache loaded"))
        assert main([*base[:4], "--bn-data", str(tmp_path / "c32"), "--out", str(tmp_path / "c.safetensors")]) != 0
    assert "holds 32px images, the model was trained at 64px" in one_line_error(capsys)
