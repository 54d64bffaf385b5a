"""Progress bars of the long commands: tqdm on stderr, redrawn every 0.1 s on a terminal but every 30 s into a
file (a scheduler's log), where hours of work otherwise wrote megabytes of carriage-return redraws."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` writing to stderr, with the redraw interval of where it writes."""
    from tqdm import tqdm

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("mininterval", 0.1 if on_terminal(kwargs["file"]) else 30.0)
    return tqdm(iterable, **kwargs)


def on_terminal(file=None) -> bool:
    """Whether ``file`` (stderr by default) is a terminal, where a bar may redraw as often as it likes."""
    return getattr(sys.stderr if file is None else file, "isatty", lambda: False)()
