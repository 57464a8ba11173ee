"""Per-sample quantities of a cube as lazy (dask) arrays, for studies that run out of core.

:func:`per_sample` gives, for every sample of a cube and every model:

- ``top1``: the top-1 class index (float, NaN where not computed);
- ``top1_p``: its softmax probability;
- ``in_set``: 1.0 when the top-1 class is one of the object's classes, 0.0
  when not, NaN where not computed or for an object without classes (a mesh
  file);
- ``set_prob``: the *class-set probability*, the total softmax probability of
  the object's classes (the store's ``expected_prob``).

Every variable has the cube's axes then ``model`` as dimensions, in the
store's chunks: a reduction over them reads each chunk once, in parallel, and
never holds the whole cube in memory.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from perturber.pipeline import names
from perturber.pipeline.analysis import Cube, class_mask, lazy

__all__ = ["per_sample", "set_table", "in_sets"]


def set_table(objects: list[str]) -> np.ndarray:
    """(objects, 1000) bool: each object's classes."""
    return np.stack([class_mask(o) for o in objects])


def in_sets(top1: np.ndarray, object_index: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each top-1 class (float array, NaN: not computed) is in its
    object's class set: 1.0, 0.0 or NaN (not computed, or an object without
    classes). ``object_index`` broadcasts against ``top1``."""
    ok = np.isfinite(top1)
    cls = np.where(ok, top1, 0).astype(np.int64)
    obj = np.broadcast_to(object_index, cls.shape)
    hit = table[obj, cls].astype(np.float32)
    has_classes = table.any(1)[obj]
    return np.where(ok & has_classes, hit, np.nan).astype(np.float32)


def per_sample(cube: Cube) -> xr.Dataset:
    """``top1``, ``top1_p``, ``in_set`` and ``set_prob`` of every sample, dims (*axes, model), dask-backed."""
    ds = cube.ds
    top1 = lazy(ds[names.TOP_CLASS]).isel({names.RANK: 0}, drop=True).astype("float32")
    top1_p = lazy(ds[names.TOP_PROB]).isel({names.RANK: 0}, drop=True).astype("float32")
    table = set_table(cube.objects)
    if "object" in cube.axes:
        obj = xr.DataArray(np.arange(len(cube.objects)), dims=("object",))
    else:
        obj = xr.DataArray(0)
    in_set = xr.apply_ufunc(in_sets, top1, obj, kwargs={"table": table}, dask="parallelized",
                            output_dtypes=[np.float32])
    if names.EXPECTED_PROB in ds:
        set_prob = lazy(ds[names.EXPECTED_PROB]).astype("float32")
    else:
        set_prob = xr.DataArray(cube.expected_probability, dims=(*cube.axes, names.MODEL))
    out = xr.Dataset({"top1": top1, "top1_p": top1_p, "in_set": in_set, "set_prob": set_prob})
    out = out.transpose(*cube.axes, names.MODEL)
    return out.assign_coords({a: ds[a].values for a in cube.axes} | {names.MODEL: ds[names.MODEL].values})
