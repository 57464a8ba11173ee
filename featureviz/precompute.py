"""Feature-visualisation precompute: a YAML spec, the store's ``featureviz``
group, and Dask tasks of one batch each (resumable like the cube precompute).

Spec (``workflows/featureviz.yaml``)::

    size: 128                 # px
    steps: 128                # Adam steps
    seed: 0
    batch: 16                 # units optimised together (one task)
    parameterisations: [pixel, fourier]
    models:
      efficientnet_lite0:
        layers: {stage6: 16, head: [0, 5, 9]}   # first n channels, or a list
        directions: {head: 8}                   # random unit directions per layer
        logits: [207, 817]                      # class-logit visualisations
        checkpoints: [my_lite0_epoch5]          # registry entries: this model's checkpoints

Store layout (``xarray.open_zarr(store, group="featureviz")``), for each
model (a checkpoint counts as a model, with ``checkpoint_of`` in its
variables' attributes) and each target ``<model>_<layer>``, ``<model>_<layer>_dir``
or ``<model>_logits``:

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

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from perturber.featureviz import FeatureVizError
from perturber.featureviz.optimize import PARAMETERISATIONS, Settings, random_directions, visualise
from perturber.pipeline import models

__all__ = ["FeatureVizSpec", "Target", "FeatureVizError", "load_spec", "parse_spec", "precompute", "GROUP", "open_featureviz"]

GROUP = "featureviz"


@dataclass(frozen=True)
class Target:
    """What one stored array visualises: a layer's channels or directions, or the logits."""

    model: str
    layer: str  # friendly name or module path; "logits" for class logits
    kind: str  # channel | direction | logit
    units: tuple[int, ...]
    checkpoint_of: str | None = None

    @property
    def name(self) -> str:
        base = f"{self.model}_{self.layer}".replace(".", "_").replace("@", "_")
        return base + ("_dir" if self.kind == "direction" else "")


@dataclass(frozen=True)
class FeatureVizSpec:
    settings: Settings
    batch: int
    parameterisations: tuple[str, ...]
    targets: tuple[Target, ...]
    source: str  # the spec as YAML

    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def chunks(self, target: Target) -> int:
        return math.ceil(len(target.units) / self.batch)


def _units(where: str, raw: Any, limit: int) -> tuple[int, ...]:
    if isinstance(raw, bool) or raw is None:
        raise FeatureVizError(f"{where}: give a count or a list of indices, not {raw!r}")
    if isinstance(raw, int):
        if not 1 <= raw <= limit:
            raise FeatureVizError(f"{where}: count {raw} is outside 1..{limit}")
        return tuple(range(raw))
    if not isinstance(raw, list) or not raw or not all(isinstance(u, int) and not isinstance(u, bool) for u in raw):
        raise FeatureVizError(f"{where}: give a count or a non-empty list of whole numbers")
    bad = [u for u in raw if not 0 <= u < limit]
    if bad:
        raise FeatureVizError(f"{where}: index {bad[0]} is outside 0..{limit - 1}")
    if len(set(raw)) != len(raw):
        raise FeatureVizError(f"{where}: repeated index")
    return tuple(raw)


def _channels(model: str, path: str) -> int:
    """Channels of a layer, from one zeros forward pass on the CPU."""
    import torch

    net = models.load_model(model, "cpu")
    with torch.no_grad(), models.capture(net, [path]) as captured:
        net(models.preprocess(torch.zeros(1, 3, 64, 64), models.spec(model)))
    return int(captured[path].shape[1])


def parse_spec(raw: Any, name: str = "spec") -> FeatureVizSpec:
    """Validate a spec (a mapping as read from YAML) before any compute."""
    if not isinstance(raw, dict):
        raise FeatureVizError(f"{name}: a feature-visualisation spec is a mapping")
    known = {"size", "steps", "seed", "batch", "parameterisations", "models", "lr"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise FeatureVizError(f"{name}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")

    def whole(key, default, low, high):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FeatureVizError(f"{name}: {key} must be a whole number in {low}..{high}, not {value!r}")
        return value

    lr = raw.get("lr", 0.05)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1:
        raise FeatureVizError(f"{name}: lr must be a number in (0, 1], not {lr!r}")
    settings = Settings(size=whole("size", 128, 32, 1024), steps=whole("steps", 128, 1, 100_000),
                        seed=whole("seed", 0, 0, 2**31 - 1), lr=float(lr))
    batch = whole("batch", 16, 1, 4096)
    params = raw.get("parameterisations", list(PARAMETERISATIONS))
    if not isinstance(params, list) or not params or any(p not in PARAMETERISATIONS for p in params) or len(set(params)) != len(params):
        raise FeatureVizError(f"{name}: parameterisations must be a list of {', '.join(PARAMETERISATIONS)}, not {params!r}")
    entries = raw.get("models")
    if not isinstance(entries, dict) or not entries:
        raise FeatureVizError(f"{name}: models must map model names to what to visualise")
    targets: list[Target] = []
    for model, what in entries.items():
        where = f"{name}: model {model!r}"
        try:
            spec = models.spec(str(model))
        except models.ModelError as exc:
            raise FeatureVizError(f"{name}: {exc}") from None
        if not isinstance(what, dict):
            raise FeatureVizError(f"{where}: give layers, directions, logits and/or checkpoints")
        extra = sorted(set(what) - {"layers", "directions", "logits", "checkpoints"})
        if extra:
            raise FeatureVizError(f"{where}: unknown key {extra[0]!r} (known: checkpoints, directions, layers, logits)")
        checkpoints = what.get("checkpoints") or []
        if not isinstance(checkpoints, list):
            raise FeatureVizError(f"{where}: checkpoints must be a list of registry names")
        for ckpt in checkpoints:
            try:
                models.spec(str(ckpt))
            except models.ModelError as exc:
                raise FeatureVizError(f"{where}: checkpoint: {exc}") from None
        for owner, of in [(str(model), None)] + [(str(c), str(model)) for c in checkpoints]:
            for key, kind in (("layers", "channel"), ("directions", "direction")):
                layers = what.get(key) or {}
                if not isinstance(layers, dict):
                    raise FeatureVizError(f"{where}: {key} must map layer names to a count or a list")
                for layer, units in layers.items():
                    try:
                        path = spec.layer_path(str(layer))
                    except models.ModelError as exc:
                        raise FeatureVizError(f"{where}: {exc}") from None
                    if not _has_module(owner, path):
                        raise FeatureVizError(f"{where}: {owner} has no layer {layer!r} ({path})")
                    limit = _channels(owner, path) if kind == "channel" else 4096
                    targets.append(Target(owner, str(layer), kind, _units(f"{where}: {key}.{layer}", units, limit), of))
            if what.get("logits") is not None:
                targets.append(Target(owner, "logits", "logit", _units(f"{where}: logits", what["logits"], 1000), of))
    if not targets:
        raise FeatureVizError(f"{name}: nothing to visualise")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise FeatureVizError(f"{name}: {next(n for n in names if names.count(n) > 1)} is listed twice")
    return FeatureVizSpec(settings=settings, batch=batch, parameterisations=tuple(params), targets=tuple(targets),
                          source=yaml.safe_dump(raw, sort_keys=True))


def _has_module(model: str, path: str) -> bool:
    from perturber.pipeline.spec import _has_module as has

    return has(models.spec(model), path)


def load_spec(path: str | Path) -> FeatureVizSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise FeatureVizError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise FeatureVizError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_spec(raw, name=str(path))


# ------------------------------------------------------------------ store

def _directions(spec: FeatureVizSpec, target: Target) -> np.ndarray:
    channels = _channels(target.model, models.spec(target.model).layer_path(target.layer))
    seed = int.from_bytes(hashlib.sha256(f"{spec.settings.seed}/{target.name}".encode()).digest()[:4], "little")
    return random_directions(channels, max(target.units) + 1, seed)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch-lucent", "kornia", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def create_or_check(spec: FeatureVizSpec, store: Any) -> None:
    """Write the group's template, or check that the existing one is from this spec."""
    import dask.array as da
    import xarray as xr
    import zarr

    try:
        existing = zarr.open_group(store, path=GROUP, mode="r")
        sha = existing.attrs.get("spec_sha256")
        if sha != spec.sha256():
            raise FeatureVizError(f"the store's {GROUP} group was written from another spec (sha256 {str(sha)[:12]}…); "
                                  "remove the group or write to another store")
        return
    except FeatureVizError:
        raise
    except Exception as exc:
        if type(exc).__name__ not in ("GroupNotFoundError", "FileNotFoundError", "KeyError", "NodeNotFoundError", "PathNotFoundError"):
            raise FeatureVizError(f"cannot read the store's {GROUP} group ({type(exc).__name__})") from None
    s, p = spec.settings.size, len(spec.parameterisations)
    coords: dict[str, Any] = {
        "parameterisation": ("parameterisation", np.array(spec.parameterisations, dtype=object), {"long_name": "image parameterisation"}),
        "stage": ("stage", np.array(["start", "end"], dtype=object), {"long_name": "objective on the starting / optimised image"}),
        "fy": ("fy", np.arange(s), {"units": "pixel", "long_name": "row"}),
        "fx": ("fx", np.arange(s), {"units": "pixel", "long_name": "column"}),
        "rgb": ("rgb", np.array(["r", "g", "b"], dtype=object), {"long_name": "colour channel"}),
    }
    data: dict[str, Any] = {}
    for t in spec.targets:
        unit = f"unit_{t.name}"
        long = {"channel": "channel index", "direction": "random direction index", "logit": "ImageNet class index"}[t.kind]
        coords[unit] = (unit, np.array(t.units), {"long_name": long, "units": "1"})
        attrs = {"model": t.model, "layer": t.layer, "kind": t.kind, "checkpoint_of": t.checkpoint_of or ""}
        n = len(t.units)
        data[f"fv_{t.name}"] = (("parameterisation", unit, "fy", "fx", "rgb"),
                                da.zeros((p, n, s, s, 3), dtype=np.uint8, chunks=(1, spec.batch, s, s, 3)),
                                {**attrs, "long_name": "feature visualisation (0 until computed: see fvdone)"})
        data[f"objective_{t.name}"] = (("parameterisation", unit, "stage"),
                                       da.full((p, n, 2), np.nan, dtype=np.float32, chunks=(1, spec.batch, 2)),
                                       {**attrs, "long_name": "objective (mean activation, direction dot product or logit) without transforms"})
        data[f"fvdone_{t.name}"] = (("parameterisation", f"fvchunk_{t.name}"),
                                    da.zeros((p, spec.chunks(t)), dtype=np.uint8, chunks=(1, 1)),
                                    {**attrs, "long_name": "1 once the chunk of units is written", "batch": spec.batch})
        if t.kind == "direction":
            dirs = _directions(spec, t)[list(t.units)]
            data[f"direction_{t.name}"] = ((unit, f"channel_{t.name}"), dirs, {**attrs, "long_name": "unit vector in channel space"})
    ds = xr.Dataset({k: xr.Variable(dims, arr, attrs) for k, (dims, arr, attrs) in data.items()},
                    coords={k: xr.Variable(*v) for k, v in coords.items()})
    ds.attrs.update({"spec": spec.source, "spec_sha256": spec.sha256(), "settings": json.dumps(spec.settings.to_dict()),
                     "versions": json.dumps(_versions())})
    encoding = {k: {"_FillValue": np.nan} for k, v in ds.data_vars.items() if v.dtype.kind == "f"}
    ds.to_zarr(store, group=GROUP, mode="w", compute=False, zarr_format=3, consolidated=False, encoding=encoding)
    # the directions are small: written with the template
    group = zarr.open_group(store, path=GROUP, mode="r+")
    for t in spec.targets:
        if t.kind == "direction":
            group[f"direction_{t.name}"][...] = _directions(spec, t)[list(t.units)]


def missing(spec: FeatureVizSpec, store: Any) -> list[tuple[Target, int, int]]:
    """(target, parameterisation index, chunk index) of every chunk not yet written."""
    import zarr

    group = zarr.open_group(store, path=GROUP, mode="r")
    out = []
    for t in spec.targets:
        done = group[f"fvdone_{t.name}"][...]
        out += [(t, p, c) for p in range(len(spec.parameterisations)) for c in range(spec.chunks(t)) if not done[p, c]]
    return out


def compute_chunk(spec: FeatureVizSpec, target: Target, p: int, chunk: int, store: Any,
                  threads: int | None = None) -> tuple[str, int]:
    """Optimise one batch of units and write it; returns (target name, units)."""
    import torch
    import zarr

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    group = zarr.open_group(store, path=GROUP, mode="r+")
    lo, hi = chunk * spec.batch, min((chunk + 1) * spec.batch, len(target.units))
    directions = group[f"direction_{target.name}"][...] if target.kind == "direction" else None
    positions = list(range(lo, hi))  # directions are stored in unit order
    units = positions if target.kind == "direction" else list(target.units[lo:hi])
    result = visualise(target.model, target.layer, units, kind=target.kind, parameterisation=spec.parameterisations[p],
                       settings=spec.settings, directions=directions)
    group[f"fv_{target.name}"][p, lo:hi] = result.images
    group[f"objective_{target.name}"][p, lo:hi] = np.stack([result.start, result.end], axis=1)
    group[f"fvdone_{target.name}"][p, chunk] = 1
    return target.name, hi - lo


def precompute(spec: FeatureVizSpec, store: Any, scheduler: str | None = None, workers: int | None = None,
               progress: bool = True, echo: Callable[[str], None] = print) -> int:
    """Compute every missing batch into ``store``'s featureviz group; returns units written."""
    from tqdm import tqdm

    from perturber.pipeline.run import run_tasks

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


def open_featureviz(store: Any):
    """The store's featureviz group as an xarray dataset, or None when it has none."""
    import xarray as xr

    try:
        return xr.open_zarr(store, group=GROUP, chunks=None, consolidated=False)
    except Exception:
        return None


def lookup(ds: Any, model: str, layer: str) -> tuple[Any, dict[int, int]] | None:
    """(the fv_ array of ``model``'s ``layer`` channels, channel → position), or None."""
    if ds is None:
        return None
    name = f"fv_{model}_{layer}".replace(".", "_").replace("@", "_")
    if name not in ds:
        return None
    units = ds[f"unit_{name[3:]}"].values
    return ds[name], {int(u): i for i, u in enumerate(units)}


def completed(ds: Any, name: str) -> np.ndarray:
    """(parameterisation, unit) bool: which visualisations of ``fv_<name>`` are written."""
    done = ds[f"fvdone_{name}"].values.astype(bool)
    batch = int(ds[f"fvdone_{name}"].attrs["batch"])
    return np.repeat(done, batch, axis=1)[:, : ds.sizes[f"unit_{name}"]]


def settings_of(ds: Any) -> Mapping[str, Any]:
    return json.loads(ds.attrs.get("settings", "{}"))
