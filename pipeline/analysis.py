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
import itertools
import json
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from perturber.pipeline import assets, factors, names

__all__ = ["Cube", "SummaryRow", "softmax", "class_indices", "class_mask", "lazy", "nearest"]


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


def nearest(mask: np.ndarray, here: Sequence[int], limit: int, fixed: Sequence[int] = ()) -> np.ndarray:
    """(k, mask.ndim) int: the first ``limit`` True points of ``mask`` whose
    ``fixed`` axes equal ``here``'s, ordered by the number of axes that differ
    from ``here``, then the grid steps from it (L1), then C order.

    The points that change c axes lie in the subspaces through ``here`` spanned
    by c of the free axes; they are searched for c = 0, 1, 2, ... until
    ``limit`` points are found, as long as those subspaces hold fewer cells than
    a quarter of the slice; past that, the slice's True points are ranked with
    a partial sort (no full sort of millions of points)."""
    here = tuple(int(i) for i in here)
    free = [k for k in range(mask.ndim) if k not in set(fixed)]
    budget = max(4096, int(np.prod([mask.shape[k] for k in free], dtype=np.int64)) // 4)
    found: list[np.ndarray] = []
    count = work = 0
    for c in range(len(free) + 1):
        spans = list(itertools.combinations(free, c))
        work += sum(int(np.prod([mask.shape[k] - 1 for k in span], dtype=np.int64)) for span in spans)
        if work > budget:
            return _nearest_by_ranking(mask, here, limit, fixed)
        group = [_changed_exactly(mask, here, span) for span in spans]
        group = np.concatenate(group) if group else np.zeros((0, mask.ndim), dtype=np.intp)
        if len(group):
            steps = np.abs(group - np.asarray(here)).sum(1)
            flat = np.ravel_multi_index(group.T, mask.shape)
            found.append(group[np.lexsort((flat, steps))])
            count += len(group)
        if count >= limit:
            break
    return np.concatenate(found)[:limit] if found else np.zeros((0, mask.ndim), dtype=np.intp)


def _changed_exactly(mask: np.ndarray, here: tuple[int, ...], span: tuple[int, ...]) -> np.ndarray:
    """(k, ndim) the True points of ``mask`` that differ from ``here`` on exactly the axes ``span``."""
    index = tuple(slice(None) if k in span else here[k] for k in range(mask.ndim))
    sub = np.array(mask[index], dtype=bool)  # axes of span, in order
    for j, k in enumerate(span):
        np.moveaxis(sub, j, 0)[here[k]] = False
    inside = np.argwhere(sub)
    points = np.tile(np.asarray(here, dtype=np.intp), (len(inside), 1))
    points[:, list(span)] = inside
    return points


def _nearest_by_ranking(mask: np.ndarray, here: tuple[int, ...], limit: int, fixed: Sequence[int]) -> np.ndarray:
    """:func:`nearest` over every True point of the slice (a partial sort by (changed, steps), C order kept)."""
    index = tuple(slice(here[k], here[k] + 1) if k in set(fixed) else slice(None) for k in range(mask.ndim))
    local = np.flatnonzero(mask[index])
    if local.size == 0:
        return np.zeros((0, mask.ndim), dtype=np.intp)
    points = np.stack(np.unravel_index(local, mask[index].shape), axis=1)
    points[:, list(fixed)] = [here[k] for k in fixed]
    diff = np.abs(points - np.asarray(here))
    key = (diff > 0).sum(1) * (sum(mask.shape) + 1) + diff.sum(1)  # changed axes first, then steps
    if len(key) > limit:
        cut = np.partition(key, limit - 1)[limit - 1]
        keep = np.flatnonzero(key <= cut)
        points, key = points[keep], key[keep]
    return points[np.argsort(key, kind="stable")][:limit]


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
    """``var`` as a dask array in its stored files (shards, or chunks when unsharded),
    without its non-index coordinates (class names and the like)."""
    var = var.reset_coords(drop=True)
    if var.chunks is not None:
        return var
    shards = var.encoding.get("shards")  # a dask chunk per shard (a file), not per inner chunk: a smaller graph
    chunks = (dict(zip(var.dims, shards)) if shards else
              var.encoding.get("preferred_chunks") or dict(zip(var.dims, var.encoding.get("chunks", ()))))
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
        self._mean_activation: dict[tuple, np.ndarray] = {}
        self._sensitivity: dict[str, dict[str, float]] | None = None

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
        """(top-1 class, top-1 probability), each (*axes, model) float, NaN where not computed.

        Read from the per-sample summaries (a few large chunks); a format-1
        store has none, and its top-k arrays are read instead (a file per chunk)."""
        if names.TOP1_CLASS in self.ds:
            return self.ds[names.TOP1_CLASS].values, self.ds[names.TOP1_PROB].values
        return (self.ds[names.TOP_CLASS].isel({names.RANK: 0}).values,
                self.ds[names.TOP_PROB].isel({names.RANK: 0}).values)

    def misread(self, model: str) -> np.ndarray:
        """(*axes) bool: where ``model``'s top-1 is not one of the object's classes
        (computed samples only; a mesh file has no classes, so every one of its
        computed samples counts)."""
        m = self.models.index(model)
        if m not in self._misread:
            top = self.top1[0][..., m]
            with np.errstate(invalid="ignore"):
                computed = top >= 0  # NaN (float) or -1 (int16 summaries): not computed
            codes = np.where(computed, top, 1000).astype(np.intp)  # 1000: not computed
            right = np.zeros(top.shape, dtype=bool)
            for obj, index in self._object_slices(top.ndim):
                indices = class_indices(obj)
                if indices is not None:
                    table = np.zeros(1001, dtype=bool)  # class → one of the object's (a lookup, not np.isin's sort)
                    table[indices] = True
                    right[index] = table[codes[index]]
            self._misread[m] = ~right & computed
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
        """model → axis → the mean spread of the top-1 probability along the axis
        (NaN-aware); computed once per :class:`Cube` (do not modify the result)."""
        if self._sensitivity is not None:
            return self._sensitivity
        prob = self.top1[1]
        out: dict[str, dict[str, float]] = {}
        for m, model in enumerate(self.models):
            p = np.ascontiguousarray(prob[..., m])  # reductions over a strided view take twice as long
            out[model] = {}
            for k, axis in enumerate(self.axes):
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: chunks not computed
                    spread = np.nanmax(p, axis=k) - np.nanmin(p, axis=k)
                    out[model][axis] = float(np.nanmean(spread)) if np.isfinite(spread).any() else float("nan")
        self._sensitivity = out
        return out

    def failures(self, model: str, here: Sequence[int], limit: int = 10) -> list[dict[str, Any]]:
        """Grid points of the object at grid index ``here`` that ``model`` misreads,
        nearest first (fewest axes changed, then fewest grid steps, then grid order).

        Each entry: the axis values of the point, its top-1 class name (``top1``)
        and probability (``p``). The cost grows with the neighbourhood searched
        (:func:`nearest`), not with the cube.
        """
        classes, prob = self.top1
        m = self.models.index(model)
        fixed = [self.axes.index("object")] if "object" in self.axes else []  # another object is not a small change of this scene
        points = nearest(self.misread(model), tuple(int(i) for i in here), limit, fixed)
        class_names = self.class_names
        values = {axis: self.axis_values(axis) for axis in self.axes}
        out = []
        for idx in points:
            point = {axis: values[axis][i] for axis, i in zip(self.axes, idx)}
            at = tuple(int(i) for i in idx) + (m,)
            out.append({**point, "top1": str(class_names[int(classes[at])]), "p": float(prob[at])})
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

    def mean_activation(self, variable: str, grid: Mapping[str, Sequence[int]] | None = None) -> np.ndarray:
        """(*axes, neuron) float32: each stored neuron's spatial mean activation
        per sample, NaN where not computed (one pass over the variable); on the
        sub-grid ``grid`` (axis → grid positions, :meth:`sample_grid`) when given."""
        key = (variable, None if grid is None else tuple((a, tuple(grid[a])) for a in self.axes))
        if key not in self._mean_activation:
            act = next(a for a in self.activations() if a.variable == variable)
            values = self.ds[variable]
            if grid is not None:  # selected before chunking: a lazily indexed store then reads only these chunks
                values = values.isel({a: list(grid[a]) for a in self.axes})
            values = lazy(values)
            self._mean_activation[key] = values.astype("float32").mean([act.ay, act.ax]).values
        return self._mean_activation[key]

    def sample_grid(self, chunks: int, chunk_shape: Sequence[int]) -> dict[str, list[int]]:
        """axis → grid positions of a regular sub-grid of the cube touching at
        most about ``chunks`` stored chunks (``chunk_shape``: one chunk's extent
        along each axis): every object, at least two values of every axis that
        has two, whole chunks, evenly spaced chunks along each axis. The whole
        cube when it has that few chunks."""
        sizes = [self.ds.sizes[a] for a in self.axes]
        grid = [-(-n // c) for n, c in zip(sizes, chunk_shape)]
        keep = list(grid)
        floor = [g if a == "object" else min(g, 2) for a, g in zip(self.axes, grid)]
        while int(np.prod(keep, dtype=np.int64)) > chunks and keep != floor:
            k = max((k for k in range(len(keep)) if keep[k] > floor[k]), key=lambda k: keep[k])
            keep[k] = max(floor[k], int(keep[k] * 0.8))
        out = {}
        for axis, n, g, k, c in zip(self.axes, sizes, grid, keep, chunk_shape):
            picked = np.unique(np.linspace(0, g - 1, k).round().astype(int))
            out[axis] = [i for p in picked for i in range(p * c, min((p + 1) * c, n))]
        return out

    def group_labels(self) -> list[str]:
        """Labels of the data-driven neuron groups (nothing is computed)."""
        return ([f"most active for {o}" for o in self.objects]
                + [f"changes most along {a}" for a in self.axes if self.ds.sizes[a] >= 2])

    def neuron_groups(self, variable: str, size: int = 8, grid: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
        """label → positions along ``variable``'s neuron dimension (stored order):
        ``"most active for <object>"``, the largest mean activation over the
        object's computed samples; ``"changes most along <axis>"``, the largest
        spread (max - min) along the axis, averaged over the other axes. Over
        the whole cube, or over the sub-grid ``grid`` (:meth:`sample_grid`)."""
        m = self.mean_activation(variable, grid)
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
