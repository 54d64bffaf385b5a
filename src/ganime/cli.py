"""The ``ganime`` command line: the only place that reads argv.

Each sub-command lives in ``ganime.commands.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed namespace, returns an exit code). Heavy imports
happen inside ``func`` so ``ganime --help`` stays instant.
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import os
import sys

from ganime import __version__
from ganime.errors import GanimeError

#: Sub-command modules under ganime.commands, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "data",
    "train",
    "colorize",
    "stylize",
    "evaluate",
    "serve",
    "export",
    "benchmark",
]


class OneLineParser(argparse.ArgumentParser):
    """A usage error in one line, as every other error: argparse printed the usage summary above it (18 lines for
    'ganime train pix2pix --epochs 1e3', the error last); the summary is a --help away. Sub-parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """Refuse an empty value ('--out "$OUT"' with OUT unset): as a path it meant the current folder, so
        results, pairs or a cache went there without a word."""
        ns, extras = super().parse_known_args(args, namespace)
        for a in self._actions:
            v = getattr(ns, a.dest, None)
            if a.default != "" and (v == "" or (isinstance(v, list) and "" in v)):
                self.error(f"argument {'/'.join(a.option_strings) or a.metavar or a.dest}: empty value "
                           "(an unset shell variable?)")
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ganime",
        description="Colour anime and manga line art: prepare data, train, colorize, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"ganime {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"ganime.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # a path whose name is not UTF-8 (surrogates in Python) is printed as its bytes on disk, as Python does
        # in the C locale; under a UTF-8 locale a closing 'wrote PATH' failed after the work, with exit 1. Into
        # another encoding (output redirected on Windows is in its ANSI code page, cp1252: no room for a Japanese
        # name) a character it lacks is written as a \u escape, as on stderr.
        utf8 = codecs.lookup(sys.stdout.encoding).name == "utf-8"
        sys.stdout.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GanimeError as e:
        print(f"ganime: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ganime: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # last resort: still one line, with a hint for bug reports
        if os.environ.get("GANIME_DEBUG"):
            raise
        if isinstance(e, OSError) and e.filename is not None:
            # a path the system refused (its parent is a file, no permission, disk full): the user's to fix
            where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
            why = e.strerror or str(e)
            if isinstance(e, FileExistsError) and os.path.isfile(e.filename):  # mkdir where a file is
                why = "is a file, where a folder is needed"
            print(f"ganime: error: {where}: {why}", file=sys.stderr)
            return 1
        print(
            f"ganime: error: unexpected {type(e).__name__}: {e} (set GANIME_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
