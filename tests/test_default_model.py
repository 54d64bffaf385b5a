"""The model shipped inside the package: present, small, loaded by default, and steerable by hints."""

import json

import numpy as np
import pytest
from PIL import Image

from ganime.cli import main
from ganime.colorize import DEFAULT_WEIGHTS, Colorizer
from ganime.errors import InputError
from tests.conftest import one_line_error

ROOT = DEFAULT_WEIGHTS.parents[3]
SKETCH = ROOT / "examples" / "adp-test1.png"


def _header(path):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])


def test_shipped_weights_are_fp16_safetensors_under_30_mb():
    assert DEFAULT_WEIGHTS.exists(), "the package must ship src/ganime/weights/default.safetensors"
    assert DEFAULT_WEIGHTS.stat().st_size <= 30 * 1024 * 1024
    header = _header(DEFAULT_WEIGHTS)
    meta = header.pop("__metadata__")
    assert meta["method"] == "pix2pix" and json.loads(meta["config"])["net"]["hint_channels"] == 4
    dtypes = {v["dtype"] for v in header.values()}
    assert "F16" in dtypes and "F32" not in dtypes


def test_colorize_without_checkpoint_uses_the_shipped_model(tmp_path):
    out = tmp_path / "out"
    assert main(["colorize", str(SKETCH), "--out", str(out), "--no-progress"]) == 0
    res = Image.open(out / "adp-test1.png")
    assert res.size == Image.open(SKETCH).size and res.mode == "RGB"
    arr = np.asarray(res, dtype=np.int16)
    assert (arr.max(-1) - arr.min(-1)).mean() > 3  # some colour, not a grey copy of the sketch


@pytest.fixture(scope="module")
def colorizer():
    return Colorizer.from_checkpoint(DEFAULT_WEIGHTS, "cpu")


def test_a_strong_hint_pulls_the_colour_near_it(colorizer):
    """A red hint changes the output near it more than far from it, towards red."""
    sketch = Image.open(SKETCH).convert("RGB").resize((256, 256))
    hints = Image.new("RGBA", sketch.size, (0, 0, 0, 0))
    box = (116, 100, 140, 124)  # on the dress
    hints.paste((230, 20, 20, 255), box)
    base = np.asarray(colorizer(sketch), dtype=float)
    hinted = np.asarray(colorizer(sketch, hints), dtype=float)
    yy, xx = np.mgrid[:256, :256]
    dist = np.hypot(yy - 112, xx - 128)
    change = np.abs(hinted - base).sum(-1)
    near, far = change[dist < 20].mean(), change[dist > 80].mean()
    assert near > 5 * far, (near, far)
    redness = lambda a: (a[..., 0] - (a[..., 1] + a[..., 2]) / 2)[dist < 12].mean()  # noqa: E731
    assert redness(hinted) > redness(base) + 20, (redness(base), redness(hinted))


def test_hints_on_a_model_without_hint_channels_are_refused(tiny_checkpoint, tmp_path, capsys):
    hints = tmp_path / "h.png"
    strokes = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    strokes.paste((255, 0, 0, 255), (4, 4, 8, 8))
    strokes.save(hints)
    rc = main(["colorize", str(SKETCH), "--checkpoint", str(tiny_checkpoint), "--hints", str(hints),
               "--out", str(tmp_path / "o")])
    assert rc != 0
    assert "does not take colour hints" in one_line_error(capsys)


def test_hints_without_transparency_are_refused(tmp_path, capsys):
    """An RGB hint image would hint every pixel (a JPEG, or strokes flattened onto white): say so."""
    hints = tmp_path / "h.png"
    Image.new("RGB", Image.open(SKETCH).size, (255, 255, 255)).save(hints)
    rc = main(["colorize", str(SKETCH), "--hints", str(hints), "--out", str(tmp_path / "o")])
    assert rc != 0
    assert "h.png: image has no transparency" in one_line_error(capsys)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    # An RGBA image whose every pixel is opaque (exported with its white background layer) hints them all too.
    Image.new("RGBA", Image.open(SKETCH).size, (255, 255, 255, 255)).save(hints)
    rc = main(["colorize", str(SKETCH), "--hints", str(hints), "--out", str(tmp_path / "o")])
    assert rc != 0
    assert "h.png: image has no transparency" in one_line_error(capsys)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_flatten_option_overrides_the_shipped_colour_flattening(colorizer, tiny_checkpoint, tmp_path, capsys):
    net = colorizer.cfg.net
    assert net.line_multiply and (net.color_blur, net.color_flatten) == (0.0, 5.0)  # as docs/model-card.md says
    sketch = Image.open(SKETCH).convert("RGB").resize((256, 256))
    flat = np.asarray(colorizer(sketch), dtype=float)
    raw = np.asarray(Colorizer.from_checkpoint(DEFAULT_WEIGHTS, "cpu", flatten=0)(sketch), dtype=float)
    lines = np.asarray(sketch.convert("L")) < 60
    assert np.abs(flat - raw).mean() > 1 and np.abs(flat - raw)[lines].mean() < np.abs(flat - raw)[~lines].mean()
    # Evened out: less colour texture between neighbouring pixels of the paper.
    rough = lambda a: np.abs(np.diff(a, axis=1))[~lines[:, 1:]].mean()  # noqa: E731
    assert rough(flat) < rough(raw)
    # Per call, on the fast (prepacked) path too: the same as a colorizer built with that setting.
    fast = Colorizer.from_checkpoint(DEFAULT_WEIGHTS, "cpu", fast="fp32")
    assert fast.flatten == 5.0
    once = np.asarray(fast(sketch, flatten=0))
    assert np.array_equal(once, np.asarray(Colorizer.from_checkpoint(DEFAULT_WEIGHTS, "cpu", fast="fp32", flatten=0)(sketch)))
    assert fast.flatten == 5.0 and not np.array_equal(np.asarray(fast(sketch)), once)  # restored after the call
    out = tmp_path / "o"
    assert main(["colorize", str(SKETCH), "--out", str(out), "--flatten", "0", "--no-progress"]) == 0
    assert main(["colorize", str(SKETCH), "--out", str(tmp_path / "o2"), "--flatten", "20", "--no-progress"]) != 0
    assert "--flatten 20: colour flattening must be in [0, 16] pixels" in one_line_error(capsys)
    assert main(["colorize", str(SKETCH), "--out", str(tmp_path / "o3"), "--flatten", "2",
                 "--checkpoint", str(tiny_checkpoint), "--no-progress"]) != 0
    assert "trained with --line-multiply" in one_line_error(capsys)


def test_the_readme_python_example_runs_and_its_hint_reddens_the_dress(tmp_path, monkeypatch):
    import re

    block = re.search(r"## Python\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    plain, red = (np.asarray(Image.open(tmp_path / f), dtype=float) for f in ("colored.png", "red-dress.png"))
    assert plain.shape == red.shape == (512, 512, 3)
    redness = lambda a: (a[..., 0] - (a[..., 1] + a[..., 2]) / 2)[200:248, 232:280].mean()  # noqa: E731
    assert redness(red) > redness(plain) + 40, (redness(plain), redness(red))


def test_library_inputs_are_read_as_the_cli_reads_them(colorizer, tmp_path):
    """A path, a uint8 array or a PIL image of any mode give the same result; transparent paper is white
    paper (a PIL RGBA sketch was converted by dropping its alpha: black paper)."""
    sketch = Image.open(SKETCH).convert("RGB").resize((128, 128))
    want = np.asarray(colorizer(sketch))
    sketch.save(tmp_path / "s.png")
    assert np.array_equal(np.asarray(colorizer(tmp_path / "s.png")), want)
    assert np.array_equal(np.asarray(colorizer(np.asarray(sketch))), want)
    ink = Image.new("RGBA", sketch.size, (0, 0, 0, 0))  # the same lines on a transparent layer
    ink.putalpha(Image.eval(sketch.convert("L"), lambda v: 255 - v))
    on_white = Image.alpha_composite(Image.new("RGBA", sketch.size, "white"), ink).convert("RGB")
    assert np.array_equal(np.asarray(colorizer(ink)), np.asarray(colorizer(on_white)))
    with pytest.raises(InputError, match="sketch: an array must be uint8"):
        colorizer(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InputError, match="sketch: expected a PIL image, a uint8 array or a path, not list"):
        colorizer([[0]])
    # empty images: were a ZeroDivisionError (PIL) and PIL's "height and width must be > 0" (array)
    with pytest.raises(InputError, match=r"sketch: an empty image \(0x0 pixels\)"):
        colorizer(Image.new("RGB", (0, 0)))
    with pytest.raises(InputError, match=r"sketch: an empty image \(5x0 pixels\)"):
        colorizer(np.zeros((0, 5), np.uint8))
    with pytest.raises(InputError, match=r"hints: an empty image \(0x0 pixels\)"):
        colorizer(sketch, Image.new("RGBA", (0, 0)))
    with pytest.raises(InputError, match="flatten '3': must be a number of pixels, not str"):  # was a bare '<=' TypeError
        colorizer(sketch, flatten="3")
    with pytest.raises(InputError, match="hints: image has no transparency"):
        colorizer(sketch, Image.new("RGB", sketch.size, "red"))
    with pytest.raises(InputError, match="hints: image has no transparency"):
        colorizer(sketch, Image.new("RGBA", sketch.size, "red"))  # alpha, but every pixel opaque
    for bad in (0, -256, "1024", 512.0, True):  # 0 and below meant the training size without a word; a string a TypeError
        with pytest.raises(InputError, match="max_size"):
            Colorizer.from_checkpoint(DEFAULT_WEIGHTS, "cpu", max_size=bad)
