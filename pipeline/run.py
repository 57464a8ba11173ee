"""The precompute job: every missing chunk of every cube, as Dask tasks.

One task computes one chunk of a cube: it evaluates the chunk's grid points
with :func:`pipeline.engine.evaluate` (distinct scenes rendered once, image
factors and models batched) and writes one chunk-aligned region of the store,
then marks the chunk done. Re-running skips done chunks, so a killed job
resumes where it stopped and a finished one does nothing.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from tqdm import tqdm

from perturber.pipeline import analysis, factors, names
from perturber.pipeline import store as zstore
from perturber.pipeline.spec import CubeSpec, SweepSpec
from perturber.pipeline.tasks import run_tasks, use_threads

__all__ = ["compute_chunk", "chunk_points", "precompute", "dry_run", "summary", "RunReport", "estimate"]


@dataclass
class RunReport:
    """What a precompute did: chunks written and skipped per cube, seconds."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    samples: int = 0


def chunk_points(cube: CubeSpec, index: tuple[int, ...]) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """The factor values of every grid point of a chunk (C order) and the chunk's shape."""
    slices = zstore.chunk_slices(cube, index)
    ranges = [range(s.start, s.stop) for s in slices]
    points = [cube.point(idx) for idx in itertools.product(*ranges)]
    return points, tuple(len(r) for r in ranges)


def compute_chunk(cube: CubeSpec, index: tuple[int, ...], out: Any, storage_options: Mapping | None = None,
                  device: str | None = None, batch_sizes: Mapping[str, int] | None = None,
                  threads: int | None = None) -> tuple[str, tuple[int, ...], int]:
    """Evaluate and write one chunk; returns (cube name, chunk index, samples).

    ``threads``: torch CPU threads for this process (:func:`perturber.pipeline.tasks.use_threads`).
    """
    from perturber.pipeline import engine  # the renderer loads on the worker, not in the process that submits chunks

    use_threads(threads)
    points, shape = chunk_points(cube, index)
    ev = engine.evaluate(points, list(cube.models), layers=list(cube.layers), neurons=_neuron_lists(cube),
                         size=cube.size, k=cube.top_k, device=device, batch_size=batch_sizes)
    stack = lambda per_model: np.stack([per_model[m].numpy() for m in cube.models], axis=1)  # noqa: E731
    values = {
        names.LOGITS: stack(ev.logits).reshape(*shape, len(cube.models), 1000),
        names.TOP_CLASS: stack(ev.top_class).reshape(*shape, len(cube.models), cube.top_k),
        names.TOP_PROB: stack(ev.top_prob).reshape(*shape, len(cube.models), cube.top_k),
        names.EXPECTED_PROB: _expected_prob(points, ev, cube).reshape(*shape, len(cube.models)),
    }
    if cube.images:
        values[names.IMAGE] = ev.images.reshape(*shape, cube.size, cube.size, 3)
    if cube.mask:
        values[names.MASK] = ev.alpha.reshape(*shape, cube.size, cube.size)
    for model in cube.models:
        for layer in cube.layers:
            a = ev.activations[model][layer].numpy()
            values[names.activation(model, layer).variable] = a.reshape(*shape, *a.shape[1:])
    zstore.write_chunk(cube, out, index, values, storage_options)
    return cube.name, index, len(points)


def _expected_prob(points: list[dict[str, Any]], ev: Any, cube: CubeSpec) -> np.ndarray:
    """(B, models): total probability of each point's object's classes (NaN for
    mesh files; :mod:`perturber.pipeline.analysis`)."""
    out = np.full((len(points), len(cube.models)), np.nan, dtype=np.float32)
    for i, point in enumerate(points):
        classes = analysis.class_indices(point.get("object", factors.get("object").default))
        if classes is None:
            continue
        for m, model in enumerate(cube.models):
            out[i, m] = float(ev.logits[model][i].softmax(0)[classes].sum())
    return out


def _chunk_samples(cube: CubeSpec, index: tuple[int, ...]) -> int:
    return math.prod(s.stop - s.start for s in zstore.chunk_slices(cube, index))


def _neuron_lists(cube: CubeSpec) -> dict[str, list[int]]:
    out = {}
    for layer, chosen in cube.neurons.items():
        out[layer] = list(range(chosen)) if isinstance(chosen, int) else list(chosen)
    return out


def estimate(cube: CubeSpec, renders_per_s: float = 40.0, images_per_s: float = 60.0) -> tuple[float, float]:
    """(bytes, seconds): a rough store size (uncompressed; images at ~1/3) and run time.

    The rates default to this project's 2-core CPU measurements
    (docs/benchmarks.md): ~40 renders/s, ~60 images/s per EfficientNet-Lite
    model, the pipeline at ~0.65 of the models' own speed, ~5 s to start.
    """
    per_sample = len(cube.models) * (1000 * 2 + cube.top_k * 6)
    if cube.images:
        per_sample += cube.size * cube.size * 3 / 3
    per_sample += len(cube.models) * len(cube.layers) * 16 * 14 * 14 * 2  # rough: a few neurons per layer
    scene_per_chunk = math.prod(c for (name, _), c in zip(cube.axes, cube.chunk_shape) if _kind(name) == "scene")
    renders = math.prod(cube.chunk_grid) * scene_per_chunk
    seconds = 5.0 + renders / renders_per_s + cube.samples * len(cube.models) / images_per_s / 0.65
    return per_sample * cube.samples, seconds


def _kind(name: str) -> str:
    return factors.get(name).kind


def dry_run(spec: SweepSpec, echo: Callable[[str], None] = print) -> None:
    """Print each cube's shape, samples, chunks, estimated store size and time."""
    for cube in spec.cubes:
        size, seconds = estimate(cube)
        shape = " x ".join(f"{n}[{len(v)}]" for n, v in cube.axes)
        echo(f"cube {cube.name}: {shape} = {cube.samples} samples; {len(cube.models)} models; "
             f"{int(np.prod(cube.chunk_grid))} chunks of {'x'.join(map(str, cube.chunk_shape))}; "
             f"{cube.renders} distinct scenes; ~{size / 2**20:.0f} MiB; ~{_duration(seconds)} on a 2-core CPU")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _missing(cube: CubeSpec, out: Any, storage_options: Mapping | None) -> list[tuple[int, ...]]:
    done = zstore.done_mask(cube, out, storage_options)
    return [idx for idx in itertools.product(*(range(n) for n in cube.chunk_grid)) if not done[idx]]


def precompute(spec: SweepSpec, out: Any, scheduler: str | None = None, workers: int | None = None,
               overwrite: bool = False, storage_options: Mapping | None = None, progress: bool = True,
               echo: Callable[[str], None] = print) -> RunReport:
    """Compute every missing chunk of every cube of ``spec`` into the store ``out``.

    ``scheduler``: None starts a LocalCluster sized to the machine (``workers``
    processes, one thread each); 'synchronous' runs in this process (no Dask);
    anything else is the address of a running Dask scheduler.
    """
    start = time.perf_counter()
    storage_options = zstore.default_options(out, storage_options)
    report = RunReport()
    jobs = []
    for cube in spec.cubes:
        zstore.create_or_check(cube, out, overwrite=overwrite, storage_options=storage_options)
        missing = _missing(cube, out, storage_options)
        report.written[cube.name] = len(missing)
        report.skipped[cube.name] = int(np.prod(cube.chunk_grid)) - len(missing)
        sizes = zstore.batch_sizes(cube, out, storage_options)
        jobs += [(cube, idx, sizes) for idx in missing]
    if not jobs:
        echo(f"nothing to do: every chunk is already in the store (`perturber verify {out}` checks them for damage)")
        report.seconds = time.perf_counter() - start
        return report
    total = sum(_chunk_samples(c, i) for c, i, _ in jobs)
    bar = tqdm(total=total, unit="sample", desc="precompute", disable=not progress, file=sys.stderr, smoothing=0.1)
    try:
        if scheduler == "synchronous":
            for cube, idx, sizes in jobs:
                _, _, n = compute_chunk(cube, idx, out, storage_options, batch_sizes=sizes)
                bar.update(n)
                report.samples += n
        else:
            report.samples = _run_dask(jobs, out, storage_options, scheduler, workers, bar, echo)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _run_dask(jobs, out, storage_options, scheduler, workers, bar, echo) -> int:
    calls = [(f"chunk-{cube.name}-{'-'.join(map(str, idx))}", functools.partial(compute_chunk, batch_sizes=sizes),
              (cube, idx, out, storage_options)) for cube, idx, sizes in jobs]
    def done(result) -> int:
        bar.update(result[2])
        return result[2]

    return run_tasks(calls, scheduler, workers, done, echo)


def summary(spec: SweepSpec, out: Any, storage_options: Mapping | None = None) -> str:
    """A table of top-1 classes across each cube: per object and model, the most
    frequent top-1 class and the share of samples read as one of the object's
    classes (:meth:`perturber.pipeline.analysis.Cube.summary`)."""
    lines = []
    for cube in spec.cubes:
        rows = analysis.Cube(zstore.open_cube(out, cube.name, storage_options)).summary()
        lines.append(f"cube {cube.name} ({cube.samples} samples): top-1 across the cube")
        lines.append(f"  {'object':<12} {'model':<20} {'most frequent top-1':<28} {'share':>6}  {'reads as its class':>18}")
        for row in rows:
            if row.samples == 0:
                lines.append(f"  {row.object:<12} {row.model:<20} {'not computed':<28}")
                continue
            lines.append(f"  {row.object:<12} {row.model:<20} {row.top1[:28]:<28} {row.top1_share:>6.0%}  {row.reads_as_class:>18.0%}")
    return "\n".join(lines)
