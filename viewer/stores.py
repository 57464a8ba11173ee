"""The viewer's handles on stores: opened once per process, read lazily.

A view reads a few Zarr chunks for the point it shows (datasets are opened
without dask: a task graph per small read would cost more than the read).
Whole-cube results (done marks, top-1 classes, where a model misreads its
object, neuron groups) come from :class:`perturber.pipeline.analysis.Cube`,
computed once per process and kept with the handle. Chunks written after the
viewer started show once it is restarted.

Damage: a point's read (:func:`read_point`) raises :class:`DamagedChunk`, one
line naming the point and the repair, when a chunk marked done cannot be
decoded or its file is gone (Zarr would read a missing file as the fill
value); whole-cube reads (:func:`tolerant`, the analysis) read a damaged
chunk as not computed and log it. No exception text reaches the page.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Any, Mapping

import numpy as np
import xarray as xr
import zarr

from perturber.featureviz import group as fv
from perturber.pipeline import names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.errors import one_line
from perturber.pipeline.store import StoreError, open_cube
from perturber.viewer import chunks
from perturber.viewer.html import png

__all__ = ["open_store", "done_marks", "analysis", "cube_names", "featureviz", "fv_png", "DamagedChunk", "repair_hint",
           "read_point", "read_values", "point_png", "tolerant", "group_grid", "GROUP_CHUNKS"]

log = logging.getLogger("perturber.viewer")


class DamagedChunk(StoreError):
    """A chunk marked done that cannot be read; the message is one line for the page."""


def repair_hint(path: str) -> str:
    return f"`perturber verify {path} --repair`, then `perturber precompute`, recomputes it"


@functools.lru_cache(maxsize=8)
def open_store(path: str, cube: str) -> xr.Dataset:
    """The cube as a lazily indexed dataset (no dask), opened once per process."""
    try:
        ds = open_cube(path, cube, chunks=None)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{path}: cannot open cube {cube!r} ({one_line(exc, typed=True)})") from None
    if "spec_sha256" not in ds.attrs or names.DONE not in ds:
        raise StoreError(f"{path}: group {cube!r} is not a Perturber cube")
    return ds


@functools.lru_cache(maxsize=8)
def done_marks(path: str, cube: str) -> np.ndarray:
    """(task grid) bool, read once per process (one file; a format-1 store has
    one per chunk; a damaged mark reads as not done)."""
    return tolerant(open_store(path, cube)[names.DONE], fill=0).astype(bool)


class ViewerCube(Cube):
    """:class:`Cube` whose whole-cube summaries read damaged chunks as not computed."""

    @functools.cached_property
    def top1(self) -> tuple[np.ndarray, np.ndarray]:
        if names.TOP1_CLASS in self.ds:
            return tolerant(self.ds[names.TOP1_CLASS]), tolerant(self.ds[names.TOP1_PROB])
        return (tolerant(self.ds[names.TOP_CLASS].isel({names.RANK: 0})),
                tolerant(self.ds[names.TOP_PROB].isel({names.RANK: 0})))

    @functools.cached_property
    def expected_probability(self) -> np.ndarray:
        if names.EXPECTED_PROB in self.ds:
            return tolerant(self.ds[names.EXPECTED_PROB])
        return Cube.expected_probability.func(self)


@functools.lru_cache(maxsize=8)
def analysis(path: str, cube: str) -> Cube:
    """The cube's analysis, shared by every session of this process."""
    return ViewerCube(open_store(path, cube))


#: Data-driven neuron groups are computed on a sub-grid of the cube touching at most this many stored chunks.
GROUP_CHUNKS = 256


@functools.lru_cache(maxsize=8)
def group_grid(path: str, cube: str) -> dict[str, list[int]]:
    """axis → grid positions of the sub-grid the viewer's data-driven neuron
    groups are computed on (:meth:`perturber.pipeline.analysis.Cube.sample_grid`
    with :data:`GROUP_CHUNKS`: the whole cube when it has no more chunks)."""
    ds = open_store(path, cube)
    return analysis(path, cube).sample_grid(GROUP_CHUNKS, list(ds[names.DONE].attrs["chunk_shape"]))


# ---------------------------------------------------------------- damage


def tolerant(var: xr.DataArray, fill: Any = np.nan) -> np.ndarray:
    """``var.values``; when that fails (a damaged chunk), read block by block
    in its stored chunks, ``fill`` where a block cannot be read (logged)."""
    try:
        return var.values
    except Exception as exc:
        log.warning("%s: a chunk cannot be read (%s); reading it chunk by chunk, damaged chunks as not computed",
                    var.name, type(exc).__name__)
    sizes = var.encoding.get("preferred_chunks", {})
    steps = [int(sizes.get(dim, n)) or n for dim, n in zip(var.dims, var.shape)]
    out = np.full(var.shape, fill, dtype=np.result_type(var.dtype, np.asarray(fill).dtype))
    damaged = 0
    for corner in itertools.product(*(range(0, n, step) for n, step in zip(var.shape, steps))):
        block = tuple(slice(c, min(c + step, n)) for c, step, n in zip(corner, steps, var.shape))
        try:
            out[block] = var[block].values
        except Exception:
            damaged += 1
    log.warning("%s: %d damaged chunk(s) read as not computed; `perturber verify` finds them", var.name, damaged)
    return out


@functools.lru_cache(maxsize=256)
def _zarr_array(path: str, cube: str, variable: str) -> zarr.Array:
    return zarr.open_array(path, path=f"{cube}/{variable}", mode="r")


_present: set[tuple[str, str, str, str]] = set()  # chunk files seen to exist (files are never removed while viewing)


def _files_present(path: str, cube: str, var: xr.DataArray, sel: Mapping[str, Any]) -> bool:
    """Whether every chunk file that ``var.isel(sel)`` reads exists (integer positions in ``sel``)."""
    from zarr.core.sync import sync

    arr = _zarr_array(path, cube, str(var.name))
    grid = arr.metadata.chunk_grid.chunk_shape  # the stored objects' shape (shards, when sharded)
    per_dim = []
    for dim, n, step in zip(var.dims, var.shape, grid):
        at = sel.get(dim)
        per_dim.append([int(at) // step] if isinstance(at, (int, np.integer)) else range(-(-n // step)))
    for coords in itertools.product(*per_dim):
        key = (path, cube, str(var.name), arr.metadata.encode_chunk_key(coords))
        if key in _present:
            continue
        if not sync((arr.store_path / key[3]).exists()):
            return False
        _present.add(key)
    return True


def read_point(path: str, cube: str, variable: str, sel: Mapping[str, Any], where: str) -> np.ndarray:
    """``variable.isel(sel).values`` at a computed point, read-only and shared by
    every session of the process (the last few hundred reads are kept: sessions
    opening at the same point read it once); ``where``: the point, as the page
    names it. :class:`DamagedChunk` when a chunk file is gone or cannot be decoded."""
    try:
        return _read(path, cube, variable, tuple(sorted(sel.items())))
    except _Missing:
        message = f"damaged chunk at {where} ({variable}): {repair_hint(path)}"
        log.warning("%s", message)
        raise DamagedChunk(message) from None
    except Exception as exc:
        message = f"damaged chunk at {where} ({variable}): {repair_hint(path)}"
        log.warning("%s [%s]", message, one_line(exc, typed=True))
        raise DamagedChunk(message) from None


class _Missing(Exception):
    """A chunk file a read needs is not there."""


@functools.lru_cache(maxsize=512)
def _read(path: str, cube: str, variable: str, sel: tuple[tuple[str, Any], ...]) -> np.ndarray:
    var = open_store(path, cube)[variable]
    if not _files_present(path, cube, var, dict(sel)):
        raise _Missing(variable)
    values = read_values(path, cube, variable, dict(sel))
    values.flags.writeable = False
    return values


def read_values(path: str, cube: str, variable: str, sel: Mapping[str, int], on_bad: Any = None) -> np.ndarray:
    """``variable.isel(sel).values`` (integer positions), decoded as xarray decodes it
    (an integer fill value reads as NaN), its chunks read by :mod:`perturber.viewer.chunks`
    when it can (``on_bad``: the value of a damaged chunk's cells; None raises),
    else through xarray and Zarr."""
    var = open_store(path, cube)[variable]
    fast = chunks.reader(path, cube, variable)
    if fast is None or "scale_factor" in var.encoding or "add_offset" in var.encoding:
        return np.asarray(var.isel(**sel).values) if on_bad is None else tolerant(var.isel(**sel), on_bad)
    raw = fast.select({var.dims.index(d): int(i) for d, i in sel.items()}, on_bad)
    if raw.dtype == var.dtype:
        return raw
    out = raw.astype(var.dtype)
    fill = var.encoding.get("_FillValue")
    if fill is not None:
        out[raw == fill] = np.nan
    return out


@functools.lru_cache(maxsize=256)
def point_png(path: str, cube: str, sel: tuple[tuple[str, Any], ...]) -> str:
    """The stored model input at a grid point (``sel``: axis → position) as a PNG data URI, encoded once per process."""
    return png(_read(path, cube, names.IMAGE, sel))


def cube_names(path: str) -> list[str]:
    """The cube groups of a store (not its feature visualisations, studies, ...):
    the sweep's own first, then the cubes studies wrote (named by a study
    table's ``cube``), each by name. The first is what a viewer opens by default."""
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"{path}: not a Zarr store ({type(exc).__name__})") from None
    found = [name for name, _ in group.groups() if name not in names.NOT_CUBES]
    if not found:
        raise StoreError(f"{path}: the store holds no cube")
    of_studies = _study_cubes(group)
    return sorted(found, key=lambda name: (name in of_studies, name))


def _study_cubes(group: zarr.Group) -> set[str]:
    """The cubes the store's study tables name (a damaged table names none)."""
    try:
        tables = group[names.STUDIES]
    except KeyError:
        return set()
    found = set()
    for _, table in tables.groups():
        try:
            found.update(c for c in str(table.attrs.get("cube", "")).split(",") if c)
        except Exception:  # a damaged table: the studies view says so
            continue
    return found


@functools.lru_cache(maxsize=8)
def featureviz(path: str) -> xr.Dataset | None:
    """The store's feature visualisations, or None."""
    return fv.open_featureviz(path)


@functools.lru_cache(maxsize=4096)
def fv_png(path: str, model: str, layer: str, unit: int, parameterisation: str) -> str | None:
    """The stored feature visualisation of a channel as a data URI (None: not in the store or not computed)."""
    ds = featureviz(path)
    found = fv.lookup(ds, model, layer)
    if found is None or unit not in found[1]:
        return None
    array, position = found
    params = [str(p) for p in ds["parameterisation"].values]
    if parameterisation not in params:
        return None
    p, i = params.index(parameterisation), position[unit]
    try:
        if not fv.completed(ds, names.fv_target(model, layer).target)[p, i]:
            return None
        return png(np.asarray(array[p, i].values))
    except Exception as exc:  # a damaged chunk: shown as not there, said in the log
        log.warning("feature visualisation of %s %s #%d cannot be read (%s); `perturber verify` finds damaged chunks",
                    model, layer, unit, type(exc).__name__)
        return None
