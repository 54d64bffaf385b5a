"""Sub-commands of the ``ganime`` CLI; see :mod:`ganime.cli`."""

from __future__ import annotations

import argparse


def positive(kind, zero: bool = False):
    """An argparse ``type``: ``kind`` (int or float) of a value above 0 (or 0 too, with ``zero``), else
    argparse's one-line usage error."""
    what = "a number of 0 or more" if zero else "a positive number"

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not (v >= 0 if zero else v > 0) or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse
