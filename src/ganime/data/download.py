"""``ganime data download``: fetch the Kaggle "Anime Sketch Colorization Pair" dataset.

Uses kagglehub (``pip install ganime[kaggle]``) with the user's Kaggle credentials
(``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``). Without them, or without network,
it fails with one line and the manual steps.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ganime.errors import GanimeError

DATASET = "ktaebum/anime-sketch-colorization-pair"

MANUAL = (
    "download it by hand from https://www.kaggle.com/datasets/" + DATASET + " , unzip it, and run "
    "'ganime data prepare <unzipped>/data OUT' (the folder holding train/ and val/)"
)


def have_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    cfg = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    return cfg.is_file()


def find_split_root(root: Path) -> Path | None:
    """The folder under ``root`` that holds ``train/`` (the archive nests it as ``data/``).

    The name is matched in any case (``Train/``), as ``ganime data prepare`` reads it. Hidden folders and
    ``__MACOSX/`` (a macOS-made zip's AppleDouble files, which sort first) are skipped.
    """
    def junk(p: Path) -> bool:
        return any(part.startswith((".", "__MACOSX")) for part in p.relative_to(root).parts)

    dirs = sorted(p for p in root.rglob("*") if p.is_dir() and not junk(p))
    holders = {p.parent for p in dirs if p.name.lower() == "train"}  # one pass: a big folder has many
    for cand in [root, *dirs]:
        if cand in holders:
            return cand
    return None


def download(out: str | os.PathLike, downloader=None) -> Path:
    """Download into ``out`` and return the folder holding ``train/`` and ``val/``.

    ``downloader`` (a callable returning a local folder) replaces kagglehub in tests.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        found = find_split_root(out)
        if found is not None:
            return found
        raise GanimeError(f"{out}: folder is not empty; choose an empty or new folder")
    if downloader is None:
        # the package first: without the kaggle extra, the credentials error sent users to set them up, and only
        # then said the package was missing
        try:
            import kagglehub
        except ImportError:
            raise GanimeError("kagglehub is not installed: pip install 'ganime[kaggle]'; or " + MANUAL) from None
        if not have_credentials():
            raise GanimeError("no Kaggle credentials (set KAGGLE_USERNAME and KAGGLE_KEY or create ~/.kaggle/kaggle.json); or " + MANUAL)
        downloader = lambda: kagglehub.dataset_download(DATASET)  # noqa: E731
    try:
        got = Path(downloader())
    except GanimeError:
        raise
    except Exception as e:
        raise GanimeError(f"download failed ({type(e).__name__}: {str(e)[:200]}); {MANUAL}") from None
    root = find_split_root(got)
    if root is None:
        raise GanimeError(f"downloaded files at {got} hold no train/ folder; {MANUAL}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    # kagglehub keeps its own cache, so copy out of it rather than move. The copy goes to a temporary
    # sibling renamed when complete: an interrupted copy must not leave an ``out`` that a rerun takes
    # for the finished dataset.
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(root, tmp)
    tmp.rename(out)
    return out
