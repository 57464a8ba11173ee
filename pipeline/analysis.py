"""Cube analysis: what a store says across a whole cube, in one place.

:class:`Cube` works on any xarray Dataset with Perturber's cube layout, so
the same code serves the command line's summary, the viewer, the studies and
a notebook::

    import xarray as xr
    from perturber.pipeline.analysis import Cube

    cube = Cube(xr.open_zarr("data/generated/demo.zarr", group="views"))
    cube.sensitivity()["efficientnet_lite0"]        # axis -> mean spread of the top-1 probability
    cube.failures("efficientnet_lite0", here=(0,) * len(cube.axes))

Whole-cube results (top-1 classes, the expected-class probability, where a
model misreads its object, mean activations) are computed once per
:class:`Cube` and kept. The dataset may be dask-backed (``xr.open_zarr``'s
default) or lazily indexed (``chunks=None``, the viewer's): large reductions
go through dask either way.

Definitions:

- an object's *classes*: the ImageNet-1k classes it should read as
  (``classes`` in data/catalogue.yaml); a mesh file has none;
- *expected-class probability*: a sample's total softmax probability of its
  object's classes;
- a model *misreads* a sample when its top-1 class is not one of the
  object's classes (computed samples only);
- *sensitivity* of a model to an axis: the spread (max - min) of its top-1
  probability along that axis, averaged over every combination of the other axes.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import xarray as xr

from perturber.pipeline import assets, factors, names

__all__ = ["Cube", "SummaryRow", "softmax", "class_indices", "class_mask", "lazy"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of float16/float32 logits (float64 result, NaN-aware)."""
    z = logits.astype(np.float64)
    z = np.exp(z - np.nanmax(z, axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def class_indices(object_id: str) -> list[int] | None:
    """ImageNet-1k indices of the classes ``object_id`` should read as; None for
    an object outside the catalogue (a mesh file)."""
    if object_id not in assets.object_ids():
        return None
    return assets.imagenet_class_indices(object_id)


def class_mask(object_id: str) -> np.ndarray:
    """(1000,) bool: the classes of ``object_id`` (all False for a mesh file)."""
    mask = np.zeros(1000, dtype=bool)
    indices = class_indices(object_id)
    if indices is not None:
        mask[indices] = True
    return mask


@dataclass(frozen=True)
class SummaryRow:
    """One object and model of a cube: the most frequent top-1 class, its share
    of the computed samples, and the share read as one of the object's classes
    (NaN for a mesh file); ``samples`` 0 when nothing is computed."""

    object: str
    model: str
    samples: int
    top1: str = ""
    top1_share: float = float("nan")
    reads_as_class: float = float("nan")


def lazy(var: xr.DataArray) -> xr.DataArray:
    """``var`` as a dask array in its stored chunks (as it is when opened with dask),
    without its non-index coordinates (class names and the like)."""
    var = var.reset_coords(drop=True)
    if var.chunks is not None:
        return var
    chunks = var.encoding.get("preferred_chunks") or dict(zip(var.dims, var.encoding.get("chunks", ())))
    return var.chunk(chunks or "auto")


class Cube:
    """Analysis of one cube: ``ds`` is ``xr.open_zarr(store, group=cube)`` or any
    Dataset with the same layout."""

    def __init__(self, ds: xr.Dataset):
        self.ds = ds
        self.axes: list[str] = list(ds.attrs["axes"])
        self.fixed: dict[str, Any] = json.loads(ds.attrs["fixed"])
        self.models: list[str] = [str(m) for m in ds[names.MODEL].values]
        self._misread: dict[int, np.ndarray] = {}
        self._mean_activation: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------ what it holds

    def axis_values(self, axis: str) -> list[Any]:
        """The grid values of ``axis`` as Python floats or strings."""
        return [v.item() if hasattr(v, "item") else str(v) for v in self.ds[axis].values]

    @functools.cached_property
    def objects(self) -> list[str]:
        """The cube's objects: its ``object`` axis, or the one object it holds fixed."""
        if "object" in self.axes:
            return [str(o) for o in self.ds["object"].values]
        return [str(self.fixed.get("object", factors.get("object").default))]

    @functools.cached_property
    def class_names(self) -> list[str]:
        """The 1000 class names, in index order."""
        return [str(n) for n in self.ds[names.CLASS_NAME].values]

    def _object_slices(self, ndim: int):
        """(object id, index) pairs selecting each object's samples of an array
        whose leading dimensions are the axes."""
        if "object" not in self.axes:
            yield self.objects[0], (slice(None),) * ndim
            return
        k = self.axes.index("object")
        for i, obj in enumerate(self.objects):
            index = [slice(None)] * ndim
            index[k] = i
            yield obj, tuple(index)

    # ------------------------------------------------------------ predictions

    @functools.cached_property
    def top1(self) -> tuple[np.ndarray, np.ndarray]:
        """(top-1 class, top-1 probability), each (*axes, model) float, NaN where not computed."""
        return (self.ds[names.TOP_CLASS].isel({names.RANK: 0}).values,
                self.ds[names.TOP_PROB].isel({names.RANK: 0}).values)

    def misread(self, model: str) -> np.ndarray:
        """(*axes) bool: where ``model``'s top-1 is not one of the object's classes
        (computed samples only; a mesh file has no classes, so every one of its
        computed samples counts)."""
        m = self.models.index(model)
        if m not in self._misread:
            top = self.top1[0][..., m]
            right = np.zeros(top.shape, dtype=bool)
            for obj, index in self._object_slices(top.ndim):
                indices = class_indices(obj)
                if indices is not None:
                    right[index] = np.isin(top[index], indices)
            self._misread[m] = ~right & ~np.isnan(top)
        return self._misread[m]

    @functools.cached_property
    def expected_probability(self) -> np.ndarray:
        """(*axes, model): each sample's total probability of its object's classes,
        NaN where not computed. Stores record it as ``expected_prob``; for older
        ones it is derived from the logits, chunk by chunk."""
        if names.EXPECTED_PROB in self.ds:
            return self.ds[names.EXPECTED_PROB].values
        logits = lazy(self.ds[names.LOGITS]).astype("float32")
        p = np.exp(logits - logits.max(names.CLASS))
        p = p / p.sum(names.CLASS)
        masks = np.stack([class_mask(o) for o in self.objects]).astype(np.float32)
        if "object" in self.axes:
            weights = xr.DataArray(masks, dims=("object", names.CLASS), coords={"object": self.ds["object"].values})
        else:
            weights = xr.DataArray(masks[0], dims=(names.CLASS,))
        return (p * weights).sum(names.CLASS, skipna=False).transpose(*self.axes, names.MODEL).values

    def sensitivity(self) -> dict[str, dict[str, float]]:
        """model → axis → the mean spread of the top-1 probability along the axis (NaN-aware)."""
        prob = self.top1[1]
        out: dict[str, dict[str, float]] = {}
        for m, model in enumerate(self.models):
            p = prob[..., m]
            out[model] = {}
            for k, axis in enumerate(self.axes):
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: chunks not computed
                    spread = np.nanmax(p, axis=k) - np.nanmin(p, axis=k)
                    out[model][axis] = float(np.nanmean(spread)) if np.isfinite(spread).any() else float("nan")
        return out

    def failures(self, model: str, here: Sequence[int], limit: int = 10) -> list[dict[str, Any]]:
        """Grid points of the object at grid index ``here`` that ``model`` misreads,
        nearest first (fewest axes changed, then fewest grid steps).

        Each entry: the axis values of the point, its top-1 class name (``top1``)
        and probability (``p``).
        """
        classes, prob = self.top1
        m = self.models.index(model)
        wrong = self.misread(model)
        here = np.asarray(here)
        if "object" in self.axes:  # another object is not a small change of this scene
            k = self.axes.index("object")
            index = [slice(None)] * wrong.ndim
            index[k] = slice(here[k], here[k] + 1)
            points = np.argwhere(wrong[tuple(index)])
            points[:, k] = here[k]
        else:
            points = np.argwhere(wrong)
        if points.size == 0:
            return []
        changed = (points != here).sum(1)
        steps = np.abs(points - here).sum(1)
        order = np.lexsort((steps, changed))[:limit]
        class_names = self.ds[names.CLASS_NAME].values
        values = {axis: self.axis_values(axis) for axis in self.axes}
        out = []
        for idx in points[order]:
            point = {axis: values[axis][i] for axis, i in zip(self.axes, idx)}
            out.append({**point, "top1": str(class_names[int(classes[tuple(idx) + (m,)])]), "p": float(prob[tuple(idx) + (m,)])})
        return out

    def summary(self) -> list[SummaryRow]:
        """Per object and model: the most frequent top-1 class across the cube."""
        top = self.top1[0]
        class_names = self.class_names
        rows = []
        for obj, index in self._object_slices(top.ndim):
            indices = class_indices(obj)
            for m, model in enumerate(self.models):
                values = top[index][..., m].ravel()
                values = values[~np.isnan(values)].astype(int)
                if values.size == 0:
                    rows.append(SummaryRow(obj, model, 0))
                    continue
                counts = np.bincount(values, minlength=1000)
                best = int(counts.argmax())
                right = float(np.isin(values, indices).mean()) if indices else float("nan")
                rows.append(SummaryRow(obj, model, int(values.size), class_names[best], counts[best] / values.size, right))
        return rows

    # ------------------------------------------------------------ activations

    def activations(self, model: str | None = None) -> list[names.Activation]:
        """The stored activation variables (of ``model`` only, when given)."""
        return names.activation_variables(self.ds, model)

    def mean_activation(self, variable: str) -> np.ndarray:
        """(*axes, neuron) float32: each stored neuron's spatial mean activation
        per sample, NaN where not computed (one pass over the variable)."""
        if variable not in self._mean_activation:
            act = next(a for a in self.activations() if a.variable == variable)
            values = lazy(self.ds[variable]).astype("float32")
            self._mean_activation[variable] = values.mean([act.ay, act.ax]).values
        return self._mean_activation[variable]

    def group_labels(self) -> list[str]:
        """Labels of the data-driven neuron groups (nothing is computed)."""
        return ([f"most active for {o}" for o in self.objects]
                + [f"changes most along {a}" for a in self.axes if self.ds.sizes[a] >= 2])

    def neuron_groups(self, variable: str, size: int = 8) -> dict[str, list[int]]:
        """label → positions along ``variable``'s neuron dimension (stored order):
        ``"most active for <object>"``, the largest mean activation over the
        object's computed samples; ``"changes most along <axis>"``, the largest
        spread (max - min) along the axis, averaged over the other axes."""
        m = self.mean_activation(variable)
        groups: dict[str, list[int]] = {}

        def top(score: np.ndarray) -> list[int]:
            score = np.where(np.isfinite(score), score, -np.inf)
            order = np.argsort(-score, kind="stable")[:size]
            return [int(i) for i in order if np.isfinite(score[i])]

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: chunks not computed
            for obj, index in self._object_slices(m.ndim - 1):
                chosen = top(np.nanmean(m[index].reshape(-1, m.shape[-1]), axis=0))
                if chosen:
                    groups[f"most active for {obj}"] = chosen
            for k, axis in enumerate(self.axes):
                if self.ds.sizes[axis] < 2:
                    continue
                spread = np.nanmax(m, axis=k) - np.nanmin(m, axis=k)
                chosen = top(np.nanmean(spread.reshape(-1, m.shape[-1]), axis=0))
                if chosen:
                    groups[f"changes most along {axis}"] = chosen
        return groups
