"""Sweep specs: YAML in, a frozen, validated, hashable description of the cubes out.

A spec names one or more cubes. A cube varies some factors along axes and
fixes every other one (its default unless given)::

    name: demo
    budget: 5000                 # samples per cube; larger cubes need --force
    cubes:
      views:
        axes:
          object: [dog, cat]
          yaw: {linspace: [-180, 135, 8]}      # or {range: [start, stop, step]}, or a list
          hue: [0, 90, 180]
        fixed: {pitch: 10}
        models: [efficientnet_lite0, efficientnet_lite2]
        layers: [stage4, head]                 # friendly names or module paths, for every model
        neurons: {stage4: 16, head: [0, 5, 7]} # first N channels, or these channels
        images: true                           # store the model-input images
        chunks: {yaw: 2}                       # samples per chunk along an axis (hint)

Everything is checked when the spec is loaded, before any compute, with
one-line :class:`SpecError` messages.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from perturber.pipeline import factors, models
from perturber.pipeline.errors import PerturberError, one_line

__all__ = ["SpecError", "CubeSpec", "SweepSpec", "load_spec", "parse_spec", "has_module", "DEFAULT_BUDGET"]

#: Samples per cube above which a spec needs ``force``.
DEFAULT_BUDGET = 100_000


class SpecError(PerturberError):
    """A spec is invalid; the message is one line and names the place."""


@dataclass(frozen=True)
class CubeSpec:
    """One cube: ``axes`` is a tuple of (factor name, values) in storage order."""

    name: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    fixed: Mapping[str, Any]
    models: tuple[str, ...]
    layers: tuple[str, ...] = ()
    neurons: Mapping[str, Any] = field(default_factory=dict)
    images: bool = True
    chunks: Mapping[str, int] = field(default_factory=dict)
    top_k: int = 5
    size: int = 224

    @property
    def axis_names(self) -> list[str]:
        return [name for name, _ in self.axes]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(values) for _, values in self.axes)

    @property
    def samples(self) -> int:
        return int(np.prod(self.shape)) if self.axes else 1

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Samples per chunk along each axis.

        Default: image-factor axes whole (one render serves the whole chunk),
        scene-factor axes one value per chunk; hints in ``chunks`` override.
        """
        out = []
        for name, values in self.axes:
            default = len(values) if factors.get(name).kind == "image" else 1
            out.append(min(int(self.chunks.get(name, default)), len(values)))
        return tuple(out)

    @property
    def chunk_grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(n / c) for n, c in zip(self.shape, self.chunk_shape))

    @property
    def renders(self) -> int:
        """Distinct scenes in the cube (each is rendered once per chunk that needs it)."""
        return int(np.prod([len(v) for n, v in self.axes if factors.get(n).kind == "scene"] or [1]))

    def point(self, index: tuple[int, ...]) -> dict[str, Any]:
        """Factor values at grid ``index``: the fixed values plus one value per axis."""
        values = dict(self.fixed)
        for (name, axis), i in zip(self.axes, index):
            values[name] = axis[i]
        return values

    def to_dict(self) -> dict[str, Any]:
        """The canonical form (what the hash covers and the store records)."""
        return {
            "axes": {name: list(values) for name, values in self.axes},
            "fixed": dict(sorted(self.fixed.items())),
            "models": list(self.models),
            "layers": list(self.layers),
            "neurons": {k: v for k, v in sorted(self.neurons.items())},
            "images": self.images,
            "chunks": dict(sorted(self.chunks.items())),
            "top_k": self.top_k,
            "size": self.size,
        }

    def sha256(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def prune(self, n: int = 2) -> "CubeSpec":
        """A small version for tests: the first ``n`` values of every axis."""
        return replace(self, axes=tuple((name, values[:n]) for name, values in self.axes))


@dataclass(frozen=True)
class SweepSpec:
    """A whole spec: its name, the per-cube sample budget and the cubes by name."""

    name: str
    cubes: tuple[CubeSpec, ...]
    budget: int = DEFAULT_BUDGET

    def cube(self, name: str) -> CubeSpec:
        for c in self.cubes:
            if c.name == name:
                return c
        raise SpecError(f"no cube {name!r} in spec {self.name!r}")

    def prune(self, n: int = 2) -> "SweepSpec":
        return replace(self, cubes=tuple(c.prune(n) for c in self.cubes))

    def to_yaml(self) -> str:
        data = {"name": self.name, "budget": self.budget, "cubes": {c.name: c.to_dict() for c in self.cubes}}
        return yaml.safe_dump(data, sort_keys=False)


def _axis_values(cube: str, name: str, raw: Any) -> tuple[Any, ...]:
    where = f"cube {cube!r}, axis {name!r}"
    factor = factors.get(name)
    if isinstance(raw, Mapping):
        if set(raw) == {"linspace"} and len(raw["linspace"]) == 3:
            start, stop, count = raw["linspace"]
            values = [float(v) for v in np.linspace(float(start), float(stop), int(count))]
        elif set(raw) == {"range"} and len(raw["range"]) == 3:
            start, stop, step = (float(v) for v in raw["range"])
            if step == 0 or (stop - start) / step < 0:
                raise SpecError(f"{where}: range step {step:g} never reaches {stop:g}")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [start + i * step for i in range(count)]
        else:
            raise SpecError(f"{where}: expected a list, {{linspace: [start, stop, count]}} or {{range: [start, stop, step]}}")
        if not factor.numeric:
            raise SpecError(f"{where}: ranges need a numeric factor")
    elif isinstance(raw, list):
        values = raw
    else:
        raise SpecError(f"{where}: expected a list of values, not {type(raw).__name__}")
    if not values:
        raise SpecError(f"{where}: no values")
    try:
        canonical = tuple(factor.validate(v) for v in values)
    except factors.FactorError as exc:
        raise SpecError(f"{where}: {exc}") from None
    if len(set(canonical)) != len(canonical):
        duplicate = next(v for v in canonical if canonical.count(v) > 1)
        raise SpecError(f"{where}: value {duplicate!r} appears twice")
    return canonical


def _parse_cube(name: str, raw: Any, budget: int, force: bool) -> CubeSpec:
    where = f"cube {name!r}"
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping")
    known = {"axes", "fixed", "models", "layers", "neurons", "images", "chunks", "top_k", "size"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, Mapping) or not axes_raw:
        raise SpecError(f"{where}: needs at least one axis")
    try:
        axes = tuple((factors.get(str(axis)).name, _axis_values(name, str(axis), values)) for axis, values in axes_raw.items())
        fixed_raw = raw.get("fixed") or {}
        fixed = {str(k): factors.validate_value(str(k), v) for k, v in fixed_raw.items()}
    except factors.FactorError as exc:
        raise SpecError(f"{where}: {exc}") from None
    both = sorted(set(fixed) & {a for a, _ in axes})
    if both:
        raise SpecError(f"{where}: {both[0]!r} is both an axis and fixed")
    model_names = tuple(raw.get("models") or ())
    if not model_names:
        raise SpecError(f"{where}: needs at least one model")
    if len(set(model_names)) != len(model_names):
        raise SpecError(f"{where}: a model is listed twice")
    try:
        specs = [models.spec(m) for m in model_names]
    except models.ModelError as exc:
        raise SpecError(f"{where}: {exc}") from None
    layers = tuple(raw.get("layers") or ())
    for s in specs:
        for layer in layers:
            if layer not in s.layers and not has_module(s, layer):
                raise SpecError(f"{where}: model {s.name} has no layer {layer!r} (named layers: {', '.join(s.layers)})")
    neurons = dict(raw.get("neurons") or {})
    for layer, chosen in neurons.items():
        if layer not in layers:
            raise SpecError(f"{where}: neurons given for {layer!r}, which is not in layers")
        ok = (isinstance(chosen, int) and chosen > 0) or (
            isinstance(chosen, list) and chosen and all(isinstance(i, int) and i >= 0 for i in chosen)
        )
        if not ok:
            raise SpecError(f"{where}: neurons of {layer!r} must be a positive count or a list of channel indices")
    chunks = dict(raw.get("chunks") or {})
    for axis, size in chunks.items():
        if axis not in dict(axes):
            raise SpecError(f"{where}: chunk hint for {axis!r}, which is not an axis")
        if not isinstance(size, int) or size < 1:
            raise SpecError(f"{where}: chunk size of {axis!r} must be a positive whole number")
    top_k, size = raw.get("top_k", 5), raw.get("size", 224)
    if not isinstance(top_k, int) or not 1 <= top_k <= 1000:
        raise SpecError(f"{where}: top_k must be a whole number in [1, 1000]")
    if not isinstance(size, int) or not 32 <= size <= 1024:
        raise SpecError(f"{where}: size must be a whole number of pixels in [32, 1024]")
    cube = CubeSpec(
        name=name, axes=axes, fixed=fixed, models=model_names, layers=layers, neurons=neurons,
        images=bool(raw.get("images", True)), chunks=chunks, top_k=top_k, size=size,
    )
    try:
        factors.validate(cube.point((0,) * len(axes)))  # cross-factor rules
    except factors.FactorError as exc:
        raise SpecError(f"{where}: {exc}") from None
    if cube.samples > budget and not force:
        raise SpecError(f"{where}: {cube.samples} samples exceed the budget of {budget} (raise budget: or use --force)")
    return cube


def has_module(s: models.ModelSpec, path: str) -> bool:
    """Whether ``s``'s architecture has the module of ``path`` (``module.path`` or ``module.path@k``)."""
    base = path.partition("@")[0]
    return base in dict(models.build_architecture(s.architecture).named_modules())


def parse_spec(data: Any, name: str = "spec", force: bool = False) -> SweepSpec:
    """Validate a spec already parsed from YAML (a mapping)."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{name}: a spec must be a mapping with 'cubes'")
    unknown = sorted(set(data) - {"name", "budget", "cubes"})
    if unknown:
        raise SpecError(f"{name}: unknown key {unknown[0]!r} (known: budget, cubes, name)")
    budget = data.get("budget", DEFAULT_BUDGET)
    if not isinstance(budget, int) or budget < 1:
        raise SpecError(f"{name}: budget must be a positive whole number")
    cubes_raw = data.get("cubes")
    if not isinstance(cubes_raw, Mapping) or not cubes_raw:
        raise SpecError(f"{name}: needs at least one cube under 'cubes'")
    cubes = []
    for cube_name, raw in cubes_raw.items():
        if not str(cube_name).isidentifier():
            raise SpecError(f"{name}: cube name {cube_name!r} must be a simple identifier")
        cubes.append(_parse_cube(str(cube_name), raw, budget, force))
    return SweepSpec(name=str(data.get("name", name)), cubes=tuple(cubes), budget=budget)


def load_spec(path: str | Path, force: bool = False) -> SweepSpec:
    """Read and validate a spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({one_line(exc)})") from None
    return parse_spec(data, name=path.stem, force=force)
