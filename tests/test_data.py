import hashlib
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ganime.cli import main
from ganime.data import augment, sketch
from ganime.data.loader import PairLoader
from ganime.data.pairs import PairCache, discover, prepare, split_side_by_side
from ganime.errors import InputError
from tests.conftest import SHARED_DATA, one_line_error, synthetic_color, synthetic_sketch


def test_split_side_by_side_colour_left_sketch_right():
    arr = np.zeros((4, 10, 3), np.uint8)
    arr[:, :5] = 200
    arr[:, 5:] = 10
    color, sk = split_side_by_side(arr)
    assert color.shape == sk.shape == (4, 5, 3)
    assert (color == 200).all() and (sk == 10).all()
    odd = np.arange(4 * 11 * 3, dtype=np.uint8).reshape(4, 11, 3)
    c, s = split_side_by_side(odd)
    assert c.shape == s.shape == (4, 5, 3)
    assert (c == odd[:, :5]).all() and (s == odd[:, 6:]).all()


def test_discover_the_three_layouts(tmp_path, make_pairs):
    kaggle = tmp_path / "kaggle"
    make_pairs(3, folder=kaggle / "train")
    make_pairs(2, folder=kaggle / "val")
    layout, splits = discover(kaggle)
    assert layout == "kaggle" and len(splits["train"]) == 3 and len(splits["val"]) == 2

    flat = make_pairs(4, folder=tmp_path / "flat")
    layout, splits = discover(flat)
    assert layout == "flat" and len(splits["train"]) == 4

    both = tmp_path / "both"
    (both / "sketch").mkdir(parents=True)
    (both / "color").mkdir()
    for i in range(3):
        c = synthetic_color(i)
        c.save(both / "color" / f"{i}.png")
        synthetic_sketch(c).save(both / "sketch" / f"{i}.png")
    synthetic_sketch(c).save(both / "sketch" / "orphan.png")
    layout, splits = discover(both)
    assert layout == "folders" and len(splits["train"]) == 3


def test_prepare_writes_a_cache_matching_the_sources(tmp_path, make_pairs):
    src = tmp_path / "kaggle"
    make_pairs(5, size=64, folder=src / "train")
    make_pairs(2, size=64, folder=src / "val", start=10)
    idx = prepare(src, tmp_path / "cache", size=32, workers=1, progress=False)
    assert idx["splits"]["train"]["count"] == 5 and idx["splits"]["val"]["count"] == 2
    cache = PairCache(tmp_path / "cache")
    arr = cache.load("train")
    assert arr.shape == (5, 2, 32, 32, 3) and arr.dtype == np.uint8
    # [:, 0] is the sketch (right half), [:, 1] the colour (left half).
    full = np.asarray(Image.open(src / "train" / "pair_000.png"))
    color, sk = split_side_by_side(full)
    want_sketch = np.asarray(Image.fromarray(sk).resize((32, 32), Image.BICUBIC))
    assert np.abs(arr[0, 0].astype(int) - want_sketch).max() <= 1
    assert np.abs(arr[0, 1].astype(int) - np.asarray(Image.fromarray(color).resize((32, 32), Image.BICUBIC))).max() <= 1


def test_cache_load_reads_every_shard_in_order(tmp_path, make_pairs):
    src = make_pairs(5, size=32)
    prepare(src, tmp_path / "cache", size=16, workers=1, progress=False, shard_size=2)
    cache = PairCache(tmp_path / "cache")
    assert len(cache.arrays("train")) == 3
    want = np.concatenate(cache.arrays("train"))
    assert np.array_equal(cache.load("train", progress=True), want) and np.array_equal(cache.load(), want)


def test_prepare_holds_about_one_shard_in_memory(tmp_path, make_pairs):
    """The pairs were gathered in a list, stacked into a shard, saved into a buffer and copied out of it: a
    peak of 3.5 shards (1.4 GB for 256 pairs at 512 px, 5 GB for a full shard). Now filled and written in place."""
    import tracemalloc

    src = make_pairs(12, size=64)
    (src / "broken.png").write_bytes(b"not an image")  # a skipped file: the shard holds the 12 others
    shard_bytes = 12 * 2 * 128 * 128 * 3
    prepare(src, tmp_path / "warm", size=16, workers=1, progress=False)  # modules imported on first use: not counted
    tracemalloc.start()
    try:
        prepare(src, tmp_path / "cache", size=128, workers=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.8 * shard_bytes, peak / shard_bytes
    arr = PairCache(tmp_path / "cache").load("train")
    assert arr.shape == (12, 2, 128, 128, 3) and arr.any()


def test_prepare_rerun_reuses_shards_and_skips_bad_files(tmp_path, make_pairs, capsys):
    src = make_pairs(4)
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    out = tmp_path / "cache"
    assert main(["data", "prepare", str(src), str(out), "--size", "32", "--workers", "1", "--no-progress"]) == 1  # done, 2 files skipped
    err = capsys.readouterr().err
    assert "empty.png" in err and "text.png" in err
    shard = next(out.glob("train-*.npy"))
    mtime = shard.stat().st_mtime_ns
    assert main(["data", "prepare", str(src), str(out), "--size", "32", "--workers", "1", "--no-progress"]) == 1
    assert shard.stat().st_mtime_ns == mtime  # reused, not rewritten
    # A new source file invalidates the shard; the stale one is removed.
    make_pairs(1, start=50, folder=src)
    assert main(["data", "prepare", str(src), str(out), "--size", "32", "--workers", "2", "--no-progress"]) == 1
    assert not shard.exists()
    assert PairCache(out).count("train") == 5
    assert len(list(out.glob("train-*.npy"))) == 1


def test_prepare_into_the_source_folder_is_refused(tmp_path, make_pairs, capsys):
    """--out SRC/val on a source without val/ made a 'val split' of cache files for the next prepare."""
    src = tmp_path / "kaggle"
    make_pairs(2, folder=src / "train")
    assert main(["data", "prepare", str(src), str(src / "val"), "--size", "32", "--no-progress"]) == 2
    assert "is inside the source folder" in one_line_error(capsys)
    assert sorted(p.name for p in src.iterdir()) == ["train"]


def test_prepare_names_stretched_pairs_and_skips_mismatched_sketch_colour_files(tmp_path, make_pairs, capsys):
    src = make_pairs(2)
    wide = np.full((40, 160, 3), 255, np.uint8)  # halves of 80x40: stretched to a square, as pix2pix does
    Image.fromarray(wide).save(src / "wide.png")
    out = tmp_path / "cache"
    assert main(["data", "prepare", str(src), str(out), "--size", "32", "--workers", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 pair has non-square halves, stretched to 32x32: wide.png (80x40 halves)" in err
    assert PairCache(out).count() == 3 and json.loads((out / "index.json").read_text())["stretched"] == [
        "wide.png (80x40 halves)"]
    # Two-folder layout: a sketch and a colour image of different shapes would be misaligned: skipped.
    folders = tmp_path / "folders"
    for sub, shapes in (("sketch", [(64, 64), (64, 64)]), ("color", [(64, 64), (64, 96)])):
        (folders / sub).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(folders / sub / f"{i}.png")
    out2 = tmp_path / "cache2"
    assert main(["data", "prepare", str(folders), str(out2), "--size", "32", "--workers", "1", "--no-progress"]) == 1  # done, 1 file skipped
    err = capsys.readouterr().err
    assert "skipped 1 unusable files" in err and "is 64x64 but its colour image" in err and "is 96x64" in err
    assert PairCache(out2).count() == 1 and "non-square" not in err


def test_prepare_with_nothing_usable_fails_in_one_line(tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    assert main(["data", "prepare", str(src), str(tmp_path / "out"), "--no-progress"]) != 0
    assert "could be used" in one_line_error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "prepare", str(empty), str(tmp_path / "out2"), "--no-progress"]) != 0
    assert "no image files" in one_line_error(capsys)
    assert main(["data", "prepare", str(tmp_path / "missing"), str(tmp_path / "out3")]) != 0
    assert "no such folder" in one_line_error(capsys)


def test_prepare_of_an_unzipped_archive_names_the_folder_that_holds_the_pairs(tmp_path, make_pairs, capsys):
    make_pairs(2, folder=tmp_path / "unzipped" / "data" / "train")
    assert main(["data", "prepare", str(tmp_path / "unzipped"), str(tmp_path / "c"), "--no-progress"]) == 2
    assert f"{tmp_path / 'unzipped' / 'data'} holds a train/ folder: prepare that one" in one_line_error(capsys)


def test_prepare_refuses_a_foreign_non_empty_output(tmp_path, make_pairs, capsys):
    src = make_pairs(2)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["data", "prepare", str(src), str(out), "--no-progress"]) != 0
    assert "not a GANime cache" in one_line_error(capsys)
    assert (out / "notes.txt").read_text() == "precious"
    (out / "notes.txt").unlink()  # arrays of the user's own, named like shards: not a cache either
    (out / "train-00001-features.npy").write_bytes(b"mine")
    assert main(["data", "prepare", str(src), str(out), "--no-progress"]) != 0
    assert "not a GANime cache" in one_line_error(capsys)
    assert (out / "train-00001-features.npy").read_bytes() == b"mine"


def test_prepare_resumes_a_killed_run_and_keeps_files_added_to_its_cache(tmp_path, make_pairs, capsys):
    src, out = make_pairs(3), tmp_path / "cache"
    prepare(src, out, size=32, workers=1, progress=False)
    (out / "index.json").unlink()  # as if killed before the index: shards and a temporary are left
    (out / ".train-00000-0123456789ab.npy.k2j3h4.tmp").write_bytes(b"partial")
    assert main(["data", "prepare", str(src), str(out), "--size", "32", "--workers", "1", "--no-progress"]) == 0
    assert not list(out.glob(".*.tmp")) and PairCache(out).count() == 3
    (out / "README.txt").write_text("my notes")  # a finished cache is recognised by its index
    (out / "train-00001-features.npy").write_bytes(b"mine")
    assert main(["data", "prepare", str(src), str(out), "--size", "32", "--workers", "1", "--no-progress"]) == 0
    assert (out / "README.txt").read_text() == "my notes" and (out / "train-00001-features.npy").read_bytes() == b"mine"


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file names must be UTF-8")
def test_prepare_file_name_that_is_not_utf8(tmp_path, make_pairs, capsys):
    """The shard key hashed each name with str.encode(), which refuses the surrogates standing for a name's
    undecodable bytes: one Latin-1 name ended the whole prepare in an 'unexpected UnicodeEncodeError'."""
    src = make_pairs(2)
    first = sorted(src.iterdir())[0]
    first.rename(os.fsdecode(bytes(src) + b"/caf\xe9.png"))
    assert main(["data", "prepare", str(src), str(tmp_path / "cache"), "--no-progress"]) == 0, capsys.readouterr().err
    assert PairCache(tmp_path / "cache").count() == 2


def test_ctrl_c_during_prepare_is_one_line_and_a_rerun_completes(tmp_path, make_pairs):
    """Ctrl-C reaches the whole process group: a decoding worker idle while the main process wrote a shard
    printed its own KeyboardInterrupt traceback (one per worker) above 'ganime: interrupted'."""
    import signal
    import subprocess

    src, out = make_pairs(6), tmp_path / "cache"
    script = tmp_path / "slow_write.py"  # the workers are done and idle while the shard is written
    script.write_text("import sys, time\nimport ganime.data.pairs as p\nwrite = p.atomic_write_bytes\n"
                      "def slow(path, data):\n    print('writing', flush=True)\n    time.sleep(60)\n"
                      "    write(path, data)\np.atomic_write_bytes = slow\n"
                      "from ganime.cli import main\nraise SystemExit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), *sys.path])}
    proc = subprocess.Popen([sys.executable, str(script), "data", "prepare", str(src), str(out), "--workers", "2",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    assert proc.stdout.readline() == "writing\n"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to every process of the group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.strip() == "ganime: interrupted", err
    assert main(["data", "prepare", str(src), str(out), "--no-progress"]) == 0
    assert PairCache(out).count() == 6


@pytest.mark.skipif(not (SHARED_DATA / "kaggle-sample").exists(), reason="../shared/data not present")
def test_prepare_real_kaggle_pairs(tmp_path):
    idx = prepare(SHARED_DATA / "kaggle-sample", tmp_path / "cache", size=64, workers=2, progress=False)
    assert idx["count"] == 33 and not idx["skipped"]


def test_resize_crop_flip_equals_resize_then_crop():
    x = torch.rand(3, 6, 32, 32)
    ox, oy, fl = torch.tensor([0, 3, 4]), torch.tensor([4, 0, 2]), torch.tensor([False, True, False])
    out = augment.resize_crop_flip(x, 32, 36, ox, oy, fl)
    big = F.interpolate(x, size=(36, 36), mode="bilinear", align_corners=False)
    for i in range(3):
        crop = big[i, :, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        if fl[i]:
            crop = crop.flip(-1)
        assert torch.allclose(out[i], crop, atol=1e-5)


def test_augmentation_keeps_sketch_and_colour_aligned():
    color = torch.rand(8, 3, 64, 64) * 2 - 1
    g = torch.Generator().manual_seed(0)
    s2, c2 = augment.augment_pair(color.clone(), color, 64, 72, True, g)
    assert torch.equal(s2, c2)  # same image in, same crop and flip out
    assert not torch.allclose(c2, color)


def test_zoom_out_places_both_halves_alike_on_white_paper():
    img = torch.rand(6, 6, 64, 64) * 1.6 - 0.9  # content never exactly white
    g = torch.Generator().manual_seed(1)
    out = augment.zoom_out(img, torch.tensor([0, 2, 5]), 0.4, g)
    for i in (1, 3, 4):
        assert torch.equal(out[i], img[i])  # not picked: untouched
    for i in (0, 2, 5):
        content = (out[i] < 0.999).any(0)  # what is not paper
        rows, cols = content.any(1).nonzero().flatten(), content.any(0).nonzero().flatten()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h == w and 0.4 * 64 - 1 <= h <= 64  # a square scaled by a factor in [0.4, 1]
        assert (out[i][:, ~content] == 1).all()  # the rest is white paper, in every channel
        box = out[i][:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        ref = F.interpolate(img[i : i + 1], size=(int(h), int(w)), mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(box, ref[0], atol=1e-6)  # both halves (channels 0-2, 3-5) share the placement
    again = augment.zoom_out(img, torch.tensor([0, 2, 5]), 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # seeded
    assert augment.zoom_out(img, torch.tensor([], dtype=torch.long), 0.4, g) is img


def test_loader_zoom_out_keeps_pairs_aligned():
    pairs = np.random.default_rng(2).integers(0, 200, (8, 1, 32, 32, 3), dtype=np.uint8).repeat(2, axis=1)
    loader = PairLoader(pairs, 8, torch.device("cpu"), seed=0, size=32, load_size=36, zoom_out=1.0, zoom_min=0.5)
    b = loader.make_batch(torch.arange(8), 0)
    assert torch.equal(b["sketch"], b["color"])  # same pair in, same placement out
    assert (b["color"] == 1).float().mean() > 0.05  # white paper around every shrunk pair
    plain = PairLoader(pairs, 8, torch.device("cpu"), seed=0, size=32, load_size=36).make_batch(torch.arange(8), 0)
    assert not torch.equal(plain["color"], b["color"])


def test_loader_batches_are_deterministic_and_shuffled_per_epoch():
    pairs = np.random.default_rng(0).integers(0, 255, (10, 2, 32, 32, 3), dtype=np.uint8)
    make = lambda: PairLoader(pairs, 4, torch.device("cpu"), seed=3, size=32, load_size=36, sketch_augment=0.5)  # noqa
    a, b = make(), make()
    assert a.steps_per_epoch == 2
    assert not torch.equal(a.order(0), a.order(1))
    ba = [bt for _, bt in a.epoch(1, 0, 2)]
    bb = [bt for _, bt in b.epoch(1, 1, 2)]
    assert torch.equal(ba[1]["sketch"], bb[0]["sketch"]) and torch.equal(ba[1]["color"], bb[0]["color"])
    assert ba[0]["sketch"].shape == (4, 3, 32, 32)
    assert ba[0]["color"].min() >= -1 and ba[0]["color"].max() <= 1


def test_loader_shards_an_epoch_across_ranks():
    pairs = np.zeros((12, 2, 8, 8, 3), np.uint8)
    parts = [PairLoader(pairs, 2, torch.device("cpu"), seed=1, rank=r, world_size=3).order(0) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(12))


@pytest.mark.parametrize("name", ["xdog", "pencil", "sobel"])
def test_extractors_give_dark_lines_on_white(name):
    img = torch.from_numpy(np.array(synthetic_color(1, 64))).permute(2, 0, 1)[None].float() / 255
    params = {k: (lo + hi) / 2 for k, (lo, hi) in sketch.PARAM_RANGES[name].items()}
    out = sketch.extract(img, name, **params)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert (out[0, 0] > 0.9).float().mean() > 0.6  # mostly paper
    assert (out[0, 0] < 0.5).float().mean() > 0.01  # some ink
    assert torch.equal(out[:, 0], out[:, 1])


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (3, 16, 16), (2, 1, 16, 16)])
def test_extractors_name_a_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"N x 3 x H x W colour images, got shape"):
        sketch.random_extract(torch.rand(shape), torch.Generator().manual_seed(0))


def test_random_extract_is_deterministic_per_seed():
    img = torch.rand(6, 3, 32, 32)
    a = sketch.random_extract(img, torch.Generator().manual_seed(5))
    b = sketch.random_extract(img, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_sketchify_cli_writes_pairs_and_keeps_existing(tmp_path, capsys):
    src = tmp_path / "colour"
    src.mkdir()
    for i in range(3):
        synthetic_color(i, 48).save(src / f"c{i}.png")
    (src / "broken.webp").write_bytes(b"RIFF0000WEBPjunk")
    out = tmp_path / "pairs"
    assert main(["data", "sketchify", str(src), str(out), "--extractor", "xdog", "--seed", "1", "--no-progress"]) == 1  # done, 1 file skipped
    assert "broken.webp" in capsys.readouterr().err
    im = Image.open(out / "c0.png")
    assert im.size == (96, 48)
    first = (out / "c0.png").read_bytes()
    (out / "c1.png").write_bytes(b"user's own file")
    assert main(["data", "sketchify", str(src), str(out), "--extractor", "xdog", "--seed", "1", "--no-progress"]) == 1
    assert (out / "c0.png").read_bytes() == first and (out / "c1.png").read_bytes() == b"user's own file"
    capsys.readouterr()
    assert main(["data", "sketchify", str(src), str(out), "--extractor", "crayon"]) != 0
    assert "crayon" in one_line_error(capsys)
    # the source folder itself, by another path to it (on macOS also by another case), is refused
    (tmp_path / "alias").symlink_to(src)
    for target in (src, tmp_path / "alias", src / ".." / "colour"):
        assert main(["data", "sketchify", str(src), str(target), "--no-progress"]) != 0
        assert "is the source folder" in one_line_error(capsys)


def test_sketchify_rerun_with_other_settings_is_refused(tmp_path, capsys):
    src = tmp_path / "colour"
    src.mkdir()
    synthetic_color(0, 48).save(src / "c0.png")
    out = tmp_path / "pairs"
    assert main(["data", "sketchify", str(src), str(out), "--seed", "1", "--no-progress"]) == 0
    first = (out / "c0.png").read_bytes()
    synthetic_color(1, 48).save(src / "c1.png")
    for other in (["--seed", "2"], ["--extractor", "xdog", "--seed", "1"], ["--seed", "1", "--size", "32"]):
        capsys.readouterr()
        assert main(["data", "sketchify", str(src), str(out), "--no-progress", *other]) == 2
        assert "--extractor random --seed 1" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == [".sketchify.json", "c0.png"]
    assert (out / "c0.png").read_bytes() == first
    assert main(["data", "sketchify", str(src), str(out), "--seed", "1", "--no-progress"]) == 0
    assert "wrote 1 pairs" in capsys.readouterr().out
    xdog = tmp_path / "xdog-pairs"  # a fixed extractor draws nothing: its seed does not matter
    assert main(["data", "sketchify", str(src), str(xdog), "--extractor", "xdog", "--no-progress"]) == 0
    assert main(["data", "sketchify", str(src), str(xdog), "--extractor", "xdog", "--seed", "5", "--no-progress"]) == 0


def test_sketchify_settings_of_a_run_that_wrote_no_pair_do_not_bind_the_next(tmp_path, capsys):
    """The settings are recorded before any work: a first run stopped (Ctrl-C) or failed before its first
    pair left only them, and a rerun with other settings was refused for 'pairs' that OUT did not hold."""
    src = tmp_path / "colour"
    src.mkdir()
    synthetic_color(0, 48).save(src / "c0.png")
    out = tmp_path / "pairs"
    out.mkdir()
    (out / ".sketchify.json").write_text('{"extractor": "random", "size": null, "seed": 1}')
    assert main(["data", "sketchify", str(src), str(out), "--seed", "2", "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads((out / ".sketchify.json").read_text())["seed"] == 2


def test_sketchify_into_a_folder_of_unrecorded_pairs_warns(tmp_path, capsys):
    """PNGs already in OUT with no settings record (made by hand, or by sketchify before it recorded its
    settings) cannot be checked against this run's: kept, with a warning, and the rerun is then checked."""
    src = tmp_path / "colour"
    src.mkdir()
    for i in range(2):
        synthetic_color(i, 48).save(src / f"c{i}.png")
    out = tmp_path / "pairs"
    out.mkdir()
    (out / "c0.png").write_bytes(b"an older pair")
    assert main(["data", "sketchify", str(src), str(out), "--seed", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "already held 1 .png files with no record" in err, err
    assert (out / "c0.png").read_bytes() == b"an older pair"
    assert main(["data", "sketchify", str(src), str(out), "--seed", "1", "--no-progress"]) == 0
    assert "no record" not in capsys.readouterr().err


def test_sketchify_out_of_memory_is_one_line_per_image_or_for_the_run(tmp_path, capsys, monkeypatch):
    """An 8000x8000 image needs ~6 GB in an extractor: a MemoryError ended the run as 'unexpected', and a
    worker killed by the system as 'unexpected BrokenProcessPool'."""
    import ganime.data.sketchify as sk

    src = tmp_path / "colour"
    src.mkdir()
    for i in range(2):
        synthetic_color(i, 48).save(src / f"c{i}.png")
    real, calls = sk.sketchify_image, []

    def big(color, extractor, seed):  # the second image (c1.png) does not fit
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")
        return real(color, extractor, seed)

    monkeypatch.setattr(sk, "sketchify_image", big)
    monkeypatch.setattr(sk, "worker_pool", None)  # in this process (workers=1)
    r = sk.sketchify_folder(src, tmp_path / "out", "xdog", progress=False, workers=1)
    assert r["written"] == 1 and len(r["failed"]) == 1 and "48x48 is too large to sketchify" in r["failed"][0]

    class Broken:
        def map(self, *a, **k):
            from concurrent.futures.process import BrokenProcessPool

            raise BrokenProcessPool("A process in the process pool was terminated abruptly")

        def shutdown(self, **k):
            pass

    monkeypatch.setattr(sk, "worker_pool", lambda n: Broken())
    with pytest.raises(InputError, match="a sketchify process was killed"):
        sk.sketchify_folder(src, tmp_path / "out2", "xdog", progress=False, workers=2)


def test_sketchify_pair_depends_on_the_file_not_on_the_others(tmp_path):
    from ganime.data.sketchify import sketchify_folder

    alone, among = tmp_path / "alone", tmp_path / "among"
    for folder, names in ((alone, ["m.png"]), (among, ["a.png", "b.png", "c.png", "m.png"])):
        folder.mkdir()
        for k, name in enumerate(names):
            synthetic_color(7 if name == "m.png" else k, 48).save(folder / name)
    for folder in (alone, among):
        sketchify_folder(folder, tmp_path / f"{folder.name}-pairs", "random", seed=3, progress=False, workers=1)
    assert (tmp_path / "alone-pairs" / "m.png").read_bytes() == (tmp_path / "among-pairs" / "m.png").read_bytes()


@pytest.mark.parametrize("first, second", [("a.jpg", "a.png"), ("A.png", "a.png")])
def test_sketchify_names_of_one_pair_file_keep_the_first(first, second, tmp_path, capsys):
    """a.jpg and a.png make one pair file a.png; so do A.png and a.png on macOS and Windows, which ignore
    case (there the second pair replaced the first): the first by name keeps it, the other is named."""
    src = tmp_path / "colour"
    src.mkdir()
    synthetic_color(0, 48).save(src / first)
    synthetic_color(1, 48).save(src / second)
    out = tmp_path / "pairs"
    assert main(["data", "sketchify", str(src), str(out), "--extractor", "xdog", "--no-progress"]) == 1  # done, 1 file skipped
    std = capsys.readouterr()
    assert "wrote 1 pairs" in std.out and f"{second}: same name as {first}" in std.err and "rename" in std.err
    assert [p.name for p in out.glob("*.png")] == [f"{Path(first).stem}.png"]
    left = np.asarray(Image.open(out / f"{Path(first).stem}.png"))[:, :48]  # the colour half: the first's
    assert np.abs(left.astype(int) - np.asarray(Image.open(src / first)).astype(int)).max() == 0


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file names must be UTF-8")
def test_sketchify_file_name_that_is_not_utf8(tmp_path, capsys):
    """A name's undecodable bytes reach Python as surrogates, which str.encode() refuses: the per-name seed
    ended the whole run in an 'unexpected UnicodeEncodeError' before any pair."""
    src = tmp_path / "colour"
    src.mkdir()
    synthetic_color(0, 48).save(os.fsdecode(bytes(src) + b"/caf\xe9.png"))  # Latin-1, as old archives hold
    synthetic_color(1, 48).save(src / "caf\u00e9.png")  # the same name in UTF-8: seeded as before
    out = tmp_path / "pairs"
    assert main(["data", "sketchify", str(src), str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert len(list(out.glob("*.png"))) == 2
    from ganime.data.sketchify import _name_key

    assert _name_key("caf\u00e9.png") == int.from_bytes(hashlib.sha1("caf\u00e9.png".encode()).digest()[:8], "big") >> 1


@pytest.mark.parametrize("case", ["size-negative", "size-zero", "size-huge", "out-is-src"])
def test_sketchify_bad_size_or_output_is_one_line(tmp_path, capsys, case):
    src = tmp_path / "colour"
    src.mkdir()
    synthetic_color(0, 48).save(src / "c0.png")
    size = {"size-negative": ["--size", "-5"], "size-zero": ["--size", "0"], "size-huge": ["--size", "100000"]}
    out = src if case == "out-is-src" else tmp_path / "pairs"
    assert main(["data", "sketchify", str(src), str(out), "--no-progress", *size.get(case, [])]) == 2
    assert ("--size" if case in size else "source folder") in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c0.png", "colour"]


def test_download_without_credentials_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kagglehub", types.ModuleType("kagglehub"))  # installed, never called
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    assert main(["data", "download", str(tmp_path / "kaggle")]) != 0
    msg = one_line_error(capsys)
    assert "Kaggle credentials" in msg and "ganime data prepare" in msg


def test_download_without_the_kaggle_extra_says_so_first(tmp_path, monkeypatch, capsys):
    # it asked for credentials first: a user set them up, only to be told next that kagglehub was missing
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # import fails as when not installed
    for k in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nokaggle"))
    assert main(["data", "download", str(tmp_path / "kaggle")]) == 2
    assert "pip install 'ganime[kaggle]'" in one_line_error(capsys)
    assert not (tmp_path / "kaggle").exists()


def test_download_places_the_split_folders(tmp_path, make_pairs):
    from ganime.data.download import download

    fake_cache = tmp_path / "kagglehub" / "versions" / "1" / "data"
    make_pairs(2, folder=fake_cache / "train")
    make_pairs(1, folder=fake_cache / "val")
    root = download(tmp_path / "out", downloader=lambda: tmp_path / "kagglehub")
    assert (root / "train").is_dir() and len(list((root / "val").iterdir())) == 1
    assert discover(root)[0] == "kaggle"


def test_download_finds_an_uppercase_train_folder(tmp_path, make_pairs):
    from ganime.data.download import download

    fake_cache = tmp_path / "kagglehub" / "data"
    make_pairs(2, folder=fake_cache / "Train")
    make_pairs(1, folder=fake_cache / "Val")
    root = download(tmp_path / "out", downloader=lambda: tmp_path / "kagglehub")
    assert root == tmp_path / "out" and (root / "Train").is_dir()
    assert {k: len(v) for k, v in discover(root)[1].items()} == {"train": 2, "val": 1}


def test_download_network_failure_is_one_line(tmp_path):
    from ganime.data.download import download
    from ganime.errors import GanimeError

    def offline():
        raise ConnectionError("Name or service not known")

    with pytest.raises(GanimeError, match="download failed.*by hand"):
        download(tmp_path / "out", downloader=offline)


def test_download_interrupted_while_copying_is_not_taken_for_the_dataset(tmp_path, make_pairs, monkeypatch):
    import shutil

    from ganime.data.download import download

    fake_cache = tmp_path / "kagglehub" / "data"
    make_pairs(3, folder=fake_cache / "train")
    make_pairs(2, folder=fake_cache / "val")
    copytree, copied = shutil.copytree, []

    def copy_then_die(src, dst, **kw):  # a kill or a full disk after two files
        if len(copied) == 2:
            raise OSError(28, "No space left on device")
        copied.append(src)
        return shutil.copy2(src, dst, **kw)

    def dying_copytree(src, dst, *args, **kw):  # copytree recurses with positional arguments
        return copytree(src, dst, *args, **kw) if args else copytree(src, dst, copy_function=copy_then_die, **kw)

    monkeypatch.setattr(shutil, "copytree", dying_copytree)
    with pytest.raises(OSError):
        download(tmp_path / "out", downloader=lambda: tmp_path / "kagglehub")
    monkeypatch.setattr(shutil, "copytree", copytree)
    root = download(tmp_path / "out", downloader=lambda: tmp_path / "kagglehub")  # the rerun copies it all
    assert len(list((root / "train").iterdir())) == 3 and len(list((root / "val").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kagglehub", "out"]  # no temporary left behind


def test_loader_epoch_drops_the_last_partial_batch_and_reshuffles_which():
    pairs = np.zeros((23, 2, 4, 4, 3), np.uint8)
    pairs[:, :, 0, 0, 0] = np.arange(23)[:, None]
    seen = {}
    for world in (1, 2):
        for epoch in (0, 1):
            ids = []
            for rank in range(world):
                loader = PairLoader(pairs, 4, torch.device("cpu"), seed=1, flip=False, rank=rank, world_size=world)
                batches = [b["color"][:, 0, 0, 0] for _, b in loader.epoch(epoch)]
                assert len(batches) == loader.steps_per_epoch == 23 // (4 * world)
                ids += ((torch.cat(batches) + 1) * 127.5).round().long().tolist()
            assert len(ids) == len(set(ids)) == 23 // (4 * world) * 4 * world  # none twice; the tail dropped
            seen[world, epoch] = set(ids)
        assert seen[world, 0] != seen[world, 1]  # a different tail each epoch


def test_download_skips_the_macos_resource_forks_of_a_zip(tmp_path, make_pairs):
    from ganime.data.download import download

    fake_cache = tmp_path / "kagglehub"
    make_pairs(2, folder=fake_cache / "data" / "train")
    make_pairs(1, folder=fake_cache / "data" / "val")
    for split in ("train", "val"):  # a zip made by macOS: AppleDouble files sorted before data/
        (fake_cache / "__MACOSX" / "data" / split).mkdir(parents=True)
        (fake_cache / "__MACOSX" / "data" / split / "._pair_000.png").write_bytes(b"\0\5\26\7")
    root = download(tmp_path / "out", downloader=lambda: fake_cache)
    assert discover(root)[0] == "kaggle" and [len(v) for v in discover(root)[1].values()] == [2, 1]


def test_training_on_the_pairs_folder_itself_says_to_prepare_it_into_another_folder(tmp_path, make_pairs, capsys):
    """--data KAGGLE/ (the pairs, not a cache) advised 'ganime data prepare SRC KAGGLE', which prepare refuses
    (a folder of images is not a cache to write into)."""
    pairs = make_pairs(2, size=64, folder=tmp_path / "kaggle" / "train")
    assert main(["train", "pix2pix", "--data", str(pairs.parent), "--out", str(tmp_path / "run"), "--dry-run"]) != 0
    err = one_line_error(capsys)
    assert f"is a folder of pairs, not a prepared cache; run 'ganime data prepare {pairs.parent} CACHE'" in err
    (tmp_path / "empty").mkdir()
    assert main(["train", "pix2pix", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r2"), "--dry-run"]) != 0
    assert "run 'ganime data prepare SRC" in one_line_error(capsys)  # no pairs there: prepare into it


def test_worker_processes_work_when_spawned(tmp_path, monkeypatch):
    """macOS and Windows start worker processes by 'spawn' (a fresh interpreter, nothing inherited): the jobs and
    their functions must pickle and import, and module settings (Pillow's limits) be made on import. Same pairs
    and cache as in one process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    import ganime.data.pairs as pairs_mod
    from ganime.data.sketchify import sketchify_folder

    src = tmp_path / "colour"
    src.mkdir()
    for i in range(3):
        synthetic_color(i, 32).save(src / f"c{i}.png")
    monkeypatch.setattr(pairs_mod, "ProcessPoolExecutor",
                        partial(ProcessPoolExecutor, mp_context=multiprocessing.get_context("spawn")))
    for workers in (1, 2):
        sketchify_folder(src, tmp_path / f"pairs{workers}", progress=False, workers=workers)
        prepare(tmp_path / f"pairs{workers}", tmp_path / f"cache{workers}", size=16, workers=workers, progress=False)
    for name in ("c0.png", "c1.png", "c2.png"):
        assert (tmp_path / "pairs1" / name).read_bytes() == (tmp_path / "pairs2" / name).read_bytes()
    assert np.array_equal(PairCache(tmp_path / "cache1").load(), PairCache(tmp_path / "cache2").load())
