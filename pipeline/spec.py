"""Sweep specs: YAML in, a frozen, validated, hashable description of the cubes out.

A spec names one or more cubes. A cube varies some factors along axes and
fixes every other one (its default unless given)::

    name: demo
    budget: 5000                 # samples per cube; larger cubes need --force
    cubes:
      views:
        axes:
          object: [dog, cat]
          yaw: {linspace: [-180, 135, 8]}      # count values, both ends included
          pitch: {range: [0, 30, 10]}          # start, start+step, ... <= stop: 0, 10, 20, 30
          hue: [0, 90, 180]                    # or a list
        fixed: {distance: 2.2}
        models: [efficientnet_lite0, efficientnet_lite2]   # one name alone is a list of one
        layers: [stage4, head]                 # friendly names or module paths, for every model
        neurons: {stage4: 16, head: [0, 5, 7]} # first N channels, or these channels
        images: true                           # store the model-input images
        mask: false                            # store the object mask (the render's alpha)
        chunks: {yaw: 2}                       # samples per chunk along an axis (hint)
        shards: {yaw: 8}                       # samples per shard (one task) along an axis (hint)
        top_k: 5                               # classes kept per sample, 1..1000
        size: 224                              # render side in pixels, 32..1024

``range`` includes ``stop`` when it lies on the grid (within 1e-9 of a step).
Everything is checked when the spec is loaded, before any compute, with
one-line :class:`SpecError` messages that name the field
(``cube 'views': axes.yaw.linspace: count must be a whole number >= 1, got 2.7``).
Axis lengths are counted before any value is made: a cube above ``budget``
needs ``force``, and none may exceed :data:`MAX_AXIS_VALUES` values per axis
or :data:`MAX_SAMPLES` samples. Files are read by :mod:`perturber.pipeline.yamlsafe`
(UTF-8, at most 1 MiB, aliases bounded).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from perturber.pipeline import factors, models, yamlsafe
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.fields import Fields, is_whole, show

__all__ = ["SpecError", "CubeSpec", "SweepSpec", "load_spec", "parse_spec", "has_module", "DEFAULT_BUDGET"]

#: Samples per cube above which a spec needs ``force``.
DEFAULT_BUDGET = 100_000
#: Hard limits, even with ``force``: values per axis, samples per cube.
MAX_AXIS_VALUES = 100_000
MAX_SAMPLES = 100_000_000


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
    shards: Mapping[str, int] = field(default_factory=dict)
    top_k: int = 5
    size: int = 224
    mask: bool = False

    @property
    def axis_names(self) -> list[str]:
        return [name for name, _ in self.axes]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(values) for _, values in self.axes)

    @property
    def samples(self) -> int:
        return math.prod(self.shape)

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
        """The canonical form (what the hash covers and the store records).

        ``mask`` and ``shards`` appear only when set, so a spec without them keeps its hash.
        """
        out = {
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
        if self.mask:
            out["mask"] = True
        if self.shards:
            out["shards"] = dict(sorted(self.shards.items()))
        return out

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


def _axis_count(f: Fields, path: str, raw: Any) -> tuple[int, Callable[[], list[Any]]]:
    """How many values an axis has, and how to make them: counted without
    building them, so a huge axis is refused before it costs memory."""
    if isinstance(raw, list):
        return len(raw), lambda: raw
    if isinstance(raw, Mapping) and len(raw) == 1 and set(raw) <= {"linspace", "range"}:
        kind = next(iter(raw))
        args = raw[kind]
        third = "count" if kind == "linspace" else "step"
        if not isinstance(args, list) or len(args) != 3:
            raise f.fail(f"{path}.{kind}", f"must be [start, stop, {third}], got {show(args)}")
        start = f.number(args[0], f"{path}.{kind}", "start")
        stop = f.number(args[1], f"{path}.{kind}", "stop")
        if kind == "linspace":
            count = f.whole(args[2], f"{path}.{kind}", 1, name="count")
            return count, lambda: [float(v) for v in np.linspace(start, stop, count)]
        step = f.number(args[2], f"{path}.{kind}", "step")
        steps = (stop - start) / step if step else -1.0
        if steps < 0:
            raise f.fail(f"{path}.{kind}", f"step {step:g} never reaches {stop:g}")
        if not math.isfinite(steps):
            raise f.fail(f"{path}.{kind}", f"step {step:g} is too small")
        count = math.floor(steps + 1e-9) + 1  # stop included when it lies on the grid

        def values() -> list[float]:
            out = [start + i * step for i in range(count)]
            if abs(out[-1] - stop) <= 1e-9 * abs(step):
                out[-1] = stop  # not 0.30000000000000004 past a domain's end
            return out

        return count, values
    raise f.fail(path, "expected a list of values, {linspace: [start, stop, count]} or {range: [start, stop, step]}, "
                       f"got {show(raw)}")


def _axis_values(f: Fields, path: str, factor: factors.Factor, values: list[Any]) -> tuple[Any, ...]:
    if not values:
        raise f.fail(path, "no values")
    try:
        canonical = tuple(factor.validate(v) for v in values)
    except factors.FactorError as exc:
        raise f.fail(path, str(exc)) from None
    seen: set[Any] = set()
    for v in canonical:
        if v in seen:
            raise f.fail(path, f"value {v!r} appears twice")
        seen.add(v)
    return canonical


def _check_size(f: Fields, counts: Mapping[str, int], budget: int, force: bool) -> None:
    """Refuse a cube over the budget (unless ``force``) or over the hard limits."""
    samples = math.prod(counts.values())
    if samples > budget and not force:
        raise f.fail("", f"{samples} samples exceed the budget of {budget} (raise budget: or use --force)")
    for name, count in counts.items():
        if count > MAX_AXIS_VALUES:
            raise f.fail(f"axes.{name}", f"{count} values; an axis holds at most {MAX_AXIS_VALUES}, even with --force")
    if samples > MAX_SAMPLES:
        raise f.fail("", f"{samples} samples; a cube holds at most {MAX_SAMPLES}, even with --force")


def _neurons(f: Fields, raw: Any, layers: tuple[str, ...]) -> dict[str, Any]:
    neurons: dict[str, Any] = {}
    for layer, chosen in f.mapping(raw, "neurons", "layers to a count or a list of channels").items():
        path = f"neurons.{layer}"
        if layer not in layers:
            raise f.fail(path, f"neurons given for {layer!r}, which is not in layers")
        if isinstance(chosen, list) and chosen:
            picked = [f.whole(i, path, 0, name="a channel index") for i in chosen]
            if len(set(picked)) != len(picked):
                raise f.fail(path, f"channel {next(i for i in picked if picked.count(i) > 1)} is listed twice")
            neurons[layer] = picked
        elif is_whole(chosen) and chosen > 0:
            neurons[layer] = int(chosen)
        else:
            raise f.fail(path, f"must be a positive count or a list of channel indices, got {show(chosen)}")
    return neurons


def _parse_cube(name: str, raw: Any, budget: int, force: bool) -> CubeSpec:
    f = Fields(f"cube {name!r}", SpecError)
    raw = f.mapping(raw, "", "its keys (axes, models, ...) to values", empty=False)
    known = {"axes", "fixed", "models", "layers", "neurons", "images", "mask", "chunks", "shards", "top_k", "size"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise f.fail("", f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    axes_raw = f.mapping(raw.get("axes"), "axes", "factor names to values")
    if not axes_raw:
        raise f.fail("", "needs at least one axis")
    try:
        axis_factors = {axis: factors.get(axis) for axis in axes_raw}
    except factors.FactorError as exc:
        raise f.fail("axes", str(exc)) from None
    fixed = {}
    for key, value in f.mapping(raw.get("fixed"), "fixed", "factor names to values").items():
        try:
            fixed[key] = factors.validate_value(key, value)
        except factors.FactorError as exc:
            raise f.fail(f"fixed.{key}", str(exc)) from None
    counted = {axis: _axis_count(f, f"axes.{axis}", values) for axis, values in axes_raw.items()}
    for axis, factor in axis_factors.items():
        if not isinstance(axes_raw[axis], list) and not factor.numeric:
            raise f.fail(f"axes.{axis}", "ranges need a numeric factor")
    _check_size(f, {axis: n for axis, (n, _) in counted.items()}, budget, force)
    axes = tuple((axis, _axis_values(f, f"axes.{axis}", axis_factors[axis], build())) for axis, (_, build) in counted.items())
    both = sorted(set(fixed) & set(axes_raw))
    if both:
        raise f.fail("", f"{both[0]!r} is both an axis and fixed")
    model_names = f.names(raw.get("models"), "models", "model")
    try:
        specs = [models.spec(m) for m in model_names]
    except models.ModelError as exc:
        raise f.fail("models", str(exc)) from None
    layers = f.names(raw.get("layers"), "layers", "layer", empty=True)
    for s in specs:
        for layer in layers:
            if layer not in s.layers and not has_module(s, layer):
                raise f.fail("layers", f"model {s.name} has no layer {layer!r} (named layers: {', '.join(s.layers)})")
    neurons = _neurons(f, raw.get("neurons"), layers)
    chunks = {}
    for axis, size in f.mapping(raw.get("chunks"), "chunks", "axes to samples per chunk").items():
        if axis not in axes_raw:
            raise f.fail(f"chunks.{axis}", f"chunk hint for {axis!r}, which is not an axis")
        chunks[axis] = f.whole(size, f"chunks.{axis}", 1, name="chunk size")
    shards = {}
    for axis, size in f.mapping(raw.get("shards"), "shards", "axes to samples per shard").items():
        if axis not in axes_raw:
            raise f.fail(f"shards.{axis}", f"shard hint for {axis!r}, which is not an axis")
        shards[axis] = f.whole(size, f"shards.{axis}", 1, name="shard size")
    cube = CubeSpec(
        name=name, axes=axes, fixed=fixed, models=model_names, layers=layers, neurons=neurons,
        images=f.flag(raw.get("images", True), "images"), chunks=chunks, shards=shards,
        top_k=f.whole(raw.get("top_k", 5), "top_k", 1, 1000), size=f.whole(raw.get("size", 224), "size", 32, 1024),
        mask=f.flag(raw.get("mask", False), "mask"),
    )
    try:
        factors.validate(cube.point((0,) * len(axes)))  # cross-factor rules
    except factors.FactorError as exc:
        raise f.fail("", str(exc)) from None
    return cube


def has_module(s: models.ModelSpec, path: str) -> bool:
    """Whether ``s``'s architecture has the module of ``path`` (``module.path`` or ``module.path@k``)."""
    return path.partition("@")[0] in _module_names(s.architecture)


@functools.lru_cache(maxsize=16)
def _module_names(architecture: str) -> frozenset[str]:
    """Module paths of an architecture (built once per process, not once per layer named)."""
    return frozenset(dict(models.build_architecture(architecture).named_modules()))


def parse_spec(data: Any, name: str = "spec", force: bool = False) -> SweepSpec:
    """Validate a spec already parsed from YAML (a mapping)."""
    f = Fields(name, SpecError)
    if not isinstance(data, Mapping):
        raise f.fail("", f"a spec must be a mapping with 'cubes', got {show(data)}")
    unknown = sorted(set(data) - {"name", "budget", "cubes"}, key=str)
    if unknown:
        raise f.fail("", f"unknown key {unknown[0]!r} (known: budget, cubes, name)")
    budget = f.whole(data.get("budget", DEFAULT_BUDGET), "budget", 1)
    title = f.text(data.get("name", name), "name")
    cubes_raw = f.mapping(data.get("cubes"), "cubes", "cube names to cubes")
    if not cubes_raw:
        raise f.fail("", "needs at least one cube under 'cubes'")
    cubes = []
    for cube_name, raw in cubes_raw.items():
        if not cube_name.isidentifier():
            raise f.fail("cubes", f"cube name {cube_name!r} must be a simple identifier")
        cubes.append(_parse_cube(cube_name, raw, budget, force))
    return SweepSpec(name=title, cubes=tuple(cubes), budget=budget)


def load_spec(path: str | Path, force: bool = False) -> SweepSpec:
    """Read and validate a spec file (UTF-8, at most 1 MiB: :mod:`perturber.pipeline.yamlsafe`)."""
    path = Path(path)
    return parse_spec(yamlsafe.load_file(path, SpecError), name=path.stem, force=force)
