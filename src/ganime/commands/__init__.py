"""Sub-commands of the ``ganime`` CLI; see :mod:`ganime.cli`."""

from __future__ import annotations

import argparse


def positive(kind):
    """An argparse ``type``: ``kind`` (int or float) of a value above 0, else argparse's one-line usage error."""

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
        if not v > 0 or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
        return v

    return parse
