"""Zarr plumbing shared by every group a command writes (cubes, feature
visualisations, studies, searches): one-line store errors, templates that a
kill cannot leave half-written, consolidated metadata at the root, crc32c
checksums on every array, and local-path checks.

A group's template is written so that a kill at any moment leaves either no
group, an incomplete one, or the whole template (:func:`write_template`):
the marker attribute :data:`MARK` is written last, and :func:`group_state`
tells the three apart.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from perturber.pipeline import options
from perturber.pipeline.errors import PerturberError, one_line

__all__ = ["MARK", "StoreError", "consolidated_ok", "checksummed", "default_options", "local_path", "check_writable",
           "clean_partials", "group_state", "write_template", "is_absent", "consolidate"]

MARK = "spec_sha256"  # the group attribute written last: the template is complete


class StoreError(PerturberError):
    """A store cannot be used as asked; the message is one line."""


@contextlib.contextmanager
def consolidated_ok():
    """Consolidated metadata is our deliberate choice (one read opens a cube);
    zarr warns that it is not yet part of the v3 specification."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        yield


def checksummed(ds: xr.Dataset, encoding: Mapping[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``encoding`` with a crc32c checksum after the compressor for every variable of ``ds``."""
    enc = {name: dict(v) for name, v in (encoding or {}).items()}
    for name in ds.variables:
        enc.setdefault(str(name), {}).setdefault("compressors", [ZstdCodec(), Crc32cCodec()])
    return enc


def default_options(out: Any, storage_options: Mapping | None = None) -> dict | None:
    """fsspec options a store URL needs: local ``file://`` URLs must create folders."""
    options = dict(storage_options or {})
    if isinstance(out, str) and out.startswith("file://"):
        options.setdefault("auto_mkdir", True)
    return options or None


def local_path(out: Any) -> Path | None:
    """The folder of a local store (a path or a ``file://`` URL); None for other URLs and store objects."""
    if not isinstance(out, (str, os.PathLike)) or "://" in str(out) and not str(out).startswith("file://"):
        return None
    return Path(str(out).removeprefix("file://"))


def check_writable(out: Any) -> None:
    """Fail at once, in one line, if the local store ``out`` cannot be written:
    a file in its place, or a read-only folder. (URLs are checked on writing.)"""
    path = local_path(out)
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise StoreError(f"{out}: is a file, not a Zarr store (a folder); choose another --out")
    folder = options.nearest_existing(path)
    if not folder.is_dir():
        raise StoreError(f"{out}: {folder} is a file, so the store cannot be created there")
    exc = options.cannot_create_in(folder)
    if exc is not None:
        raise StoreError(f"cannot write the store {out}: {folder} is not writable ({exc.strerror or exc})")


def clean_partials(out: Any) -> int:
    """Remove the temporary ``*.partial`` files that a write killed mid-file left
    in a local store (Zarr writes each file to one, then renames it); returns how many."""
    path = local_path(out)
    removed = 0
    for leftover in path.rglob("*.partial") if path is not None and path.is_dir() else ():
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def group_state(store: Any, group: str, storage_options: Mapping | None = None) -> tuple[str, dict[str, Any]]:
    """('absent' | 'incomplete' | 'complete', attributes) of a Perturber group.

    'incomplete' is a template a kill interrupted (Perturber's attributes, no
    :data:`MARK`; or an empty group, killed before its attributes): it holds
    no data yet and is written again. Anything
    unreadable is a :class:`StoreError`, never taken for absence, and so is a
    group that Perturber did not write, so neither is written over.
    """
    try:
        with consolidated_ok():
            zarr.open_group(store, mode="r", storage_options=storage_options, zarr_format=3, use_consolidated=False)
            node = zarr.open_group(store, path=group, mode="r", storage_options=storage_options, zarr_format=3,
                                   use_consolidated=False)
            attrs = dict(node.attrs)
            empty = not attrs and not any(True for _ in node.members())
    except Exception as exc:
        if is_absent(exc):
            return "absent", {}
        raise StoreError(f"cannot read the store: it is damaged or not a Zarr store ({one_line(exc, typed=True, limit=160)})") from None
    if MARK in attrs:
        return "complete", attrs
    if "perturber_group" in attrs or "perturber_format" in attrs or empty:  # empty: killed before the attributes
        return "incomplete", attrs
    raise StoreError(f"group {group!r} of the store was not written by Perturber (no {MARK})")


def write_template(ds: xr.Dataset, store: Any, group: str, encoding: Mapping[str, dict[str, Any]] | None = None,
                   storage_options: Mapping | None = None, fill: Any = None) -> None:
    """Write a group's template (metadata and coordinates; dask variables stay
    unwritten) so that a kill at any moment leaves either no group, an
    incomplete one (:func:`group_state`), or the whole template.

    ``ds.attrs[MARK]`` is held back and written last, after ``fill(group)``
    (small arrays written with the template) and before the consolidated
    metadata. Every array gets a crc32c checksum per chunk.
    """
    attrs = dict(ds.attrs)
    mark = attrs.pop(MARK)
    ds = ds.copy()
    ds.attrs = {**attrs, "perturber_group": group}
    with consolidated_ok():
        ds.to_zarr(store, group=group, mode="w", compute=False, encoding=checksummed(ds, encoding), consolidated=False,
                   zarr_format=3, storage_options=storage_options)
        target = zarr.open_group(store, path=group, mode="r+", storage_options=storage_options, zarr_format=3)
        if fill is not None:
            fill(target)
        target.attrs[MARK] = mark
    consolidate(store, storage_options)


def is_absent(exc: BaseException) -> bool:
    """Whether opening a group failed because the store or the group does not
    exist (as opposed to being damaged or not a Zarr store)."""
    return isinstance(exc, (FileNotFoundError, KeyError)) or type(exc).__name__ in (
        "GroupNotFoundError", "NodeNotFoundError", "PathNotFoundError")


def consolidate(store: Any, storage_options: Mapping | None = None) -> None:
    """Rewrite the consolidated metadata at the store's root, so that every group
    (a cube, ``featureviz``, ...) opens with plain ``xarray.open_zarr(store, group=...)``.

    Call it after writing a group's template: metadata changes, chunk data does not.
    """
    root = zarr.open_group(store, mode="r+", storage_options=storage_options, zarr_format=3)
    with consolidated_ok():
        zarr.consolidate_metadata(root.store)
