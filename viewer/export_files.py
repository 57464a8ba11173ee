"""The site folder of ``perturber export``: written whole or not at all.

The site is built in a temporary sibling folder (``.<name>.export-<pid>``)
and renamed into place once complete; a folder already there is replaced
only when it is empty or an earlier export (its ``data/slice.json`` names
:data:`GENERATOR`), or with ``force``. The page itself (``index.html``,
``site.js``, ``site.css``) is copied from ``viewer/site/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from perturber.pipeline.errors import PerturberError
from perturber.pipeline.options import cannot_create_in, nearest_existing

__all__ = ["GENERATOR", "PAGE", "PAGE_FILES", "SiteError", "human", "check_target", "building", "copy_page", "site_size",
           "is_export"]

#: What data/slice.json says wrote it (how an earlier export is recognised).
GENERATOR = "perturber export"
#: The page's own files, shipped as package data.
PAGE = Path(__file__).parent / "site"
PAGE_FILES = ("index.html", "site.js", "site.css")


class SiteError(PerturberError):
    """The output folder cannot be written; one line."""


def human(n: int) -> str:
    """Bytes as the CLI says them: ``5.2 MB`` (powers of 1000)."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds a site an earlier export wrote."""
    try:
        return json.loads((folder / "data" / "slice.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def check_target(out: Path, force: bool) -> None:
    """Refuse, in one line, an output the export must not or cannot replace, before any work."""
    if out.exists() and not out.is_dir():
        raise SiteError(f"-o {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not is_export(out) and not force:
        raise SiteError(f"-o {out}: a folder that is not empty and not an earlier export; "
                        "choose another or pass --force to replace it")
    parent = nearest_existing(out.absolute().parent)
    if not parent.is_dir():
        raise SiteError(f"-o {out}: {parent} is a file, not a folder")
    problem = cannot_create_in(parent)
    if problem is not None:
        raise SiteError(f"-o {out}: cannot write there ({problem.strerror or problem})")


@contextlib.contextmanager
def building(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``; when the block ends without an error it
    replaces ``out`` (renamed: a reader never sees half a site), else it is removed."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    moved = False
    try:
        yield tmp
        if out.exists():
            os.rename(out, old)
            moved = True
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved and not out.exists():
            os.rename(old, out)  # the earlier site back in place
        raise
    shutil.rmtree(old, ignore_errors=True)


def copy_page(folder: Path) -> None:
    """The page's files into ``folder``."""
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, folder / name)


def site_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) of everything under ``folder``."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)
