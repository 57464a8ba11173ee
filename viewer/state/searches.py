"""The store's searches as the viewer reads them: fooling runs and failures off the grid.

- ``fooling/<run>`` (``perturber fool``, layout in
  :mod:`perturber.pipeline.searches.fooling`): :class:`FoolingView` filters
  the run's elites by class name and confidence and reads an elite's image
  only when it is shown (a 1000-class run holds ~150 MB of images);
- ``search/<run>`` (``perturber search``): :class:`SearchView` lists the
  failures found (sorted by their normalised distance from the start scene),
  gives each failure's full scene (the run's ``start_point`` updated with the
  failure's ``value`` row), and loads it into the explorer's live compute
  (:meth:`perturber.viewer.state.CubeState.load_point`).

A group that cannot be read as its layout says is one line
(:class:`~perturber.pipeline.searches.SearchError`), never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import param
import xarray as xr

from perturber.pipeline import classes, factors, groups, names
from perturber.pipeline.errors import one_line
from perturber.pipeline.searches import SearchError
from perturber.viewer import html

__all__ = ["SHOWN", "FAILURES", "THUMB", "runs", "FoolingView", "SearchView", "values_text"]

#: Elites shown at once (after filtering), and failures listed: a page stays light whatever the run's size.
SHOWN = 48
FAILURES = 40
#: Side (px) an elite is shown at: a larger elite is sent as every n-th pixel (what the browser
#: shows of it at that side, pixelated, anyway); 48 noise elites at 224 px are ~9 MB, at 112 px ~2.4 MB.
THUMB = 112

HISTORY = ("mean_confidence", "median_confidence", "classes_above_099")
FAILURE_VARIABLES = ("value", "distance_from_start", "top1_name", "set_prob")


def runs(path: str, kind: str) -> list[str]:
    """The runs under ``kind`` (``names.FOOLING`` or ``names.SEARCH``) in the store at ``path``
    (:func:`perturber.pipeline.groups.names`); a store that cannot be listed is one line."""
    try:
        return groups.names(path, kind)
    except Exception as exc:
        raise SearchError(f"{path}: cannot list its {kind} runs ({type(exc).__name__})") from None


def _open(path: str, kind: str, run: str, command: str) -> xr.Dataset:
    try:
        return xr.open_zarr(path, group=f"{kind}/{run}", chunks=None, consolidated=False)
    except Exception as exc:
        raise SearchError(f"{kind} run {run!r} cannot be read ({type(exc).__name__}); "
                          f"`perturber {command}` writes it again") from None


def _missing(ds: xr.Dataset, wanted: tuple[str, ...], kind: str, run: str) -> None:
    absent = [v for v in wanted if v not in ds.variables]
    if absent:
        raise SearchError(f"{kind} run {run!r} is not a {kind} group: no {', '.join(absent)}")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def values_text(values: dict[str, Any]) -> str:
    """``yaw = 37.5, pitch = 12``."""
    return ", ".join(f"{k} = {_number(v)}" for k, v in values.items())


class FoolingView(param.Parameterized):
    """One fooling run: its elites filtered by class name (a case-insensitive
    substring) and a least confidence, sorted by confidence (highest first)."""

    text = param.String(default="", doc="Shown: elites whose class name holds this (any case)")
    min_confidence = param.Number(default=0.0, bounds=(0.0, 1.0), doc="Shown: elites with at least this confidence")

    def __init__(self, path: str, run: str, **params: Any):
        super().__init__(**params)
        self.path, self.run = path, run
        ds = _open(path, names.FOOLING, run, "fool")
        _missing(ds, ("elite", "confidence", "found_at", "class_name"), names.FOOLING, run)
        try:
            self.classes = ds["class"].values.astype(np.int64)
            self.class_names = [str(n) for n in ds["class_name"].values]
            self.confidence = ds["confidence"].values.astype(np.float64)
            self.found_at = ds["found_at"].values.astype(np.int64)
            self.methods = [str(m) for m in ds["method"].values] if "method" in ds else [str(ds.attrs.get("method", ""))] * len(self.classes)
            self.transfer = ds["transfer"].values if "transfer" in ds else None
            self.transfer_top1 = ds["transfer_top1"].values if "transfer_top1" in ds else None
            self.others = [str(m) for m in ds["model"].values] if self.transfer is not None else []
            self.history = ({k: ds[k].values for k in HISTORY if k in ds} if "generation" in ds.dims else {})
        except Exception as exc:
            raise SearchError(f"fooling run {run!r} cannot be read ({one_line(exc, typed=True)}); "
                              "`perturber fool` writes it again") from None
        self.attrs = dict(ds.attrs)
        self.elites = ds["elite"]  # lazy: an elite's image is read when it is shown
        self._png: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.classes)

    def matches(self) -> np.ndarray:
        """Positions (along ``class``) of the elites that pass the filter, highest confidence first."""
        text = self.text.strip().lower()
        keep = [i for i, n in enumerate(self.class_names)
                if (not text or text in n.lower()) and self.confidence[i] >= self.min_confidence]
        return np.array(sorted(keep, key=lambda i: (-self.confidence[i], i)), dtype=np.int64)

    def shown(self, limit: int = SHOWN) -> tuple[np.ndarray, int]:
        """(the first ``limit`` matches, how many match)."""
        found = self.matches()
        return found[:limit], len(found)

    def caption(self, i: int) -> str:
        """``goldfish #1 · 0.997``."""
        return f"{self.class_names[i]} #{self.classes[i]} · {self.confidence[i]:.3f}"

    def found(self, i: int) -> str:
        """``cppn, generation 12``."""
        return f"{self.methods[i]}, generation {self.found_at[i]}"

    def verdicts(self, i: int) -> list[str]:
        """The other models on elite ``i``: ``efficientnet_lite1: 0.412 · top-1 goldfish``."""
        if self.transfer is None:
            return []
        categories = classes.imagenet_categories()
        out = []
        for m, model in enumerate(self.others):
            line = f"{model}: {float(self.transfer[m, i]):.3f}"
            if self.transfer_top1 is not None:
                line += f" · top-1 {categories[int(self.transfer_top1[m, i])]}"
            out.append(line)
        return out

    def image_png(self, i: int) -> str:
        """Elite ``i`` as a PNG data URI (every n-th pixel, n = side // :data:`THUMB`),
        read from the store the first time it is shown."""
        self.read_images([i])
        return self._png[int(i)]

    def read_images(self, positions: Any) -> None:
        """Read the elites at ``positions`` not read yet, in one read: a chunk of the
        store may hold many classes (zarr's default chunks of a 1000-class run
        hold 250), and one read decodes each chunk once."""
        new = sorted({int(i) for i in positions} - set(self._png))
        if new:
            images = np.asarray(self.elites.isel({"class": new}).values, dtype=np.uint8)
            step = max(1, images.shape[1] // THUMB)
            images = images[:, ::step, ::step]
            self._png.update({i: html.png(image) for i, image in zip(new, images)})

    def history_frame(self) -> pd.DataFrame | None:
        """Per generation: mean and median confidence (over 1000 classes), classes ≥ 0.99; None when not stored."""
        if not self.history:
            return None
        frame = pd.DataFrame(self.history)
        frame.insert(0, "generation", np.arange(len(frame)))
        return frame

    def summary(self) -> str:
        a = self.attrs
        above = int((self.confidence >= 0.99).sum())
        return (f"{a.get('method', '?')} on {a.get('model', '?')}, seed {a.get('seed', '?')}: {len(self)} classes with an "
                f"elite, {above} at ≥ 0.99, median {np.median(self.confidence) if len(self) else 0:.3f}; "
                f"{a.get('evaluations', '?')} images scored in {float(a.get('seconds', 0)):.0f} s")


class SearchView(param.Parameterized):
    """One ``search/<run>``: its failures, each one click from live compute in the explorer ``state``."""

    note = param.String(default="", doc="One line: what the last click did, or why it did not")

    def __init__(self, path: str, run: str, state: Any, **params: Any):
        super().__init__(**params)
        self.path, self.run, self.state = path, run, state
        ds = _open(path, names.SEARCH, run, "search")
        _missing(ds, ("factor", *FAILURE_VARIABLES), names.SEARCH, run)
        try:
            ds = ds.load()
            self.factors = [str(f) for f in ds["factor"].values]
            self.values = ds["value"].transpose("failure", "factor").values.astype(np.float64)
            self.distance = ds["distance_from_start"].values.astype(np.float64)
            self.top1_name = [str(n) for n in ds["top1_name"].values]
            self.set_prob = ds["set_prob"].values.astype(np.float64)
            self.found_at = ds["found_at"].values.astype(np.int64) if "found_at" in ds else None
            self.start_point = json.loads(ds.attrs["start_point"])
            if not isinstance(self.start_point, dict):
                raise ValueError("start_point is not a JSON object")
        except Exception as exc:
            raise SearchError(f"search run {run!r} cannot be read ({one_line(exc, typed=True)}); "
                              "`perturber search` writes it again") from None
        self.attrs = dict(ds.attrs)
        self.ds = ds

    def order(self) -> list[int]:
        """Failure positions, nearest to the start first (ties: stored order)."""
        return [int(i) for i in np.argsort(self.distance, kind="stable")]

    def failure_values(self, i: int) -> dict[str, float]:
        """The searched factors' values at failure ``i``."""
        return {f: float(v) for f, v in zip(self.factors, self.values[i])}

    def scene(self, i: int) -> dict[str, Any]:
        """The full failing scene: ``start_point`` updated with failure ``i``'s values."""
        return {**self.start_point, **self.failure_values(i)}

    def label(self, i: int) -> str:
        """``yaw = 37.5, pitch = 12 · distance 0.121 → tabby (class set 0.031)``."""
        return (f"{values_text(self.failure_values(i))} · distance {self.distance[i]:.3g} → {self.top1_name[i]} "
                f"(class set {self.set_prob[i]:.3f})")

    def failure_map(self) -> tuple[str, str, np.ndarray, np.ndarray, np.ndarray] | None:
        """(factor a, factor b, a's cell centres (A,), b's (B,), least distance (A, B) with NaN where none); None when absent."""
        if "failure_map" not in self.ds:
            return None
        fmap = self.ds["failure_map"]
        dim_a, dim_b = (str(d) for d in fmap.dims)
        return (dim_a.removeprefix("map_"), dim_b.removeprefix("map_"), fmap[dim_a].values.astype(np.float64),
                fmap[dim_b].values.astype(np.float64), fmap.values.astype(np.float64))

    def load(self, i: int) -> bool:
        """Load failure ``i``'s full scene into the explorer's live compute (the
        search's model becomes the left model when the cube has it); without an
        engine, or with a value out of its domain, :attr:`note` says why. Never raises."""
        state = self.state
        where = values_text(self.failure_values(i))
        if state.engine is None:
            self.note = (f"live compute is off: start the viewer with --engine local (or a Dask scheduler's address) "
                         f"to compute this failing scene ({where})")
            return False
        scene = self.scene(i)
        try:
            factors.validate(scene)
        except Exception as exc:
            self.note = f"failure {i + 1} cannot be computed: {one_line(exc)}"
            return False
        model = str(self.attrs.get("model", ""))
        moves = {"model_a": model} if model in state.param["model_a"].objects else {}
        other = "" if moves or not model else f" (the search's model {model} is not in this cube)"
        state.load_point(scene, **moves)
        self.note = f"failure {i + 1} ({where}) loaded into live compute: the model input above shows it{other}"
        return True
