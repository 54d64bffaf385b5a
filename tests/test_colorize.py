import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ganime.checkpoint import export_safetensors, load_checkpoint, save_checkpoint
from ganime.cli import main
from ganime.colorize import Colorizer
from ganime.errors import CheckpointError, InputError
from tests.conftest import one_line_error, synthetic_color, synthetic_sketch


def huge_header_png(path, w=100_000, h=100_000):
    """A tiny file whose PNG header claims w x h pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.fixture
def odd_inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    base = synthetic_sketch(synthetic_color(3, 100))
    base.resize((37, 91)).save(d / "tall.png")
    base.convert("L").resize((300, 120)).save(d / "grey.png")
    rgba = base.convert("RGBA").resize((64, 64))
    a = np.array(rgba)
    a[..., 3] = 128
    Image.fromarray(a, "RGBA").save(d / "rgba.png")
    base.convert("P").save(d / "palette.png")
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(arr16).save(d / "sixteen.png")
    base.convert("1").save(d / "bilevel.png")
    Image.new("RGB", (3, 2), "white").save(d / "tiny.jpg")
    return d


def test_colorize_keeps_each_input_size_and_handles_modes(tiny_checkpoint, odd_inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["colorize", str(odd_inputs), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    for src in odd_inputs.iterdir():
        res = Image.open(out / f"{src.stem}.png")
        assert res.size == Image.open(src).size and res.mode == "RGB", src.name


def test_a_pngs_transparent_colour_is_white_paper(tmp_path):
    """A PNG without alpha may mark one grey or RGB value transparent (tRNS, as PNG optimisers write line
    art on a transparent layer): that paper is composited on white like an alpha channel, not kept grey."""
    from ganime.imageio import open_image

    lines = np.full((20, 30), 77, np.uint8)
    lines[5:8, :] = 0
    Image.fromarray(lines, "L").save(tmp_path / "grey.png", transparency=77)
    Image.fromarray(np.stack([lines] * 3, -1), "RGB").save(tmp_path / "rgb.png", transparency=(77, 77, 77))
    Image.fromarray(lines.astype(np.uint16) * 257).save(tmp_path / "sixteen.png", transparency=77 * 257)
    for name in ("grey.png", "rgb.png", "sixteen.png"):
        arr = np.asarray(open_image(tmp_path / name))
        assert (arr[0] == 255).all() and (arr[6] == 0).all(), name


def test_a_16_bit_grey_hint_layer_keeps_its_grey_levels(tmp_path):
    """Hints read from a 16-bit grey PNG whose transparent colour is marked (tRNS): Pillow's own conversion to
    RGBA turned every painted grey level white; read from the file and passed as an image alike."""
    from ganime.colorize import as_image

    levels = np.zeros((8, 8), np.uint16)
    levels[2, 2], levels[4, 4] = 100 * 257, 200 * 257  # dark and light grey strokes on transparent level 0
    Image.fromarray(levels).save(tmp_path / "hints16.png", transparency=0)
    for source in (tmp_path / "hints16.png", Image.open(tmp_path / "hints16.png")):
        rgba = np.asarray(as_image(source, "hints", hints=True))
        assert rgba[2, 2].tolist() == [100, 100, 100, 255] and rgba[4, 4].tolist() == [200, 200, 200, 255]
        assert rgba[0, 0, 3] == 0 and (rgba[..., 3] == 255).sum() == 2


def test_colorize_skip_existing_finishes_a_stopped_run(tiny_checkpoint, tmp_path, capsys):
    """A folder run stopped by Ctrl-C left some results: --skip-existing colours only the missing ones
    (it was --overwrite, colouring every sketch again, or nothing)."""
    src, out = tmp_path / "sketches", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        synthetic_sketch(synthetic_color(i, 48)).save(src / f"s{i}.png")
    args = ["colorize", str(src), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    (out / "s1.png").unlink()
    (out / "s2.png").write_bytes(b"mine")
    capsys.readouterr()
    assert main(args) == 2
    assert "--skip-existing to colour only the sketches without a result" in one_line_error(capsys)
    assert main(args + ["--skip-existing"]) == 0
    said = capsys.readouterr().out
    assert "wrote 1 images to" in said and "(kept 2 existing)" in said
    assert Image.open(out / "s1.png").size == (48, 48) and (out / "s2.png").read_bytes() == b"mine"
    assert main(args + ["--skip-existing"]) == 0  # nothing left to do is not a failure
    assert "wrote 0 images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(args + ["--skip-existing", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_colorize_never_overwrites_without_permission(tiny_checkpoint, odd_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tall.png").write_bytes(b"mine")
    args = ["colorize", str(odd_inputs / "tall.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    assert main(args) != 0
    assert "already exists" in one_line_error(capsys)
    assert (out / "tall.png").read_bytes() == b"mine"
    assert main(args + ["--overwrite"]) == 0
    assert Image.open(out / "tall.png").size == (37, 91)


def test_colorize_into_the_input_folder_never_replaces_the_sketches(tiny_checkpoint, odd_inputs, tmp_path, capsys):
    # --overwrite replaces earlier results, not the sketches themselves (same folder, same stem, .png)
    before = {p.name: p.read_bytes() for p in odd_inputs.iterdir()}
    Image.new("RGBA", (37, 91), (0, 0, 0, 0)).save(tmp_path / "hints.png")
    for extra in ([], ["--hints", str(tmp_path / "hints.png")]):
        src = [str(odd_inputs / "tall.png")] if extra else [str(odd_inputs)]
        rc = main(["colorize", *src, "--checkpoint", str(tiny_checkpoint), "--out", str(odd_inputs), "--overwrite",
                   "--no-progress", *extra])
        assert rc != 0
        assert "input sketch itself" in one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in odd_inputs.iterdir()} == before


def test_an_output_that_is_the_input_under_another_name_is_refused(tmp_path):
    """The check compared resolved paths: on macOS and Windows "In/a.png" and "in/a.png" are one file, and
    --overwrite would have replaced the sketch with its colouring. A hard link stands in for that here."""
    from ganime.errors import InputError
    from ganime.imageio import check_not_input

    (tmp_path / "a.png").write_bytes(b"sketch")
    os.link(tmp_path / "a.png", tmp_path / "A.png")
    with pytest.raises(InputError, match="is the input sketch itself"):
        check_not_input(tmp_path / "a.png", tmp_path / "A.png", "the input sketch")
    check_not_input(tmp_path / "a.png", tmp_path / "b.png", "the input sketch")  # absent: fine


def test_a_sketch_named_twice_is_coloured_once(tiny_checkpoint, odd_inputs, tmp_path, capsys, monkeypatch):
    """'colorize DIR DIR/a.png' or 'a.png ./a.png' was refused: 'a.png and a.png would both be written to
    OUT/a.png; colour them into separate folders'."""
    monkeypatch.chdir(odd_inputs)
    out = tmp_path / "out"
    rc = main(["colorize", str(odd_inputs), "tall.png", "./tall.png", "--checkpoint", str(tiny_checkpoint),
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.png" for p in odd_inputs.iterdir())


def test_names_differing_only_in_case_are_refused(tiny_checkpoint, tmp_path, capsys):
    """A.png and a.png into one folder: on macOS and Windows (case-insensitive file systems) the second result
    was refused as 'already exists' after the first was written, or with --overwrite silently replaced it."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("A.png", "a.png"):
        synthetic_sketch(synthetic_color(0, 48)).save(src / name)
    out = tmp_path / "out"
    assert main(["colorize", str(src), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--no-progress"]) == 2
    assert "would both be written to" in one_line_error(capsys) and not out.exists()


def test_a_broken_link_is_named_as_one(tmp_path, capsys):
    from ganime.imageio import open_image

    (tmp_path / "gone.png").symlink_to(tmp_path / "moved-away.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    for name in ("gone.png", "loop.png"):
        with pytest.raises(InputError, match=f"{name}: a link to .*, which does not exist"):
            open_image(tmp_path / name)
    assert main(["colorize", str(tmp_path / "gone.png"), "--out", str(tmp_path / "o")]) == 2
    assert "gone.png: a link to" in one_line_error(capsys)


def test_a_link_to_a_sketch_under_another_name_is_coloured_too(tiny_checkpoint, tmp_path, capsys):
    """A folder of links to one file (as build_default_model.sh makes to repeat pairs) gives a result per name;
    the named-twice rule dropped all but the first, without a word."""
    src = tmp_path / "in"
    src.mkdir()
    synthetic_sketch(synthetic_color(0, 48)).save(src / "a.png")
    (src / "b.png").symlink_to(src / "a.png")
    out = tmp_path / "out"
    assert main(["colorize", str(src), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_a_folder_of_subfolders_names_one_to_colour(tiny_checkpoint, odd_inputs, tmp_path, capsys):
    """A folder whose sketches sit in subfolders (chapters of a volume) was said to hold 'no image files'."""
    volume = tmp_path / "volume"
    (volume / "chapter 1").mkdir(parents=True)
    (odd_inputs / "tall.png").rename(volume / "chapter 1" / "p1.png")
    rc = main(["colorize", str(volume), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out")])
    assert rc == 2 and f"not searched: name them, as {volume / 'chapter 1'}" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_before_colouring_with_hints_too(tiny_checkpoint, odd_inputs, tmp_path,
                                                                          capsys):
    Image.new("RGBA", (37, 91), (0, 0, 0, 0)).save(tmp_path / "hints.png")
    (tmp_path / "file").write_bytes(b"mine")
    for extra in ([], ["--hints", str(tmp_path / "hints.png")]):
        rc = main(["colorize", str(odd_inputs / "tall.png"), "--checkpoint", str(tiny_checkpoint), "--out",
                   str(tmp_path / "file"), "--no-progress", *extra])
        assert rc == 2
        assert "file: exists and is not a folder" in one_line_error(capsys)
    assert (tmp_path / "file").read_bytes() == b"mine"


@pytest.mark.parametrize("kind,needle", [
    ("zero", "empty file"),
    ("text", "not a readable image"),
    ("huge", "over the limit"),
    ("missing", "no such file"),
    ("emptydir", "holds no image"),
    ("truncated", "corrupt or truncated"),
    ("ico", "not a readable image"),  # a Pillow format outside imageio.IMAGE_FORMATS, named .png
])
def test_bad_inputs_give_one_line_and_nonzero_exit(kind, needle, tiny_checkpoint, tmp_path, capsys):
    p = tmp_path / "bad.png"
    if kind == "zero":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello, I am not a PNG")
    elif kind == "huge":
        huge_header_png(p)
    elif kind == "emptydir":
        p = tmp_path / "emptydir"
        p.mkdir()
    elif kind == "truncated":
        buf = io.BytesIO()
        synthetic_color(1, 64).save(buf, format="PNG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "ico":
        synthetic_color(1, 64).save(p, format="ICO")
    out = tmp_path / "out"
    rc = main(["colorize", str(p), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--no-progress"])
    assert rc != 0
    err = capsys.readouterr().err
    assert needle in err and str(p.name) in err and "Traceback" not in err
    assert not list(out.glob("*.png")) if out.exists() else True


def test_a_bad_file_among_good_ones_is_skipped(tiny_checkpoint, odd_inputs, tmp_path, capsys):
    (odd_inputs / "broken.png").write_bytes(b"")
    out = tmp_path / "out"
    # the others are coloured; exit 1 tells a script that not every input was
    assert main(["colorize", str(odd_inputs), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--no-progress"]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert len(list(out.glob("*.png"))) == 7


class Evil:
    """Unpickling this runs code: loading must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoint(kind, path, good):
    if kind == "corrupt":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "bitflip":  # one byte of the largest tensor damaged (a bad disk, a broken copy)
        import zipfile

        data = bytearray(good.read_bytes())
        info = max(zipfile.ZipFile(good).infolist(), key=lambda i: i.compress_size)
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
        data[info.header_offset + 30 + name_len + extra_len + info.compress_size // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "foreign":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "pickle":
        torch.save({"format": "ganime-checkpoint", "obj": Evil(path.parent / "pwned")}, path)
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "newer":
        ck = torch.load(good, weights_only=True)
        ck["format_version"] = 99
        torch.save(ck, path)
    elif kind == "missing":
        pass
    else:  # hand-edited: entries GANime never writes
        ck = torch.load(good, weights_only=True)
        cfg = json.loads(ck["config_json"])
        if kind == "depth-str":
            cfg["net"]["gen_depth"] = "8"
        elif kind == "net-list":
            cfg["net"] = [1, 2]
        elif kind == "config-list":
            cfg = [cfg]
        elif kind == "models-list":
            ck["models"] = [ck["models"]["G"]]
        elif kind == "weights-str":
            ck["models"]["G"] = {"x": "not a tensor"}
        elif kind == "progress-str":
            ck["progress"]["epoch"] = "3"
        ck["config_json"] = json.dumps(cfg)
        torch.save(ck, path)


@pytest.mark.parametrize("kind,needle", [
    ("corrupt", "corrupt or truncated"), ("bitflip", "fails its checksum"), ("foreign", "not a GANime checkpoint"),
    ("pickle", "refused"),
    ("text", "not a readable checkpoint"), ("empty", "empty file"), ("newer", "newer"), ("missing", "no such checkpoint"),
    ("depth-str", "setting gen_depth = '8': expected int"), ("net-list", "NetConfig settings are not a mapping"),
    ("config-list", "configuration is not understood"), ("models-list", "'models' entry is not a set of weights"),
    ("weights-str", "'models' entry is not a set of weights"), ("progress-str", "'progress' entry is not understood"),
])
def test_bad_checkpoints_give_one_line(kind, needle, tiny_checkpoint, odd_inputs, tmp_path, capsys):
    ck = tmp_path / "model.pt"
    _bad_checkpoint(kind, ck, tiny_checkpoint)
    rc = main(["colorize", str(odd_inputs / "tall.png"), "--checkpoint", str(ck), "--out", str(tmp_path / "o")])
    assert rc != 0
    line = one_line_error(capsys)
    assert needle in line and "model.pt" in line
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind,needle", [("mismatch", "do not fit"), ("config", "metadata is corrupt"),
                                         ("version", "metadata is corrupt"), ("newer", "format 99 is newer"),
                                         ("method", "unknown method 'nosuch'")])
def test_inconsistent_exported_models_give_one_line(kind, needle, tiny_checkpoint, odd_inputs, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    good = tmp_path / "good.safetensors"
    ck = load_checkpoint(tiny_checkpoint)
    cfg = dict(ck["config"], net={**ck["config"]["net"], "gen_base": 4}) if kind == "mismatch" else ck["config"]
    export_safetensors(good, method="pix2pix", config=cfg, generator_state=ck["models"]["G"])
    meta = load_checkpoint(good)["meta"]
    meta.update({"config": {"config": meta["config"][:-1]}, "version": {"format_version": "x"},
                 "newer": {"format_version": "99"}, "method": {"method": "nosuch"}}.get(kind, {}))
    bad = tmp_path / "model.safetensors"
    save_file(load_file(good), bad, metadata=meta)
    rc = main(["colorize", str(odd_inputs / "tall.png"), "--checkpoint", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2
    line = one_line_error(capsys)
    assert needle in line and "model.safetensors" in line


def test_a_damaged_exported_model_is_refused(tiny_checkpoint, odd_inputs, tmp_path, capsys):
    """safetensors carries no checksum: a flipped byte in the weights loaded silently (99 of 150 flips)."""
    good = tmp_path / "good.safetensors"
    ck = load_checkpoint(tiny_checkpoint)
    export_safetensors(good, method="pix2pix", config=ck["config"], generator_state=ck["models"]["G"])
    data = bytearray(good.read_bytes())
    data[len(data) - 5] ^= 0x40  # a weight's byte: the data section ends the file
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(bytes(data))
    rc = main(["colorize", str(odd_inputs / "tall.png"), "--checkpoint", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2 and "model.safetensors: not a readable safetensors file (corrupt: its weights fail their checksum)" \
        in one_line_error(capsys)
    # a model exported before the checksum (the shipped one) still loads
    from safetensors.torch import load_file, save_file

    meta = load_checkpoint(good)["meta"]
    del meta["sha256"]
    save_file(load_file(good), tmp_path / "old.safetensors", metadata=meta)
    assert load_checkpoint(tmp_path / "old.safetensors")["method"] == "pix2pix"


def test_checkpoint_of_another_method_is_refused_where_a_method_is_expected(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="is a pix2pix checkpoint, but cyclegan"):
        load_checkpoint(tiny_checkpoint, expect_method="cyclegan")


def test_checkpoint_round_trip(tmp_path, tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "copy.pt"
    save_checkpoint(path, method=ck["method"], config=ck["config"],
                    state={"models": ck["models"], "optimizers": ck["optimizers"], "extra": ck.get("extra", {})},
                    progress=ck["progress"])
    again = load_checkpoint(path)
    assert again["config"] == ck["config"] and again["progress"] == ck["progress"]
    for k, v in ck["models"]["G"].items():
        assert torch.equal(v, again["models"]["G"][k])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_safetensors_export_loads_and_matches(tmp_path, tiny_checkpoint):
    from ganime.checkpoint import export_safetensors

    ck = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "model.safetensors"
    export_safetensors(path, method="pix2pix", config=ck["config"], generator_state=ck["models"]["G"], dtype=torch.float32)
    a, b = Colorizer.from_checkpoint(tiny_checkpoint, "cpu"), Colorizer.from_checkpoint(path, "cpu")
    sk = synthetic_sketch(synthetic_color(5, 80))
    assert np.array_equal(np.asarray(a(sk)), np.asarray(b(sk)))


def test_colorizer_maps_hints_through_the_same_geometry(tmp_path):
    """A hint-aware model receives the hint where the user painted it, after the letterbox fit."""
    from ganime.nn.unet import UNetGenerator
    from tests.conftest import tiny_config

    cfg = tiny_config()
    cfg.net.hint_channels = 4
    col = Colorizer(UNetGenerator(7, 3, 8, 6), cfg, "pix2pix", torch.device("cpu"))
    sketch = Image.new("RGB", (128, 64), "white")
    hints = Image.new("RGBA", (128, 64), (0, 0, 0, 0))
    hints.paste((255, 0, 0, 255), (0, 0, 16, 16))
    x, box = col.prepare(sketch, hints)
    assert x.shape == (1, 7, 64, 64) and box == (0, 16, 64, 48)
    mask = x[0, 6]
    assert mask[16:24, 0:8].min() == 1 and mask.sum() == 64
    assert torch.allclose(x[0, 3, 16, 0], torch.tensor(1.0)) and torch.allclose(x[0, 4, 16, 0], torch.tensor(-1.0))


def test_hints_of_another_shape_are_refused_not_stretched():
    """Hints of another aspect (painted on a rotated or cropped copy) would land away from where they were
    painted: one sentence; a scaled copy of the same shape is mapped as before."""
    from ganime.errors import InputError
    from ganime.nn.unet import UNetGenerator
    from tests.conftest import tiny_config

    cfg = tiny_config()
    cfg.net.hint_channels = 4
    col = Colorizer(UNetGenerator(7, 3, 8, 6), cfg, "pix2pix", torch.device("cpu"))
    sketch = Image.new("RGB", (128, 64), "white")
    with pytest.raises(InputError, match="hints are 64x128 but the sketch is 128x64; paint hints at the sketch's size"):
        col.prepare(sketch, Image.new("RGBA", (64, 128)))
    half = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    half.paste((255, 0, 0, 255), (0, 0, 8, 8))
    x, _ = col.prepare(sketch, half)
    assert x[0, 6, 16:24, 0:8].min() == 1 and x[0, 6].sum() == 64


def test_thin_hint_strokes_on_a_large_sketch_survive_the_shrink():
    """Hints were shrunk nearest-neighbour: 1-px strokes on a sketch 8x the working size vanished (every
    other one at 2x). A shrunk pixel is now hinted where any painted pixel falls in it, with their colour."""
    from ganime.nn.unet import UNetGenerator
    from tests.conftest import tiny_config

    cfg = tiny_config()
    cfg.net.hint_channels = 4
    col = Colorizer(UNetGenerator(7, 3, 8, 6), cfg, "pix2pix", torch.device("cpu"))  # works at 64 px
    sketch = Image.new("RGB", (512, 256), "white")
    hints = np.zeros((256, 512, 4), np.uint8)
    hints[100:180, 200] = (255, 0, 0, 255)
    hints[100:180, 301] = (0, 0, 255, 255)
    hints[100:180, 302] = (0, 0, 255, 128)  # half transparent: not painted, as hint_map_from_rgba reads it
    x, box = col.prepare(sketch, Image.fromarray(hints, "RGBA"))
    assert box == (0, 16, 64, 48)
    mask, rgb = x[0, 6], x[0, 3:6]
    assert mask.sum(0).nonzero().flatten().tolist() == [25, 37]  # columns 200 / 8 and 301 / 8
    assert mask.sum() == 2 * 11  # rows 100-179 touch shrunk rows 12-22 (each 8 rows)
    assert rgb[:, 30, 25].tolist() == [1.0, -1.0, -1.0] and rgb[:, 30, 37].tolist() == [-1.0, -1.0, 1.0]


def test_colour_input_is_flagged(tiny_checkpoint, tmp_path, capsys):
    from ganime.colorize import looks_coloured

    colour = synthetic_color(2, 64)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    assert looks_coloured(Image.open(tmp_path / "red.png"))
    assert not looks_coloured(synthetic_sketch(colour))
    assert main(["colorize", str(tmp_path / "red.png"), "--checkpoint", str(tiny_checkpoint),
                 "--out", str(tmp_path / "o")]) == 0
    assert "looks like a colour image" in capsys.readouterr().err


def test_colorize_fast_default_stays_within_tolerance_of_off(tiny_checkpoint, tmp_path):
    """--fast auto (the default) against --fast off (eager float32): same sizes, pixels within the
    bf16 tolerance (6e-2 in [-1, 1] = 8 levels max, 1 level mean); --fast fp32 within one level."""
    src = tmp_path / "in"
    src.mkdir()
    synthetic_sketch(synthetic_color(5, 100)).resize((90, 70)).save(src / "a.png")
    outs = {}
    for mode in ("off", "auto", "fp32", "bf16", None):
        argv = ["colorize", str(src), "--out", str(tmp_path / str(mode)), "--checkpoint", str(tiny_checkpoint),
                "--device", "cpu", "--no-progress"] + (["--fast", mode] if mode else [])
        assert main(argv) == 0
        outs[mode] = np.asarray(Image.open(tmp_path / str(mode) / "a.png"), dtype=int)
    ref = outs["off"]
    assert np.abs(outs["fp32"] - ref).max() <= 1
    for mode in ("auto", "bf16", None):
        d = np.abs(outs[mode] - ref)
        assert outs[mode].shape == ref.shape and d.max() <= 8 and d.mean() <= 1.0, (mode, d.max(), d.mean())


def test_colorize_rejects_an_unknown_fast_mode(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["colorize", str(tmp_path), "--out", str(tmp_path / "o"), "--checkpoint", str(tiny_checkpoint),
              "--fast", "fp8"])


def test_paper_background_option_keeps_the_sketch_paper(tiny_checkpoint, tmp_path):
    from ganime.colorize import paper_background

    sk = Image.new("RGB", (96, 80), (250, 250, 250))
    from PIL import ImageDraw

    ImageDraw.Draw(sk).ellipse([20, 15, 70, 65], outline=(0, 0, 0), width=2)
    sk.save(tmp_path / "ring.png")
    args = ["colorize", str(tmp_path / "ring.png"), "--checkpoint", str(tiny_checkpoint), "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "paper"), "--background", "paper"]) == 0
    assert main(args + ["--out", str(tmp_path / "model")]) == 0
    paper = np.asarray(Image.open(tmp_path / "paper" / "ring.png"))
    model = np.asarray(Image.open(tmp_path / "model" / "ring.png"))
    assert (paper[2, 2] == 250).all() and (paper[78, 94] == 250).all()  # outside the ring: the paper itself
    assert np.array_equal(paper[40, 45], model[40, 45])  # inside the ring: as generated
    assert not paper_background(np.asarray(sk))[40, 45]


def test_large_sketches_are_coloured_near_their_own_resolution(tiny_checkpoint):
    """With max_size, a 128 px sketch reaches a 64 px model at 128 px (its lines keep their width)."""
    seen = []
    col = Colorizer.from_checkpoint(tiny_checkpoint, "cpu", max_size=128)
    real = col.generator.forward
    col.generator.forward = lambda x: (seen.append(tuple(x.shape[-2:])), real(x))[1]
    sk = synthetic_sketch(synthetic_color(1, 128))
    assert col(sk).size == (128, 128)
    assert col(sk.resize((40, 40))).size == (40, 40)
    assert col(sk.resize((500, 300))).size == (500, 300)
    assert seen == [(128, 128), (64, 64), (128, 128)]
    assert Colorizer.from_checkpoint(tiny_checkpoint, "cpu").working_size(500, 300) == 512  # as the CLI's default
    assert Colorizer.from_checkpoint(tiny_checkpoint, "cpu", max_size=None).working_size(500, 300) == 64


def test_a_max_size_off_the_networks_multiple_is_rounded_down(tiny_checkpoint):
    """--max-size 100 for a 64 px-multiple U-Net: a large sketch is coloured at 64 px, not at 100 px
    (which failed inside the network with 'Sizes of tensors must match')."""
    col = Colorizer.from_checkpoint(tiny_checkpoint, "cpu", max_size=100)
    assert col.max_size == 64 and col.working_size(300, 200) == 64
    assert col(Image.new("RGB", (300, 200), "white")).size == (300, 200)
    assert Colorizer.from_checkpoint(tiny_checkpoint, "cpu", max_size=200).working_size(1100, 700) == 192



SPY_TORCH_IMPORT = """
import os, sys
seen = []
class Spy:  # records OMP_WAIT_POLICY at the moment torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Spy())
from ganime.cli import main
rc = main(sys.argv[1:])
print("policy when torch loaded:", seen[0] if seen else "torch not loaded")
sys.exit(rc)
"""


def test_colorize_sets_passive_openmp_wait_before_torch_loads(tiny_checkpoint, tmp_path):
    """docs/performance.md: ganime colorize sets OMP_WAIT_POLICY=PASSIVE before torch loads (the OpenMP
    runtime reads it when it starts), unless the user chose a policy."""
    import os
    import subprocess
    import sys

    sketch = tmp_path / "s.png"
    synthetic_sketch(synthetic_color(0)).save(sketch)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for policy, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        r = subprocess.run([sys.executable, "-c", SPY_TORCH_IMPORT, "colorize", str(sketch), "--out",
                            str(tmp_path / f"out-{expected}"), "--checkpoint", str(tiny_checkpoint), "--no-progress"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and f"policy when torch loaded: {expected}" in r.stdout, (r.stdout, r.stderr)


def test_an_output_the_system_refuses_is_one_line_naming_it(tiny_checkpoint, odd_inputs, tmp_path, capsys):
    """OSErrors with a path (a parent that is a file, no permission, disk full) name the path, not 'unexpected'."""
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    rc = main(["colorize", str(odd_inputs), "--checkpoint", str(tiny_checkpoint), "--out", str(blocker / "sub"),
               "--no-progress"])
    assert rc == 1 and one_line_error(capsys) == f"ganime: error: {blocker / 'sub'}: Not a directory"
    rc = main(["export", "safetensors", "--checkpoint", str(tiny_checkpoint), "--out", str(blocker / "m.safetensors")])
    assert rc == 1 and one_line_error(capsys) == f"ganime: error: {blocker}: is a file, where a folder is needed"
    assert blocker.read_text() == "mine"


def test_a_name_that_is_not_utf8_is_printed_where_stdout_is_strict(tiny_checkpoint, odd_inputs, tmp_path,
                                                                   monkeypatch, capsys):
    """Under a UTF-8 locale stdout refuses the surrogates that stand for a name's undecodable bytes: the images
    were written, then 'wrote N images to OUT' ended in an 'unexpected UnicodeEncodeError' and exit 1."""
    out = os.fsdecode(bytes(tmp_path) + b"/r\xe9sultats")
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr("sys.stdout", strict)
    rc = main(["colorize", str(odd_inputs / "tall.png"), "--checkpoint", str(tiny_checkpoint), "--out", out])
    assert rc == 0, capsys.readouterr().err
    strict.flush()
    assert b"r\xe9sultats" in strict.buffer.getvalue()


def test_a_name_the_output_encoding_lacks_is_printed_escaped(tiny_checkpoint, odd_inputs, tmp_path, monkeypatch,
                                                             capsys):
    """Output redirected to a file on Windows is in the ANSI code page (cp1252), which has no Japanese: the images
    were written, then 'wrote N images to 結果' ended in an 'unexpected UnicodeEncodeError' and exit 1."""
    ansi = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict")
    monkeypatch.setattr("sys.stdout", ansi)
    rc = main(["colorize", str(odd_inputs / "tall.png"), "--checkpoint", str(tiny_checkpoint),
               "--out", str(tmp_path / "\u7d50\u679c")])
    assert rc == 0, capsys.readouterr().err
    ansi.flush()
    assert b"\\u7d50\\u679c" in ansi.buffer.getvalue() and (tmp_path / "\u7d50\u679c" / "tall.png").exists()


@pytest.mark.parametrize("value", ["0", "-5", "big"])
def test_max_size_must_be_a_positive_number(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["colorize", "x.png", "--out", str(tmp_path / "o"), "--max-size", value])
    assert e.value.code == 2 and f"--max-size: expected a positive number, got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["train", "pix2pix", "--data", "c", "--out", "r", "--epochs", "1e3"], "--epochs: invalid int value: '1e3'"),
    (["colorize", "a.png"], "the following arguments are required: --out"),
    (["data", "prepare", "src", "out", "--size", "big"], "--size: invalid int value: 'big'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_a_usage_error_is_one_line(argv, needle, capsys):
    """argparse printed its usage summary above the error: 18 lines for a train option, the error last."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "--help" in err, err


@pytest.mark.parametrize("argv, name", [(["colorize", "SKETCH", "--out", ""], "--out"),
                                        (["colorize", "", "--out", "o"], "INPUT"),
                                        (["data", "sketchify", "SRC", ""], "out")])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(argv, name, odd_inputs, tmp_path, monkeypatch,
                                                                   capsys):
    """'--out "$OUT"' with OUT unset: the results went into the current folder without a word."""
    monkeypatch.chdir(tmp_path)
    argv = [str(odd_inputs / "tall.png") if a == "SKETCH" else str(odd_inputs) if a == "SRC" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {name}: empty value" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_write_the_disk_refuses_names_its_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """A full disk (ENOSPC from write or fsync) names the file it was writing; the old file stays whole."""
    import errno

    from ganime.imageio import atomic_write_bytes

    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"new")
    assert e.value.filename == str(target) and e.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_writes_need_no_posix_only_call(tmp_path, monkeypatch):
    """Windows has no os.fchmod before Python 3.13: every result, pair, cache and checkpoint failed to save there
    ('AttributeError: module 'os' has no attribute 'fchmod'')."""
    from ganime.imageio import _FILE_MODE, atomic_write_bytes

    monkeypatch.delattr(os, "fchmod", raising=False)
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == _FILE_MODE  # not mkstemp's 0600
