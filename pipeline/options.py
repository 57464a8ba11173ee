"""Checks of command-line options, before any work: output paths, counts, comma lists, ports.

Each ``*_option`` function makes an argparse ``type=``: argparse calls it on
the option's text (and on a text default), so a bad value stops the command
while it reads its options, with a one-line ``argument --top-k: ...`` error.
:func:`check_output` is the one test of every file or store a command writes.
"""

from __future__ import annotations

import argparse
import math
import socket
import tempfile
from pathlib import Path
from typing import Callable

from perturber.pipeline.errors import PerturberError

__all__ = ["OptionError", "MAX_WORKERS", "add_dask_options", "check_output", "nearest_existing", "cannot_create_in", "output_option", "whole_option", "names_option", "text_option",
           "split_names", "number", "check_port"]


class OptionError(PerturberError):
    """A command-line option is unusable; the message is one line."""


def nearest_existing(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists."""
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def cannot_create_in(folder: Path) -> OSError | None:
    """Why this process cannot create a file in ``folder`` (tried: a temporary
    file, so a read-only file system and root's permissions count), or None."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc
    return None


def check_output(path: str, suffixes: tuple[str, ...], option: str = "-o") -> str:
    """Refuse an output a command could not write, before it computes anything.

    ``suffixes``: what the command writes ('.png', '.npz', '.zarr' ...; '.zarr'
    is a folder, the rest files). Refused: another suffix, a folder where a file
    goes (or a file where a store goes), a folder above it that is a file, and a
    place this process cannot create files in (tried: a temporary file there).
    Missing folders are fine (commands create them). Returns ``path``.
    """
    where = f"{option} {path}" if option else path
    target = Path(path)
    suffix = target.suffix.lower()
    store = suffix == ".zarr"
    if target.is_dir() and not store:
        raise OptionError(f"{where}: is a folder; give a file name")
    if suffix not in suffixes:
        kinds = ", ".join(suffixes[:-1]) + (" or " if len(suffixes) > 1 else "") + suffixes[-1]
        raise OptionError(f"{where}: cannot write {suffix or 'a file without a suffix'}; write {kinds}")
    if target.exists() and store and not target.is_dir():
        raise OptionError(f"{where}: is a file, not a Zarr store")
    parent = nearest_existing(target if store and target.is_dir() else target.parent)
    if not parent.is_dir():
        raise OptionError(f"{where}: {parent} is a file, not a folder")
    problem = _cannot_append(target) if target.is_file() else cannot_create_in(parent)
    if problem is not None:
        raise OptionError(f"{where}: cannot write there ({problem.strerror or problem})")
    return path


def _cannot_append(path: Path) -> OSError | None:
    try:
        with open(path, "ab"):  # opened for writing, not changed
            pass
    except OSError as exc:
        return exc
    return None


def _typed(check: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type: an :class:`OptionError` becomes argparse's own error."""
    def convert(text: str) -> object:
        try:
            return check(text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def output_option(*suffixes: str) -> Callable[[str], object]:
    """argparse type of an output path (:func:`check_output`)."""
    def check(text: str) -> str:
        check_output(text, suffixes, option="")
        return text
    return _typed(check)


def whole_option(low: int, high: int) -> Callable[[str], object]:
    """argparse type of a whole number in ``low..high``."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise OptionError(f"must be a whole number in {low}..{high}, got {text!r}")
        return value
    return _typed(check)


def split_names(text: str, option: str) -> list[str]:
    """``'a,b'`` → ['a', 'b']; an empty name, an empty list or a name twice is an error."""
    where = f"{option} {text!r}" if option else repr(text)
    names = [n.strip() for n in text.split(",")]
    if not text.strip():
        raise OptionError(f"{where}: give at least one name")
    if any(not n for n in names):
        raise OptionError(f"{where}: an empty name before or after a comma")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise OptionError(f"{where}: {twice!r} is listed twice")
    return names


def names_option(text: str) -> list[str]:
    """argparse type of a comma-separated list of names (:func:`split_names`)."""
    return _typed(lambda t: split_names(t, ""))(text)


def text_option(text: str) -> str:
    """argparse type of a non-empty text."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def number(text: str, option: str, positive: bool = True) -> float:
    """``'8/255'`` or ``'0.03'`` → a finite float (> 0 when ``positive``)."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise OptionError(f"{option}: {text!r} is not a number (write 0.03 or 8/255)") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise OptionError(f"{option}: {text!r} must be a {'positive ' if positive else ''}finite number")
    return value


def check_port(address: str, port: int) -> None:
    """Refuse a port this process cannot listen on at ``address`` (in use, not allowed, no such address)."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise OptionError(f"--address {address}: not an address of this machine ({reason})") from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a closed port is free
        try:
            probe.bind(where)
        except OSError as exc:
            raise OptionError(f"--port {port}: cannot listen on {address}:{port} ({exc.strerror or exc})") from None


#: LocalCluster worker processes a command may start.
MAX_WORKERS = 256


def add_dask_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                     default: str = "one per core; not with --scheduler or --cluster") -> None:
    """``--scheduler``, ``--cluster`` and ``--workers``: where a command's Dask
    tasks run; ``default`` says what happens without ``--workers``."""
    parser.add_argument("--scheduler", type=text_option, help="address of a running Dask scheduler, or 'synchronous' (no Dask)")
    parser.add_argument("--cluster", metavar="YAML", type=text_option,
                        help="a cluster recipe (workflows/clusters/*.yaml) to start and use")
    parser.add_argument("--workers", type=whole_option(1, MAX_WORKERS),
                        help=f"LocalCluster worker processes (default: {default})")
