"""Feature-visualisation specs: what to visualise, validated before any compute.

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
        logits: [207, 817]                      # class-logit visualisations (or top5: every class in
                                                #   the top-5 of the store's cubes, read when computing)
        checkpoints: [my_lite0_epoch5]          # registry entries: this model's checkpoints
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from perturber.featureviz import FeatureVizError
from perturber.featureviz.optimize import PARAMETERISATIONS, Settings
from perturber.pipeline import inference, models, names, yamlsafe
from perturber.pipeline.spec import has_module

__all__ = ["FeatureVizSpec", "Target", "load_spec", "parse_spec", "channels", "TOP5"]

#: ``logits: top5``: every class that appears in the top-5 of the store's cubes
#: (:func:`perturber.featureviz.precompute.resolve` reads them from the store).
TOP5 = "top5"


@dataclass(frozen=True)
class Target:
    """What one stored array visualises: a layer's channels or directions, or the logits."""

    model: str
    layer: str  # friendly name or module path; "logits" for class logits
    kind: str  # channel | direction | logit
    units: tuple[int, ...]
    checkpoint_of: str | None = None
    top5: bool = False  # logits: the classes of the store's stored top-5 (units empty until resolved)

    @property
    def names(self) -> names.FeatureVizNames:
        """Its variable and dimension names in the featureviz group."""
        return names.fv_target(self.model, self.layer, self.kind)

    @property
    def name(self) -> str:
        return self.names.target


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


def channels(model: str, path: str) -> int:
    """Channels of a layer, from one forward pass of a black image on the CPU."""
    return int(inference.layer_shapes(model, [path], 64)[path][0])


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
                    if not has_module(models.spec(owner), path):
                        raise FeatureVizError(f"{where}: {owner} has no layer {layer!r} ({path})")
                    limit = channels(owner, path) if kind == "channel" else 4096
                    targets.append(Target(owner, str(layer), kind, _units(f"{where}: {key}.{layer}", units, limit), of))
            if what.get("logits") == TOP5:
                targets.append(Target(owner, "logits", "logit", (), of, top5=True))
            elif isinstance(what.get("logits"), str):
                raise FeatureVizError(f"{where}: logits: give a count, a list of class indices or {TOP5!r}, "
                                      f"not {what['logits']!r}")
            elif what.get("logits") is not None:
                targets.append(Target(owner, "logits", "logit", _units(f"{where}: logits", what["logits"], 1000), of))
    if not targets:
        raise FeatureVizError(f"{name}: nothing to visualise")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise FeatureVizError(f"{name}: {next(n for n in names if names.count(n) > 1)} is listed twice")
    return FeatureVizSpec(settings=settings, batch=batch, parameterisations=tuple(params), targets=tuple(targets),
                          source=yaml.safe_dump(raw, sort_keys=True))


def load_spec(path: str | Path) -> FeatureVizSpec:
    """Read and validate a spec file (UTF-8, at most 1 MiB: :mod:`perturber.pipeline.yamlsafe`)."""
    return parse_spec(yamlsafe.load_file(path, FeatureVizError), name=str(path))
