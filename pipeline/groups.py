"""Result groups written whole: ``studies/<name>``, ``fooling/<run>``, ``search/<run>``.

A result group is computed first and written in one go (:func:`write`). In a
local store it is written beside its final place and swapped in with renames,
so a write that fails part-way leaves the earlier group of that name whole
(an fsspec URL is written in place). Every group opens with plain
``xarray.open_zarr(store, group="<kind>/<name>")``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping

import xarray as xr
import zarr

from perturber.pipeline.errors import PerturberError
from perturber.pipeline.store import consolidate, consolidated_ok, local_path

__all__ = ["path", "write", "read", "names"]


def path(kind: str, name: str) -> str:
    """``kind/name``; a one-line error for a name that is not a plain folder name."""
    if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise PerturberError(f"name {name!r} for a {kind} group: use letters, digits, '-', '_' or '.' (not first)")
    return f"{kind}/{name}"


def write(store: Any, kind: str, name: str, ds: xr.Dataset, storage_options: Mapping | None = None) -> None:
    """Write ``ds`` as ``kind/name``, replacing an earlier group of that name only once it is complete."""
    final = path(kind, name)
    folder = local_path(store)
    target = f"{kind}/.{name}.staged" if folder is not None else final  # hidden names are never listed
    with consolidated_ok():
        ds.to_zarr(store, group=target, mode="w", zarr_format=3, consolidated=folder is None, storage_options=storage_options)
    if folder is None:
        return
    new, old = folder / target, folder / kind / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if (folder / final).exists():
        os.replace(folder / final, old)
    os.replace(new, folder / final)
    shutil.rmtree(old, ignore_errors=True)
    consolidate(store, storage_options)  # the store's consolidated metadata names the group where it now is


def read(store: Any, kind: str, name: str) -> xr.Dataset:
    """The group ``kind/name`` (lazy); a one-line error naming the groups there when it is absent."""
    try:
        with consolidated_ok():
            return xr.open_zarr(store, group=path(kind, name))
    except (FileNotFoundError, KeyError):
        raise PerturberError(f"{store}: no {kind} group {name!r} (there: {', '.join(names(store, kind)) or 'none'})") from None


def names(store: Any, kind: str) -> list[str]:
    """The groups under ``kind/`` in a store, sorted ([] when the store is absent).

    Listed from the store's keys, not the root's consolidated metadata (which
    may predate a group written since): a damaged group is listed (and says so
    when read); a group still being written (hidden, staged) is not.
    """
    from zarr.core.sync import collect_aiterator, sync

    try:
        keys = zarr.open_group(str(store), mode="r", use_consolidated=False).store
    except FileNotFoundError:
        return []
    found = [str(c).strip("/") for c in collect_aiterator(keys.list_dir(kind))]
    return sorted(c for c in found if not c.startswith(".") and sync(keys.exists(f"{kind}/{c}/zarr.json")))
