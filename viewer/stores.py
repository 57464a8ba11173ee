"""The viewer's handles on stores: opened once per process, read lazily.

A view reads a few Zarr chunks for the point it shows (datasets are opened
without dask: a task graph per small read would cost more than the read).
Whole-cube results (done marks, top-1 classes, where a model misreads its
object, neuron groups) come from :class:`perturber.pipeline.analysis.Cube`,
computed once per process and kept with the handle. Chunks written after the
viewer started show once it is restarted.
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr
import zarr

from perturber.featureviz import group as fv
from perturber.pipeline import names
from perturber.pipeline.analysis import Cube
from perturber.pipeline.errors import one_line
from perturber.pipeline.store import StoreError, open_cube
from perturber.viewer.html import png

__all__ = ["open_store", "done_marks", "analysis", "cube_names", "featureviz", "fv_png"]


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
    """(chunk grid) bool, read once per process: one small file per chunk, so a
    million-sample store takes seconds to read."""
    return open_store(path, cube)[names.DONE].values.astype(bool)


@functools.lru_cache(maxsize=8)
def analysis(path: str, cube: str) -> Cube:
    """The cube's analysis, shared by every session of this process."""
    return Cube(open_store(path, cube))


def cube_names(path: str) -> list[str]:
    """The cube groups of a store (not its feature visualisations, studies, ...)."""
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"{path}: not a Zarr store ({type(exc).__name__})") from None
    found = [name for name, _ in group.groups() if name not in names.NOT_CUBES]
    if not found:
        raise StoreError(f"{path}: the store holds no cube")
    return sorted(found)


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
    if not fv.completed(ds, names.fv_target(model, layer).target)[p, i]:
        return None
    return png(np.asarray(array[p, i].values))
