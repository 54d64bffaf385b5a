"""``ganime train METHOD ...``: one parser per method over one shared set of options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: Method name -> function(parser) adding that method's own arguments.
METHOD_ARGS = {}


def add_common(p) -> None:
    p.add_argument("--out", required=True, help="run folder (new, or an existing one with --resume)")
    p.add_argument("--preset", default="paper", help="paper (the paper's settings) or small (fast, CPU-friendly)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--size", type=int, help="training image side (must match the cache; default 256)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--sketch-augment", type=float, metavar="P",
                   help="re-extract each sketch from its colour image with a random extractor, with probability P")
    p.add_argument("--log-every", type=int, help="steps between log lines")
    p.add_argument("--keep-every", type=int, help="also keep a numbered checkpoint every N epochs")
    p.add_argument("--save-every-steps", type=int, help="also save last.pt every N steps within an epoch")
    p.add_argument("--eval-every", type=int, help="evaluate a fixed validation subset every K epochs")
    p.add_argument("--max-steps", type=int, help="stop (and save) after this many steps in total")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA instead of bf16 autocast")
    p.add_argument("--dry-run", action="store_true", help="validate and print the configuration, then exit")
    p.add_argument("--no-progress", action="store_true")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (pix2pix, cyclegan)")
    msub = p.add_subparsers(dest="method", metavar="METHOD")
    msub.required = True
    q = msub.add_parser("pix2pix", help="Pix2Pix (the paper's C-GAN) on paired data",
                        description="Train Pix2Pix on a prepared cache (ganime data prepare).")
    q.add_argument("--data", required=True, help="prepared cache folder")
    q.add_argument("--lambda-l1", type=float, help="L1 weight (100 in the paper)")
    q.add_argument("--hints", action="store_true", help="train a hint-aware generator (sketch + colour hints)")
    add_common(q)
    q.set_defaults(func=run)
    for name, adder in METHOD_ARGS.items():
        adder(msub)


def build_config(args, options: dict):
    from ganime.config import RunConfig, make_config

    saved = Path(args.out) / "config.json"
    if args.resume and saved.exists():
        cfg = RunConfig.from_dict(json.loads(saved.read_text()))
        # Only the length of a run may change on resume.
        if args.epochs:
            cfg.train.epochs = args.epochs
        return cfg
    cfg = make_config(
        args.method, args.preset, options=options, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        size=args.size, seed=args.seed, sketch_augment=args.sketch_augment, log_every=args.log_every,
        keep_every=args.keep_every, save_every_steps=args.save_every_steps, eval_every=args.eval_every,
        amp=False if args.no_amp else None,
    )
    return cfg


def load_training_pairs(data: str, size: int | None):
    from ganime.data.pairs import PairCache

    cache = PairCache(data)
    split = "train" if "train" in cache.splits else None
    return cache.load(split), cache


def eval_hooks(args, cfg) -> list:
    """Training-time evaluation (``--eval-every``), provided by ganime.evaluate when installed."""
    if not cfg.train.eval_every:
        return []
    from ganime.evaluate import training_eval_hook

    return [training_eval_hook(args.data, cfg.train.eval_every)]


def run(args) -> int:
    from ganime.train import Trainer

    options = {}
    if getattr(args, "lambda_l1", None) is not None:
        options["lambda_l1"] = args.lambda_l1
    cfg = build_config(args, options)
    if getattr(args, "hints", False) and not args.resume:
        cfg.net.hint_channels = 4
    cfg.validate()
    if args.dry_run:
        print(cfg.to_json())
        return 0
    pairs, cache = load_training_pairs(args.data, cfg.train.size)
    if args.size is None and not args.resume and cache.size != cfg.train.size:
        cfg.train.size = cache.size
    # Under torchrun (RANK/WORLD_SIZE set): one process per device, --batch-size per process.
    from ganime.distributed import from_env

    dist = from_env(args.device)
    try:
        trainer = Trainer(cfg, pairs, args.out, device=args.device, resume=args.resume,
                          progress=not args.no_progress, hooks=eval_hooks(args, cfg), max_steps=args.max_steps,
                          dist=dist)
        res = trainer.fit()
    except BaseException:
        if dist is not None:
            dist.close(wait=False)  # the other processes may be inside a collective: no barrier
        raise
    if dist is not None:
        dist.close()
    if dist is None or dist.main:
        state = "interrupted" if res.interrupted else "finished"
        print(f"{state}: {res.epochs_done} epochs, {res.global_step} steps; checkpoint {Path(args.out) / 'last.pt'}")
    return 130 if res.interrupted else 0
