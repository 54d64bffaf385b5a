"""CycleGAN: unpaired data, losses, exact resume, checkpoints in colorize, one-line errors.

Everything runs on the CPU at 32x32 with a U-Net of depth 5 and 4 base channels, so each test takes
a few seconds. The command line is driven through a "tiny" preset added for the test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ganime import config as config_mod
from ganime.cli import main
from ganime.config import make_config
from ganime.data.unpaired import UnpairedLoader, load_folder, split_pairs
from ganime.methods import get_method
from ganime.train import Trainer

SIZE = 32
TINY = {"net": {"gen_base": 4, "gen_depth": 5, "disc_base": 4}, "train": {"batch_size": 2, "epochs": 1, "size": SIZE}}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread; more threads only contend on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(config_mod.PRESETS, "tiny", TINY)
    return "tiny"


def tiny_config(**options):
    cfg = make_config("cyclegan", "small", options=options, size=SIZE, batch_size=2, epochs=2, log_every=1)
    cfg.net.gen_depth, cfg.net.gen_base, cfg.net.disc_base = 5, 4, 4
    return cfg


def write_images(folder, n, size=(40, 30), seed=0, grey=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 1 if grey else 3), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if grey else arr).save(folder / f"{seed}_{i:03d}.png")
    return folder


def random_domains(nx=5, ny=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (nx, SIZE, SIZE, 3), dtype=np.uint8),
            rng.integers(0, 256, (ny, SIZE, SIZE, 3), dtype=np.uint8))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ganime: error:"), err
    return lines[0]


# ---- data ------------------------------------------------------------------------------------------

def test_loader_independent_orders_and_wraparound():
    x, y = random_domains(nx=7, ny=3)
    loader = UnpairedLoader(x, y, batch_size=2, device=torch.device("cpu"), seed=1, size=SIZE,
                            load_size=SIZE + 4, flip=True)
    assert loader.n == 7 and loader.steps_per_epoch == 3
    ox, oy = loader.order(0)
    assert sorted(ox.tolist()) == list(range(7))  # the larger domain: each image once
    assert sorted(oy[:3].tolist()) == [0, 1, 2] and sorted(oy[3:6].tolist()) == [0, 1, 2]  # wraps, fresh perms
    assert not torch.equal(loader.order(0)[0], loader.order(1)[0])  # a new order each epoch
    batches = list(loader.epoch(0))
    assert [s for s, _ in batches] == [0, 1, 2]
    b = batches[0][1]
    assert b["sketch"].shape == (2, 3, SIZE, SIZE) and b["color"].shape == (2, 3, SIZE, SIZE)
    assert b["sketch"].min() >= -1 and b["sketch"].max() <= 1
    # Resuming mid-epoch yields the same batches.
    again = dict(loader.epoch(0, start_step=1, global_step0=0))
    for step in (1, 2):
        assert torch.equal(again[step]["sketch"], batches[step][1]["sketch"])
        assert torch.equal(again[step]["color"], batches[step][1]["color"])
    # Under DDP, two ranks share an epoch's order without overlap.
    r = [UnpairedLoader(x, y, 1, torch.device("cpu"), seed=1, rank=k, world_size=2).order(0)[0] for k in (0, 1)]
    assert sorted(torch.cat(r).tolist()) == list(range(7))


def test_loader_crops_domains_independently():
    # The same image in both domains: a shared crop would give identical halves on every step.
    x, _ = random_domains(nx=1, ny=1)
    loader = UnpairedLoader(x, x.copy(), batch_size=1, device=torch.device("cpu"), seed=0, size=SIZE,
                            load_size=SIZE * 2, flip=True)
    differ = [not torch.equal(b["sketch"], b["color"])
              for s in range(8) for _, b in loader.epoch(s, 0, s)]
    assert any(differ)


def test_load_folder_skips_bad_files(tmp_path, capsys):
    d = write_images(tmp_path / "s", 3, size=(50, 20))
    (d / "broken.png").write_bytes(b"not a png")
    (d / "notes.txt").write_text("unrelated")
    arr = load_folder(d, SIZE, progress=False)
    assert arr.shape == (3, SIZE, SIZE, 3) and arr.dtype == np.uint8
    err = capsys.readouterr().err
    assert "ganime: warning: skipped" in err and "broken.png" in err


# ---- the method ------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"gan_mode": "lsgan", "lambda_identity": 0.5, "pool_size": 3}])
def test_train_step_losses(options):
    cfg = tiny_config(**options).validate()
    m = get_method("cyclegan")(cfg, torch.device("cpu"))
    assert set(m.models) == {"G", "F", "D_X", "D_Y"} and set(m.optimizers) == {"G", "D"}
    x, y = random_domains(nx=2, ny=2)
    loader = UnpairedLoader(x, y, 2, torch.device("cpu"), size=SIZE)
    _, batch = next(loader.epoch(0))
    before = {k: p.detach().clone() for k, p in m.models["F"].named_parameters()}
    losses = m.train_step(batch)
    expected = {"G_gan", "F_gan", "cycle_x", "cycle_y", "D_X", "D_Y"} | ({"idt"} if options else set())
    assert set(losses) == expected
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(before[k], p) for k, p in m.models["F"].named_parameters())  # F is trained
    rows = m.sample(batch)
    assert len(rows) == 6 and all(r.shape == (2, 3, SIZE, SIZE) for r in rows)
    assert torch.equal(rows[0], batch["sketch"]) and torch.equal(rows[3], batch["color"])


class PassThrough(nn.Module):
    """Returns its input exactly; the parameter only gives the loss a gradient path."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + 0 * self.p


def test_cycle_loss_is_zero_for_identity_maps():
    cfg = tiny_config().validate()
    m = get_method("cyclegan")(cfg, torch.device("cpu"))
    m.models["G"], m.models["F"] = PassThrough(), PassThrough()
    x, y = random_domains(nx=2, ny=2, seed=3)
    _, batch = next(UnpairedLoader(x, y, 2, torch.device("cpu"), size=SIZE, load_size=SIZE + 6).epoch(0))
    losses = m.train_step(batch)
    assert losses["cycle_x"].item() == 0.0 and losses["cycle_y"].item() == 0.0
    rows = m.sample(batch)
    assert torch.equal(rows[2], batch["sketch"]) and torch.equal(rows[5], batch["color"])


def test_bad_options_are_one_sentence():
    from ganime.errors import InputError

    for opts in ({"gan_mode": "wgan"}, {"pool_size": -1}, {"lambda_cycle": -1.0}, {"cycle": 1}):
        with pytest.raises(InputError):
            get_method("cyclegan")(tiny_config(**opts), torch.device("cpu"))


# ---- training, resume, colorize --------------------------------------------------------------------

def run_trainer(cfg, out, x, y, resume=False, max_steps=None):
    loader = UnpairedLoader(x, y, cfg.train.batch_size, torch.device("cpu"), seed=cfg.train.seed, size=SIZE,
                            load_size=int(round(SIZE * cfg.train.jitter)), flip=True)
    t = Trainer(cfg, None, out, device="cpu", resume=resume, progress=False, loader=loader,
                sample_pairs=loader.sample_pairs(), max_steps=max_steps)
    t.fit()
    return t


def test_exact_resume(tmp_path):
    # 5 sketches, 3 colours, batch 2: 2 steps per epoch; 2 epochs = 4 steps, split at step 3 (mid-epoch).
    x, y = random_domains(nx=5, ny=3, seed=7)
    cfg = tiny_config(pool_size=3, lambda_identity=0.5)
    straight = run_trainer(cfg, tmp_path / "a", x, y)
    run_trainer(cfg, tmp_path / "b", x, y, max_steps=3)
    resumed = run_trainer(cfg, tmp_path / "b", x, y, resume=True)
    assert resumed.global_step == straight.global_step == 4
    a, b = straight.method.state(), resumed.method.state()
    for k in a["models"]:
        for name, v in a["models"][k].items():
            assert torch.equal(v, b["models"][k][name]), (k, name)
    assert a["extra"]["steps"] == b["extra"]["steps"] == 4
    assert a["extra"]["pool_x"].shape[0] == 3 and torch.equal(a["extra"]["pool_x"], b["extra"]["pool_x"])
    assert torch.equal(a["extra"]["pool_y"], b["extra"]["pool_y"])
    assert (tmp_path / "a" / "samples" / "epoch_0002.png").exists()


def test_checkpoint_colorizes_through_cli(tmp_path, capsys):
    x, y = random_domains(nx=2, ny=2)
    run_trainer(tiny_config(), tmp_path / "run", x, y, max_steps=1)
    sketch = write_images(tmp_path / "in", 1, size=(45, 37), grey=True)
    rc = main(["colorize", str(sketch), "--checkpoint", str(tmp_path / "run" / "last.pt"),
               "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    out = list((tmp_path / "out").glob("*.png"))
    assert len(out) == 1 and Image.open(out[0]).size == (45, 37)


def test_cli_trains_on_unequal_folders(tmp_path, tiny_preset, make_pairs, capsys):
    val = make_pairs(3, size=SIZE, folder=tmp_path / "val")
    s = write_images(tmp_path / "sketches", 5, size=(64, 48), grey=True)
    c = write_images(tmp_path / "colors", 3, size=(30, 40), seed=1)
    (c / "README.txt").write_text("not an image")
    (s / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc = main(["train", "cyclegan", "--sketches", str(s), "--colors", str(c), "--out", str(tmp_path / "run"),
               "--preset", tiny_preset, "--size", str(SIZE), "--device", "cpu", "--no-progress",
               "--pool-size", "2", "--lambda-cycle", "5", "--val-data", str(val), "--keep-best", "lpips"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "skipped" in cap.err and "corrupt.png" in cap.err
    assert "5 sketches, 3 colour images" in cap.out
    run = tmp_path / "run"
    grid = Image.open(run / "samples" / "epoch_0001.png")
    assert grid.size == (6 * SIZE, 3 * SIZE)  # x | G(x) | F(G(x)) | y | F(y) | G(F(y)), 3 sample lines
    from ganime.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["method"] == "cyclegan" and ckpt["config"]["options"]["lambda_cycle"] == 5.0
    assert ckpt["progress"]["global_step"] == 2  # max(5, 3) // 2
    # Unpaired training, judged on held-out pairs: G's LPIPS picks best.pt.
    assert "3 of 3 pairs of all pairs in" in json.loads((run / "metrics.jsonl").read_text())["validation"]
    assert json.loads((run / "best.json").read_text())["metric"] == "lpips" and (run / "best.pt").exists()
    # --resume on other folders is refused (a resume trained on whatever it was given, without a word);
    # the same folders copied elsewhere resume as they are
    import shutil

    base = ["train", "cyclegan", "--out", str(run), "--device", "cpu", "--no-progress", "--resume", "--dry-run"]
    assert main(base + ["--sketches", str(c), "--colors", str(s)]) == 2
    line = one_line_error(capsys)
    assert "was trained on the images of" in line and "--new-data" in line, line
    shutil.copytree(s, tmp_path / "s2")
    shutil.copytree(c, tmp_path / "c2")
    assert main(base + ["--sketches", str(tmp_path / "s2"), "--colors", str(tmp_path / "c2")]) == 0


def test_cli_trains_on_a_paired_cache(tmp_path, tiny_preset, capsys):
    from ganime.data.pairs import PairCache, prepare

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (SIZE, 2 * SIZE, 3), dtype=np.uint8)).save(src / f"p{i}.png")
    prepare(src, tmp_path / "cache", size=SIZE, workers=1, progress=False)
    sk, co = split_pairs(PairCache(tmp_path / "cache").load())
    assert sk.shape == co.shape == (4, SIZE, SIZE, 3)
    rc = main(["train", "cyclegan", "--data", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
               "--preset", tiny_preset, "--device", "cpu", "--no-progress", "--max-steps", "1"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "last.pt").exists()
    # --dry-run shows the size the run trains at: the cache's (it showed the preset's 256)
    capsys.readouterr()
    assert main(["train", "cyclegan", "--data", str(tmp_path / "cache"), "--out", str(tmp_path / "run2"),
                 "--preset", "small", "--dry-run"]) == 2
    assert f"image size {SIZE} must be a multiple of 256" in one_line_error(capsys)
    assert main(["train", "cyclegan", "--data", str(tmp_path / "cache"), "--out", str(tmp_path / "run2"),
                 "--preset", tiny_preset, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["size"] == SIZE


def test_same_folder_for_both_domains_is_warned(tmp_path, tiny_preset, capsys):
    good = write_images(tmp_path / "good", 2)
    args = ["train", "cyclegan", "--out", str(tmp_path / "run"), "--preset", tiny_preset, "--size", str(SIZE),
            "--device", "cpu", "--no-progress", "--dry-run"]
    assert main(args + ["--sketches", str(good), "--colors", str(tmp_path / "." / "good")]) == 0
    assert "--sketches and --colors are the same folder" in capsys.readouterr().err
    other = write_images(tmp_path / "other", 2)
    assert main(args + ["--sketches", str(good), "--colors", str(other)]) == 0
    assert "same folder" not in capsys.readouterr().err


@pytest.mark.parametrize("option", [("--lambda-cycle", "-1"), ("--lambda-identity", "nan"), ("--pool-size", "-1")])
def test_bad_option_leaves_no_run_folder(tmp_path, tiny_preset, capsys, option):
    # checked with the configuration, before the run folder (and its config.json) exists: the corrected
    # command then starts the run instead of being refused as "already holds files"
    good = write_images(tmp_path / "good", 2)
    args = ["train", "cyclegan", "--sketches", str(good), "--colors", str(good), "--out", str(tmp_path / "run"),
            "--preset", tiny_preset, "--size", str(SIZE), "--device", "cpu", "--no-progress"]
    assert main(args + list(option)) == 2
    assert "CycleGAN" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    assert main(args + list(option) + ["--dry-run"]) == 2


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "no-colors", "both", "sketch-augment", "eval-unpaired",
                                  "keep-best-unpaired"])
def test_bad_inputs_are_one_line(tmp_path, tiny_preset, capsys, case):
    good = write_images(tmp_path / "good", 2)
    bad = tmp_path / "bad"
    if case == "empty":
        bad.mkdir()
        (bad / "notes.txt").write_text("no images here")
    elif case == "corrupt":
        bad.mkdir()
        (bad / "only.png").write_bytes(b"garbage")
    args = ["train", "cyclegan", "--out", str(tmp_path / "run"), "--preset", tiny_preset, "--device", "cpu",
            "--no-progress"]
    if case == "no-colors":
        args += ["--sketches", str(good)]
    elif case == "both":
        args += ["--sketches", str(good), "--colors", str(good), "--data", str(good)]
    elif case == "sketch-augment":
        args += ["--sketches", str(good), "--colors", str(good), "--sketch-augment", "0.5"]
    elif case == "eval-unpaired":  # nothing paired to evaluate on
        args += ["--sketches", str(good), "--colors", str(good), "--eval-every", "1"]
    elif case == "keep-best-unpaired":  # implies --eval-every 1; the message names the option given
        args += ["--sketches", str(good), "--colors", str(good), "--keep-best", "lpips"]
    else:
        args += ["--sketches", str(good), "--colors", str(bad)]
    rc = main(args)
    assert rc != 0
    line = one_line_error(capsys)
    if case in ("missing", "empty", "corrupt"):
        assert str(bad) in line
    if case == "eval-unpaired":
        assert "--eval-every needs" in line and "--val-data" in line
    if case == "keep-best-unpaired":
        assert "--keep-best needs" in line and "--val-data" in line
    assert not (tmp_path / "run").exists()


def test_folders_smaller_than_a_batch_leave_no_run_folder(tmp_path, tiny_preset, capsys):
    """One image per folder and --batch-size 2: one sentence, and no run folder left behind, so the same
    command with --batch-size 1 starts the run (it was refused as 'already holds a run ... pass --resume')."""
    s, c = write_images(tmp_path / "s", 1), write_images(tmp_path / "c", 1, seed=1)
    args = ["train", "cyclegan", "--sketches", str(s), "--colors", str(c), "--out", str(tmp_path / "run"),
            "--preset", tiny_preset, "--device", "cpu", "--no-progress", "--max-steps", "1"]
    assert main(args) == 2
    assert "only 1 training images for a batch size of 2" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    assert main(args + ["--batch-size", "1"]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "last.pt").exists()


# ---- DDP ---------------------------------------------------------------------------------------------

def test_loader_shards_both_domains_per_rank():
    x, y = random_domains(nx=9, ny=4)
    full = UnpairedLoader(x, y, batch_size=2, device=torch.device("cpu"), seed=3)
    shards = [UnpairedLoader(x, y, batch_size=2, device=torch.device("cpu"), seed=3, rank=r, world_size=2)
              for r in (0, 1)]
    assert shards[0].steps_per_epoch == 9 // 4
    fx, fy = full.order(1)
    (x0, y0), (x1, y1) = shards[0].order(1), shards[1].order(1)
    # Rank r takes every 2nd index of the full order from r: the two shares interleave to it, no overlap.
    assert torch.equal(torch.stack([x0[:4], x1[:4]], 1).flatten(), fx[:8])
    assert torch.equal(torch.stack([y0[:4], y1[:4]], 1).flatten(), fy[:8])


def _ddp_worker(rank: int, world: int, port: int, folder: str, argv: list[str]) -> None:
    """One torchrun-like process: the environment torchrun sets, the tiny preset, the real CLI."""
    import json
    import os
    from pathlib import Path

    import ganime.distributed as gd

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    config_mod.PRESETS["tiny"] = TINY
    wrap = gd.Distributed.wrap

    def recording_wrap(self, method):
        wrap(self, method)
        wrapped = sorted(k for k, m in method.models.items() if isinstance(m, gd.DDP))
        Path(folder, f"wrapped{rank}.json").write_text(json.dumps(wrapped))

    gd.Distributed.wrap = recording_wrap
    rc = main(argv)
    Path(folder, f"rc{rank}").write_text(str(rc))


def _spawn(world: int, folder, argv, timeout: float = 240) -> list[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.spawn(_ddp_worker, args=(world, port, str(folder), argv), nprocs=world, join=False)
    import time

    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("DDP CycleGAN processes did not finish (hang?)")
    return [int((folder / f"rc{r}").read_text()) for r in range(world)]


def test_cyclegan_under_ddp_two_gloo_processes(tmp_path):
    import json

    from ganime.colorize import Colorizer

    sk = write_images(tmp_path / "sk", 8, seed=1, grey=True)
    co = write_images(tmp_path / "co", 6, seed=2)
    run = tmp_path / "run"
    base = ["train", "cyclegan", "--sketches", str(sk), "--colors", str(co), "--out", str(run), "--preset", "tiny",
            "--device", "cpu", "--no-progress", "--log-every", "1", "--epochs", "3"]
    assert _spawn(2, tmp_path, base + ["--max-steps", "2"]) == [0, 0]
    for r in (0, 1):  # every network of the method is under DDP
        assert json.loads((tmp_path / f"wrapped{r}.json").read_text()) == ["D_X", "D_Y", "F", "G"]
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["progress"]["global_step"] == 2
    for key in ("G", "F", "D_X", "D_Y"):
        assert not any(k.startswith("module.") for k in ckpt["models"][key])  # plain state dicts
    Colorizer.from_checkpoint(run / "last.pt", "cpu")  # loads in single-process code
    # 8 sketches / (batch 2 x 2 processes) = 2 steps per epoch: --max-steps 3 resumes into epoch 2.
    assert _spawn(2, tmp_path, base + ["--resume", "--max-steps", "3"]) == [0, 0]
    assert torch.load(run / "last.pt", weights_only=False)["progress"]["global_step"] == 3
