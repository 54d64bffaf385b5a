"""The one training loop, shared by every method.

It owns everything around a method's ``train_step``: the run folder (``config.json``, ``log.jsonl``,
``samples/``, checkpoints), progress, throughput, periodic evaluation hooks, non-finite-loss
detection, Ctrl-C, exact resume, and (under ``torchrun``) distributed data parallelism.

Run folder layout::

    RUN/config.json          the resolved configuration (written at the start; a --resume that extends the
                             run, e.g. with more epochs, updates it)
    RUN/log.jsonl            one JSON object per log interval and per epoch (``kind`` step / epoch; init and
                             resume records mark an --init-from and where each --resume continued). Step and
                             resume records count ``epoch`` from 1 as the epoch in progress and ``step`` as
                             the steps done in it; an epoch record's ``epoch`` is the epoch it closes. Step
                             records carry ``lr``, the learning rate of their epoch (``TrainConfig.lr_at``)
    RUN/samples/epoch_0001.png   sketch | truth | output rows for fixed samples
    RUN/last.pt              the latest checkpoint (atomic; resume point)
    RUN/epoch_0010.pt        kept every ``keep_every`` epochs, if asked

Determinism: the data order depends on (seed, epoch), augmentation and dropout on (seed, global
step), so ``--resume`` after an interruption at any step continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ganime.checkpoint import load_checkpoint, save_checkpoint
from ganime.config import COLOUR_LAYER_SMOOTHING, RunConfig, read_run_config
from ganime.data.loader import PairLoader, step_seed
from ganime.errors import InputError, TrainingDiverged
from ganime.imageio import atomic_write_bytes
from ganime.methods import get_method


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a one-line error.

    A ``torch.device`` is returned as it is.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"--device {name}: unknown device (choose auto, cpu or cuda)")
    return torch.device(name)


@dataclass
class TrainResult:
    epochs_done: int
    global_step: int
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that interrupted it here (SIGINT, SIGTERM)
    time_limit_reached: bool = False
    last_losses: dict = field(default_factory=dict)
    images_per_second: float = 0.0


class _StopFlag:
    """First Ctrl-C (SIGINT) or SIGTERM asks the loop to save and stop at the next step; a second one
    aborts at once. SIGTERM is what a cluster scheduler (SLURM, Kubernetes) or ``kill`` sends before it
    kills: the run saves instead of losing the steps since its last checkpoint.

    Under DDP (``abort_on_second=False``) every signal only sets the flag: torchrun forwards the
    terminal's SIGINT to its workers a second time, and it kills them itself if they do not stop.
    The processes agree on the step to stop at through ``Distributed.agree_stop``.
    """

    def __init__(self, abort_on_second: bool = True):
        self.requested = False
        self.signum: int | None = None  # the signal that asked (None: none here, e.g. another DDP rank's)
        self.abort_on_second = abort_on_second
        self._old: dict = {}

    def __enter__(self):
        try:
            # on Windows also SIGBREAK (Ctrl-Break; a closing console window sends it too, but may not wait for the save)
            for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not in the main thread
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if self.abort_on_second:
                raise KeyboardInterrupt
            return
        self.requested, self.signum = True, signum
        ctrl_c = signum == signal.SIGINT
        if self.abort_on_second:  # (a scheduler's SIGTERM: nobody at a terminal to press Ctrl-C)
            again = "Ctrl-C again to abort" if ctrl_c else "a second signal aborts"
        else:
            again = "all processes stop at the same step"
        what = "" if ctrl_c else f"{signal.Signals(signum).name}: "
        print(f"\nganime: {what}stopping after the current step (or epoch evaluation) with a checkpoint saved ({again})", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def check_run_folder(out: str | Path, method: str, resume: bool) -> None:
    """What a run in ``out`` would be refused for (no side effects; ``ganime train --dry-run`` asks too):
    a new run needs a new or empty folder, a --resume a run folder of the same method."""
    out = Path(out)
    last, saved = out / "last.pt", out / "config.json"
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if resume:
        if not last.exists() and not saved.exists():
            raise InputError(f"{out}: nothing to resume (no last.pt); drop --resume to start a new run")
        if saved.exists():
            old = read_run_config(saved)
            if old.method != method:
                raise InputError(f"{out}: holds a {old.method} run, not {method}")
        if not last.exists():  # only a run that saved nothing starts again: it would overwrite these
            kept = sorted(out.glob("epoch_*.pt")) or sorted(out.glob("best.pt"))
            if kept:
                raise InputError(f"{out}: has no last.pt but holds {kept[-1].name}; copy the checkpoint to continue from "
                                 f"(e.g. {kept[-1].name}) to {last} and --resume again, or start a new run with another --out")
        return
    if out.exists() and any(out.iterdir()):
        if not saved.exists():
            raise InputError(f"{out}: already holds files and is not a run folder; choose a new --out")
        what = "a checkpoint" if last.exists() else "a run that saved no checkpoint yet"
        raise InputError(f"{out}: run folder already holds {what}; pass --resume to continue it or choose a new --out")


def check_data_size(data_size: int, run_size: int) -> None:
    """The training pairs must be at the run's size (the cache is not resized)."""
    if data_size != run_size:
        raise InputError(f"the data cache holds {data_size}px images but the run is configured for {run_size}px; "
                         f"prepare the data with --size {run_size} or pass --size {data_size}")


def check_batches(n: int, batch_size: int, world_size: int = 1) -> None:
    """An epoch needs one full batch per process (its last partial batch is dropped)."""
    if n // (batch_size * world_size) < 1:
        raise InputError(f"only {n} training images for a batch size of {batch_size}"
                         f"{' x ' + str(world_size) + ' processes' if world_size > 1 else ''}: "
                         "use a smaller --batch-size or more data")


def init_checkpoint(init_from: str | Path) -> Path:
    """The file an ``--init-from`` names: a path, or "default" for the shipped model."""
    if str(init_from) == "default":
        from ganime.colorize import default_checkpoint

        return default_checkpoint()
    return Path(init_from)


def check_init_network(path, config: dict, cfg: RunConfig) -> None:
    """Refuse starting ``cfg``'s run from weights (``--init-from``) saved with the run configuration ``config``
    when their network differs. Settings without weights of their own (the output's line multiply and its
    colour-layer smoothing) may change when fine-tuning."""
    free = {"line_multiply", *COLOUR_LAYER_SMOOTHING}
    theirs = {k: v for k, v in _net_settings(config, path).items() if k not in free}
    ours = {k: v for k, v in cfg.to_dict()["net"].items() if k not in free}
    if theirs != ours:
        diff = ", ".join(f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise InputError(f"{path}: its network differs from this run's ({diff}); use the same --preset"
                         f"{' and --hints' if theirs.get('hint_channels') else ''}")


def _net_settings(config: dict, path) -> dict:
    """A checkpoint's network settings with today's defaults filled in (older runs lack newer keys)."""
    try:
        return RunConfig.from_dict(config).to_dict()["net"]
    except (TypeError, InputError) as e:
        raise InputError(f"{path}: checkpoint configuration is not understood ({e})") from None


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Save sample rows (each N x 3 x H x W in [-1, 1]) as a PNG: one line per sample, rows side by side."""
    from PIL import Image

    from ganime.imageio import save_png, tensor_to_uint8

    cols = [tensor_to_uint8(r) for r in rows]  # each N x H x W x 3
    lines = [np.concatenate([c[i] for c in cols], axis=1) for i in range(cols[0].shape[0])]
    save_png(Image.fromarray(np.concatenate(lines, axis=0)), path, overwrite=True)


class Trainer:
    """Drive ``method`` over ``pairs`` for ``cfg.train.epochs`` epochs, writing into ``out``.

    Args:
        cfg: the validated run configuration.
        pairs: training pairs (N, 2, S, S, 3) uint8; methods that need unpaired data get a loader
            of their own through ``loader``.
        out: run folder. Must be new/empty unless ``resume``.
        resume: continue from ``out/last.pt``.
        hooks: callables ``hook(trainer, epoch)`` run after each epoch on the main process
            (evaluation uses this); one with a ``catch_up(trainer, epoch)`` attribute is also given, when a
            run resumes at the end of an epoch, the chance to do what a stop before it finished skipped.
    """

    def __init__(self, cfg: RunConfig, pairs: np.ndarray | None, out: str | Path, device: str = "auto",
                 resume: bool = False, progress: bool = True, hooks: list[Callable] | None = None,
                 loader=None, sample_pairs: np.ndarray | None = None, max_steps: int | None = None,
                 dist=None, tensorboard: bool = False, time_limit: float | None = None,
                 init_from: str | Path | None = None):
        self.cfg = cfg.validate()
        self.out = Path(out)
        self.device = resolve_device(device) if dist is None else dist.device
        self.dist = dist
        self.rank = dist.rank if dist else 0
        self.world_size = dist.world_size if dist else 1
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.hooks = hooks or []
        self.max_steps = max_steps
        if max_steps is not None and max_steps < 1:
            raise InputError(f"--max-steps {max_steps}: must be at least 1")
        if time_limit is not None and not time_limit > 0:
            raise InputError(f"--time-limit {time_limit / 60:g}: must be more than 0 minutes")
        self.time_limit = time_limit  # seconds of this call to fit(), then save and stop like --max-steps
        init = self._read_init(init_from) if init_from is not None and not resume else None  # before any write
        if resume or self.main:  # DDP: rank 0 checks a new run's folder; the others would race with its mkdir
            check_run_folder(self.out, self.cfg.method, resume)
        t = cfg.train
        method_cls = get_method(cfg.method)
        torch.manual_seed(t.seed)
        self.method = method_cls(cfg, self.device)
        init_record = self._apply_init(*init) if init is not None else None  # logged once the folder exists
        if dist is not None:
            dist.wrap(self.method)
        self.epoch, self.step, self.global_step = 0, 0, 0
        #: The current epoch's loss sums and step count so far, saved with a checkpoint inside an epoch so that the
        #: epoch's record after a resume averages all its steps, not only those since the resume.
        self.epoch_losses: tuple[dict[str, float], int] = ({}, 0)
        if resume and (self.out / "last.pt").exists():
            self._load(self.out / "last.pt")
        if loader is None:
            if pairs is None:
                raise InputError("no training data given")
            check_data_size(pairs.shape[2], t.size)
            loader = PairLoader.for_training(pairs, t, self.device, rank=self.rank, world_size=self.world_size,
                                             hint_sampler=getattr(self.method, "hint_sampler", None))
        self.loader = loader
        check_batches(loader.n, t.batch_size, self.world_size)
        writer = self._tensorboard() if tensorboard and self.main else None  # a check too: before the folder
        self._make_run_folder(resume)  # once every check passed: a refused run leaves no folder to clear by hand
        self.tb = writer(str(self.out / "tensorboard")) if writer else None
        if init_record is not None:
            self.log(init_record)
        if resume:
            # after a kill, the steps logged since the checkpoint are trained (and logged) again: records
            # before this one with a larger global_step were superseded. Counted as the step records and the
            # console count: the epoch in progress (1-based) and the steps done in it.
            self.log({"kind": "resume", "epoch": self.epoch + 1, "step": self.step, "global_step": self.global_step,
                      "time": time.time()})
            saved = self.out / "config.json"
            if self.main and (not saved.exists() or saved.read_text() != self.cfg.to_json()):
                # what this --resume changed (its length, intervals, evaluation) holds for the next one too
                atomic_write_bytes(saved, self.cfg.to_json().encode())
        sp = sample_pairs if sample_pairs is not None else (pairs[:8] if pairs is not None else None)
        self.sample_batch = self._fixed_batch(sp) if sp is not None else None

    # ---- run folder and checkpoints --------------------------------------------------------------
    def _make_run_folder(self, resume: bool) -> None:
        """A new run's folder (``samples/``, ``config.json``), or the ``samples/`` of a resumed run that saved no
        checkpoint yet; made once :func:`check_run_folder` and the data checks allowed the run."""
        last = self.out / "last.pt"
        if resume:
            if not last.exists() and self.main:  # stopped before its first checkpoint (kill -9, a crash)
                print(f"ganime: {self.out} holds no checkpoint yet: starting its run from the beginning", file=sys.stderr)
                (self.out / "samples").mkdir(exist_ok=True)
            return
        if self.main:  # DDP: rank 0 creates the folder; the others would race with it
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "samples").mkdir(exist_ok=True)
            atomic_write_bytes(self.out / "config.json", self.cfg.to_json().encode())

    def _read_init(self, init_from: str | Path) -> tuple[Path, dict]:
        """The weights to start from (--init-from): a run's checkpoint, an exported .safetensors, or
        "default" (the shipped model), checked against this run's method and network settings."""
        path = init_checkpoint(init_from)
        ckpt = load_checkpoint(path, expect_method=self.cfg.method)
        check_init_network(path, ckpt["config"], self.cfg)
        return path, ckpt["models"]

    def _apply_init(self, path: Path, models: dict) -> dict:
        """Load ``models`` into the method's networks; returns the log record saying what was loaded."""
        loaded = [k for k in self.method.models if k in models]
        for k in loaded:
            self.method.models[k].load_state_dict(models[k])
        fresh = [k for k in self.method.models if k not in models]
        if self.main:
            print(f"ganime: starting from {path} ({', '.join(loaded)} loaded"
                  f"{'; ' + ', '.join(fresh) + ' freshly initialised' if fresh else ''})", file=sys.stderr)
        return {"kind": "init", "from": str(path), "loaded": loaded, "fresh": fresh, "time": time.time()}

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path, expect_method=self.cfg.method)
        if _net_settings(ckpt["config"], path) != self.cfg.to_dict()["net"]:
            raise InputError(f"{path}: network settings differ from this run's (use the same --preset)")
        self.method.load_state(ckpt)
        p = ckpt["progress"]
        self.epoch, self.step, self.global_step = p["epoch"], p["step"], p["global_step"]
        losses = ckpt.get("epoch_losses")  # saved inside an epoch (a hand-edited entry costs only its averages)
        if self.step and isinstance(losses, dict) and isinstance(losses.get("sums"), dict) and isinstance(losses.get("steps"), int):
            self.epoch_losses = (dict(losses["sums"]), losses["steps"])
        saved_world = p.get("world_size", self.world_size)  # checkpoints before it was recorded: assume the same
        if saved_world != self.world_size and self.step:
            # Step s of an epoch has used the first s x batch x processes images of its shuffled order whatever
            # the number of processes, so the position carries over in images (rounded down: a few again).
            self.step = self.step * saved_world // self.world_size
            if self.main:
                print(f"ganime: {path} was saved by {saved_world} processes, resumed by {self.world_size}: the "
                      f"epoch continues at step {self.step} of the new layout", file=sys.stderr)
        if self.main:
            print(f"ganime: resuming {path} at epoch {self.epoch + 1}, step {self.step}", file=sys.stderr)

    def save(self, name: str = "last.pt") -> None:
        if not self.main:
            return
        state = self.method.state()
        if self.step:  # inside an epoch
            state["epoch_losses"] = {"sums": self.epoch_losses[0], "steps": self.epoch_losses[1]}
        save_checkpoint(
            self.out / name, method=self.cfg.method, config=self.cfg.to_dict(), state=state,
            progress={"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                      "world_size": self.world_size},
        )

    def _tensorboard(self):
        """TensorBoard's ``SummaryWriter`` class, or one sentence saying how to install it."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter

    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record["kind"]
            x = record.get("global_step", 0)
            for k, v in record.items():
                if k not in ("kind", "epoch", "step", "global_step", "time") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, x)

    def _fixed_batch(self, pairs: np.ndarray) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(pairs)).to(self.device)
        x = x.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)
        return {"sketch": x[:, 0], "color": x[:, 1]}

    def write_samples(self) -> None:
        if not self.main or self.sample_batch is None:
            return
        rows = self.method.sample(self.sample_batch)
        save_grid(rows, self.out / "samples" / f"epoch_{self.epoch:04d}.png")

    # ---- the loop ----------------------------------------------------------------------------------
    def _check_finite(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        values = {k: float(v) for k, v in sums.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if self.dist is not None:
            bad = self.dist.any_flag(bool(bad)) and (bad or ["(another process)"])
        if bad:
            last = self.out / "last.pt"
            kept = f"the last good checkpoint ({last}) is kept" if last.exists() else "no checkpoint was saved yet"
            raise TrainingDiverged(
                f"loss {', '.join(bad)} became NaN/Inf at epoch {self.epoch + 1}, step {self.step}; "
                f"stopped, and {kept}; try a lower --lr in a new run"
            )
        return values

    def recalibrate_bn(self) -> int:
        """Precise BatchNorm statistics for the generator (``train.bn_recalibrate`` batches of the next
        epoch's order; see :func:`ganime.nn.layers.recalibrate_batchnorm`). Same count on every rank."""
        from ganime.nn.layers import recalibrate_batchnorm

        t = self.cfg.train
        n = min(t.bn_recalibrate, self.loader.steps_per_epoch)
        if n <= 0:
            return 0
        torch.manual_seed(step_seed(t.seed, 4, self.rank, self.global_step))  # dropout: reproducible
        batches = self.loader.epoch(self.epoch, 0, self.epoch * self.loader.steps_per_epoch)
        inputs = (self.method.generator_input(b) for _, b in itertools.islice(batches, n))
        with self.method.autocast():
            return recalibrate_batchnorm(self.method.generator, inputs)

    def fit(self) -> TrainResult:
        from ganime.progress import on_terminal, progress_bar

        t = self.cfg.train
        spe = self.loader.steps_per_epoch
        result = TrainResult(self.epoch, self.global_step)
        if self.max_steps is not None and self.global_step >= self.max_steps:
            return result  # a resumed run already past --max-steps: nothing to train
        images_per_step = t.batch_size * self.world_size
        # into a file (a scheduler's log) the bar redraws every 30 s; log.jsonl holds the figures
        bar = progress_bar(total=t.epochs * spe, initial=self.epoch * spe + self.step, unit="step", dynamic_ncols=True,
                           disable=not self.progress, desc=f"{self.cfg.method}")
        tty = on_terminal()
        if self.main and self.epoch and not self.step:  # resumed at an epoch's end: its hooks may not have run
            for hook in self.hooks:
                if hasattr(hook, "catch_up"):
                    hook.catch_up(self, self.epoch)
        self.method.train_mode(True)
        deadline = time.monotonic() + self.time_limit if self.time_limit else None
        with _StopFlag(abort_on_second=self.dist is None) as stop:
            stop_now = False  # the stop decision: the local flag, or under DDP the flag agreed by all
            out_of_time = False  # --time-limit reached (agreed under DDP): save and stop, not an interruption
            while self.epoch < t.epochs:
                lr = t.lr_at(self.epoch)  # a function of the epoch alone: a resumed run gets the same rate
                for opt in self.method.optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = lr
                sums: dict[str, torch.Tensor] = {}
                n_in_interval, t0 = 0, time.perf_counter()
                epoch_sums, epoch_steps = (dict(self.epoch_losses[0]), self.epoch_losses[1]) if self.step else ({}, 0)
                for step, batch in self.loader.epoch(self.epoch, self.step, self.epoch * spe):
                    torch.manual_seed(step_seed(t.seed, 3, self.rank, self.global_step))
                    losses = self.method.train_step(batch)
                    for k, v in losses.items():
                        sums[k] = sums[k] + v if k in sums else v.clone()
                    n_in_interval += 1
                    self.step, self.global_step = step + 1, self.global_step + 1
                    bar.update(1)
                    last_of_epoch = self.step == spe
                    over = deadline is not None and time.monotonic() >= deadline
                    if self.dist is None:
                        stop_now, out_of_time = stop.requested, over
                    else:
                        vote = self.dist.agree_stop(stop.requested, over)
                        stop_now, out_of_time = vote == 2, vote == 1
                    stopping = stop_now or out_of_time or (self.max_steps is not None and self.global_step >= self.max_steps)
                    if n_in_interval >= t.log_every or last_of_epoch or stopping:
                        values = self._check_finite(sums)
                        if self.device.type == "cuda":
                            torch.cuda.synchronize(self.device)
                        dt = time.perf_counter() - t0
                        ips = n_in_interval * images_per_step / max(dt, 1e-9)
                        means = {k: v / n_in_interval for k, v in values.items()}
                        for k, v in values.items():
                            epoch_sums[k] = epoch_sums.get(k, 0.0) + v
                        epoch_steps += n_in_interval
                        bar.set_postfix({**{k: f"{v:.3f}" for k, v in means.items()}, "img/s": f"{ips:.1f}"}, refresh=tty)
                        self.log({"kind": "step", "epoch": self.epoch + 1, "step": self.step,
                                  "global_step": self.global_step, "img_s": round(ips, 2), "time": time.time(),
                                  "lr": lr, **means})
                        result.last_losses, result.images_per_second = means, ips
                        sums, n_in_interval, t0 = {}, 0, time.perf_counter()
                    if (t.save_every_steps and self.global_step % t.save_every_steps == 0 and not last_of_epoch
                            and not stopping):  # those save below
                        pending = self._check_finite(sums) if sums else {}  # never save past a non-finite loss
                        self.epoch_losses = ({k: epoch_sums.get(k, 0.0) + pending.get(k, 0.0) for k in {*epoch_sums, *pending}},
                                             epoch_steps + n_in_interval)
                        self.save()
                    if stopping and not last_of_epoch:
                        if not stop_now:  # a planned stop (time or step limit), not Ctrl-C: worth the forward passes
                            self.recalibrate_bn()
                        self.epoch_losses = (epoch_sums, epoch_steps)  # the interval was just logged
                        self.save()
                        result.interrupted, result.stop_signal = stop_now, stop.signum
                        result.epochs_done, result.global_step = self.epoch, self.global_step
                        bar.close()
                        if (stop_now or out_of_time) and self.main:
                            why = "time limit reached: " if out_of_time and not stop_now else ""
                            print(f"ganime: {why}saved {self.out / 'last.pt'} at epoch {self.epoch + 1}, step {self.step}; "
                                  "continue with --resume", file=sys.stderr)
                        result.time_limit_reached = out_of_time and not stop_now
                        return result
                # End of epoch: count it, write samples, checkpoints, epoch log, hooks.
                self.epoch, self.step = self.epoch + 1, 0
                bn_batches = self.recalibrate_bn()
                self.write_samples()
                self.save()
                if t.keep_every and self.epoch % t.keep_every == 0:
                    self.save(f"epoch_{self.epoch:04d}.pt")
                self.log({"kind": "epoch", "epoch": self.epoch, "global_step": self.global_step, "time": time.time(),
                          "bn_batches": bn_batches, **{k: v / max(epoch_steps, 1) for k, v in epoch_sums.items()}})
                if self.main:
                    for hook in self.hooks:
                        hook(self, self.epoch)
                result.epochs_done, result.global_step = self.epoch, self.global_step
                if self.dist is None:
                    stop_now = stop.requested  # a Ctrl-C during the epoch's samples, checkpoint or hooks
                if stop_now or out_of_time or (self.max_steps is not None and self.global_step >= self.max_steps):
                    result.interrupted, result.stop_signal = stop_now, stop.signum
                    result.time_limit_reached = out_of_time and not stop_now
                    break
        bar.close()
        return result
