"""``ganime train METHOD ...``: one parser per method over one shared set of options."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ganime.config import COLOUR_LAYER_SMOOTHING, KEEP_BEST_METRICS

#: Method name -> function(parser) adding that method's own arguments.
METHOD_ARGS = {}


def add_common(p) -> None:
    p.add_argument("--out", required=True, help="run folder (new, or an existing one with --resume)")
    p.add_argument("--preset", help="paper (the paper's settings; the default), medium (32 base channels: the shipped "
                                    "model's size budget) or small (16, fast, CPU-friendly)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-decay-epochs", type=int, metavar="N",
                   help="decay the learning rate linearly over the last N epochs (the pix2pix/CycleGAN reference's "
                        "n_epochs_decay; default 0: constant, as the paper)")
    p.add_argument("--size", type=int, help="training image side (must match the cache; default 256)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--new-data", action="store_true",
                   help="with --resume: continue on --data pairs other than those the run was trained on (refused "
                        "without it; a cache moved or prepared again from the same files is the same pairs)")
    p.add_argument("--sketch-augment", type=float, metavar="P",
                   help="re-extract each sketch from its colour image with a random extractor, with probability P")
    p.add_argument("--log-every", type=int, help="steps between log lines")
    p.add_argument("--keep-every", type=int, help="also keep a numbered checkpoint every N epochs")
    p.add_argument("--save-every-steps", type=int, help="also save last.pt every N steps within an epoch")
    p.add_argument("--eval-every", type=int, metavar="K",
                   help="evaluate on a fixed validation set every K epochs (RUN/metrics.jsonl, RUN/metrics.png)")
    p.add_argument("--val-data", metavar="PAIRS",
                   help="that validation set: a prepared cache or a folder of side-by-side pairs, its val split if it "
                        "has one (default: the training cache's val split, else a fixed subset of the training pairs)")
    p.add_argument("--keep-best", metavar="METRIC", choices=sorted(KEEP_BEST_METRICS),
                   help="also keep RUN/best.pt, the checkpoint with the best validation METRIC so far "
                        f"({', '.join(KEEP_BEST_METRICS)}; implies --eval-every 1 unless given)")
    p.add_argument("--max-steps", type=int, help="stop (and save) after this many steps in total")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop (and save) after this many minutes of training in this call; --resume continues")
    p.add_argument("--bn-recalibrate", type=int, metavar="BATCHES",
                   help="recompute the generator's BatchNorm statistics over this many batches before each "
                        "epoch-end checkpoint (default 50; 0: the running averages, as the paper)")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA instead of bf16 autocast")
    p.add_argument("--dry-run", action="store_true", help="validate and print the configuration, then exit")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars to RUN/tensorboard")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bars on stderr (loading the data, the steps; into a file they are redrawn "
                        "every 30 s)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (pix2pix, cyclegan)")
    msub = p.add_subparsers(dest="method", metavar="METHOD")
    msub.required = True
    q = msub.add_parser("pix2pix", help="Pix2Pix (the paper's C-GAN) on paired data",
                        description="Train Pix2Pix on a prepared cache (ganime data prepare).")
    q.add_argument("--data", required=True, help="prepared cache folder")
    q.add_argument("--lambda-l1", type=float, help="L1 weight (100 in the paper)")
    q.add_argument("--hints", action="store_true", help="train a hint-aware generator (sketch + colour hints)")
    q.add_argument("--line-multiply", action=argparse.BooleanOptionalAction, default=None,
                   help="the generator predicts a colour layer multiplied by the sketch's lines (kept exactly); "
                        "with --init-from, the default is that of the weights started from")
    q.add_argument("--color-blur", type=float, metavar="SIGMA",
                   help="with --line-multiply: smooth the colour layer with a Gaussian of SIGMA pixels (0: off)")
    q.add_argument("--color-flatten", type=float, metavar="SIGMA",
                   help="with --line-multiply: smooth the colour layer between the sketch's lines only (0: off)")
    q.add_argument("--lambda-hint", type=float, help="extra L1 weight on hinted pixels (0 in the paper preset)")
    q.add_argument("--lambda-ssim", type=float,
                   help="weight of a 1 - SSIM loss beside L1 (0 in the presets; the evaluation's SSIM, differentiable)")
    q.add_argument("--zoom-out", type=float, metavar="P",
                   help="shrink a pair onto white paper with probability P (close-ups -> small figures on paper)")
    q.add_argument("--zoom-min", type=float, metavar="S", help="smallest --zoom-out scale (default 0.4)")
    q.add_argument("--init-from", metavar="CKPT",
                   help="start from these weights (a run's last.pt, an exported .safetensors, or 'default' for "
                        "the shipped model) instead of random ones: fine-tuning; the network settings must match")
    add_common(q)
    q.set_defaults(func=run)
    for name, adder in METHOD_ARGS.items():
        adder(msub)


def build_config(args, options: dict, net: dict | None = None):
    """The run's configuration: from the command line, or on --resume from the run's config.json, which the
    options given may extend (length, bookkeeping, evaluation) but not change (``net``: the network settings
    given, field -> (option as written, value), checked on --resume only)."""
    from ganime.config import make_config, read_run_config
    from ganime.errors import InputError

    saved = Path(args.out) / "config.json"
    if args.new_data and not args.resume:
        print("ganime: --new-data applies to --resume only; a new run trains on the pairs it is given", file=sys.stderr)
    evaluation = _evaluation_settings(args)
    if args.resume and saved.exists():
        cfg = read_run_config(saved)
        if cfg.method != args.method:
            raise InputError(f"{args.out}: holds a {cfg.method} run, not {args.method}; "
                             f"continue it with ganime train {cfg.method} --resume")
        changed = _changed_on_resume(args, cfg, options, net or {})
        if changed:
            raise InputError(f"{args.out}: --resume continues the run with the settings in {saved}, and "
                             f"{', '.join(changed)} would change them; drop {'it' if len(changed) == 1 else 'them'}, "
                             "or start a new run with another --out")
        # Only the length of a run (and of its closing learning-rate decay, from the resumed epoch on), its log
        # and checkpoint intervals and its evaluation (none of which changes what was trained) may change on resume.
        for k in ("epochs", "lr_decay_epochs", "log_every", "keep_every", "save_every_steps"):
            if getattr(args, k) is not None:
                setattr(cfg.train, k, getattr(args, k))
        for k, v in evaluation.items():
            setattr(cfg.train, k, v)
        if evaluation.get("keep_best") and not cfg.train.eval_every:
            cfg.train.eval_every = 1
        return cfg
    if evaluation.get("keep_best") and evaluation.get("eval_every") is None:
        evaluation["eval_every"] = 1
    cfg = make_config(
        args.method, args.preset or "paper", options=options, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lr_decay_epochs=args.lr_decay_epochs,
        size=args.size, seed=args.seed, sketch_augment=args.sketch_augment, log_every=args.log_every,
        keep_every=args.keep_every, save_every_steps=args.save_every_steps, **evaluation,
        amp=False if args.no_amp else None, bn_recalibrate=args.bn_recalibrate, zoom_out=getattr(args, "zoom_out", None),
        zoom_min=getattr(args, "zoom_min", None),
    )
    return cfg


def _changed_on_resume(args, cfg, options: dict, net: dict) -> list[str]:
    """The options given (as written) whose values differ from those of the run being resumed."""
    t = cfg.train
    given = [("--preset", args.preset, cfg.preset), ("--batch-size", args.batch_size, t.batch_size),
             ("--lr", args.lr, t.lr), ("--size", args.size, t.size), ("--seed", args.seed, t.seed),
             ("--sketch-augment", args.sketch_augment, t.sketch_augment),
             ("--bn-recalibrate", args.bn_recalibrate, t.bn_recalibrate),
             ("--zoom-out", getattr(args, "zoom_out", None), t.zoom_out),
             ("--zoom-min", getattr(args, "zoom_min", None), t.zoom_min),
             ("--no-amp", False if args.no_amp else None, t.amp)]
    given += [(f"--{k.replace('_', '-')}", v, cfg.options.get(k)) for k, v in options.items()]
    given += [(flag, v, getattr(cfg.net, k)) for k, (flag, v) in net.items()]
    return [flag for flag, v, saved in given if v is not None and v != saved]


def _evaluation_settings(args) -> dict:
    """The evaluation options given on the command line (absent ones left out); --val-data made absolute,
    so that a resume from another folder finds it."""
    given = {"eval_every": args.eval_every, "keep_best": args.keep_best,
             "val_data": None if args.val_data is None else str(Path(args.val_data).absolute())}
    return {k: v for k, v in given.items() if v is not None}


def check_cache(cache, cfg) -> None:
    """The run's checks of its pairs' size and number, from the cache's index: --dry-run passed a --size or
    --batch-size the run then refused, and the run refused them only after reading the whole cache."""
    from ganime.train import check_batches, check_data_size

    check_data_size(cache.size, cfg.train.size)
    check_batches(cache.count("train" if "train" in cache.splits else None), cfg.train.batch_size)


def record_training_data(args, cfg, cache) -> None:
    """Record the data the run trains on (the cache ``cache``, or CycleGAN's --sketches/--colors folders when it
    is None) in its configuration. On --resume, other data than recorded is refused unless --new-data: the
    pairs' (or images') count and names tell, not the paths (a run recorded before this has no record and
    resumes as it is)."""
    from ganime.errors import InputError

    t = cfg.train
    if cache is not None:
        split = "train" if "train" in cache.splits else None
        data, fingerprint, what = str(cache.path.absolute()), cache.fingerprint(split), "the pairs of"
    else:
        from ganime.data.unpaired import folders_fingerprint

        data = f"{Path(args.sketches).absolute()} | {Path(args.colors).absolute()}"
        fingerprint, what = folders_fingerprint(args.sketches, args.colors), "the images of"
    if args.resume and t.data_fingerprint and fingerprint != t.data_fingerprint:
        given = f"--data {args.data}" if cache is not None else "--sketches/--colors"
        if not args.new_data:
            raise InputError(f"{args.out}: was trained on {what} {t.data} ({t.data_fingerprint}), and {given} holds "
                             f"others ({fingerprint}); give its own, pass --new-data to continue on these (the rest "
                             "of the run then differs from an uninterrupted one), or start a new run with another --out")
        print(f"ganime: {args.out}: was trained on {what} {t.data} ({t.data_fingerprint}); --new-data: "
              f"continuing on {data}", file=sys.stderr)
    t.data, t.data_fingerprint = data, fingerprint


def load_training_pairs(data: str, size: int | None, progress: bool = False):
    """The training pairs of the cache ``data``, read into memory (with a bar on the main process)."""
    from ganime.data.pairs import PairCache

    cache = PairCache(data)
    split = "train" if "train" in cache.splits else None
    main = os.environ.get("RANK", "0") == "0"  # under torchrun every process reads the cache: one bar
    return cache.load(split, progress=progress and main), cache


def eval_hooks(args, cfg) -> list:
    """Training-time evaluation (``--eval-every``, ``--val-data``, ``--keep-best``). The validation pairs
    are read (and the metric's network checked) now, so a wrong path fails before any training."""
    t = cfg.train
    if not t.eval_every:
        return []
    from ganime.evaluate import training_eval_hook

    same = bool(t.val_data) and args.data is not None and Path(t.val_data).resolve() == Path(args.data).resolve()
    return [training_eval_hook(t.val_data or args.data, t.eval_every, size=t.size, keep_best=t.keep_best or None,
                               training_data=not t.val_data or same)]


def run(args) -> int:
    from ganime.train import Trainer

    options = {}
    if getattr(args, "lambda_l1", None) is not None:
        options["lambda_l1"] = args.lambda_l1
    for k in ("lambda_hint", "lambda_ssim"):
        if getattr(args, k, None) is not None:
            options[k] = getattr(args, k)
    net = {}  # the network settings given, checked against the run's on --resume
    if args.hints:
        net["hint_channels"] = ("--hints", 4)
    if args.line_multiply is not None:
        net["line_multiply"] = ("--line-multiply" if args.line_multiply else "--no-line-multiply", args.line_multiply)
    for field_name in COLOUR_LAYER_SMOOTHING:
        if getattr(args, field_name) is not None:
            net[field_name] = (f"--{field_name.replace('_', '-')}", getattr(args, field_name))
    cfg = build_config(args, options, net)
    if args.resume and args.init_from is not None:
        print(f"ganime: --init-from {args.init_from} applies to a new run only; --resume continues from "
              f"{Path(args.out) / 'last.pt'}", file=sys.stderr)
    if not args.resume:  # a new run takes the network settings given (a resume has checked them equal)
        for field_name, (_, value) in net.items():
            setattr(cfg.net, field_name, value)
        if args.init_from:
            _check_init_from(args.init_from, cfg, inherit_line_multiply="line_multiply" not in net)
    from ganime.data.pairs import PairCache

    cache = PairCache(args.data)  # reads the index only: a wrong path fails before any work
    if args.size is None and not args.resume:
        cfg.train.size = cache.size  # train at the cache's resolution unless told otherwise
    validate(cfg, args)
    check_cache(cache, cfg)
    record_training_data(args, cfg, cache)
    if args.dry_run:
        return dry_run(cfg, args)
    hooks = eval_hooks(args, cfg)  # before the (long) load of the training pairs: a bad --val-data fails now
    pairs, _ = load_training_pairs(args.data, cfg.train.size, progress=not args.no_progress)
    # Under torchrun (RANK/WORLD_SIZE set): one process per device, --batch-size per process.
    from ganime.distributed import from_env

    dist = from_env(args.device)
    res = fit_closing(dist, lambda: Trainer(
        cfg, pairs, args.out, device=args.device, resume=args.resume, progress=not args.no_progress,
        hooks=hooks, max_steps=args.max_steps, tensorboard=args.tensorboard, dist=dist,
        time_limit=_seconds(args.time_limit), init_from=args.init_from))
    return report(res, args.out, dist)


def validate(cfg, args) -> None:
    """``cfg.validate()``, saying where a size the network cannot take came from when it is the cache's."""
    from_cache = args.data is not None and args.size is None and not args.resume
    cfg.validate(f"the size of the cache {args.data}: give --size, or prepare the data at a size that fits"
                 if from_cache else None)


def fit_closing(dist, make_trainer):
    """Build a Trainer and fit it; under torchrun the process group is closed however that ends."""
    try:
        res = make_trainer().fit()
    except BaseException:
        if dist is not None:
            dist.close(wait=False)  # the other processes may be inside a collective: no barrier
        raise
    if dist is not None:
        dist.close()
    return res


def _check_init_from(init_from: str, cfg, inherit_line_multiply: bool) -> None:
    """The weights of --init-from, checked against the run from their configuration alone (the Trainer reads the
    weights once, after the training pairs: a wrong file is refused before that long load). A fine-tune keeps
    their colour layer (--line-multiply) unless told otherwise."""
    from ganime.checkpoint import CheckpointError, read_checkpoint_config
    from ganime.train import check_init_network, init_checkpoint

    path = init_checkpoint(init_from)
    config = read_checkpoint_config(path)
    if config.get("method", cfg.method) != cfg.method:
        raise CheckpointError(f"{path}: is a {config['method']} checkpoint, but {cfg.method} was asked for")
    check_init_network(path, config, cfg)
    net = config.get("net")
    if inherit_line_multiply and isinstance(net, dict):
        cfg.net.line_multiply = bool(net.get("line_multiply", False))
        if cfg.net.line_multiply:
            print(f"ganime: {path} paints a colour layer under the lines: training with --line-multiply "
                  "(--no-line-multiply to change it)", file=sys.stderr)


def dry_run(cfg, args) -> int:
    """--dry-run: the resolved configuration, after the checks the run folder would get (nothing written)."""
    from ganime.train import check_run_folder

    check_run_folder(args.out, cfg.method, args.resume)
    print(cfg.to_json())
    return 0


def _seconds(minutes: float | None) -> float | None:
    return None if minutes is None else minutes * 60


def report(res, out, dist, detail: str = "") -> int:
    """The closing line (main process only) and the exit code: 128 + the signal after a stop by one
    (130 for Ctrl-C, 143 for SIGTERM; 130 on a DDP process that stopped for another's), else 0."""
    if dist is None or dist.main:
        state = "interrupted" if res.interrupted else "time limit reached" if res.time_limit_reached else "finished"
        print(f"{state}: {res.epochs_done} epochs, {res.global_step} steps{detail}; checkpoint {Path(out) / 'last.pt'}")
    return 128 + (res.stop_signal or 2) if res.interrupted else 0


def add_cyclegan_parser(msub) -> None:
    q = msub.add_parser("cyclegan", help="CycleGAN (the paper's unpaired model) on unpaired sketches and colour images",
                        description="Train CycleGAN (G: sketch -> colour, F: colour -> sketch) on two folders of "
                                    "unrelated images (--sketches and --colors), or on a prepared cache (--data) "
                                    "whose pairing is then ignored.")
    q.add_argument("--sketches", metavar="DIR", help="folder of line-art images (domain X)")
    q.add_argument("--colors", "--colours", dest="colors", metavar="DIR", help="folder of colour images (domain Y)")
    q.add_argument("--data", metavar="CACHE", help="prepared cache folder, used as two unpaired domains (instead of the folders)")
    q.add_argument("--lambda-cycle", type=float, metavar="W", help="cycle-consistency weight (10 in the paper)")
    q.add_argument("--lambda-identity", type=float, metavar="W",
                   help="identity-loss weight as a fraction of --lambda-cycle (0: off, as in the paper; 0.5 in CycleGAN)")
    q.add_argument("--pool-size", type=int, metavar="N", help="history of generated images shown to D (0: off, as in the paper; 50 in CycleGAN)")
    q.add_argument("--gan-mode", choices=["vanilla", "lsgan"], help="adversarial loss: vanilla BCE (paper) or least squares")
    add_common(q)
    q.set_defaults(func=run_cyclegan)


METHOD_ARGS["cyclegan"] = add_cyclegan_parser


def run_cyclegan(args) -> int:
    from ganime.data.unpaired import UnpairedLoader, load_unpaired, split_pairs
    from ganime.errors import InputError
    from ganime.train import Trainer, check_data_size, resolve_device

    folders = args.sketches is not None or args.colors is not None
    if args.data is not None and folders:
        raise InputError("give either --data CACHE or --sketches DIR and --colors DIR, not both")
    if args.data is None and (args.sketches is None or args.colors is None):
        raise InputError("CycleGAN needs --sketches DIR and --colors DIR (or a prepared cache with --data)")
    names = ("lambda_cycle", "lambda_identity", "pool_size", "gan_mode")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    cfg = build_config(args, options)
    if cfg.train.sketch_augment:
        raise InputError("--sketch-augment re-extracts a pair's sketch from its colour image; "
                         "it does not apply to CycleGAN's unpaired data")
    if cfg.train.eval_every and args.data is None and not cfg.train.val_data:
        given = "--eval-every" if args.eval_every is not None or not cfg.train.keep_best else "--keep-best"
        raise InputError(f"{given} needs paired validation data: give --val-data PAIRS (or train from a "
                         "prepared cache with --data)")
    if args.data is not None:
        from ganime.data.pairs import PairCache

        cache = PairCache(args.data)  # reads the index only: a wrong path fails before any work
        if args.size is None and not args.resume:
            cfg.train.size = cache.size  # train at the cache's resolution unless told otherwise
    validate(cfg, args)
    if args.data is not None:
        check_cache(cache, cfg)
    record_training_data(args, cfg, cache if args.data is not None else None)
    if folders and Path(args.sketches).resolve() == Path(args.colors).resolve():
        print(f"ganime: warning: --sketches and --colors are the same folder ({args.sketches}): both domains hold "
              "the same images, so G learns to copy its input rather than to colour line art", file=sys.stderr)
    if args.dry_run:
        return dry_run(cfg, args)
    hooks = eval_hooks(args, cfg)
    if args.data is not None:
        pairs, _ = load_training_pairs(args.data, cfg.train.size, progress=not args.no_progress)
        sketches, colors = split_pairs(pairs)
        del pairs
    else:
        sketches, colors = load_unpaired(args.sketches, args.colors, cfg.train.size, progress=not args.no_progress)
    t = cfg.train
    check_data_size(sketches.shape[1], t.size)
    # Under torchrun: one process per device, each on its own share of both domains' orders, with
    # G, F, D_X and D_Y wrapped in DDP (synchronised BatchNorm) by the Trainer, as for pix2pix.
    from ganime.distributed import from_env

    dist = from_env(args.device)
    made = {}

    def make_trainer():
        device = dist.device if dist is not None else resolve_device(args.device)
        loader = made["loader"] = UnpairedLoader(
            sketches, colors, t.batch_size, device, seed=t.seed, size=t.size,
            load_size=int(round(t.size * t.jitter)), flip=t.flip,
            rank=dist.rank if dist else 0, world_size=dist.world_size if dist else 1)
        return Trainer(cfg, None, args.out, device=args.device, resume=args.resume, progress=not args.no_progress,
                       hooks=hooks, loader=loader, sample_pairs=loader.sample_pairs(8),
                       max_steps=args.max_steps, tensorboard=args.tensorboard, dist=dist,
                       time_limit=_seconds(args.time_limit))

    res = fit_closing(dist, make_trainer)
    loader = made["loader"]
    return report(res, args.out, dist, f" ({loader.n_sketches} sketches, {loader.n_colors} colour images)")
