"""``perturber verify STORE [--repair]``: find the damaged chunks of a store.

Every array of a store carries a crc32c checksum per Zarr chunk
(:func:`perturber.pipeline.store.checksummed`), and every file of a region
marked done exists (empty chunks are written too). So a file (a chunk, or a
shard of chunks) is damaged when it is missing, cannot be decoded, or fails
a checksum. Verify reads every file that should exist:

- in a cube group, every array's files that hold a task its ``done`` array
  marks (a shard holds one task; a summary chunk many), and every coordinate;
- in the ``featureviz`` group, the images and objectives of each chunk of
  units its ``fvdone_<target>`` array marks, and every other array;
- in any other group (studies, ...), every chunk of every array.

It prints one line per damaged region. ``--repair`` clears the done marks of
damaged regions (every task a damaged summary chunk holds), so the next
``perturber precompute`` (or ``featureviz``) recomputes exactly those;
damage outside a done region (a coordinate, a study) cannot be recomputed
task by task and is reported as such.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import zarr
from tqdm import tqdm
from zarr.core.sync import sync

from perturber.pipeline import names, shards
from perturber.pipeline.errors import one_line
from perturber.pipeline.store import MARK, StoreError, consolidated_ok, is_absent

__all__ = ["Damage", "find_damage", "clear_marks", "main"]


@dataclass
class Damage:
    """One damaged region: ``done`` is the done array and the block of its marks
    (None when no done mark covers it), ``problems`` maps array → reason."""

    group: str
    region: str
    done: tuple[str, tuple[slice, ...]] | None
    problems: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        what = "; ".join(f"{name}: {why}" for name, why in sorted(self.problems.items()))
        fix = "" if self.done is not None else " (not in a done region: write the group again)"
        return f"damaged chunk: group {self.group!r} {self.region}: {what}{fix}"


def _chunk_keys(array: zarr.Array) -> set[str]:
    """The chunk keys that have a file (relative to the array)."""
    store = array.store_path.store
    prefix = f"{array.store_path.path}/"

    async def listing() -> set[str]:
        return {k[len(prefix):] async for k in store.list_prefix(prefix) if not k.endswith("zarr.json")}

    return sync(listing())


def _blocks(array: zarr.Array) -> tuple[int, ...]:
    """The stored objects' shape: a shard when the array is sharded, else a chunk."""
    return tuple(array.metadata.chunk_grid.chunk_shape)


def _check_chunk(array: zarr.Array, coords: tuple[int, ...], keys: set[str]) -> str | None:
    """Why the file (chunk or shard) at ``coords`` is damaged, or None when it reads and checks out."""
    if array.metadata.encode_chunk_key(coords) not in keys:
        return "chunk file missing"
    try:
        array[shards.region(array.shape, _blocks(array), coords)]
    except Exception as exc:  # a codec or checksum error: whatever the reason, the chunk is unusable
        text = str(exc)
        return "checksum mismatch" if "checksum" in text.lower() else f"unreadable ({one_line(exc, typed=True, limit=120)})"
    return None


class _Marks:
    """Which done marks cover each file of an array: ``done`` (the done
    array's name) and, per leading dimension, how many samples one mark covers
    (None: the first ``n`` dimensions of the files and the marks share a grid,
    as in feature visualisations)."""

    def __init__(self, done: str, per_mark: tuple[int, ...] | None, n: int = 0):
        self.done, self.per_mark, self.n = done, per_mark, n

    def block(self, array: zarr.Array, coords: tuple[int, ...], grid: tuple[int, ...]) -> tuple[slice, ...]:
        """The marks covering file ``coords`` of ``array``."""
        if self.per_mark is None:
            return tuple(slice(c, c + 1) for c in coords[:self.n])
        out = []
        for c, b, n, p, g in zip(coords, _blocks(array), array.shape, self.per_mark, grid):
            out.append(slice(c * b // p, min(g, -(-min((c + 1) * b, n) // p))))
        return tuple(out)


def _done_regions(group: zarr.Group) -> dict[str, _Marks]:
    """array name → the done marks that cover its files."""
    out = {}
    arrays = dict(group.arrays())
    axes = tuple(group.attrs.get("axes", ()))
    if names.DONE in arrays and axes:  # a cube
        attrs = arrays[names.DONE].attrs
        per_task = tuple(attrs.get("task_shape", attrs.get("chunk_shape", ())))
        for name, a in arrays.items():
            dims = a.metadata.dimension_names or ()
            if name != names.DONE and per_task and tuple(dims[:len(axes)]) == axes:
                out[name] = _Marks(names.DONE, per_task)
    for name in arrays:
        if name.startswith("fvdone_"):
            target = names.fv_names(name[len("fvdone_"):])
            for variable in (target.images, target.objective):
                if variable in arrays:
                    out[variable] = _Marks(name, None, 2)
    return out


def _region(group: zarr.Group, done: str, block: tuple[slice, ...]) -> str:
    """'task yaw=0..45 hue=120' (a cube: the axis values it covers) or 'chunk parameterisation=0, fvchunk_x=3'."""
    marks = group[done]
    attrs = marks.attrs
    shape = attrs.get("task_shape", attrs.get("chunk_shape"))
    axes = group.attrs.get("axes")
    if shape and axes and len(axes) == len(block):
        parts = []
        for axis, b, c in zip(axes, block, shape):
            values = [_short(v) for v in group[axis][b.start * c:b.stop * c]]
            parts.append(f"{axis}={values[0]}" + (f"..{values[-1]}" if len(values) > 1 else ""))
        return ("task " if "task_shape" in attrs else "chunk ") + " ".join(parts)
    dims = marks.metadata.dimension_names or [f"dim{k}" for k in range(len(block))]
    return "chunk " + ", ".join(f"{d}={b.start}" for d, b in zip(dims, block))


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _groups(root: zarr.Group) -> Iterator[tuple[str, zarr.Group]]:
    for name, g in sorted(root.groups()):
        yield name, g
        for sub, h in _groups(g):
            yield f"{name}/{sub}", h


def find_damage(store: Any, storage_options: Mapping | None = None, progress: bool = True,
                echo: Callable[[str], None] = print) -> tuple[list[Damage], int]:
    """(damaged regions, chunks checked) of every group of ``store``."""
    try:
        with consolidated_ok():
            root = zarr.open_group(store, mode="r", storage_options=storage_options, zarr_format=3, use_consolidated=False)
            groups = list(_groups(root))
    except Exception as exc:
        if is_absent(exc):
            raise StoreError(f"{store}: no Zarr store there") from None
        raise StoreError(f"cannot read the store: its metadata is damaged ({one_line(exc, typed=True, limit=160)})") from None
    damage: dict[tuple[str, str], Damage] = {}
    checked = 0
    todo = []
    for gname, group in groups:
        if MARK not in group.attrs and ("perturber_group" in group.attrs or "perturber_format" in group.attrs):
            echo(f"group {gname!r}: an interrupted template (no data yet); the next run writes it again")
            continue
        regions = _done_regions(group)
        for aname, array in sorted(group.arrays()):
            todo.append((gname, group, aname, array, regions.get(aname)))
    total = sum(int(np.prod(shards.grid(a.shape, _blocks(a)))) for *_, a, _ in todo)
    bar = tqdm(total=total, unit="chunk", desc="verify", disable=not progress, file=sys.stderr)
    done_marks: dict[tuple[str, str], np.ndarray] = {}  # (group, done array) → its marks, read once
    for gname, group, aname, array, region in todo:
        keys = _chunk_keys(array)
        if region is not None and (gname, region.done) not in done_marks:
            done_marks[gname, region.done] = group[region.done][...]
        marks = done_marks[gname, region.done] if region is not None else None
        for coords in itertools.product(*(range(n) for n in shards.grid(array.shape, _blocks(array)))):
            bar.update(1)
            block = region.block(array, coords, marks.shape) if region is not None else None
            if region is not None and not marks[block].any():
                continue  # not computed yet: nothing to check
            checked += 1
            why = _check_chunk(array, coords, keys)
            if why is None:
                continue
            if region is not None:
                mark = (region.done, block)
                where = _region(group, *mark)
            else:
                mark, where = None, f"array {aname} chunk {coords}"
            d = damage.setdefault((gname, where), Damage(gname, where, mark))
            d.problems[aname] = why
    bar.close()
    return list(damage.values()), checked


def clear_marks(store: Any, damage: list[Damage], storage_options: Mapping | None = None) -> int:
    """Clear the done mark of every repairable damaged region; returns how many were cleared."""
    cleared = 0
    for d in damage:
        if d.done is None:
            continue
        with consolidated_ok():
            group = zarr.open_group(store, path=d.group, mode="r+", storage_options=storage_options, zarr_format=3)
        done, block = d.done
        group[done][block] = 0
        cleared += 1
    return cleared


def main(store: str, repair: bool = False, progress: bool = True, echo: Callable[[str], None] = print) -> int:
    """The command: exit status 0 when the store is intact (or fully repaired), 1 otherwise."""
    damage, checked = find_damage(store, progress=progress, echo=echo)
    for d in damage:
        echo(d.line())
    if not damage:
        echo(f"{store}: all {checked} chunks intact")
        return 0
    fixable = [d for d in damage if d.done is not None]
    if not repair:
        echo(f"{store}: {len(damage)} damaged of {checked} chunks checked; "
             f"`perturber verify {store} --repair` clears the done marks of {len(fixable)}, then precompute recomputes them")
        return 1
    cleared = clear_marks(store, damage)
    echo(f"{store}: cleared the done marks of {cleared} damaged chunks; run `perturber precompute SPEC --out {store}` "
         f"(or `perturber featureviz`) to recompute exactly those")
    return 0 if cleared == len(damage) else 1

