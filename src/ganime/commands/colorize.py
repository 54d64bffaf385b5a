"""``ganime colorize INPUT... --out DIR [--checkpoint CKPT]``."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("colorize", help="colour sketches with a trained model",
                       description="Colour each input image (files or folders) and write PNGs at the inputs' own sizes.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="sketch files or folders of sketches")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", help="a run's last.pt (or the run folder) or an exported .safetensors; "
                                        "default: the model shipped with GANime")
    p.add_argument("--hints", help="RGBA image of colour strokes (transparent elsewhere) for a single input")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--overwrite", action="store_true", help="replace existing output files")
    keep.add_argument("--skip-existing", action="store_true",
                      help="colour only the inputs without an output file yet (e.g. to finish a run stopped by Ctrl-C)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bars on stderr (into a file they are redrawn every 30 s)")
    add_fast_arg(p)
    p.set_defaults(func=run)


def passive_openmp_threads() -> None:
    """Let idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) unless the user
    chose a policy. On a CPU shared with other work, spinning threads wait for preempted peers at
    every op: 2-3x slower inference here (docs/performance.md). Only effective before torch loads."""
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run(args) -> int:
    passive_openmp_threads()  # before torch loads (ganime.colorize imports it)
    from ganime.colorize import SKIP_WHAT, Colorizer, colorize_files, default_checkpoint
    from ganime.errors import InputError
    from ganime.imageio import check_not_input, open_image, outputs_to_write, save_png

    ckpt = args.checkpoint or default_checkpoint()
    colorizer = Colorizer.from_checkpoint(ckpt, args.device, fast=args.fast, background=args.background,
                                          max_size=args.max_size, flatten=args.flatten)
    if args.hints:
        from pathlib import Path

        if len(args.inputs) != 1 or Path(args.inputs[0]).is_dir():
            raise InputError("--hints applies to exactly one input image")
        hints = open_hints(args.hints)
        src = Path(args.inputs[0])
        if Path(args.out).exists() and not Path(args.out).is_dir():  # as colorize_files says, before any work
            raise InputError(f"{args.out}: exists and is not a folder")
        target = Path(args.out) / f"{src.stem}.png"
        check_not_input(src, target, "the input sketch")
        todo, _ = outputs_to_write([(src, target)], args.overwrite, args.skip_existing, SKIP_WHAT)
        if not todo:
            print(f"kept {target} (already exists)")
            return 0
        save_png(colorizer(open_image(src), hints), target, overwrite=args.overwrite)
        print(f"wrote {target}")
        return 0
    r = colorize_files(colorizer, args.inputs, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                       skip_existing=args.skip_existing)
    print(f"wrote {len(r['written'])} images to {args.out}" + (f" (kept {len(r['kept'])} existing)" if r["kept"] else "")
          + (f"; {len(r['failed'])} failed" if r["failed"] else ""))
    # every input that could not be coloured was named on stderr; a partial result still says so in its exit
    return 2 if not r["written"] and not r["kept"] else 1 if r["failed"] else 0


FAST_CHOICES = ("off", "auto", "fp32", "bf16")


def add_fast_arg(p) -> None:
    """``--fast``, ``--background``, ``--max-size`` and ``--flatten``, shared with ``ganime serve``."""
    from ganime.commands import positive
    from ganime.config import DEFAULT_MAX_SIZE

    p.add_argument("--max-size", type=positive(int), default=DEFAULT_MAX_SIZE,
                   help="largest working size (default 1024): a sketch is coloured at the size nearest its longest "
                        "side that the U-Net takes (a multiple of 2^depth: 256 for the shipped model), between the "
                        "model's training size and this, so its lines keep their thickness; the training size "
                        "(e.g. 256) gives the paper's fixed-size behaviour")
    p.add_argument("--background", choices=("model", "paper"), default="model",
                   help="model (default): the background as generated; paper: keep the sketch's blank paper "
                        "around the drawing (found by filling from the border) as it is")
    p.add_argument("--flatten", type=float, metavar="SIGMA",
                   help="for a model with a colour layer (the shipped one): how far its colours are evened out "
                        "between the sketch's lines, in pixels (0: off; default: the model's own, 5 for the shipped one)")
    p.add_argument("--fast", choices=FAST_CHOICES, default="auto",
                   help="inference path: auto (default: bf16 where the CPU/GPU has native bf16, else fp32; "
                        "prepacked oneDNN convolutions on the CPU), fp32 (faster; pixels as off, rarely one 8-bit level apart), "
                        "bf16 (fastest; pixels within a few 8-bit levels), off (plain eager float32)")


def open_hints(path):
    """Open a hint image keeping its alpha channel, with the checks of any input."""
    from ganime.imageio import open_image

    return open_image(path, keep_alpha=True)
