"""A static site of one cube slice: ``perturber export STORE -o site/``.

The site browses a slice of one cube with the viewer's core controls, from
any static file host (no Python, no server-side code, relative URLs only,
nothing fetched from elsewhere)::

    site/index.html, site.js, site.css      the page (copied from viewer/site/)
    site/data/slice.json                    the slice: axes, fixed values, models, layer,
                                            the curves' data, the assets' attribution
    site/data/p/<key>.json                  a point's top-5 of each model
    site/img/<key>.png                      the model input at a point (lossless: the stored pixels)
    site/act/<key>-<m>.webp                 model m's activation maps of the layer at the point,
                                            one 96 px tile per neuron, side by side (lossy WebP:
                                            a sixth of the PNG's bytes)

``<key>`` is the point's grid position along each slider axis, joined by
``_`` (``3_0_2``). The slice: ``axes`` vary (sliders), every other axis of
the cube is held at the value ``select`` gives, else at its *canonical*
value (the grid value nearest the factor's default: the three-quarter view
yaw 45, pitch 10, the dog, a white background, hue 0; the first grid value
when the default is not on the grid). By default the sliders are the
cube's numeric axes that ``select`` does not hold.

Points whose task is not computed (or whose chunk is damaged) get no files;
the page says so. A slice that would write more than :data:`MAX_IMAGES`
images or about :data:`MAX_BYTES` bytes is refused before anything is
written. The site is written to a temporary sibling folder and renamed into
place at the end (see :mod:`perturber.viewer.export_files`).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

import perturber
from perturber.pipeline import assets, factors, names
from perturber.pipeline.analysis import class_indices
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.figures import activation_overlay
from perturber.pipeline.store import task_shape
from perturber.viewer import export_files, stores

__all__ = ["ExportError", "Slice", "ExportReport", "plan", "parse_select", "export", "MAX_IMAGES", "MAX_BYTES",
           "NEURONS", "TILE"]

#: The most images (model inputs and activation strips) one export writes.
MAX_IMAGES = 10_000
#: The most bytes one export may write, estimated before writing (images at their raw size: PNG writes less).
MAX_BYTES = 512 * 2**20
#: Activation maps shown per model: the layer's first stored neurons.
NEURONS = 8
#: Side of one activation tile, px (the viewer's neuron view uses the same).
TILE = 96


class ExportError(PerturberError):
    """A selection, model, layer or output the export cannot use; one line."""


def _choices(values: Sequence[Any], limit: int = 12) -> str:
    shown = [_text(v) for v in values[:limit]]
    return ", ".join(shown) + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_select(text: str | None) -> dict[str, str]:
    """``'object=dog,background=meadow'`` → {'object': 'dog', 'background': 'meadow'}; one line if malformed."""
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(","):
        axis, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not axis or not value:
            raise ExportError(f"--select {text}: write axis=value pairs separated by commas (object=dog,yaw=45), got {part!r}")
        if axis in out:
            raise ExportError(f"--select {text}: {axis} is given twice")
        out[axis] = value
    return out


def _position(axis: str, values: list[Any], text: str) -> int:
    """The grid position of ``text`` along ``axis`` (numbers within 1e-6); one line naming the values."""
    for i, v in enumerate(values):
        if isinstance(v, float):
            try:
                if math.isclose(float(text), v, rel_tol=0, abs_tol=1e-6):
                    return i
            except ValueError:
                break
        elif str(v) == text:
            return i
    raise ExportError(f"--select {axis}={text}: not a value of {axis} in this cube (values: {_choices(values)})")


def canonical(axis: str, values: list[Any]) -> int:
    """The grid position nearest the factor's default (the canonical view); 0 when it is not on the grid."""
    default = factors.get(axis).default
    if all(isinstance(v, float) for v in values) and isinstance(default, (int, float)):
        return int(np.argmin([abs(v - float(default)) for v in values]))
    return values.index(default) if default in values else 0


@dataclass
class Slice:
    """What one export shows: ``axes`` (the sliders) with their grid ``values``,
    ``held`` (every other axis → its grid position) and ``why`` (axis →
    "--select" or "canonical"), the compared ``models``, the ``layer`` whose
    first ``neurons`` (stored positions) are shown (None: no activations)."""

    store: str
    cube: str
    axes: list[str]
    values: dict[str, list[Any]]
    held: dict[str, int]
    why: dict[str, str]
    models: list[str]
    layer: str | None
    neurons: list[int] = field(default_factory=list)
    image_size: int = 224

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.values[a]) for a in self.axes)

    @property
    def points(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def images(self) -> int:
        """Image files the slice writes at most (an input and a strip per model with activations)."""
        return self.points * (1 + (len(self.models) if self.layer else 0))

    def estimated_bytes(self) -> int:
        """Bytes the slice writes at most, images at their raw size, JSON about 2 kB a point."""
        strips = len(self.models) * len(self.neurons) * TILE * TILE * 3 if self.layer else 0
        return self.points * (self.image_size ** 2 * 3 + strips + 2048)


def plan(store: str, cube: str | None = None, select: str | Mapping[str, str] | None = None,
         axes: Sequence[str] | None = None, models: Sequence[str] | None = None, layer: str | None = None) -> Slice:
    """Check a selection against the store (each unknown cube, axis, value, model or
    layer is a one-line :class:`ExportError` naming the choices); nothing is written."""
    cubes = stores.cube_names(store)
    cube = cube or cubes[0]
    if cube not in cubes:
        raise ExportError(f"--cube {cube}: no such cube in {store} (it has: {', '.join(cubes)})")
    ds = stores.open_store(store, cube)
    cube_axes = list(ds.attrs["axes"])
    an = stores.analysis(store, cube)
    grid = {a: an.axis_values(a) for a in cube_axes}
    chosen = parse_select(select) if isinstance(select, str) or select is None else dict(select)
    held, why = {}, {}
    for axis, text in chosen.items():
        if axis not in cube_axes:
            raise ExportError(f"--select {axis}: not an axis of cube {cube} (axes: {', '.join(cube_axes)})")
        held[axis], why[axis] = _position(axis, grid[axis], text), "--select"
    if axes is None:
        axes = [a for a in cube_axes if a not in held and factors.get(a).numeric] or [a for a in cube_axes if a not in held]
    for axis in axes:
        if axis not in cube_axes:
            raise ExportError(f"--axes {axis}: not an axis of cube {cube} (axes: {', '.join(cube_axes)})")
        if axis in held:
            raise ExportError(f"--axes {axis}: also held by --select {axis}={_text(grid[axis][held[axis]])}; name it in one of them")
    if len(set(axes)) != len(axes):
        raise ExportError(f"--axes {','.join(axes)}: an axis is named twice")
    if not axes:
        raise ExportError(f"--axes: no axis left to slide over (cube {cube} has: {', '.join(cube_axes)})")
    axes = [a for a in cube_axes if a in axes]  # the cube's order: C order of the data files
    for axis in cube_axes:
        if axis not in axes and axis not in held:
            held[axis], why[axis] = canonical(axis, grid[axis]), "canonical"
    known = list(an.models)
    models = list(models) if models else known[:2]
    for m in models:
        if m not in known:
            raise ExportError(f"--models {m}: not a model of cube {cube} (models: {', '.join(known)})")
    if not 1 <= len(models) <= 2 or len(set(models)) != len(models):
        raise ExportError(f"--models {','.join(models)}: give one or two different models (of: {', '.join(known)})")
    stored = {act.layer for m in models for act in an.activations(m)}
    if layer is not None and layer not in stored:
        raise ExportError(f"--layer {layer}: no activations of {' or '.join(models)} stored for it "
                          f"(layers: {', '.join(sorted(stored)) or 'none stored'})")
    layer = layer or (sorted(stored)[0] if stored else None)
    neurons: list[int] = []
    if layer is not None:
        sizes = [ds.sizes[names.activation(m, layer).neuron] for m in models if names.activation(m, layer).variable in ds]
        neurons = list(range(min(NEURONS, max(sizes))))
    size = int(ds.sizes.get(names.Y, 224))
    return Slice(store, cube, axes, {a: grid[a] for a in cube_axes}, held, why, models, layer, neurons, size)


def check_size(sl: Slice, max_images: int = MAX_IMAGES, max_bytes: int = MAX_BYTES) -> None:
    """Refuse, in one line, a slice over the limits (saying the limit and the slice's size)."""
    images, size = sl.images(), sl.estimated_bytes()
    if images > max_images or size > max_bytes:
        shape = " x ".join(f"{a}[{n}]" for a, n in zip(sl.axes, sl.shape))
        raise ExportError(f"the slice {shape} = {sl.points:,} points writes up to {images:,} images (about "
                          f"{export_files.human(size)}), over the limit of {max_images:,} images / "
                          f"{export_files.human(max_bytes)}: hold more axes with --select or slide over fewer (--axes)")


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: ``points`` of the slice, ``computed`` of them, ``files`` and ``bytes`` of the site."""

    path: str
    points: int
    computed: int
    files: int
    bytes: int


def export(store: str, out: str | Path, cube: str | None = None, select: str | Mapping[str, str] | None = None,
           axes: Sequence[str] | None = None, models: Sequence[str] | None = None, layer: str | None = None,
           force: bool = False, progress: bool = True, max_images: int = MAX_IMAGES, max_bytes: int = MAX_BYTES) -> ExportReport:
    """Write the static site of a slice of ``store`` to the folder ``out`` (see the module's doc)."""
    sl = plan(store, cube, select, axes, models, layer)
    check_size(sl, max_images, max_bytes)
    out = Path(out)
    export_files.check_target(out, force)
    with export_files.building(out) as tmp:
        export_files.copy_page(tmp)
        computed = _write_points(sl, tmp, progress)
    files, size = export_files.site_size(out)
    return ExportReport(str(out), sl.points, computed, files, size)


def _write_points(sl: Slice, folder: Path, progress: bool) -> int:
    """Every point's files and data/slice.json; the number of points computed."""
    ds = stores.open_store(sl.store, sl.cube)
    an = stores.analysis(sl.store, sl.cube)
    cube_axes = list(ds.attrs["axes"])
    done, per_task = stores.done_marks(sl.store, sl.cube), task_shape(ds)
    top_class, top_prob = an.top1
    expected = an.expected_probability
    model_pos = [an.models.index(m) for m in sl.models]
    acts = [names.activation(m, sl.layer) if sl.layer else None for m in sl.models]
    acts = [a if a is not None and a.variable in ds else None for a in acts]
    for sub in ("data/p", "img", "act"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    status, used_classes, credits = [], {}, []
    curves = {m: {"top1": [], "top1_class": [], "expected": []} for m in sl.models}
    bar = tqdm(total=sl.points, desc="export", unit="point", file=sys.stderr, disable=not progress)
    for idx in itertools.product(*(range(n) for n in sl.shape)):
        at = {**sl.held, **dict(zip(sl.axes, idx))}
        full = tuple(at[a] for a in cube_axes)
        values = {**an.fixed, **{a: sl.values[a][at[a]] for a in cube_axes}}
        for line in assets.attributions(values):
            if line not in credits:
                credits.append(line)
        for m, p in zip(sl.models, model_pos):
            c, pr, e = top_class[full + (p,)], top_prob[full + (p,)], expected[full + (p,)]
            ok = bool(np.isfinite(c) and c >= 0)
            curves[m]["top1"].append(_number(pr) if ok else None)
            curves[m]["expected"].append(_number(e) if ok else None)
            curves[m]["top1_class"].append(int(c) if ok else None)
            if ok:
                used_classes[int(c)] = an.class_names[int(c)]
        key = "_".join(str(i) for i in idx)
        task = tuple(i // t for i, t in zip(full, per_task))
        state = "not computed"
        if done[task]:
            state = _write_point(sl, folder, key, dict(zip(cube_axes, full)), values, acts, model_pos)
        status.append(state)
        bar.update(1)
    bar.close()
    start = [canonical(a, sl.values[a]) for a in sl.axes]
    index = {
        "generator": export_files.GENERATOR, "version": perturber.__version__,
        "store": Path(sl.store).name, "cube": sl.cube,
        "axes": [{"name": a, "values": sl.values[a], "units": factors.get(a).units, "numeric": factors.get(a).numeric}
                 for a in sl.axes],
        "start": start,
        "held": [{"name": a, "value": sl.values[a][i], "why": sl.why[a], "units": factors.get(a).units}
                 for a, i in sl.held.items()],
        "fixed": {k: v for k, v in an.fixed.items() if v != factors.get(k).default},  # what differs from the defaults
        "models": sl.models, "layer": sl.layer,
        "neurons": [[] if a is None else [int(n) for n in ds[a.neuron].values[sl.neurons[: ds.sizes[a.neuron]]]]
                    for a in acts],  # channel indices, per model
        "status": status, "curves": curves, "classes": {str(k): v for k, v in sorted(used_classes.items())},
        "attributions": credits, "image_size": sl.image_size, "tile": TILE,
        "images": names.IMAGE in ds, "maps": [a is not None for a in acts],
    }
    (folder / "data" / "slice.json").write_text(json.dumps(index, separators=(",", ":"), allow_nan=False))
    return sum(s == "ok" for s in status)


def _number(x: Any) -> float | None:
    x = float(x)
    return round(x, 5) if math.isfinite(x) else None


def _write_point(sl: Slice, folder: Path, key: str, sel: dict[str, int], values: dict[str, Any],
                 acts: list, model_pos: list[int]) -> str:
    """A computed point's files; "ok", or the one line of a damaged chunk (then no files)."""
    where = ", ".join(f"{a}={_text(values[a])}" for a in sel)
    try:
        image = np.asarray(stores.read_point(sl.store, sl.cube, names.IMAGE, sel, where)) \
            if names.IMAGE in stores.open_store(sl.store, sl.cube) else None
        classes, probs, logits = (stores.read_point(sl.store, sl.cube, v, sel, where)
                                  for v in (names.TOP_CLASS, names.TOP_PROB, names.LOGITS))
        maps = [None if a is None else stores.read_point(sl.store, sl.cube, a.variable, sel, where) for a in acts]
    except stores.DamagedChunk as exc:
        return str(exc)
    an = stores.analysis(sl.store, sl.cube)
    right = set(class_indices(str(values.get("object", ""))) or [])
    top5 = {}
    for m, p in zip(sl.models, model_pos):
        top5[m] = [[int(c), an.class_names[int(c)], _number(pr), _number(logits[p][int(c)]), int(c) in right]
                   for c, pr in zip(classes[p], probs[p])]
    (folder / "data" / "p" / f"{key}.json").write_text(json.dumps({"top5": top5}, separators=(",", ":"), allow_nan=False))
    small = np.full((TILE, TILE, 3), 160, np.uint8)  # the maps over grey when the store has no images
    if image is not None:
        Image.fromarray(image).save(folder / "img" / f"{key}.png")
        small = np.asarray(Image.fromarray(image).resize((TILE, TILE), Image.BILINEAR))
    for i, a in enumerate(maps):
        if a is None:
            continue
        shown = np.asarray(a)[sl.neurons[: a.shape[0]]].astype(np.float32)
        strip = np.concatenate([activation_overlay(small, m) for m in shown], axis=1)
        Image.fromarray(strip).save(folder / "act" / f"{key}-{i}.webp", quality=90)
    return "ok"
