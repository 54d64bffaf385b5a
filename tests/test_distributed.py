"""DDP on the CPU with Gloo: 2 processes x batch B train like 1 process x batch 2B (with synced BatchNorm)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ganime.config import make_config

B = 2  # images per process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg():
    cfg = make_config("pix2pix", "small", size=256, batch_size=B, jitter=1.0, flip=False)
    cfg.net.dropout = 0.0  # dropout draws differ between one process and two
    return cfg.validate()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.rand(2 * B, 2, 3, 256, 256, generator=g) * 2 - 1
    return {"sketch": x[:, 0].contiguous(), "color": x[:, 1].contiguous()}


def _snapshot(method) -> dict[str, torch.Tensor]:
    from ganime.distributed import unwrap

    out = {}
    for k, m in method.models.items():
        m = unwrap(m)
        for n, p in m.named_parameters():
            out[f"{k}.{n}"] = p.detach().clone()
            out[f"{k}.{n}.grad"] = p.grad.detach().clone()
        for n, b in m.named_buffers():
            if b.is_floating_point():
                out[f"{k}.{n}"] = b.detach().clone()
    return out


def _single_step() -> dict[str, torch.Tensor]:
    from ganime.methods import get_method

    cfg = _cfg()
    cfg.train.batch_size = 2 * B
    torch.manual_seed(0)
    method = get_method("pix2pix")(cfg, torch.device("cpu"))
    method.train_step(_batch())
    return _snapshot(method)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as tdist

    from ganime.distributed import Distributed
    from ganime.methods import get_method

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        full = _batch()
        mine = {k: v[rank::world].contiguous() for k, v in full.items()}
        results = {}
        for sync in (True, False):
            torch.manual_seed(0)
            method = get_method("pix2pix")(_cfg(), torch.device("cpu"))
            Distributed(rank, world, torch.device("cpu"), sync_bn=sync).wrap(method)
            method.train_step(mine)
            results[sync] = _snapshot(method)
            # The state dict stays the plain module's (checkpoints load without DDP).
            assert all(not k.startswith("module.") for k in method.state()["models"]["G"])
        if rank == 0:
            torch.save(results, out)
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def _compare(a: dict, b: dict) -> dict[str, float]:
    """Worst relative error per kind of tensor: gradients, parameters, running statistics."""
    worst = {"grad": 0.0, "param": 0.0, "running": 0.0}
    for k, ref in a.items():
        kind = "grad" if k.endswith(".grad") else "running" if "running" in k else "param"
        err = (b[k] - ref).abs().max().item() / max(ref.abs().max().item(), 1e-8)
        worst[kind] = max(worst[kind], err)
    return worst


def test_two_processes_equal_one_process_with_twice_the_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    ref = _single_step()
    synced = _compare(ref, ddp[True])
    # Gradients agree to float32 reduction-order noise. Adam's first step is about lr * sign(grad),
    # so a parameter whose gradient is ~0 may move by up to 2 * lr differently: compare loosely.
    assert synced["grad"] < 2e-3, synced
    assert synced["running"] < 1e-4, synced
    assert synced["param"] < 2e-2, synced
    # Without synchronised BatchNorm each process normalises its own 2 images: the step differs.
    plain = _compare(ref, ddp[False])
    assert plain["running"] > 1e-2 and plain["grad"] > 1e-2, plain


def _write_pairs(folder: Path, n: int, size: int = 256) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, (size, 2 * size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


def _torchrun_pix2pix(tmp_path):
    """A prepared 8-pair cache and the torchrun command line (2 CPU processes) that trains on it."""
    from ganime.data.pairs import prepare

    _write_pairs(tmp_path / "src", 8)
    prepare(tmp_path / "src", tmp_path / "cache", size=256, workers=1, progress=False)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ganime",
            "train", "pix2pix", "--data", str(tmp_path / "cache"), "--out", str(run), "--preset", "small",
            "--device", "cpu", "--batch-size", "2", "--no-progress"]
    return run, env, base


def test_torchrun_trains_resumes_and_writes_plain_checkpoints(tmp_path):
    from ganime.colorize import Colorizer

    run, env, base = _torchrun_pix2pix(tmp_path)
    r = subprocess.run(base + ["--max-steps", "1"], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished") + r.stdout.count("interrupted") <= 1  # rank 0 reports alone
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["progress"]["global_step"] == 1
    assert all(not k.startswith("module.") for k in ckpt["models"]["G"])
    Colorizer.from_checkpoint(run / "last.pt", "cpu")  # loads in single-process code
    r = subprocess.run(base + ["--resume", "--max-steps", "2"], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(run / "last.pt", weights_only=True)["progress"]["global_step"] == 2
    # --time-limit: each rank's clock votes; the agreed vote is read one step later, so both ranks stop
    # together at the second step after the deadline, save once and exit 0
    r = subprocess.run(base + ["--resume", "--time-limit", "0.000001"], capture_output=True, text=True, env=env,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("time limit reached") == 1
    assert torch.load(run / "last.pt", weights_only=True)["progress"]["global_step"] == 4


def _worker_pids(torchrun_pid: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (its children, RANK from their environment)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == torchrun_pid:
            ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
            if ranks:
                out[ranks[0]] = int(d.name)
    return out


@pytest.mark.skipif(not Path("/proc").is_dir() or sys.platform != "linux", reason="needs Linux /proc and signals")
@pytest.mark.parametrize("target", ["terminal", "one-rank"])
def test_ctrl_c_under_torchrun_stops_every_rank_at_the_same_step(tmp_path, target):
    """SIGINT to the whole process group (a terminal's Ctrl-C: torchrun forwards it once more) or to
    rank 1 alone: both ranks agree on the step, rank 0 saves last.pt, all exit, --resume continues."""
    import json
    import signal
    import time

    run, env, base = _torchrun_pix2pix(tmp_path)
    base += ["--log-every", "1"]
    p = subprocess.Popen(base + ["--epochs", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and p.poll() is None:
            log = run / "log.jsonl"
            if log.exists() and sum(1 for l in log.read_text().splitlines() if '"step"' in l) >= 3:
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-3000:]
        workers = _worker_pids(p.pid)
        assert sorted(workers) == [0, 1], workers
        if target == "terminal":
            os.killpg(p.pid, signal.SIGINT)
        else:
            os.kill(workers[1], signal.SIGINT)
        out, err = p.communicate(timeout=120)  # hangs (until the test times out) if the ranks disagree
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    for pid in workers.values():  # both ranks have exited
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert "interrupted" in out, (out, err[-3000:])
    assert "Expected to have finished reduction" not in err and "timed out" not in err.lower(), err[-3000:]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    step = ckpt["progress"]["global_step"]
    logged = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert step >= 3 and max(r["global_step"] for r in logged) == step
    r = subprocess.run(base + ["--resume", "--max-steps", str(step + 1)], capture_output=True, text=True, env=env,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(run / "last.pt", weights_only=True)["progress"]["global_step"] == step + 1
