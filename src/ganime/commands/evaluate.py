"""``ganime evaluate --method M --data PAIRS --out DIR``, ``ganime evaluate compare A_DIR B_DIR`` (two such
folders pair by pair) and the ``table1`` benchmark (the paper's Table 1).

``add_table1_args(p)`` / ``run_table1(args)`` follow the ``ganime benchmark`` registry's interface
(``add_args(parser)``, ``run(args) -> flat dict``); ``ganime.commands.benchmark`` registers them as ``table1``.
"""

from __future__ import annotations

METHOD_HELP = ("pix2pix or cyclegan (with --checkpoint), default (the shipped model), gatys or fast "
               "(style transfer, each sketch styled by its own pair's colour image), or a floor: identity "
               "(the sketch itself) or white (a blank page)")


#: The options an evaluation cannot do without; not argparse-required, as ``ganime evaluate compare`` takes none.
REQUIRED = ("method", "data", "out")


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score a model on held-out pairs: SSIM, PSNR, LPIPS, FID, KID",
        usage="%(prog)s --method M --data PAIRS --out DIR [options]\n"
              "       %(prog)s compare A_DIR B_DIR [--resamples 10000] [--seed 0] [--json]",
        description="Colour every sketch of a pair set with one method, then write DIR/images/, DIR/metrics.json, "
                    "DIR/metrics.md, DIR/per_image.csv and DIR/grid.png (sketch | truth | output); or compare two "
                    "such folders pair by pair (ganime evaluate compare --help). Protocols: docs/evaluation.md.")
    p.add_argument("--method", help="(required) " + METHOD_HELP)
    p.add_argument("--data", metavar="PAIRS", help="(required) a prepared cache (ganime data prepare) or a folder "
                   "of side-by-side pairs (colour left, sketch right)")
    p.add_argument("--out", metavar="DIR", help="(required) result folder (new or empty, unless --overwrite)")
    p.add_argument("--checkpoint", help="a run's last.pt (or run folder) or an exported .safetensors")
    p.add_argument("--n", type=int, help="evaluate a seeded random subset of N pairs (default: all)")
    p.add_argument("--split", help="only this split of a cache or Kaggle folder (train or val; default: all)")
    p.add_argument("--size", type=int, default=256, help="evaluation size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of KID's subsets (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--iterations", type=int, default=1000, help="gatys: optimiser steps per image (default 1000, the paper's)")
    p.add_argument("--no-inception", action="store_true", help="skip FID and KID (the slow part on a CPU)")
    p.add_argument("--background", default="model", choices=["model", "paper"],
                   help="models: keep the generated background (model) or the sketch's blank paper (paper)")
    p.add_argument("--flatten", type=float, metavar="SIGMA",
                   help="models with a colour layer: its flattening between the lines (default: the model's own)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier evaluation in DIR")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bars on stderr (into a file they are redrawn every 30 s)")
    options = {a.dest: a.default for a in p._actions if a.option_strings and a.dest != "help"}
    p.set_defaults(func=run, evaluate_parser=p)
    csub = p.add_subparsers(dest="evaluate_command", metavar="compare", title="instead of an evaluation")
    c = csub.add_parser(  # optional: a plain 'ganime evaluate --method ...' evaluates
        "compare", prog=f"{p.prog} compare", help="B against A, pair by pair: mean differences with 95%% bootstrap intervals and wins",
        description="Compare two evaluation folders of the same pairs (ganime evaluate --out A_DIR, --out B_DIR) "
                    "from their per_image.csv: for SSIM, PSNR and LPIPS, the mean difference B - A with a 95% "
                    "paired bootstrap confidence interval and on how many pairs B is better.")
    c.add_argument("a", metavar="A_DIR", help="the baseline's evaluation folder")
    c.add_argument("b", metavar="B_DIR", help="the evaluation folder compared with it")
    c.add_argument("--resamples", type=int, default=10_000, metavar="N", help="bootstrap resamples of the pairs (default 10000)")
    c.add_argument("--seed", type=int, default=0, dest="bootstrap_seed", metavar="S", help="the bootstrap's seed (default 0)")
    c.add_argument("--json", action="store_true", help="also print the comparison as one JSON line (last on stdout)")
    c.set_defaults(func=run_compare, evaluate_options=options)


def run_compare(args) -> int:
    """``ganime evaluate compare A_DIR B_DIR``: print the paired comparison of two evaluation folders."""
    import json

    from ganime.errors import InputError
    from ganime.evaluate import compare_evaluations, format_comparison

    given = [k for k, default in args.evaluate_options.items() if getattr(args, k, default) != default]
    if given:
        raise InputError(f"ganime evaluate compare reads two finished evaluations and takes no "
                         f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    c = compare_evaluations(args.a, args.b, args.resamples, args.bootstrap_seed)
    print(format_comparison(c))
    if args.json:
        print(json.dumps(c, sort_keys=True))
    return 0


def run(args) -> int:
    from pathlib import Path

    missing = [f"--{k}" for k in REQUIRED if getattr(args, k) is None]
    if missing:  # argparse's own sentence, as when these options were argparse-required
        args.evaluate_parser.error(f"the following arguments are required: {', '.join(missing)}")

    from ganime.evaluate import check_out_dir, evaluate, format_report, load_pairs, make_generator

    from ganime.train import resolve_device

    check_out_dir(args.out, args.overwrite, args.data)  # before any slow work
    device = resolve_device(args.device)
    gen = make_generator(args.method, args.checkpoint, device, args.size, args.iterations, not args.no_progress,
                         background=args.background, flatten=args.flatten)
    pairs, names, total = load_pairs(args.data, args.size, args.n, args.seed, args.split, not args.no_progress)
    meta = {"data": str(Path(args.data).resolve()), "split": args.split, "n_available": total}
    r = evaluate(args.method, pairs, names, device=device, iterations=args.iterations, seed=args.seed,
                 with_inception=not args.no_inception, progress=not args.no_progress, out=args.out,
                 overwrite=args.overwrite, meta=meta, generator=gen)
    print(format_report(r))
    print(f"\nwrote {args.out}/metrics.json, metrics.md, per_image.csv, grid.png and {len(names)} images in "
          f"{args.out}/images")
    return 0


# ------------------------------------------------------------------------------------------------------
# ganime benchmark table1


def add_table1_args(p) -> None:
    """the paper's Table 1 (FID, SSIM) with KID, LPIPS, PSNR and floors"""
    p.description = ("The GANime paper's Table 1 -- FID, SSIM mean and SSIM std -- with KID, LPIPS and PSNR, for the "
                     "given models and style-transfer methods and the identity and white floors, on one seeded set "
                     "of pairs; markdown and JSON. The paper's numbers are printed beside, for reference only.")
    p.add_argument("--data", required=True, metavar="PAIRS", help="prepared cache or folder of side-by-side pairs")
    p.add_argument("--pix2pix", metavar="CKPT", help="a Pix2Pix checkpoint")
    p.add_argument("--cyclegan", metavar="CKPT", help="a CycleGAN checkpoint")
    p.add_argument("--default", action="store_true", help="also the shipped default model")
    p.add_argument("--styles", default="", help="comma-separated style-transfer methods: gatys, fast (default: none)")
    p.add_argument("--n", type=int, default=100, help="seeded subset of N pairs (default 100, the paper's; all if fewer)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="also write DIR/table1.md, DIR/table1.json and DIR/<method>/ results")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--gatys-iterations", type=int, default=1000, help="Gatys optimiser steps per image (default 1000)")
    p.add_argument("--no-inception", action="store_true", help="skip FID and KID")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bars on stderr (into a file they are redrawn every 30 s)")
    if not any(a.dest == "device" for a in p._actions):
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    if not any(a.dest == "json" for a in p._actions):
        p.add_argument("--json", action="store_true", help="print the results as one JSON line (last on stdout)")


def run_table1(args) -> dict:
    """Evaluate every requested row on one pair set (real features computed once); print the markdown
    table and the paper's numbers; return a flat dict ``{row}_{metric}: value``."""
    import json
    import sys
    from pathlib import Path

    from ganime.errors import InputError
    from ganime.evaluate import (
        PAPER_FID_WARNING, PAPER_TABLE1, STYLE_METHODS, _json_ready, check_out_dir, evaluate, format_paper_reference,
        KID_ONE_SUBSET, format_table, load_pairs, make_generator, make_inception,
    )
    from ganime.imageio import atomic_write_bytes
    from ganime.train import resolve_device

    styles = list(dict.fromkeys(s.strip() for s in args.styles.split(",") if s.strip()))  # one row each
    bad = [s for s in styles if s not in STYLE_METHODS]
    if bad:
        raise InputError(f"--styles {','.join(bad)}: unknown; choose from {', '.join(STYLE_METHODS)}")
    if args.gatys_iterations < 1:  # checked here, as make_generator would name its own --iterations
        raise InputError(f"--gatys-iterations {args.gatys_iterations}: must be at least 1")
    rows = [("pix2pix", args.pix2pix), ("cyclegan", args.cyclegan)]
    rows = [(m, c) for m, c in rows if c] + ([("default", None)] if args.default else [])
    rows += [(s, None) for s in styles] + [("identity", None), ("white", None)]
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_dir(out, args.overwrite, args.data)
    device = resolve_device(getattr(args, "device", "auto"))
    progress = not args.no_progress
    # Load every model first, so a bad checkpoint fails before minutes of work.
    gens = [make_generator(m, c, device, args.size, args.gatys_iterations, progress) for m, c in rows]
    pairs, names, total = load_pairs(args.data, args.size, args.n, args.seed, progress=progress)
    inception = None if args.no_inception else make_inception(str(device), progress)
    meta = {"data": str(Path(args.data).resolve()), "n_available": total}
    if out is not None:  # an earlier table must not describe rows this run replaces and may not finish
        for name in ("table1.json", "table1.md"):
            (out / name).unlink(missing_ok=True)
    results = []
    for (method, _), gen in zip(rows, gens):
        print(f"table1: {method} ...", file=sys.stderr)
        r = evaluate(method, pairs, names, device=device, iterations=args.gatys_iterations, seed=args.seed,
                     inception=inception, with_inception=not args.no_inception, progress=progress,
                     out=(out / method) if out else None, overwrite=args.overwrite, meta=meta, generator=gen)
        results.append(r)
    labels = [f"{r['method']} ({r['iterations']} it.)" if r["method"] == "gatys" else r["method"] for r in results]
    subset = f"{len(names)} of {total} pairs (seed {args.seed})" if len(names) < total else f"all {total} pairs"
    one_subset = any(r.get("kid_mean") is not None and r.get("kid_std") is None for r in results)
    md = (f"Table 1 on {args.data}: {subset} at {args.size}x{args.size}, {device}\n\n"
          + format_table(results, labels) + (f"\n\n{KID_ONE_SUBSET}" if one_subset else "")
          + "\n\nKID is the number to read: FID over fewer than 2,000 images is strongly biased upward.\n\n"
          + format_paper_reference())
    print(md)
    flat: dict = {"n": len(names), "n_available": total, "size": args.size, "seed": args.seed}
    for r in results:
        for k in ("fid", "ssim_mean", "ssim_std", "kid_mean", "kid_std", "lpips_mean", "psnr_mean", "seconds_per_image"):
            flat[f"{r['method']}_{k}"] = _json_ready({k: r.get(k)})[k]
    if out is not None:
        doc = {"rows": [_json_ready(r) for r in results], "labels": labels, "pairs": names, **flat,
               "paper": PAPER_TABLE1, "paper_warning": PAPER_FID_WARNING}
        atomic_write_bytes(out / "table1.md", (md + "\n").encode("utf-8", "surrogateescape"))  # as metrics.md
        atomic_write_bytes(out / "table1.json", (json.dumps(doc, indent=1) + "\n").encode())  # last: complete
        print(f"\nwrote {out}/table1.md and table1.json", file=sys.stderr)
    return flat
