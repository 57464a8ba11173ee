"""Stores of 10k, 1M and 10M samples with the real layout, generated in minutes.

    python benchmarks/store_generator.py FOLDER [--sizes 10000 1000000 10000000]

Each store is what ``perturber precompute`` writes for its cube (store
format 2: the precompute's own template from ``store.create_or_check``, the
shard shape the default chooses for that size, the per-sample summaries in
large chunks, the done marks in one file), at the disk cost of a few shards:

1. :data:`CHUNKS_PER_OBJECT` real inner chunks per object (one scene, its 25
   hues) are computed by the precompute (``run.compute_task``, a task per
   chunk) into a small store kept beside the stores (``real-chunks.zarr``);
2. per object, :data:`VARIANTS` source shards of the real shard shape are
   tiled from that object's real chunks (their hues rolled, in an order of
   each variant's own, so that neighbouring scenes differ) and written with
   ``store.write_task`` (the real codecs: sharding, zstd, crc32c);
3. every other shard position of every per-sample variable is a hard link to
   a source shard of its object, the variants alternating along every axis
   (Zarr's chunk key encoding names the files);
4. the summaries (top-1 class and probability, expected-class probability)
   are those of the linked shards, written whole; every task is marked done.

Hard links share the page cache, so reads come from memory: the viewer's
figures are decode and view time, not disk latency. :func:`files_and_bytes`
counts a store's files and bytes (apparent, and on disk: each inode once).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from perturber.pipeline import names, run, shards, spec  # noqa: E402
from perturber.pipeline import store as zstore  # noqa: E402

OBJECTS = ["dog", "cat", "sports_car", "fire_truck", "bulldog", "siamese_cat", "truck", "teddy_bear"]
#: samples → (objects, yaws, pitches, distances); 25 hues each (10M: the worked example of pipeline/shards.py).
SHAPES = {
    10_000: (4, 10, 5, 2),
    1_000_000: (8, 50, 10, 10),
    10_000_000: (8, 100, 50, 10),
}
HUES = 25
CHUNKS_PER_OBJECT = 2  # real inner chunks computed per object
VARIANTS = 2  # source shards per object (tiled from its real chunks in different orders)


def cube_spec(samples: int, shard_hint: dict[str, int] | None = None) -> spec.CubeSpec:
    """The benchmark's cube of ``samples`` samples: two pip-shipped models, three
    layers of 16 neurons, 224 px images, default chunks (and shards, unless ``shard_hint``)."""
    n_obj, n_yaw, n_pitch, n_dist = SHAPES[samples]
    cube = {
        "axes": {
            "object": OBJECTS[:n_obj],
            "yaw": {"linspace": [-180, 180 - 360 / n_yaw, n_yaw]},
            "pitch": {"linspace": [-10, 40, n_pitch]},
            "distance": {"linspace": [1.8, 3.0, n_dist]},
            "hue": {"linspace": [-180, 165.6, HUES]},
        },
        "models": ["efficientnet_lite0", "efficientnet_lite2"],
        "layers": ["stage4", "stage6", "head"],
        "neurons": {"stage4": 16, "stage6": 16, "head": 16},
        "images": True,
    }
    if shard_hint:
        cube["shards"] = shard_hint
    return spec.parse_spec({"name": "bench", "cubes": {"views": cube}}, force=True).cubes[0]


def sharded_variables(cube: spec.CubeSpec, path: str) -> list[str]:
    """The per-sample variables written by tasks (sharded), in the store at ``path``."""
    group = zarr.open_group(path, path=cube.name, mode="r")
    return sorted(name for name, arr in group.arrays()
                  if arr.shape[:len(cube.axes)] == tuple(cube.shape) and name not in names.SUMMARIES)


def pool_spec() -> spec.SweepSpec:
    """The real chunks' cube: every object at :data:`CHUNKS_PER_OBJECT` yaws, the
    benchmark's models, layers and images, a task per inner chunk (one scene, its hues)."""
    cube = {
        "axes": {"object": OBJECTS, "yaw": {"linspace": [-135, 45, CHUNKS_PER_OBJECT]}, "pitch": [10.0], "distance": [2.4],
                 "hue": {"linspace": [-180, 165.6, HUES]}},
        "models": ["efficientnet_lite0", "efficientnet_lite2"],
        "layers": ["stage4", "stage6", "head"],
        "neurons": {"stage4": 16, "stage6": 16, "head": 16},
        "images": True,
        "shards": {"object": 1, "yaw": 1, "pitch": 1, "distance": 1, "hue": HUES},
    }
    return spec.parse_spec({"name": "pool", "cubes": {"views": cube}}, force=True)


def real_chunks(path: str) -> dict[str, list[tuple[dict, dict]]]:
    """object → [(values, summaries)] of its :data:`CHUNKS_PER_OBJECT` real inner
    chunks: the store at ``path`` computed by the precompute (``run.compute_task``
    per chunk; kept, so later sizes and runs reuse it)."""
    sweep = pool_spec()
    cube = sweep.cubes[0]
    run.precompute(sweep, path, scheduler="synchronous", progress=False, echo=lambda _: None)  # nothing to do when computed
    variables = sharded_variables(cube, path)
    group = zarr.open_group(path, path=cube.name, mode="r")
    out: dict[str, list[tuple[dict, dict]]] = {}
    for o, obj in enumerate(OBJECTS):
        for y in range(CHUNKS_PER_OBJECT):
            at = (o, y, 0, 0, slice(None))
            values = {name: np.asarray(group[name][at])[None, None, None, None] for name in variables}
            summaries = {name: np.asarray(group[name][at])[None, None, None, None] for name in names.SUMMARIES}
            out.setdefault(obj, []).append((values, summaries))
    return out


def _tile(pool: list[tuple[dict, dict]], shard: tuple[int, ...], chunk: tuple[int, ...], variant: int) -> tuple[dict, dict]:
    """(values, summaries) of one source shard: each inner chunk one of ``pool``'s
    chunks with its hues rolled (hue is the last axis, whole in a chunk), the
    (chunk, roll) pairs in a shuffled order that each variant starts at another
    place of, so neighbouring scenes differ, and the variants at every scene."""
    per_axis = [s // c for s, c in zip(shard, chunk)]
    pairs = [(p, r) for p in range(len(pool)) for r in range(chunk[-1])]
    random.Random(0).shuffle(pairs)
    start = variant * (len(pairs) // VARIANTS + 1)  # the variants differ at every position
    values = {name: np.empty(shard + arr.shape[len(shard):], arr.dtype) for name, arr in pool[0][0].items()}
    summaries = {name: np.empty(shard + arr.shape[len(shard):], arr.dtype) for name, arr in pool[0][1].items()}
    hue = len(shard) - 1
    for j, at in enumerate(itertools.product(*(range(n) for n in per_axis))):
        block = tuple(slice(a * c, (a + 1) * c) for a, c in zip(at, chunk))
        p, roll = pairs[(start + j) % len(pairs)]
        for out, source in ((values, pool[p][0]), (summaries, pool[p][1])):
            for name in out:
                out[name][block] = np.roll(source[name], roll, axis=hue)
    return values, summaries


def make_store(path: str, samples: int, seed: int = 0, echo=print) -> spec.CubeSpec:
    """A store of ``samples`` samples with the real layout (see the module docstring);
    the real chunks are kept beside it (``real-chunks.zarr``)."""
    start = time.perf_counter()
    cube = cube_spec(samples)
    pool = real_chunks(os.path.join(os.path.dirname(os.path.abspath(path)), "real-chunks.zarr"))
    echo(f"  {sum(map(len, pool.values()))} real chunks ready ({time.perf_counter() - start:.0f} s)")
    zstore.create_or_check(cube, path, overwrite=True)
    tasks = zstore.tasks(cube, path)
    shard, chunk = tuple(tasks.shape), tuple(cube.chunk_shape)
    if shard[0] != 1:
        raise SystemExit(f"shards of {shard} span objects: a linked shard would show another object")
    variables = sharded_variables(cube, path)
    group = zarr.open_group(path, path=cube.name, mode="r+")
    rng = random.Random(seed)
    every = list(itertools.product(*(range(g) for g in tasks.grid)))
    whole = [i for i in every if tasks.samples(i) == math.prod(shard)]
    sources: dict[tuple[int, int], tuple[tuple[int, ...], dict]] = {}  # (object, variant) → (task index, summaries)
    for o in range(SHAPES[samples][0]):
        for v in range(VARIANTS):  # variants alternate along every axis (a checkerboard): neighbouring shards differ
            index = rng.choice([i for i in whole if i[0] == o and sum(i) % VARIANTS == v])
            values, summaries = _tile(pool[OBJECTS[o]], shard, chunk, v)
            zstore.write_task(cube, path, tasks.region(index), values)
            sources[(o, v)] = (index, summaries)
    echo(f"  {len(sources)} source shards of {shard} written ({time.perf_counter() - start:.0f} s)")
    out = {name: np.full(tuple(cube.shape) + group[name].shape[len(shard):], group[name].fill_value, group[name].dtype)
           for name in names.SUMMARIES}
    files = {name: Path(path) / cube.name / name for name in variables}
    extra = {name: (0,) * (group[name].ndim - len(shard)) for name in variables}
    linked = 0
    own = {index: summaries for index, summaries in sources.values()}  # the source shards stay themselves
    for index in every:
        source, summaries = (index, own[index]) if index in own else sources[(index[0], sum(index) % VARIANTS)]
        region = tasks.region(index)
        local = tuple(slice(0, r.stop - r.start) for r in region)
        for name in names.SUMMARIES:
            out[name][region] = summaries[name][local]
        if index == source:
            continue
        for name in variables:
            encode = group[name].metadata.encode_chunk_key
            target = files[name] / encode(tuple(index) + extra[name])
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(files[name] / encode(tuple(source) + extra[name]), target)
            linked += 1
    echo(f"  {linked:,} shard files linked ({time.perf_counter() - start:.0f} s)")
    for name in names.SUMMARIES:
        group[name][...] = out[name]
    group[names.DONE][...] = np.ones(group[names.DONE].shape, np.uint8)
    echo(f"  summaries and done marks written ({time.perf_counter() - start:.0f} s)")
    return cube


def files_and_bytes(path: str) -> tuple[int, int, int]:
    """(files, apparent bytes, bytes on disk) of a store; a hard-linked file's
    blocks count once on disk and at every name in the apparent size."""
    files = apparent = disk = 0
    seen: set[tuple[int, int]] = set()
    for folder, _, names_ in os.walk(path):
        for name in names_:
            st = os.lstat(os.path.join(folder, name))
            files += 1
            apparent += st.st_size
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                disk += st.st_blocks * 512
    return files, apparent, disk


def layout_line(cube: spec.CubeSpec, path: str) -> str:
    """The store's layout, as docs/benchmarks.md states it."""
    tasks = zstore.tasks(cube, path)
    summary = shards.summary_chunk_shape(cube.shape, tasks.shape, len(cube.models))
    return (f"{' x '.join(f'{a}[{n}]' for a, n in zip(cube.axis_names, cube.shape))}; inner chunks "
            f"{tuple(cube.chunk_shape)}, shards {tuple(tasks.shape)} ({math.prod(tasks.grid):,} tasks), summary chunks {summary}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SHAPES))
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    for samples in args.sizes:
        path = os.path.join(args.folder, f"bench-{samples}.zarr")
        t = time.perf_counter()
        cube = make_store(path, samples)
        files, apparent, disk = files_and_bytes(path)
        print(f"{samples:,} samples: {time.perf_counter() - t:.0f} s, {files:,} files, {apparent / 2**30:.1f} GiB apparent, "
              f"{disk / 2**30:.2f} GiB on disk; {layout_line(cube, path)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
