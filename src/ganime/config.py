"""Run configuration: dataclasses for networks, data and training, with named presets.

Components own their defaults (the networks, the methods); a run's configuration merely combines
them and is validated once, up front, then saved as JSON beside the run and inside each checkpoint.

Presets:
- ``paper``: Vu & Yang's Pix2Pix exactly: U-Net with 8 downsamplings and 64 base channels, BatchNorm,
  dropout 0.5, 70x70 PatchGAN, L1 weight 100, Adam lr 2e-4, betas (0.5, 0.999), eps 1e-7, batch 32,
  150 epochs, resize 286 -> random 256 crop + mirror. CycleGAN: cycle weight 10. Two defaults go
  beyond it: BatchNorm running statistics recomputed before each checkpoint (``bn_recalibrate``; 0 for
  the paper's running averages) and bf16 autocast on CUDA (``amp``; ``--no-amp`` for fp32). Where the
  U-Net's dropout sits (as the PyTorch reference) and inference in eval mode, without dropout, differ
  from the paper (:mod:`ganime.nn.unet`).
- ``medium``: ``paper`` with 32 base channels in the generator (the shipped model's size).
- ``small``: 16 base channels and batch 8, for CPU smoke runs and fast experiments.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ganime.errors import InputError


@dataclass
class NetConfig:
    """Generator and discriminator shapes (the paper's ngf/ndf = ``gen_base``/``disc_base``)."""

    gen_base: int = 64
    gen_depth: int = 8
    disc_base: int = 64
    disc_layers: int = 3
    norm: str = "batch"
    dropout: float = 0.5
    #: Extra generator inputs for user colour hints (RGB + mask = 4 channels); 0 without hints.
    hint_channels: int = 0
    #: Multiply the generated colour by the sketch's lines (a multiply layer; beyond the paper): lines kept exactly.
    line_multiply: bool = False
    #: With line_multiply: Gaussian sigma (pixels) smoothing the colour layer before the multiply; 0 = off.
    color_blur: float = 0.0
    #: With line_multiply: edge-aware smoothing of the colour layer between the sketch's lines (sigma, pixels); 0 = off.
    color_flatten: float = 0.0

    @property
    def size_multiple(self) -> int:
        """The U-Net halves its input ``gen_depth`` times: image sides must be a multiple of this."""
        return 2**self.gen_depth

    def size_problem(self, size: int) -> str | None:
        """What is wrong with ``size`` for the generator ("must be a multiple of ..."), or None when it takes it."""
        multiple = self.size_multiple
        if size < multiple or size % multiple:
            return f"must be a multiple of {multiple} for a U-Net of depth {self.gen_depth}"
        return None


#: The weight-free smoothings of a line-multiply generator's colour layer (NetConfig field -> its name in
#: messages) and their largest sigma in pixels.
COLOUR_LAYER_SMOOTHING = {"color_blur": "colour blur", "color_flatten": "colour flattening"}
MAX_SMOOTHING_SIGMA = 16
#: Inference's largest working size by default (``ganime colorize/serve --max-size``,
#: ``Colorizer.from_checkpoint``): a large sketch is coloured near its own size up to this.
DEFAULT_MAX_SIZE = 1024


#: ``--keep-best`` metric -> (the key of the evaluation record, True when higher is better).
KEEP_BEST_METRICS = {"lpips": ("lpips_mean", False), "ssim": ("ssim_mean", True), "psnr": ("psnr_mean", True),
                     "fid": ("fid", False), "kid": ("kid_mean", False)}


@dataclass
class TrainConfig:
    epochs: int = 150
    batch_size: int = 32
    lr: float = 2e-4
    #: Decay the learning rate linearly over the last this many epochs (the pix2pix/CycleGAN reference's
    #: ``n_epochs_decay``; beyond the paper, whose rate is constant: 0).
    lr_decay_epochs: int = 0
    beta1: float = 0.5
    beta2: float = 0.999
    eps: float = 1e-7
    #: Side of the square training images; the cache must have been prepared at this size.
    size: int = 256
    #: Resize factor before the random crop: 286/256 as in the paper.
    jitter: float = 286 / 256
    flip: bool = True
    #: Re-extract sketches from the colour image with a random extractor (probability per sample).
    sketch_augment: float = 0.0
    #: Shrink a pair onto white paper (probability per sample; beyond the paper), by a factor in [zoom_min, 1].
    zoom_out: float = 0.0
    zoom_min: float = 0.4
    seed: int = 0
    #: Log losses every this many steps (also when non-finite losses are detected).
    log_every: int = 20
    #: Save a numbered checkpoint every this many epochs besides last.pt (0: only last.pt).
    keep_every: int = 0
    #: Also save last.pt every this many steps inside an epoch (0: only at epoch ends).
    save_every_steps: int = 0
    #: Evaluate on a fixed validation set every this many epochs (0: never).
    eval_every: int = 0
    #: That validation set: a prepared cache or a folder of side-by-side pairs ("": the training
    #: cache's val split, else a fixed subset of the training data).
    val_data: str = ""
    #: Also keep ``best.pt``: the checkpoint with the best value of this validation metric so far
    #: (one of KEEP_BEST_METRICS; "": off).
    keep_best: str = ""
    #: The prepared cache trained on (absolute path; for CycleGAN's folders "SKETCHES | COLORS") and its
    #: fingerprint (count and a hash of the names, :meth:`ganime.data.pairs.PairCache.fingerprint`,
    #: :func:`ganime.data.unpaired.folders_fingerprint`), checked on --resume ("": not recorded, as in runs
    #: before it was).
    data: str = ""
    data_fingerprint: str = ""
    #: Before each epoch-end (and time-limit) checkpoint, recompute the generator's BatchNorm running
    #: statistics over this many training batches (precise BN; beyond the paper; 0: keep the running averages).
    bn_recalibrate: int = 50
    amp: bool = True
    channels_last: bool = True

    def lr_at(self, epoch: int) -> float:
        """The learning rate of the 0-based ``epoch``: ``lr`` throughout, or with ``lr_decay_epochs`` N, lr·(1 − k/(N+1))
        in the k-th of the last N epochs, as the pix2pix/CycleGAN reference's linear policy (never 0)."""
        k = epoch + 1 - (self.epochs - self.lr_decay_epochs)
        return self.lr * (1 - max(0, k) / (self.lr_decay_epochs + 1))


@dataclass
class RunConfig:
    method: str = "pix2pix"
    preset: str = "paper"
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: Method-specific settings (e.g. ``lambda_l1`` for Pix2Pix, ``lambda_cycle`` for CycleGAN).
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        if not isinstance(d, dict):
            raise InputError(f"run settings are not a mapping (got {type(d).__name__})")
        d = dict(d)
        for name in ("method", "preset"):
            if not isinstance(d.get(name, ""), str):
                raise InputError(f"run setting {name} = {str(d[name])[:40]!r}: expected str")
        if not isinstance(d.get("options", {}), dict):
            raise InputError("run setting options: expected a mapping")
        net = _dataclass_from(NetConfig, d.pop("net", {}))
        train = _dataclass_from(TrainConfig, d.pop("train", {}))
        known = {f.name for f in fields(cls)} - {"net", "train"}
        return cls(net=net, train=train, **{k: v for k, v in d.items() if k in known})

    def validate(self, size_from: str | None = None) -> "RunConfig":
        """One InputError listing every problem; ``size_from`` says where the image size came from (e.g. the
        cache's own size), added to its problem."""
        t, n = self.train, self.net
        problems = []
        if t.epochs < 1:
            problems.append(f"epochs must be at least 1 (got {t.epochs})")
        if t.batch_size < 1:
            problems.append(f"batch size must be at least 1 (got {t.batch_size})")
        if not (0 < t.lr < math.inf):
            problems.append(f"learning rate must be positive and finite (got {t.lr})")
        if not 0 <= t.lr_decay_epochs <= t.epochs:
            problems.append(f"learning-rate decay must last 0 to {t.epochs} epochs, the run's length "
                            f"(got {t.lr_decay_epochs})")
        if t.log_every < 1:
            problems.append(f"log interval must be at least 1 step (got {t.log_every})")
        if t.keep_every < 0 or t.save_every_steps < 0:
            problems.append(f"checkpoint intervals must be 0 (off) or more (got --keep-every {t.keep_every}, "
                            f"--save-every-steps {t.save_every_steps})")
        size_problem = n.size_problem(t.size)
        if size_problem:
            problems.append(f"image size {t.size} {size_problem}" + (f" ({size_from})" if size_from else ""))
        if t.jitter < 1:
            problems.append(f"jitter must be >= 1 (got {t.jitter})")
        if not 0 <= t.sketch_augment <= 1:
            problems.append(f"sketch augmentation probability must be in [0, 1] (got {t.sketch_augment})")
        if t.eval_every < 0:
            problems.append(f"evaluation interval must be 0 (off) or more epochs (got {t.eval_every})")
        if t.keep_best and t.keep_best not in KEEP_BEST_METRICS:
            problems.append(f"--keep-best {t.keep_best}: choose one of {', '.join(KEEP_BEST_METRICS)}")
        elif t.keep_best and not t.eval_every:
            problems.append("--keep-best needs an evaluation interval (--eval-every N)")
        if t.bn_recalibrate < 0:
            problems.append(f"BatchNorm recalibration batches must be 0 or more (got {t.bn_recalibrate})")
        if not 0 <= t.zoom_out <= 1:
            problems.append(f"zoom-out probability must be in [0, 1] (got {t.zoom_out})")
        if not 0.1 <= t.zoom_min <= 1:
            problems.append(f"zoom-out minimum scale must be in [0.1, 1] (got {t.zoom_min})")
        if n.norm not in ("batch", "instance", "none"):
            problems.append(f"norm must be batch, instance or none (got {n.norm!r})")
        for field_name, what in COLOUR_LAYER_SMOOTHING.items():
            sigma = getattr(n, field_name)
            if not 0 <= sigma <= MAX_SMOOTHING_SIGMA:
                problems.append(f"{what} must be in [0, {MAX_SMOOTHING_SIGMA}] pixels (got {sigma})")
            elif sigma and not n.line_multiply:
                problems.append(f"{what} smooths the colour layer of a --line-multiply generator only")
        if n.gen_base < 1 or n.disc_base < 1:
            problems.append("network widths must be positive")
        from ganime.methods import get_method  # the method owns its options and their rules

        problems += get_method(self.method).option_problems(self.options)
        if problems:
            raise InputError("invalid configuration: " + "; ".join(problems))
        return self


def read_run_config(saved) -> RunConfig:
    """A run folder's ``config.json``; a damaged or hand-edited one is one sentence naming it."""
    from pathlib import Path

    try:
        return RunConfig.from_dict(json.loads(Path(saved).read_text()))
    except (ValueError, InputError) as e:
        raise InputError(f"{saved}: not a readable run configuration ({str(e)[:160]})") from None


def _dataclass_from(cls, d: dict):
    """``cls(**d)`` for settings read from a file (a run's config.json, a checkpoint): unknown names and values
    of the wrong type (a hand-edited ``"gen_depth": "8"``) are one :class:`InputError` sentence."""
    if not isinstance(d, dict):
        raise InputError(f"{cls.__name__} settings are not a mapping (got {type(d).__name__})")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise InputError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
    for f in fields(cls):
        if f.name in d:
            value, kind = d[f.name], type(f.default)
            ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
            if not ok or (kind is not bool and isinstance(value, bool)):
                raise InputError(f"{cls.__name__} setting {f.name} = {str(value)[:40]!r}: expected {kind.__name__}")
    return cls(**d)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"net": {}, "train": {}},
    "small": {
        "net": {"gen_base": 16, "disc_base": 16},
        "train": {"batch_size": 8, "epochs": 20},
    },
    # the largest generator whose fp16 weights fit the package's 30 MB budget for the shipped model
    # (13.6 M parameters, 27 MB), with the paper's discriminator and batch
    "medium": {
        "net": {"gen_base": 32},
        "train": {},
    },
}


def make_config(method: str, preset: str = "paper", options: dict | None = None, **train_overrides) -> RunConfig:
    """The run configuration for ``method`` under ``preset``, with overrides (``None`` means keep)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    net = dataclasses.replace(NetConfig(), **p["net"])
    train = dataclasses.replace(TrainConfig(), **p["train"])
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    bad = set(overrides) - {f.name for f in fields(TrainConfig)}
    if bad:
        raise InputError(f"unknown training settings: {', '.join(sorted(bad))}")
    train = dataclasses.replace(train, **overrides)
    from ganime.methods import get_method  # the method owns its option defaults

    resolved = {**get_method(method).default_options, **(options or {})}
    return RunConfig(method=method, preset=preset, net=net, train=train, options=resolved)
