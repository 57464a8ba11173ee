"""Reading a store's ``featureviz`` group (what the viewer needs; the writing is
:mod:`perturber.featureviz.precompute`).

Layout (``xarray.open_zarr(store, group="featureviz")``), for each model (a
checkpoint counts as a model, with ``checkpoint_of`` in its variables'
attributes) and each target ``<model>_<layer>``, ``<model>_<layer>_dir`` or
``<model>_logits`` (names: :func:`perturber.pipeline.names.fv_target`):

| variable | dims | dtype |
| --- | --- | --- |
| ``fv_<target>`` | parameterisation, unit_<target>, fy, fx, rgb | uint8 |
| ``objective_<target>`` | parameterisation, unit_<target>, stage (start, end) | float32 |
| ``direction_<model>_<layer>`` | unit_<target>, channel_<target> | float32 |
| ``fvdone_<target>`` | parameterisation, fvchunk_<target> | uint8 |

``unit_<target>`` holds channel, direction or class indices. The group's
attributes record the settings, the spec, lucent's and kornia's versions.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
import xarray as xr

from perturber.pipeline import names

__all__ = ["GROUP", "open_featureviz", "lookup", "completed", "settings_of"]

GROUP = names.FEATUREVIZ


def open_featureviz(store: Any):
    """The store's featureviz group as an xarray dataset, or None when it has none."""
    try:
        return xr.open_zarr(store, group=GROUP, chunks=None, consolidated=False)
    except Exception:
        return None


def lookup(ds: Any, model: str, layer: str) -> tuple[Any, dict[int, int]] | None:
    """(the fv_ array of ``model``'s ``layer`` channels, channel → position), or None."""
    if ds is None:
        return None
    n = names.fv_target(model, layer)
    if n.images not in ds:
        return None
    units = ds[n.unit].values
    return ds[n.images], {int(u): i for i, u in enumerate(units)}


def completed(ds: Any, target: str) -> np.ndarray:
    """(parameterisation, unit) bool: which visualisations of ``target`` (a
    :attr:`perturber.pipeline.names.FeatureVizNames.target`) are written."""
    n = names.fv_names(target)
    done = ds[n.done].values.astype(bool)
    batch = int(ds[n.done].attrs["batch"])
    return np.repeat(done, batch, axis=1)[:, : ds.sizes[n.unit]]


def settings_of(ds: Any) -> Mapping[str, Any]:
    return json.loads(ds.attrs.get("settings", "{}"))
