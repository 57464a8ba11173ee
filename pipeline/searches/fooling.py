"""The ``fooling/<run>`` group: one run's elites, its history and their transfer.

Layout (plain ``xarray.open_zarr(store, group="fooling/<run>")`` opens it):

- per elite, dim ``class`` (K classes that have an elite; coordinate: the
  ImageNet index, with ``class_name`` beside it):
  ``elite`` (class, y, x, channel) uint8, the image the model saw;
  ``confidence`` (class) float32, the searched model's softmax probability of
  that class on it; ``found_at`` (class) int32, the generation (or gradient
  step) it appeared in; ``method`` (class) str; ``seed`` (class) int64;
- per generation, dim ``generation`` (G): ``mean_confidence`` and
  ``median_confidence`` over all 1000 classes (a class without an elite counts
  as 0) and ``classes_above_099`` (classes whose elite has ≥ 0.99), as of the
  end of that generation;
- transfer, dim ``model`` (the other listed models): ``transfer`` (model,
  class) float32, that model's probability of the elite's class, and
  ``transfer_top1`` (model, class) int32, its own top-1 class;
- attrs: ``method``, ``model`` (the searched one), ``seed``, ``settings``
  (JSON), ``definition``, ``evaluations`` (images scored), ``seconds``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import xarray as xr

from perturber.pipeline import classes, groups, names

__all__ = ["Elites", "history_row", "to_dataset", "write", "read", "runs", "group"]

DEFINITION = ("confidence: the searched model's softmax probability of the class on its elite image "
              "(the image at the model's input size, as stored); mean and median over all 1000 classes, "
              "a class without an elite counting as 0")


@dataclass
class Elites:
    """A run's result. ``images`` (K, S, S, 3) uint8; ``classes``, ``confidence``,
    ``found_at`` (K,); ``history`` name → (G,) arrays (see :func:`history_row`)."""

    method: str
    model: str
    seed: int
    classes: np.ndarray
    images: np.ndarray
    confidence: np.ndarray
    found_at: np.ndarray
    history: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0
    seconds: float = 0.0


def history_row(confidence_per_class: np.ndarray) -> dict[str, float]:
    """One generation's history from (1000,) elite confidences (0 where no elite)."""
    c = np.asarray(confidence_per_class, dtype=np.float64)
    return {"mean_confidence": float(c.mean()), "median_confidence": float(np.median(c)),
            "classes_above_099": int((c >= 0.99).sum())}


def group(run: str) -> str:
    """``fooling/<run>``; a one-line error for a bad run name."""
    return groups.path(names.FOOLING, run)


def to_dataset(e: Elites, transfer: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> xr.Dataset:
    k = len(e.classes)
    categories = classes.imagenet_categories()
    ds = xr.Dataset(
        {
            "elite": (("class", "y", "x", "channel"), np.asarray(e.images, dtype=np.uint8)),
            "confidence": ("class", np.asarray(e.confidence, dtype=np.float32), {"units": "1", "long_name": "softmax probability of the class"}),
            "found_at": ("class", np.asarray(e.found_at, dtype=np.int32), {"long_name": "generation (or step) the elite appeared in"}),
            "method": ("class", np.array([e.method] * k, dtype=object)),
            "seed": ("class", np.full(k, e.seed, dtype=np.int64)),
        },
        coords={"class": np.asarray(e.classes, dtype=np.int64),
                "class_name": ("class", np.array([categories[int(c)] for c in e.classes], dtype=object)),
                "channel": np.array(["r", "g", "b"], dtype=object)},
        attrs={"method": e.method, "model": e.model, "seed": int(e.seed), "settings": json.dumps(e.settings, default=str),
               "definition": DEFINITION, "evaluations": int(e.evaluations), "seconds": float(e.seconds)},
    )
    for key, values in e.history.items():
        ds[key] = ("generation", np.asarray(values))
    if e.history:
        ds = ds.assign_coords(generation=np.arange(len(next(iter(e.history.values()))), dtype=np.int64))
    if transfer:
        others = list(transfer)
        ds = ds.assign_coords(model=np.array(others, dtype=object))
        ds["transfer"] = (("model", "class"), np.stack([transfer[m][0] for m in others]).astype(np.float32),
                          {"units": "1", "long_name": "the other model's probability of the elite's class"})
        ds["transfer_top1"] = (("model", "class"), np.stack([transfer[m][1] for m in others]).astype(np.int32))
    return ds


def write(store: Any, run: str, e: Elites, transfer: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> xr.Dataset:
    """Write (replace, once complete) ``fooling/<run>``; returns the dataset written."""
    ds = to_dataset(e, transfer)
    ds.elite.encoding["chunks"] = (1, *ds.elite.shape[1:])  # one file per elite: the gallery reads only what it shows
    groups.write(store, names.FOOLING, run, ds)
    return ds


def read(store: Any, run: str) -> xr.Dataset:
    return groups.read(store, names.FOOLING, run)


def runs(store: Any) -> list[str]:
    """The fooling runs in a store (names of ``fooling/*`` groups)."""
    return groups.names(store, names.FOOLING)
