"""Downloading weights files: resumable, with a progress bar, verified before
they are kept; and the digest a file host publishes for a file.

A download goes to ``<target>.part`` first. An interrupted one resumes from
the bytes already there (an HTTP ``Range`` request; a server that ignores it
sends the whole file again, and the part file starts over). Only once the
whole file is there and ``verify`` accepts it is it renamed to ``target``; a
file that fails verification is deleted, never kept.

Hugging Face publishes each large (LFS) file's sha256: its ``resolve`` URL
answers a HEAD request with the header ``X-Linked-Etag: "<sha256>"`` (and
``X-Linked-Size``, ``X-Repo-Commit``), before redirecting to the content
store. :func:`hub_digest` reads it, so a hub download is checked against the
hub's own record, and no user ever copies a checksum by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from perturber.pipeline import atomic
from perturber.pipeline.errors import ModelError, one_line

__all__ = ["HubFile", "hub_endpoint", "hub_url", "hub_digest", "fetch", "write_atomic"]

HEX64 = re.compile(r"[0-9a-f]{64}")  # a sha256 in hex
_TIMEOUT = 60


@dataclass(frozen=True)
class HubFile:
    """What the hub says about one file: its sha256 (hex), size in bytes
    (None when not said) and the commit the revision resolved to."""

    sha256: str
    size: int | None
    commit: str | None


def hub_endpoint() -> str:
    """The Hugging Face endpoint: ``HF_ENDPOINT`` (as huggingface_hub reads it), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_url(repo: str, filename: str, revision: str = "main") -> str:
    """The download (``resolve``) URL of ``filename`` in the model repository ``repo``."""
    return f"{hub_endpoint()}/{repo}/resolve/{revision}/{filename}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # the headers we want are on the redirect itself
        return None


def hub_digest(url: str, name: str) -> HubFile:
    """The sha256 the hub records for the file at ``url`` (a ``resolve`` URL),
    from a HEAD request's ``X-Linked-Etag`` (or ``ETag`` when the file is not
    redirected). A file the hub keeps without an LFS digest is an error."""
    request = urllib.request.Request(url, method="HEAD", headers={"Accept-Encoding": "identity"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        response = opener.open(request, timeout=_TIMEOUT)
        headers = response.headers
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise ModelError(f"model {name!r}: the hub has no {url} (HTTP {exc.code})") from None
        headers = exc.headers
    except Exception as exc:  # unreachable host, bad scheme, timeout
        raise ModelError(f"model {name!r}: cannot ask the hub about {url} ({one_line(exc)})") from None
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip()
    etag = etag.removeprefix("W/").strip('"').lower()
    if not HEX64.fullmatch(etag):
        raise ModelError(f"model {name!r}: the hub publishes no sha256 for {url} (not an LFS file); "
                         "give weights.sha256 in the entry, or fetch it once with --trust")
    size = headers.get("X-Linked-Size") or headers.get("Content-Length")
    return HubFile(etag, int(size) if size and size.isdigit() else None, headers.get("X-Repo-Commit"))


def _open(url: str, offset: int):
    headers = {"Range": f"bytes={offset}-"} if offset and not url.startswith("file:") else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT)


def _receive(url: str, part: Path, label: str, progress: bool | None) -> None:
    """Append the rest of ``url`` to ``part`` (all of it when the server ignores the range)."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing past the end: the part file is whole (killed before its rename)
            return
        raise
    with response:
        if offset and getattr(response, "status", None) != 206:  # the server sent the whole file: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        show = sys.stderr.isatty() if progress is None else progress
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, disable=not show, file=sys.stderr, leave=False,
        ) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size != total:
            raise OSError(f"got {part.stat().st_size} of {total} bytes")


@contextlib.contextmanager
def _locked(target: Path, name: str) -> Iterator[None]:
    """One download of ``target`` at a time across processes (fine-tuning ranks,
    Dask workers, two shells): the others wait, then find the file there."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.with_name(target.name + ".lock"), "a")
    except OSError as exc:
        raise ModelError(f"model {name!r}: cannot write to {target.parent} ({one_line(exc)})") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch(url: str, target: Path, name: str, verify: Callable[[Path], None], progress: bool | None = None,
          resume: bool = True) -> Path:
    """Download ``url`` to ``target`` through ``target.part`` (resumed when
    present and ``resume``), call ``verify(part)`` (it raises
    :class:`ModelError` to refuse), then rename; under a lock, so that
    processes fetching the same file at once download it once. ``progress``:
    a tqdm bar on stderr (None: when stderr is a terminal). A download that
    nothing verifies should not resume (``resume=False``): its part file could
    be another version's. Returns ``target``."""
    with _locked(target, name):
        if target.is_file():  # another process fetched it while this one waited
            return target
        part = target.with_name(target.name + ".part")
        if not resume:
            part.unlink(missing_ok=True)
        try:
            _receive(url, part, f"{name}: {target.name}", progress)
        except Exception as exc:  # URL errors, HTTP errors, bad schemes, truncated reads: the part file stays to resume
            kept = part.stat().st_size if resume and part.is_file() else 0
            hint = f"; {kept} bytes kept, the same command resumes" if kept else ""
            raise ModelError(f"model {name!r}: cannot download {url} ({one_line(exc)}){hint}") from None
        try:
            verify(part)
        except ModelError:
            part.unlink(missing_ok=True)  # never kept: a bad file would resume into a bad file again
            raise
        try:
            os.replace(part, target)
        except OSError as exc:
            raise ModelError(f"model {name!r}: cannot keep {target} ({one_line(exc)})") from None
    return target


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file whole or not at all (a temporary file, then a rename)."""
    with atomic.replacing(path, "w") as f:
        f.write(text)
