"""Viewer state: where the user is in a cube, and what the store says there.

State lives in :class:`CubeState` (a ``param.Parameterized``): one parameter
per axis of the cube, named as the factor (the same name as in the spec and the
store), plus the two models being compared. Views depend on it; only
:mod:`viewer.app` knows about widgets. The store is opened once per process
and its handles cached; per-session work is a few small reads.
"""

from __future__ import annotations

import functools
import json
import warnings
from typing import Any

import numpy as np
import param
import xarray as xr

from perturber.pipeline import factors
from perturber.pipeline.store import StoreError, open_cube

__all__ = ["CubeState", "Landscape", "open_store", "cube_names", "softmax", "sensitivity", "failures", "expected_probability", "NOT_COMPUTED"]

NOT_COMPUTED = "not computed"


@functools.lru_cache(maxsize=8)
def open_store(path: str, cube: str) -> xr.Dataset:
    """The cube as a lazy dataset, opened once per process. Without dask: each
    view reads a few Zarr chunks, and a dask graph per read would cost more than
    the read."""
    try:
        ds = open_cube(path, cube, chunks=None)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{path}: cannot open cube {cube!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if "spec_sha256" not in ds.attrs or "done" not in ds:
        raise StoreError(f"{path}: group {cube!r} is not a Perturber cube")
    return ds


@functools.lru_cache(maxsize=8)
def _done(path: str, cube: str) -> np.ndarray:
    """(chunk grid) bool, read once per process: one small file per chunk, so a
    million-sample store takes seconds to read. Chunks written after the viewer
    started show once it is restarted."""
    return open_store(path, cube)["done"].values.astype(bool)


def cube_names(path: str) -> list[str]:
    """The cube groups of a store."""
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise StoreError(f"{path}: not a Zarr store ({type(exc).__name__})") from None
    names = [name for name, _ in group.groups() if name != "featureviz"]  # feature visualisations are not a cube
    if not names:
        raise StoreError(f"{path}: the store holds no cube")
    return sorted(names)


class CubeState(param.Parameterized):
    """The current grid point of one cube and the models compared there."""

    model_a = param.Selector(doc="Left model")
    model_b = param.Selector(doc="Right model")
    score = param.Selector(default="probability", objects=["probability", "logit"], doc="What the top-5 shows")
    live_on = param.Boolean(default=False, doc="Compute the point live (off the grid) instead of reading the store")
    live_factor = param.Selector(doc="The factor set off the grid")
    live_value = param.Number(default=0.0, doc="Its value")
    live_status = param.String(default="", doc="What live compute did last")
    live_result = param.Parameter(default=None, doc="The last live result (viewer.live.LiveResult)")
    live_cancelled = param.Integer(default=0, doc="Stale live requests cancelled in this session")

    def __init__(self, path: str, cube: str, engine: Any = None, session: str = "", **params: Any):
        self.path, self.cube = path, cube
        self.ds = open_store(path, cube)
        self.axes: list[str] = list(self.ds.attrs["axes"])
        self.fixed: dict[str, Any] = json.loads(self.ds.attrs["fixed"])
        self.chunk_shape = list(self.ds["done"].attrs["chunk_shape"])
        self._done = _done(path, cube)
        models = [str(m) for m in self.ds["model"].values]
        super().__init__(**params)
        self._position: dict[str, dict[Any, int]] = {}  # axis → grid value → index
        self._top5: dict[tuple, Any] = {}  # (index, model) → top5 rows, the last few points
        self._image: tuple[Any, Any] = (None, None)  # (index, image) of the last image read
        for axis in self.axes:
            values = [v.item() if hasattr(v, "item") else str(v) for v in self.ds[axis].values]
            self._position[axis] = {v: i for i, v in enumerate(values)}
            f = factors.get(axis)
            self.param.add_parameter(axis, param.Selector(default=values[0], objects=values, doc=f.doc, label=axis))
        self.param.model_a.objects = models
        self.param.model_b.objects = models
        self.model_a = models[0]
        self.model_b = models[1] if len(models) > 1 else models[0]
        # Live compute: any numeric factor, axis or fixed, set to any value in its domain.
        self.engine, self.session = engine, session or str(id(self))
        self._latest: str | None = None  # key of the newest live request
        self._latest_pending = False
        numeric = [n for n, f in factors.FACTORS.items() if f.numeric]
        self.param.live_factor.objects = numeric
        self.live_factor = next((a for a in self.axes if a in numeric), numeric[0])
        self.live_value = float(self.point()[self.live_factor])
        # Registered before any view's watcher, so views read the new result;
        # a new live factor starts from its value at the current point.
        self.param.watch(self._factor_changed, ["live_factor"])
        self.param.watch(self._update_live, ["live_on", "live_factor", "live_value", "model_a", "model_b", *self.axes])

    # ------------------------------------------------------------------ where

    def index(self) -> tuple[int, ...]:
        """Grid index of the current point along each axis."""
        return tuple(self._position[axis][getattr(self, axis)] for axis in self.axes)

    def point(self) -> dict[str, Any]:
        """Every factor's value at the current point (axes from the state, the rest
        fixed, and the live factor's value when live compute is on)."""
        out = {**self.fixed, **{axis: getattr(self, axis) for axis in self.axes}}
        if self.live_on:
            out[self.live_factor] = self.live_value
        return out

    def live_layers(self) -> tuple[list[str], dict[str, list[int]]]:
        """(layers, layer → neurons) the store records, asked of live compute too."""
        layers, neurons = [], {}
        for name, var in self.ds.data_vars.items():
            if name.startswith("act_") and var.attrs.get("model") == self.model_a:
                layer = str(var.attrs["layer"])
                layers.append(layer)
                neurons[layer] = [int(n) for n in self.ds[f"neuron_{name[4:]}"].values]
        return layers, neurons

    def _factor_changed(self, event):
        on = self.live_on
        self.live_on = False  # the old value must not be tried on the new factor
        self.live_value = float({**self.fixed, **{a: getattr(self, a) for a in self.axes}}[event.new])
        self.live_on = on

    def _update_live(self, *_):
        """Ask the engine for the current point. In a served session the answer
        arrives later (the server stays responsive, and a newer request cancels
        this one); without a server (tests, scripts) it is waited for."""
        if not self.live_on:
            self.live_result, self.live_status = None, ""
            return
        if self.engine is None:
            self.live_result, self.live_status = None, "live compute is off: start the viewer with --engine"
            return
        from perturber.viewer.live import EngineError

        layers, neurons = self.live_layers()
        point = dict(self.point())
        models = list(dict.fromkeys([self.model_a, self.model_b]))
        size = int(self.ds.sizes.get("y", 224))
        try:
            factors.validate(point)  # a bad value answers at once, without a task
            key = self.engine.key(point, models, layers, neurons, size)
            hit = self.engine.cached(key)
            if hit is not None:
                self._latest = key
                self._show(hit, True)
                return
            key, future = self.engine.submit(self.session, point, models, layers, neurons, size)
        except EngineError as exc:
            self.live_result, self.live_status = None, f"live compute failed: {exc}"
            return
        except Exception as exc:  # a bad value: the factor's own one-line error
            self.live_result, self.live_status = None, f"live compute failed: {str(exc).splitlines()[0]}"
            return
        if self._latest is not None and self._latest_pending:
            self.live_cancelled += 1  # the engine cancelled the session's stale request
        self._latest, self._latest_pending = key, True
        import panel as pn

        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            self.live_status = f"computing {self.live_factor} = {self.live_value:g}…"
            future.add_done_callback(lambda _f: doc.add_next_tick_callback(lambda: self._deliver(key, future)))
        else:
            self._deliver(key, future)

    def _deliver(self, key: str, future: Any) -> None:
        from perturber.viewer.live import EngineError

        if key != self._latest:
            return  # stale: a newer request is on its way
        self._latest_pending = False
        try:
            result = self.engine.result(key, future)
        except EngineError as exc:
            self.live_result, self.live_status = None, f"live compute failed: {exc}"
            return
        self._show(result, False)

    def _show(self, result: Any, hit: bool) -> None:
        stale = f"; {self.live_cancelled} stale request{'s' if self.live_cancelled != 1 else ''} cancelled" if self.live_cancelled else ""
        self.live_status = (f"live: {self.live_factor} = {self.live_value:g}, "
                            + ("from the cache" if hit else f"computed in {result.seconds * 1000:.0f} ms") + stale)
        self.live_result = result

    def computed(self) -> bool:
        """Whether the current point's chunk has been written."""
        chunk = tuple(i // c for i, c in zip(self.index(), self.chunk_shape))
        return bool(self._done[chunk])

    def _sel(self) -> dict[str, Any]:
        return dict(zip(self.axes, self.index()))

    # ------------------------------------------------------------------ what

    def image(self) -> np.ndarray | None:
        """The model input at the current point, (S, S, 3) uint8, or None (not computed / not stored)."""
        if self.live_on:
            return None if self.live_result is None else self.live_result.image
        if "image" not in self.ds or not self.computed():
            return None
        index = self.index()
        if self._image[0] != index:  # the input view and the neuron view show the same image
            self._image = (index, np.asarray(self.ds["image"].isel(**self._sel()).values))
        return self._image[1]

    def top5(self, model: str) -> list[tuple[str, float, float]] | None:
        """(class name, probability, logit) for the top classes of ``model``; None if not computed."""
        if self.live_on:
            if self.live_result is None or model not in self.live_result.logits:
                return None
            logits = self.live_result.logits[model].astype(np.float64)
            p = softmax(logits)
            top = np.argsort(-p)[:5]
            names = self.ds["class_name"].values
            return [(str(names[c]), float(p[c]), float(logits[c])) for c in top]
        if not self.computed():
            return None
        key = (self.index(), model)
        if key not in self._top5:  # several views ask for the same point's top-5
            if len(self._top5) > 64:
                self._top5.clear()
            self._top5[key] = self._read_top5(model)
        return self._top5[key]

    def _read_top5(self, model: str) -> list[tuple[str, float, float]] | None:
        sel = {**self._sel(), "model": list(self.ds["model"].values).index(model)}
        classes = self.ds["top_class"].isel(**sel).values
        probs = self.ds["top_prob"].isel(**sel).values
        logits = self.ds["logits"].isel(**sel).values.astype(np.float32)
        if np.isnan(classes).any():
            return None
        names = self.ds["class_name"].values
        return [(str(names[int(c)]), float(p), float(logits[int(c)])) for c, p in zip(classes, probs)]

    def activations(self, model: str, layer: str, positions: list[int]) -> np.ndarray | None:
        """(N, h, w) float32 activations of the stored neurons at ``positions``."""
        if self.live_on:
            if self.live_result is None:
                return None
            live = self.live_result.activations.get(model, {}).get(layer)
            return None if live is None else live[positions].astype(np.float32)
        name = f"act_{model}_{layer}"
        if name not in self.ds:
            return None
        return self.ds[name].isel(**self._sel())[positions].values.astype(np.float32)

    def attributions(self) -> list[str]:
        """Attributions of the assets at the current point (CC-BY)."""
        from perturber.pipeline import assets

        return assets.attributions(self.point())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of float16/float32 logits (float64 result)."""
    z = logits.astype(np.float64)
    z = np.exp(z - np.nanmax(z, axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class Landscape(param.Parameterized):
    """What the response landscape shows: a class's probability along one axis
    (curves, one per model) and over two axes (a heatmap for one model)."""

    target = param.Integer(default=-1, bounds=(-1, 999), doc="ImageNet class (-1: the left model's top class here)")
    axis = param.Selector(doc="Axis of the curves")
    x = param.Selector(doc="Heatmap columns")
    y = param.Selector(doc="Heatmap rows")

    def __init__(self, state: CubeState, **params: Any):
        super().__init__(**params)
        self.state = state
        self._cache: dict[tuple, np.ndarray] = {}
        numeric = [a for a in state.axes if factors.get(a).numeric] or state.axes
        self.param.axis.objects = state.axes
        self.param.x.objects = state.axes
        self.param.y.objects = state.axes
        self.axis = numeric[0]
        self.x = numeric[0]
        others = [a for a in numeric if a != self.x] + [a for a in state.axes if a != self.x]
        self.y = others[0] if others else self.x

    def target_class(self) -> int | None:
        if self.target >= 0:
            return self.target
        top = self.state.top5(self.state.model_a)
        if top is None:
            return None
        names = list(self.state.ds["class_name"].values)
        return names.index(top[0][0])

    def _probs(self, free: list[str], model: str) -> np.ndarray | None:
        """Probability of the target class with ``free`` axes varying, the others at the current point."""
        target = self.target_class()
        if target is None:
            return None
        s = self.state
        sel = {a: i for a, i in zip(s.axes, s.index()) if a not in free}
        sel["model"] = list(s.ds["model"].values).index(model)
        key = (tuple(free), target, tuple(sel.items()))
        if key not in self._cache:  # moving along a shown axis redraws the same values: read them once
            if len(self._cache) > 32:
                self._cache.clear()
            logits = s.ds["logits"].isel(**sel).transpose(*free, "class").values
            self._cache[key] = softmax(logits)[..., target]
        return self._cache[key]

    def curves(self) -> dict[str, tuple[list, np.ndarray]] | None:
        """model → (axis values, probabilities); NaN where not computed."""
        out = {}
        for model in dict.fromkeys([self.state.model_a, self.state.model_b]):
            p = self._probs([self.axis], model)
            if p is None:
                return None
            out[model] = (list(self.state.param[self.axis].objects), p)
        return out

    def heatmap(self) -> tuple[list, list, np.ndarray] | None:
        """(x values, y values, probabilities (y, x)) for the left model."""
        if self.x == self.y:
            return None
        p = self._probs([self.y, self.x], self.state.model_a)
        if p is None:
            return None
        return list(self.state.param[self.x].objects), list(self.state.param[self.y].objects), p


@functools.lru_cache(maxsize=8)
def _top1(path: str, cube: str) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 class, top-1 probability), each (*axes, model), read once per process."""
    ds = open_store(path, cube)
    return ds["top_class"].isel(rank=0).values, ds["top_prob"].isel(rank=0).values


def sensitivity(state: CubeState) -> dict[str, dict[str, float]]:
    """model → axis → how much the axis moves the prediction.

    For each axis: the spread (max - min) of the top-1 probability along that
    axis, averaged over every combination of the other axes (NaN-aware).
    """
    _, prob = _top1(state.path, state.cube)
    out: dict[str, dict[str, float]] = {}
    for m, model in enumerate(str(v) for v in state.ds["model"].values):
        p = prob[..., m]
        out[model] = {}
        for k, axis in enumerate(state.axes):
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: chunks not computed
                spread = np.nanmax(p, axis=k) - np.nanmin(p, axis=k)
                out[model][axis] = float(np.nanmean(spread)) if np.isfinite(spread).any() else float("nan")
    return out


@functools.lru_cache(maxsize=16)
def _wrong(path: str, cube: str, m: int) -> np.ndarray:
    """(*axes) bool: where model ``m``'s top-1 is not one of the object's classes
    (computed cells only), once per process."""
    from perturber.pipeline import assets

    ds = open_store(path, cube)
    axes = list(ds.attrs["axes"])
    top = _top1(path, cube)[0][..., m]
    objects = [str(o) for o in ds["object"].values] if "object" in axes else [json.loads(ds.attrs["fixed"]).get("object", "dog")]
    expected = np.zeros(top.shape, dtype=bool)
    for i, obj in enumerate(objects):
        if obj not in assets.object_ids():
            continue
        if "object" in axes:
            index = [slice(None)] * top.ndim
            index[axes.index("object")] = i
            expected[tuple(index)] = np.isin(top[tuple(index)], assets.imagenet_class_indices(obj))
        else:
            expected = np.isin(top, assets.imagenet_class_indices(obj))
    return ~expected & ~np.isnan(top)


def failures(state: CubeState, model: str, limit: int = 10) -> list[dict[str, Any]]:
    """Grid points of the current object where ``model``'s top-1 is not one of
    its classes, nearest first to the current point (fewest axes changed, then
    fewest grid steps).

    Each entry: the axis values of the point, its top-1 class name and probability.
    """
    classes, prob = _top1(state.path, state.cube)
    m = list(str(v) for v in state.ds["model"].values).index(model)
    top = classes[..., m]
    wrong = _wrong(state.path, state.cube, m)
    here = np.array(state.index())
    if "object" in state.axes:  # another object is not a small change of this scene
        k = state.axes.index("object")
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
    names = state.ds["class_name"].values
    out = []
    for idx in points[order]:
        values = {axis: state.param[axis].objects[i] for axis, i in zip(state.axes, idx)}
        out.append({**values, "top1": str(names[int(top[tuple(idx)])]), "p": float(prob[tuple(idx) + (m,)])})
    return out


@functools.lru_cache(maxsize=8)
def expected_probability(path: str, cube: str) -> np.ndarray:
    """(*axes, model): each sample's total probability of its object's classes,
    once per process; NaN where not computed. Stores record it as
    ``expected_prob``; for older ones it is derived from the logits with dask."""
    from perturber.pipeline import assets

    if "expected_prob" in open_store(path, cube):
        return open_store(path, cube)["expected_prob"].values
    ds = open_cube(path, cube)  # with dask: the whole cube's logits, chunk by chunk
    axes = list(ds.attrs["axes"])
    fixed = json.loads(ds.attrs["fixed"])
    logits = ds["logits"].astype("float32")
    p = np.exp(logits - logits.max("class"))
    p = p / p.sum("class")
    objects = [str(o) for o in ds["object"].values] if "object" in axes else [str(fixed.get("object", "dog"))]
    masks = []
    for obj in objects:
        mask = np.zeros(1000, dtype=np.float32)
        if obj in assets.object_ids():
            mask[assets.imagenet_class_indices(obj)] = 1.0
        masks.append(mask)
    if "object" in axes:
        weights = xr.DataArray(np.stack(masks), dims=("object", "class"), coords={"object": ds["object"].values})
    else:
        weights = xr.DataArray(masks[0], dims=("class",))
    return (p * weights).sum("class", skipna=False).transpose(*axes, "model").values
