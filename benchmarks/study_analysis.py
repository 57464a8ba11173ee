"""Studies out of core: each study's analysis on a generated 1M-sample store.

For each study named, its YAML's first cube is scaled up to about a million
samples by giving one axis many values (``--axis study=factor``; seeds get
0..N-1, intervals evenly spaced values across their domain), filled chunk by
chunk with generated logits (no rendering: :mod:`perturber.pipeline.studies.synthetic`)
and analysed with :func:`perturber.pipeline.studies.analyse` on dask's
default threaded scheduler, timed from opening the store to the table in
memory. Goal: under 60 s on a 2-core machine.

    python benchmarks/study_analysis.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import date

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

from perturber.pipeline import factors  # noqa: E402
from perturber.pipeline import store as zstore  # noqa: E402
from perturber.pipeline.analysis import class_indices  # noqa: E402
from perturber.pipeline.studies import analyse, runner  # noqa: E402
from perturber.pipeline.studies.synthetic import write_store  # noqa: E402

#: The study → the axis that is scaled up (summary-only studies and a logits one).
AXES = {"patch-shuffle": "shuffle_seed", "yaw-fluctuation": "distance", "frequency": "yaw", "background": "yaw",
        "cue-conflict": "yaw"}


#: Samples per chunk the scaled cube aims at.
CHUNK = 20_000


def scaled(cube, axis: str, samples: int):
    """``cube`` without images or layers, with ``axis`` given enough values for ``samples``."""
    others = math.prod(n for (name, _), n in zip(cube.axes, cube.shape) if name != axis)
    count = max(2, math.ceil(samples / others))
    domain = factors.get(axis).domain
    if getattr(domain, "integer", False):
        values = tuple(range(count))
    else:
        values = tuple(float(v) for v in np.linspace(domain.lo, domain.hi, count))
    axes = tuple((name, values if name == axis else v) for name, v in cube.axes)
    if axis not in dict(cube.axes):
        axes = axes + ((axis, values),)
    out = dataclasses.replace(cube, axes=axes, images=False, layers=(), neurons={},
                              chunks={a: n for a, n in cube.chunks.items() if a in dict(axes)},
                              fixed={k: v for k, v in cube.fixed.items() if k != axis})
    # About CHUNK samples per chunk along the scaled axis (a scene axis defaults to one value per chunk:
    # a million chunk files is the scale issue's business, not the analysis's).
    rest = math.prod(c for (name, _), c in zip(out.axes, out.chunk_shape) if name != axis)
    return dataclasses.replace(out, chunks={**out.chunks, axis: max(1, CHUNK // rest)})


def logits_for(cube):
    """Generated logits: noise, with the object's first class raised in 60 % of samples."""
    names = [n for n, _ in cube.axes]
    objects = dict(cube.axes).get("object", (cube.fixed.get("object", "dog"),))

    def make(slices, rng):
        shape = tuple(s.stop - s.start for s in slices) + (len(cube.models), 1000)
        z = rng.standard_normal(shape, dtype=np.float32) * 2.0
        if "object" in names:
            k = names.index("object")
            for i in range(slices[k].start, slices[k].stop):
                cls = (class_indices(str(objects[i])) or [0])[0]
                idx = [slice(None)] * len(shape)
                idx[k] = i - slices[k].start
                z[tuple(idx)][..., cls] += 6.0 * (rng.random(z[tuple(idx)].shape[:-1]) < 0.6)
        return z

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--studies", default="patch-shuffle,yaw-fluctuation")
    parser.add_argument("--models", default="efficientnet_lite0,efficientnet_lite2")
    parser.add_argument("--keep", metavar="DIR", help="keep the generated stores here (re-used when present)")
    parser.add_argument("--write", metavar="MD")
    args = parser.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="study-bench-")
    rows = []
    try:
        for name in args.studies.split(","):
            sf = runner.load(name, models=args.models.split(","))
            cube = scaled(sf.sweep.cubes[0], AXES.get(name, "yaw"), args.samples)
            store = os.path.join(folder, f"{name}.zarr")
            if zstore.group_state(store, cube.name)[0] != "complete" or zstore.done_mask(cube, store).min() == 0:
                shutil.rmtree(store, ignore_errors=True)
                t = time.perf_counter()
                write_store(cube, store, logits_for(cube))
                print(f"{name}: generated {cube.samples} samples in {time.perf_counter() - t:.0f} s", flush=True)
            t = time.perf_counter()
            table = analyse(name, store, sf.params)
            seconds = time.perf_counter() - t
            size = sum(f.stat().st_size for f in __import__("pathlib").Path(store).rglob("*") if f.is_file())
            shape = " x ".join(f"{n}[{len(v)}]" for n, v in cube.axes)
            rows.append(f"| {name} | {shape} = {cube.samples:,} | {len(cube.models)} | {size / 2**30:.1f} GiB | "
                        f"{seconds:.1f} s | {cube.samples / seconds:,.0f} |")
            print(rows[-1], flush=True)
            del table
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    lines = [
        "## Study analysis out of core (1M samples)",
        "",
        f"Machine: {report.cpu()}; {date.today().isoformat()}. `python benchmarks/study_analysis.py`: each study's",
        "cube scaled to about a million samples along one axis (about 20k samples per chunk) and filled with generated logits (no rendering),",
        "then `perturber.pipeline.studies.analyse` from opening the store to the table in memory (dask's threaded",
        "scheduler, chunks as the precompute writes them). Goal: under 60 s per study on 2 cores.",
        "",
        "| study | cube | models | store | analysis | samples/s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
