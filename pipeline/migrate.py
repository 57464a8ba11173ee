"""``perturber migrate OLD --out NEW``: rewrite a store in the current format.

A store written before sharding (format 1: a file per chunk of every
variable, a done mark per chunk, no per-sample summaries) opens for reading,
but a precompute will not add to it. This copies it into a new store in
format 2 (:mod:`perturber.pipeline.store`), without loading a model:

- each cube's template from its recorded spec and its stored activation
  shapes, with the recorded batch sizes (so later tasks batch as before);
- every task (shard) whose samples were all computed: its per-sample
  variables copied, its summaries taken from the stored top-k and
  expected-class probability, its done mark set; a task with samples not
  yet computed stays unmarked, for ``perturber precompute`` to fill;
- every other group (feature visualisations, studies, searches) copied as it is.

OLD is only read. Interrupted, it resumes: a second run skips the tasks
already marked in NEW. Local stores only.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr
import yaml
import zarr
from tqdm import tqdm

from perturber.pipeline import names, summaries
from perturber.pipeline.analysis import Cube
from perturber.pipeline import store as zstore
from perturber.pipeline.spec import CubeSpec, parse_spec

__all__ = ["migrate", "layout_of", "cube_of", "main"]


def cube_of(ds: xr.Dataset) -> CubeSpec:
    """The cube spec recorded in a cube group's attributes."""
    raw = yaml.safe_load(ds.attrs["spec"])
    return parse_spec({"name": "migrate", "cubes": {ds.attrs["cube"]: raw}}, force=True).cubes[0]


def layout_of(ds: xr.Dataset) -> zstore.Layout:
    """The activation shapes a cube group holds (no model is run)."""
    acts = {}
    for act in names.activation_variables(ds):
        acts[(act.model, act.layer)] = ([int(n) for n in ds[act.neuron].values], ds.sizes[act.ay], ds.sizes[act.ax])
    return zstore.Layout(activations=acts)


def _sample_done(ds: xr.Dataset) -> np.ndarray:
    """(*axes) bool: the samples a store's done marks cover (any format)."""
    marks = ds[names.DONE].values.astype(bool)
    for k, c in enumerate(zstore.task_shape(ds)):
        marks = np.repeat(marks, c, axis=k)
    return marks


def _migrate_cube(old: str, new: str, name: str, progress: bool, echo: Callable[[str], None]) -> tuple[int, int]:
    """(tasks copied, tasks left for precompute) of one cube."""
    ds = zstore.open_cube(old, name, chunks=None)
    cube = cube_of(ds)
    state, attrs = zstore.group_state(new, name)
    if state == "complete" and attrs.get(zstore.MARK) != cube.sha256():
        raise zstore.StoreError(f"{new} already holds a different cube {name!r}; choose another --out")
    if state != "complete":
        lay = layout_of(ds)
        template = zstore.template(cube, lay)
        template.attrs["batch_sizes"] = ds.attrs.get("batch_sizes", "{}")
        zstore.write_template(template, new, name, zstore.encoding(template, cube, lay))
    tasks = zstore.tasks(cube, new)
    done = zstore.done_mask(cube, new)
    computed = _sample_done(ds)[tuple(slice(0, n) for n in cube.shape)]
    per_sample = [v for v in ds.data_vars if v != names.DONE and v not in names.SUMMARIES
                  and ds[v].dims[:len(cube.shape)] == tuple(cube.axis_names)]
    writer = summaries.SummaryWriter(cube, new, tasks, done)
    copied = left = 0
    todo = [tuple(int(k) for k in i) for i in np.argwhere(~done)]
    try:
        for index in tqdm(todo, unit="task", desc=f"migrate {name}", disable=not progress, file=sys.stderr):
            region = tasks.region(index)
            if not computed[region].all():
                left += 1
                continue
            # Every sample of the region is computed, so no fill value (NaN for -1) is cast back to an integer.
            values = {v: np.asarray(ds[v][region].values) for v in per_sample}
            expected = (values.pop(names.EXPECTED_PROB) if names.EXPECTED_PROB in values
                        else _expected(ds, region))
            zstore.write_task(cube, new, region, values)
            writer.add(index, summaries.summarise(values[names.TOP_CLASS], values[names.TOP_PROB], expected))
            copied += 1
    finally:
        writer.close()
    echo(f"cube {name}: {copied} tasks copied, {left} with samples not computed left for `perturber precompute`"
         + (f", {int(done.sum())} already in {new}" if done.any() else ""))
    return copied, left


def _expected(ds: xr.Dataset, region: tuple[slice, ...]) -> np.ndarray:
    """The expected-class probability of a region, from its logits (stores older than ``expected_prob``)."""
    sub = ds.isel({a: r for a, r in zip(ds.attrs["axes"], region)})
    return np.asarray(Cube(sub).expected_probability, dtype=np.float32)


def migrate(old: str, new: str, progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, tuple[int, int]]:
    """Rewrite the local store ``old`` into ``new`` in the current format;
    returns cube → (tasks copied, tasks left for precompute)."""
    if zstore.local_path(old) is None or zstore.local_path(new) is None:
        raise zstore.StoreError("migrate works on local stores (folders); copy a remote store here first")
    if Path(old).resolve() == Path(new).resolve():
        raise zstore.StoreError("--out must be a new store, not the one being migrated (it is only read)")
    try:
        root = zarr.open_group(old, mode="r", zarr_format=3)
        groups = sorted(name for name, _ in root.groups())
    except Exception as exc:
        raise zstore.StoreError(f"{old}: not a Zarr store ({type(exc).__name__})") from None
    zstore.check_writable(new)
    zarr.open_group(new, mode="a", zarr_format=3)
    out = {}
    for name in groups:
        attrs = dict(root[name].attrs)
        if name not in names.NOT_CUBES and zstore.MARK in attrs and "spec" in attrs:
            out[name] = _migrate_cube(old, new, name, progress, echo)
        elif not (Path(new) / name).exists():
            shutil.copytree(Path(old) / name, Path(new) / name)
            echo(f"group {name}: copied")
    zstore.consolidate(new)
    return out


def main(old: str, new: str, progress: bool = True, echo: Callable[[str], None] = print) -> int:
    """The command: exit status 0 when every computed task was copied."""
    migrate(old, new, progress=progress, echo=echo)
    echo(f"{new}: written in store format {zstore.FORMAT_VERSION}; {old} is unchanged")
    return 0
