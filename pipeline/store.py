"""The Zarr store: one self-describing group per cube, written shard by shard.

Layout of a cube group (``xarray.open_zarr(path, group=cube)``, store format 2):

| variable | dims | dtype |
| --- | --- | --- |
| ``logits`` | *axes, model, class | float16 |
| ``top_class`` | *axes, model, rank | int16 (-1 unwritten, read as NaN) |
| ``top_prob`` | *axes, model, rank | float32 |
| ``image`` | *axes, y, x, channel | uint8, the exact model input (0 where unwritten: see ``done``) |
| ``mask`` | *axes, y, x | uint8, the render's alpha before the image factors, 255 on the object (``mask: true`` only) |
| ``act_<model>_<layer>`` | *axes, neuron_<model>_<layer>, ay_<…>, ax_<…> | float16 (names: :mod:`perturber.pipeline.names`) |
| ``top1_class`` | *axes, model | int16, the top-1 class (-1 unwritten), a per-sample summary |
| ``top1_prob`` | *axes, model | float32, its probability, a per-sample summary |
| ``expected_prob`` | *axes, model | float32, probability of the object's own classes, a per-sample summary |
| ``done`` | task_<axis>… | uint8, 1 once the task (shard) is written |

Unwritten float cells are NaN. The per-sample variables are sharded (Zarr
v3's sharding codec, :mod:`perturber.pipeline.shards`): one file per task
region, holding the inner chunks a point read decodes. The summaries sit in
large chunks of whole shards, and ``done`` in one chunk, so whole-cube views
and a resumed run read a few files. Coordinates carry ``units`` and
``long_name``; the group carries the cube spec (YAML), its sha256, the fixed
values, the asset attributions and the package version.

The template (metadata and coordinates) is written first. Each task then
writes its shard of every per-sample variable and returns its summaries to
the process that runs the job, the one writer of the summaries and the done
marks (:mod:`perturber.pipeline.summaries`), which writes a task's summaries
before its mark; a re-run redoes only unmarked tasks.

Nothing a kill can leave behind stops a re-run (:func:`write_template`): the
group's ``spec_sha256`` attribute, the marker that says "this group belongs to
this spec", is written after everything else of the template, so a group
without it is an interrupted template, written again by the next run; data
is written before its ``done`` mark; Zarr's local store writes every file
atomically (a temporary file, then a rename). Every array carries a crc32c
checksum per chunk (Zarr v3's ``crc32c`` codec), so damage is found on reading
(:mod:`perturber.pipeline.verify`).

Format 1 (before sharding: one file per chunk, ``done`` per chunk with dims
``chunk_<axis>``, no ``top1_*`` summaries) still opens for reading;
``perturber migrate`` rewrites such a store in format 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import dask.array as da
import numpy as np
import xarray as xr
import yaml
import zarr
from zarr.core.sync import sync

import perturber
from perturber.pipeline import assets, classes, factors, inference, models, names, shards
from perturber.pipeline.spec import CubeSpec
# The Zarr plumbing every group shares, used through this module by the commands that write cubes.
from perturber.pipeline.zarrstore import (MARK, StoreError, check_writable, checksummed, clean_partials, consolidate,
                                          consolidated_ok, default_options, group_state, is_absent, local_path, write_template)

__all__ = ["StoreError", "Layout", "layout", "default_options", "create_or_check", "write_task", "done_mask", "Tasks", "tasks",
           "task_shape", "encoding",
           "open_cube", "consolidate", "consolidated_ok", "local_path", "is_absent", "check_writable", "group_state", "write_template",
           "checksummed", "clean_partials", "MARK"]

FORMAT_VERSION = 2


@dataclass(frozen=True)
class Layout:
    """Shapes of one cube's variables: activation (model, layer) → (neurons, ay, ax)."""

    activations: Mapping[tuple[str, str], tuple[list[int], int, int]]

    def bytes_per_sample(self, cube: CubeSpec) -> list[int]:
        """Uncompressed bytes per sample of each sharded (per-sample) variable."""
        out = [len(cube.models) * 1000 * 2, len(cube.models) * cube.top_k * 2, len(cube.models) * cube.top_k * 4]
        out += [cube.size * cube.size * 3] if cube.images else []
        out += [cube.size * cube.size] if cube.mask else []
        out += [len(neurons) * ay * ax * 2 for neurons, ay, ax in self.activations.values()]
        return out

    def shard_shape(self, cube: CubeSpec) -> tuple[int, ...]:
        """Samples per shard (one task) along each axis (:func:`perturber.pipeline.shards.shard_shape`)."""
        hint = {k: cube.shards[a] for k, a in enumerate(cube.axis_names) if a in cube.shards}
        return shards.shard_shape(cube.shape, cube.chunk_shape, self.bytes_per_sample(cube), hint)


def layout(cube: CubeSpec) -> Layout:
    """Probe each model once (black input) for its layers' channel counts and map sizes."""
    acts = {}
    for name in cube.models:
        shapes = inference.layer_shapes(name, cube.layers, cube.size)
        for layer in cube.layers:
            channels, ay, ax = shapes[layer]
            chosen = cube.neurons.get(layer)
            neurons = list(range(channels)) if chosen is None else (list(range(min(chosen, channels))) if isinstance(chosen, int) else list(chosen))
            if max(neurons) >= channels:
                raise StoreError(f"cube {cube.name!r}: layer {layer!r} of {name} has {channels} channels; neuron {max(neurons)} does not exist")
            acts[(name, layer)] = (neurons, ay, ax)
    return Layout(activations=acts)


def _axis_coord(name: str, values: tuple) -> xr.Variable:
    f = factors.get(name)
    data = np.array(values, dtype=float) if f.numeric else np.array(values, dtype=object)
    return xr.Variable((name,), data, attrs={"units": f.units or "1", "long_name": f.doc, "kind": f.kind})


def template(cube: CubeSpec, lay: Layout) -> xr.Dataset:
    """The lazy (dask, NaN-filled) dataset of the whole cube, with every coordinate and attribute.

    Per-sample variables are in dask chunks of one shard (a task's region);
    :func:`_encoding` gives their inner chunks and shards."""
    axes = cube.axis_names
    shape = cube.shape
    chunks = lay.shard_shape(cube)
    k, n_models = cube.top_k, len(cube.models)
    coords: dict[str, Any] = {name: _axis_coord(name, values) for name, values in cube.axes}
    coords[names.MODEL] = xr.Variable((names.MODEL,), np.array(cube.models, dtype=object), {"long_name": "model name (data/models.yaml)", "units": "1"})
    coords[names.RANK] = xr.Variable((names.RANK,), np.arange(1, k + 1), {"long_name": "rank of the class, 1 = most probable", "units": "1"})
    coords[names.CLASS] = xr.Variable((names.CLASS,), np.arange(1000), {"long_name": "ImageNet-1k class index", "units": "1"})
    coords[names.CLASS_NAME] = xr.Variable((names.CLASS,), np.array(classes.imagenet_categories(), dtype=object),
                                           {"long_name": "ImageNet-1k class name", "units": "1"})

    def full(extra_shape, extra_chunks, dtype, fill):
        return da.full(shape + extra_shape, fill, dtype=dtype, chunks=chunks + extra_chunks)

    per_model = (*axes, names.MODEL)
    data: dict[str, Any] = {
        names.LOGITS: ((*per_model, names.CLASS), full((n_models, 1000), (n_models, 1000), np.float16, np.nan),
                       {"long_name": "logits (pre-softmax scores)", "units": "1"}),
        names.TOP_CLASS: ((*per_model, names.RANK), full((n_models, k), (n_models, k), np.int16, -1),
                          {"long_name": "ImageNet class index at this rank", "units": "1"}),
        names.TOP_PROB: ((*per_model, names.RANK), full((n_models, k), (n_models, k), np.float32, np.nan),
                         {"long_name": "softmax probability of the class at this rank", "units": "1"}),
    }
    summary = shards.summary_chunk_shape(shape, chunks, n_models)
    def summary_var(dtype, fill):
        return da.full(shape + (n_models,), fill, dtype=dtype, chunks=summary + (n_models,))

    data[names.TOP1_CLASS] = (per_model, summary_var(np.int16, -1), {"long_name": "ImageNet class index at rank 1", "units": "1"})
    data[names.TOP1_PROB] = (per_model, summary_var(np.float32, np.nan),
                             {"long_name": "softmax probability of the class at rank 1", "units": "1"})
    data[names.EXPECTED_PROB] = (per_model, summary_var(np.float32, np.nan),
                                 {"long_name": "total softmax probability of the object's classes (data/catalogue.yaml)", "units": "1"})
    s = cube.size
    if cube.images or cube.mask:
        coords[names.Y] = xr.Variable((names.Y,), np.arange(s), {"long_name": "image row", "units": "pixel"})
        coords[names.X] = xr.Variable((names.X,), np.arange(s), {"long_name": "image column", "units": "pixel"})
    if cube.images:
        coords[names.CHANNEL] = xr.Variable((names.CHANNEL,), np.array(["r", "g", "b"], dtype=object), {"long_name": "colour channel", "units": "1"})
        data[names.IMAGE] = ((*axes, names.Y, names.X, names.CHANNEL), full((s, s, 3), (s, s, 3), np.uint8, 0),
                             {"long_name": "model input image before resize and normalisation (0 where not computed: see done)", "units": "1"})
    if cube.mask:
        data[names.MASK] = ((*axes, names.Y, names.X), full((s, s), (s, s), np.uint8, 0),
                            {"long_name": "object mask: the render's alpha before the image factors, 255 where the object "
                                          "covers the pixel (0 where not computed: see done)", "units": "1"})
    for (model, layer), (neurons, ay, ax) in lay.activations.items():
        act = names.activation(model, layer)
        coords[act.neuron] = xr.Variable((act.neuron,), np.array(neurons), {"long_name": f"channel of {layer} in {model}", "units": "1"})
        data[act.variable] = ((*axes, act.neuron, act.ay, act.ax),
                              full((len(neurons), ay, ax), (len(neurons), ay, ax), np.float16, np.nan),
                              {"long_name": f"activation of {model} {layer} ({models.spec(model).layer_path(layer)})", "units": "1",
                               "model": model, "layer": layer})
    grid = shards.grid(shape, chunks)
    data[names.DONE] = (tuple(names.task_dim(a) for a in axes), da.zeros(grid, dtype=np.uint8, chunks=grid),
                        {"long_name": "1 where the task (a shard of the cube) has been computed and written", "units": "1",
                         "task_shape": list(chunks), "chunk_shape": list(cube.chunk_shape), "summary_chunk_shape": list(summary)})
    ds = xr.Dataset({k: xr.Variable(dims, arr, attrs) for k, (dims, arr, attrs) in data.items()}, coords=coords)
    ds.attrs.update(_group_attrs(cube))
    return ds


def _group_attrs(cube: CubeSpec) -> dict[str, Any]:
    ids = set()
    for name, values in cube.axes:
        if name in ("object", "morph_target", "texture", "background"):
            ids.update(str(v) for v in values)
    for name in ("object", "morph_target", "texture", "background"):
        ids.add(str(cube.fixed.get(name, factors.get(name).default)))
    attributions = sorted({assets.attribution(i) for i in ids} - {""})
    return {
        "perturber_format": FORMAT_VERSION,
        "perturber_version": perturber.__version__,
        "cube": cube.name,
        "spec": yaml.safe_dump(cube.to_dict(), sort_keys=False),
        "spec_sha256": cube.sha256(),
        "fixed": json.dumps({k: cube.fixed.get(k, f.default) for k, f in factors.FACTORS.items() if k not in cube.axis_names}),
        "attributions": attributions,
        "axes": list(cube.axis_names),
    }


def encoding(ds: xr.Dataset, cube: CubeSpec, lay: Layout) -> dict[str, dict[str, Any]]:
    """A cube template's encoding: fill values, checksums, and for the
    per-sample variables inner chunks of ``cube.chunk_shape`` in shards of a task's region."""
    shard = lay.shard_shape(cube)
    enc: dict[str, dict[str, Any]] = {}
    n = len(cube.axis_names)
    for name, var in ds.data_vars.items():
        if var.dtype.kind == "f":
            enc[name] = {"_FillValue": np.nan}
        elif name in (names.TOP_CLASS, names.TOP1_CLASS):
            enc[name] = {"_FillValue": -1, "fill_value": -1}  # the attribute and Zarr's own fill value
        if name != names.DONE and name not in names.SUMMARIES and var.dims[:n] == tuple(cube.axis_names):
            rest = tuple(var.shape[n:])
            enc.setdefault(name, {}).update(chunks=tuple(cube.chunk_shape) + rest, shards=tuple(shard) + rest)
    return checksummed(ds, enc)


def create_or_check(cube: CubeSpec, store: Any, overwrite: bool = False, storage_options: Mapping | None = None,
                    settings: Callable[[], Any] | None = None) -> bool:
    """Make sure ``store`` holds this cube's template. Returns True if it was written.

    ``settings()``: the device settings to record with a new template
    (:class:`perturber.pipeline.devices.Settings`: per-model precision and batch
    size, and the device; called only when a template is written); without it,
    the batch sizes tuned on this process's best device in channels_last.

    An existing group written from another spec is an error unless
    ``overwrite`` (then it is replaced); a group of the same spec is kept; an
    interrupted template is written again. A store that cannot be written is
    an error before any model is loaded.
    """
    check_writable(store)
    clean_partials(store)
    state, existing = group_state(store, cube.name, storage_options)
    if state == "complete":
        old = int(existing.get("perturber_format", 1)) < FORMAT_VERSION
        if existing.get(MARK) == cube.sha256() and not (old and overwrite):  # --overwrite replaces an old format
            _check_format(existing, cube.name, store)
            consolidate(store, storage_options)  # a kill may have come between the marker and the consolidation
            return False
        if not overwrite:
            raise StoreError(
                f"the store already holds cube {cube.name!r} from a different spec (sha256 {str(existing.get(MARK))[:12]}…); "
                f"use --overwrite to replace it"
            )
        # The marker goes first: a kill while the group is replaced leaves an incomplete template.
        with consolidated_ok():
            del zarr.open_group(store, path=cube.name, mode="r+", storage_options=storage_options, zarr_format=3).attrs[MARK]
    lay = layout(cube)
    ds = template(cube, lay)
    # The batch sizes and precisions are fixed with the store: a resumed run
    # batches and rounds exactly as the first did, so its chunks come out bit
    # for bit the same.
    if settings is None:
        ds.attrs["batch_sizes"] = json.dumps({m: inference.tuned_batch_size(m, str(models.best_device())) for m in cube.models})
    else:
        chosen = settings()
        ds.attrs["batch_sizes"] = json.dumps(chosen.batch_sizes)
        ds.attrs["precision"] = json.dumps(chosen.precision)
        ds.attrs["device"] = chosen.device
    write_template(ds, store, cube.name, encoding(ds, cube, lay), storage_options)
    return True


def _check_format(attrs: Mapping[str, Any], cube: str, store: Any) -> None:
    """Refuse to add to a cube written in an older store format (it opens for reading)."""
    found = int(attrs.get("perturber_format", 1))
    if found < FORMAT_VERSION:
        raise StoreError(f"cube {cube!r} of {store} was written by an older Perturber (store format {found}); "
                         f"`perturber migrate {store} --out NEW` rewrites it in format {FORMAT_VERSION}")


def _read_attrs(store: Any, group: str, storage_options: Mapping | None) -> dict[str, Any] | None:
    """The complete group's attributes; None when the store or the group does not exist or is incomplete."""
    state, attrs = group_state(store, group, storage_options)
    return attrs if state == "complete" else None


def batch_sizes(cube: CubeSpec, store: Any, storage_options: Mapping | None = None) -> dict[str, int]:
    """The per-model batch sizes recorded when the cube's template was written."""
    attrs = _read_attrs(store, cube.name, storage_options) or {}
    return {k: int(v) for k, v in json.loads(attrs.get("batch_sizes", "{}")).items()}


def precision(cube: CubeSpec, store: Any, storage_options: Mapping | None = None) -> dict[str, str]:
    """The per-model precision recorded with the cube's template (empty for a
    template written before precisions were: every model in channels_last)."""
    attrs = _read_attrs(store, cube.name, storage_options) or {}
    return dict(json.loads(attrs.get("precision", "{}")))


def open_cube(store: Any, cube: str, storage_options: Mapping | None = None, chunks: Any = "auto") -> xr.Dataset:
    """The cube as a lazy xarray dataset (what any user gets with xarray.open_zarr).

    ``chunks=None`` gives lazily indexed arrays without dask: a small selection
    then reads only its Zarr chunks, without building a task graph (the viewer).
    """
    with consolidated_ok():
        if chunks == "auto":
            return xr.open_zarr(store, group=cube, storage_options=storage_options)
        return xr.open_zarr(store, group=cube, storage_options=storage_options, chunks=chunks)


def task_shape(ds: xr.Dataset) -> tuple[int, ...]:
    """Samples per ``done`` mark along each axis: a task's shard (format 1: a chunk)."""
    attrs = ds[names.DONE].attrs
    return tuple(int(n) for n in attrs.get("task_shape", attrs.get("chunk_shape")))


@dataclass(frozen=True)
class Tasks:
    """A cube's tasks as written in its store: ``shape`` (samples per task along
    each axis) over the cube of shape ``cube``; ``summary`` (samples per summary chunk)."""

    cube: tuple[int, ...]
    shape: tuple[int, ...]
    summary: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, ...]:
        return shards.grid(self.cube, self.shape)

    def region(self, index: tuple[int, ...]) -> tuple[slice, ...]:
        """The samples of task ``index`` along each axis."""
        return shards.region(self.cube, self.shape, index)

    def samples(self, index: tuple[int, ...]) -> int:
        return math.prod(s.stop - s.start for s in self.region(index))


def tasks(cube: CubeSpec, store: Any, storage_options: Mapping | None = None) -> Tasks:
    """The tasks of ``cube`` in ``store`` (its template must be written): one per shard.

    A format-1 store (one file per chunk) is refused: ``perturber migrate`` rewrites it."""
    _check_format(_read_attrs(store, cube.name, storage_options) or {}, cube.name, store)
    group = zarr.open_group(store, path=cube.name, mode="r", storage_options=storage_options, zarr_format=3)
    done = group[names.DONE].attrs
    return Tasks(tuple(cube.shape), tuple(done["task_shape"]), tuple(done["summary_chunk_shape"]))


def done_mask(cube: CubeSpec, store: Any, storage_options: Mapping | None = None) -> np.ndarray:
    """(task grid) bool: which tasks are written."""
    group = zarr.open_group(store, path=cube.name, mode="r", storage_options=storage_options, zarr_format=3)
    return group[names.DONE][...].astype(bool)


def write_task(cube: CubeSpec, store: Any, region: tuple[slice, ...], values: Mapping[str, np.ndarray],
               storage_options: Mapping | None = None) -> None:
    """Write one task's per-sample variables (arrays shaped like ``region``).

    The region is one whole shard of every variable, so no other task's data
    is touched. A shard written before (a task computed again after a
    repair) is removed first: Zarr reads an existing shard before writing
    into it, and a damaged one would stop the write. The summaries and the
    done mark are the job's to write
    (:class:`perturber.pipeline.summaries.SummaryWriter`), after this.
    """
    group = zarr.open_group(store, path=cube.name, mode="r+", storage_options=storage_options, zarr_format=3)
    for name, arr in values.items():
        # Every inner chunk of a done region is written, even one equal to the
        # fill value (a black image), so a shard is always whole.
        target = group[name].with_config({"write_empty_chunks": True})
        shard = target.metadata.chunk_grid.chunk_shape
        coords = tuple(r.start // s for r, s in zip(region, shard)) + (0,) * (target.ndim - len(region))
        sync((target.store_path / target.metadata.encode_chunk_key(coords)).delete())
        target[region] = np.asarray(arr, dtype=target.dtype)