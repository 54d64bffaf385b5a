"""``ganime data prepare | sketchify | download``."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare, sketchify or download training data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    q = dsub.add_parser("prepare", help="build the fast-loading cache from side-by-side pairs",
                        description="Read SRC (Kaggle train/ and val/, a flat folder of colour|sketch files, "
                                    "or sketch/ and color/ folders) and write a uint8 cache to OUT.")
    q.add_argument("src")
    q.add_argument("out")
    q.add_argument("--size", type=int, default=256, help="square side of the cached images (256; 512 supported)")
    q.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    q.add_argument("--no-progress", action="store_true",
                   help="hide the progress bars on stderr (into a file they are redrawn every 30 s)")
    q.set_defaults(func=run_prepare)

    s = dsub.add_parser("sketchify", help="turn colour illustrations into colour|sketch pairs",
                        description="Extract line art from every colour image in SRC and write side-by-side pairs to OUT.")
    s.add_argument("src")
    s.add_argument("out")
    s.add_argument("--extractor", default="random", help="xdog, pencil, sobel or random (default)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=None, help="resize images to this square side first")
    s.add_argument("--no-progress", action="store_true",
                   help="hide the progress bars on stderr (into a file they are redrawn every 30 s)")
    s.set_defaults(func=run_sketchify)

    d = dsub.add_parser("download", help="fetch the Kaggle dataset (needs Kaggle credentials and pip install 'ganime[kaggle]')")
    d.add_argument("out")
    d.set_defaults(func=run_download)


def run_prepare(args) -> int:
    from ganime.data.pairs import prepare, stretched_note

    index = prepare(args.src, args.out, size=args.size, workers=args.workers, progress=not args.no_progress)
    counts = ", ".join(f"{k} {v['count']}" for k, v in index["splits"].items())
    print(f"prepared {index['count']} pairs ({counts}) at {index['size']}px in {args.out}")
    _report_skipped(index["skipped"], "unusable")
    if index.get("stretched"):
        print(f"note: {stretched_note(index['stretched'], index['size'])} (crop them first to keep their proportions)",
              file=sys.stderr)
    return 1 if index["skipped"] else 0  # as colorize: done, but not with every input


def run_sketchify(args) -> int:
    from ganime.data.sketchify import SETTINGS_FILE, sketchify_folder

    r = sketchify_folder(args.src, args.out, args.extractor, args.seed, args.size, progress=not args.no_progress)
    print(f"wrote {r['written']} pairs to {args.out} (kept {r['kept']} existing)")
    if r["unrecorded"]:  # made by hand or before the settings were recorded: cannot be checked
        print(f"ganime: warning: {args.out} already held {r['unrecorded']} .png files with no record of how they were made "
              f"({SETTINGS_FILE} is new): they are kept as they are and may differ from these settings; "
              "write to a new folder to be sure", file=sys.stderr)
    _report_skipped(r["failed"], "unreadable")
    _report_skipped(r["clashes"], "same-named")
    return 1 if r["failed"] or r["clashes"] else 0  # as colorize: done, but not with every input


def _report_skipped(problems: list[str], what: str) -> None:
    """List the files a command skipped, one per line, on stderr."""
    if problems:
        print(f"skipped {len(problems)} {what} files:", file=sys.stderr)
        for s in problems:
            print(f"  {s}", file=sys.stderr)


def run_download(args) -> int:
    from ganime.data.download import download

    root = download(args.out)
    print(f"dataset ready at {root}; next: ganime data prepare {root} CACHE")
    return 0
