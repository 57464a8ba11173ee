"""Feature-visualisation precompute: the store's ``featureviz`` group (layout:
:mod:`perturber.featureviz.group`) written by Dask tasks of one batch each,
resumable like the cube precompute. The spec: :mod:`perturber.featureviz.spec`;
its ``logits: top5`` becomes the classes of the store's stored top-5 (:func:`resolve`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import dask.array as da
import numpy as np
import xarray as xr
import yaml
import zarr
from tqdm import tqdm

from perturber.featureviz import FeatureVizError
from perturber.featureviz.group import GROUP
from perturber.featureviz.optimize import random_directions, visualise
from perturber.featureviz.spec import TOP5, FeatureVizSpec, Target, load_spec, parse_spec
from perturber.featureviz.spec import channels as layer_channels
from perturber.pipeline import models, names
from perturber.pipeline.store import MARK, group_state, write_template
from perturber.pipeline.tasks import run_tasks, use_threads

__all__ = ["create_or_check", "missing", "compute_chunk", "precompute", "load_spec", "parse_spec", "top5_classes", "resolve"]


def top5_classes(store: Any) -> tuple[int, ...]:
    """Every class index (sorted) in the stored top-5 of any model at any computed
    sample of any cube of ``store`` (read through dask, a task per shard)."""
    try:
        root = zarr.open_group(store, mode="r")
    except Exception:
        return ()
    found: set[int] = set()
    for name, group in root.groups():
        if name in names.NOT_CUBES or names.TOP_CLASS not in group:
            continue
        array = group[names.TOP_CLASS]  # int16, -1 where not computed
        values = da.unique(da.from_zarr(array, chunks=getattr(array, "shards", None) or array.chunks)).compute()
        found.update(int(v) for v in values if v >= 0)
    return tuple(sorted(found))


def resolve(spec: FeatureVizSpec, store: Any) -> FeatureVizSpec:
    """``spec`` with each ``logits: top5`` target given the classes of :func:`top5_classes`
    (its source names them, so a store whose top-5 has changed since is told apart);
    a spec without one is returned as it is."""
    if not any(t.top5 for t in spec.targets):
        return spec
    units = top5_classes(store)
    if not units:
        raise FeatureVizError(f"logits: {TOP5} needs a cube with computed top-5 classes in {store} (run the precompute first)")
    raw = yaml.safe_load(spec.source)
    for entry in raw["models"].values():
        if entry.get("logits") == TOP5:
            entry["logits"] = list(units)
    targets = tuple(dataclasses.replace(t, units=units, top5=False) if t.top5 else t for t in spec.targets)
    return dataclasses.replace(spec, targets=targets, source=yaml.safe_dump(raw, sort_keys=True))


def _directions(spec: FeatureVizSpec, target: Target) -> np.ndarray:
    count = layer_channels(target.model, models.spec(target.model).layer_path(target.layer))
    seed = int.from_bytes(hashlib.sha256(f"{spec.settings.seed}/{target.name}".encode()).digest()[:4], "little")
    return random_directions(count, max(target.units) + 1, seed)


def _versions() -> dict[str, str]:
    out = {}
    for package in ("torch-lucent", "kornia", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def create_or_check(spec: FeatureVizSpec, store: Any) -> None:
    """Write the group's template, or check that the existing one is from this spec
    (an interrupted template is written again: :func:`perturber.pipeline.store.write_template`)."""
    spec = resolve(spec, store)
    state, attrs = group_state(store, GROUP)
    if state == "complete":
        sha = attrs.get(MARK)
        if sha != spec.sha256():
            raise FeatureVizError(f"the store's {GROUP} group was written from another spec (sha256 {str(sha)[:12]}…); "
                                  "remove the group or write to another store")
        return
    s, p = spec.settings.size, len(spec.parameterisations)
    coords: dict[str, Any] = {
        "parameterisation": ("parameterisation", np.array(spec.parameterisations, dtype=object), {"long_name": "image parameterisation"}),
        "stage": ("stage", np.array(["start", "end"], dtype=object), {"long_name": "objective on the starting / optimised image"}),
        "fy": ("fy", np.arange(s), {"units": "pixel", "long_name": "row"}),
        "fx": ("fx", np.arange(s), {"units": "pixel", "long_name": "column"}),
        "rgb": ("rgb", np.array(["r", "g", "b"], dtype=object), {"long_name": "colour channel"}),
    }
    data: dict[str, Any] = {}
    directions: dict[str, np.ndarray] = {}  # target → (units, channels), drawn once
    for t in spec.targets:
        tn = t.names
        unit = tn.unit
        long = {"channel": "channel index", "direction": "random direction index", "logit": "ImageNet class index"}[t.kind]
        coords[unit] = (unit, np.array(t.units), {"long_name": long, "units": "1"})
        attrs = {"model": t.model, "layer": t.layer, "kind": t.kind, "checkpoint_of": t.checkpoint_of or ""}
        n = len(t.units)
        data[tn.images] = (("parameterisation", unit, "fy", "fx", "rgb"),
                           da.zeros((p, n, s, s, 3), dtype=np.uint8, chunks=(1, spec.batch, s, s, 3)),
                           {**attrs, "long_name": "feature visualisation (0 until computed: see fvdone)"})
        data[tn.objective] = (("parameterisation", unit, "stage"),
                              da.full((p, n, 2), np.nan, dtype=np.float32, chunks=(1, spec.batch, 2)),
                              {**attrs, "long_name": "objective (mean activation, direction dot product or logit) without transforms"})
        data[tn.done] = (("parameterisation", tn.chunk),
                         da.zeros((p, spec.chunks(t)), dtype=np.uint8, chunks=(1, 1)),
                         {**attrs, "long_name": "1 once the chunk of units is written", "batch": spec.batch})
        if t.kind == "direction":
            directions[t.name] = _directions(spec, t)[list(t.units)]
            data[tn.direction] = ((unit, tn.channel), directions[t.name], {**attrs, "long_name": "unit vector in channel space"})
    ds = xr.Dataset({k: xr.Variable(dims, arr, attrs) for k, (dims, arr, attrs) in data.items()},
                    coords={k: xr.Variable(*v) for k, v in coords.items()})
    ds.attrs.update({"spec": spec.source, "spec_sha256": spec.sha256(), "settings": json.dumps(spec.settings.to_dict()),
                     "versions": json.dumps(_versions())})
    encoding = {k: {"_FillValue": np.nan} for k, v in ds.data_vars.items() if v.dtype.kind == "f"}

    def fill(group: zarr.Group) -> None:  # the directions are small: written with the template
        for t in spec.targets:
            if t.kind == "direction":
                group[t.names.direction][...] = directions[t.name]

    write_template(ds, store, GROUP, encoding, fill=fill)


def missing(spec: FeatureVizSpec, store: Any) -> list[tuple[Target, int, int]]:
    """(target, parameterisation index, chunk index) of every chunk not yet written."""
    spec = resolve(spec, store)
    group = zarr.open_group(store, path=GROUP, mode="r")
    out = []
    for t in spec.targets:
        done = group[t.names.done][...]
        out += [(t, p, c) for p in range(len(spec.parameterisations)) for c in range(spec.chunks(t)) if not done[p, c]]
    return out


def compute_chunk(spec: FeatureVizSpec, target: Target, p: int, chunk: int, store: Any,
                  threads: int | None = None) -> tuple[str, int]:
    """Optimise one batch of units and write it; returns (target name, units)."""
    use_threads(threads)
    group = zarr.open_group(store, path=GROUP, mode="r+")
    lo, hi = chunk * spec.batch, min((chunk + 1) * spec.batch, len(target.units))
    tn = target.names
    directions = group[tn.direction][...] if target.kind == "direction" else None
    positions = list(range(lo, hi))  # directions are stored in unit order
    units = positions if target.kind == "direction" else list(target.units[lo:hi])
    result = visualise(target.model, target.layer, units, kind=target.kind, parameterisation=spec.parameterisations[p],
                       settings=spec.settings, directions=directions)
    group[tn.images][p, lo:hi] = result.images
    group[tn.objective][p, lo:hi] = np.stack([result.start, result.end], axis=1)
    group[tn.done][p, chunk] = 1
    return target.name, hi - lo


def precompute(spec: FeatureVizSpec, store: Any, scheduler: str | None = None, workers: int | None = None,
               progress: bool = True, echo: Callable[[str], None] = print) -> int:
    """Compute every missing batch into ``store``'s featureviz group (``logits: top5``:
    the classes of the store's top-5, :func:`resolve`); returns units written."""
    spec = resolve(spec, store)
    create_or_check(spec, store)
    jobs = missing(spec, store)
    if not jobs:
        echo("nothing to do: every feature visualisation is already in the store")
        return 0
    total = sum(min(spec.batch, len(t.units) - c * spec.batch) for t, _, c in jobs)
    echo(f"{total} feature visualisations in {len(jobs)} batches of up to {spec.batch} "
         f"({spec.settings.steps} steps at {spec.settings.size} px)")
    bar = tqdm(total=total, unit="unit", desc="featureviz", disable=not progress, file=sys.stderr)
    start = time.perf_counter()
    calls = [(f"featureviz-{t.name}-{p}-{c}", compute_chunk, (spec, t, p, c, store)) for t, p, c in jobs]
    try:
        def units(result) -> int:
            bar.update(result[1])
            return result[1]

        done = run_tasks(calls, scheduler, workers, units, echo)
    finally:
        bar.close()
    echo(f"wrote {done} feature visualisations in {time.perf_counter() - start:.0f} s")
    return done


