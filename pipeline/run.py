"""The precompute job: every missing task of every cube, as Dask tasks.

One task computes one shard of a cube (:mod:`perturber.pipeline.shards`): it
evaluates the shard's grid points with :func:`pipeline.engine.evaluate`, a
few inner chunks per call (distinct scenes rendered once, image factors and
models batched), writes the shard of every per-sample variable, and returns
its summaries. The job's :class:`perturber.pipeline.summaries.SummaryWriter`
writes those and then the task's done mark. Re-running skips done tasks, so
a killed job resumes where it stopped and a finished one does nothing.
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

from perturber.pipeline import analysis, factors, names, shards, summaries
from perturber.pipeline import store as zstore
from perturber.pipeline.pools import torch_threads
from perturber.pipeline.spec import CubeSpec, SweepSpec
from perturber.pipeline.tasks import in_process_plan, run_in_threads, run_tasks, task_threads, use_threads

__all__ = ["compute_task", "run_task", "points_of", "precompute", "dry_run", "summary", "RunReport", "estimate"]


@dataclass
class RunReport:
    """What a precompute did: chunks written and skipped per cube, seconds."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    samples: int = 0


#: Samples per engine.evaluate call inside a task (whole inner chunks; bounds a task's working memory).
EVALUATE_SAMPLES = 256


def points_of(cube: CubeSpec, region: tuple[slice, ...]) -> list[dict[str, Any]]:
    """The factor values of every grid point of ``region`` (C order)."""
    return [cube.point(idx) for idx in itertools.product(*(range(s.start, s.stop) for s in region))]


def _chunk_groups(cube: CubeSpec, region: tuple[slice, ...]) -> list[list[tuple[slice, ...]]]:
    """The inner chunks of a task's region (local slices), in groups of about :data:`EVALUATE_SAMPLES` samples."""
    size = tuple(s.stop - s.start for s in region)
    chunks = [shards.region(size, cube.chunk_shape, i) for i in itertools.product(*(range(n) for n in shards.grid(size, cube.chunk_shape)))]
    groups, current, samples = [], [], 0
    for c in chunks:
        current.append(c)
        samples += math.prod(s.stop - s.start for s in c)
        if samples >= EVALUATE_SAMPLES:
            groups.append(current)
            current, samples = [], 0
    return groups + ([current] if current else [])


def compute_task(cube: CubeSpec, index: tuple[int, ...], region: tuple[slice, ...], out: Any,
                 storage_options: Mapping | None = None, device: str | None = None,
                 batch_sizes: Mapping[str, int] | None = None,
                 threads: int | None = None, precision: Mapping[str, str] | None = None,
                 compile: bool = False, render_threads: int | None = None) -> tuple[str, tuple[int, ...], int, dict[str, np.ndarray]]:
    """Evaluate and write one task (``region``: its shard of the cube); returns
    (cube name, task index, samples, summaries ((*region, model) each)).

    ``threads``: torch CPU threads for this process (:func:`perturber.pipeline.tasks.use_threads`).
    """
    from perturber.pipeline import engine  # the renderer loads on the worker, not in the process that submits tasks

    use_threads(threads)
    size = tuple(s.stop - s.start for s in region)
    n_models, k = len(cube.models), cube.top_k
    values: dict[str, np.ndarray] = {}
    expected = np.full(size + (n_models,), np.nan, dtype=np.float32)
    groups = _chunk_groups(cube, region)
    batches = [[p for chunk in group for p in points_of(cube, tuple(slice(r.start + c.start, r.start + c.stop)
                                                                    for r, c in zip(region, chunk)))] for group in groups]
    # One generator for the task: the render threads work ahead across its groups (a GPU never waits for a render).
    evaluations = engine.evaluate_batches(batches, list(cube.models), layers=list(cube.layers), neurons=_neuron_lists(cube),
                                          size=cube.size, k=cube.top_k, device=device, batch_size=batch_sizes,
                                          precision=precision, compile=compile, render_threads=render_threads)
    for group, points, ev in zip(groups, batches, evaluations):
        stack = lambda per_model: np.stack([per_model[m].numpy() for m in cube.models], axis=1)  # noqa: E731
        results = {names.LOGITS: stack(ev.logits), names.TOP_CLASS: stack(ev.top_class), names.TOP_PROB: stack(ev.top_prob)}
        if cube.images:
            results[names.IMAGE] = ev.images
        if cube.mask:
            results[names.MASK] = ev.alpha
        for model in cube.models:
            for layer in cube.layers:
                results[names.activation(model, layer).variable] = ev.activations[model][layer].numpy()
        probs = _expected_prob(points, ev, cube)
        at = 0
        for chunk in group:
            shape = tuple(c.stop - c.start for c in chunk)
            n = math.prod(shape)
            for name, arr in results.items():
                if name not in values:
                    values[name] = np.empty(size + arr.shape[1:], dtype=arr.dtype)
                values[name][chunk] = arr[at:at + n].reshape(shape + arr.shape[1:])
            expected[chunk] = probs[at:at + n].reshape(shape + (n_models,))
            at += n
    evaluations.close()
    zstore.write_task(cube, out, region, values, storage_options)
    assert values[names.TOP_CLASS].shape == size + (n_models, k)
    return cube.name, index, math.prod(size), summaries.summarise(values[names.TOP_CLASS], values[names.TOP_PROB], expected)


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
             f"{int(np.prod(cube.chunk_grid))} chunks of {'x'.join(map(str, cube.chunk_shape))} "
             f"(grouped into shards, one task each, when the store is written); "
             f"{cube.renders} distinct scenes; ~{size / 2**20:.0f} MiB; ~{_duration(seconds)} on a 2-core CPU")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _device_settings(cube: CubeSpec, threads: int | None = None):
    """Each model's precision and batch size on this process's best device, for
    tasks on ``threads`` torch CPU threads (what a new template records)."""
    from perturber.pipeline import engine  # reference renders on a GPU: the renderer loads only to write a template

    return engine.device_settings(list(cube.models), threads=threads)


def run_task(cube: CubeSpec, index: tuple[int, ...], out: Any, storage_options: Mapping | None = None) -> int:
    """Compute, write and mark one task of a cube in ``out`` as an in-process
    precompute does (its template written first if missing; the task on an
    in-process task thread's torch threads): what a precompute killed after
    that task leaves. Returns its samples."""
    plan = in_process_plan()
    zstore.create_or_check(cube, out, storage_options=storage_options,
                           settings=functools.partial(_device_settings, cube, plan.threads))
    tasks = zstore.tasks(cube, out, storage_options)
    writer = summaries.SummaryWriter(cube, out, tasks, zstore.done_mask(cube, out, storage_options), storage_options)
    with torch_threads():
        _, _, samples, values = compute_task(cube, tuple(index), tasks.region(tuple(index)), out, storage_options,
                                             batch_sizes=zstore.batch_sizes(cube, out, storage_options),
                                             precision=zstore.precision(cube, out, storage_options), threads=plan.threads)
    writer.add(tuple(index), values)
    writer.close()
    return samples


def precompute(spec: SweepSpec, out: Any, scheduler: str | None = None, workers: int | None = None,
               overwrite: bool = False, storage_options: Mapping | None = None, progress: bool = True,
               echo: Callable[[str], None] = print, compile: bool = False, render_threads: int | None = None) -> RunReport:
    """Compute every missing task of every cube of ``spec`` into the store ``out``.

    ``scheduler``: None starts a LocalCluster sized to the machine (``workers``
    processes, one thread each); 'synchronous' runs in this process, without
    Dask (``workers`` task threads sharing the loaded models, default one per
    core without a GPU, one with ``compile``: :func:`perturber.pipeline.tasks.in_process_plan`);
    anything else is the address of a running Dask scheduler. ``compile``: the
    models through torch.compile (once per worker and model);
    ``render_threads``: threads per worker rendering ahead of the models
    (None: one on a GPU, none on a CPU; more when rendering is the
    bottleneck). Tasks are
    generated as they are submitted; the summaries of every task that
    finished are written even when the run fails.
    """
    start = time.perf_counter()
    storage_options = zstore.default_options(out, storage_options)
    report = RunReport()
    plans = []
    threads = task_threads(scheduler, workers, compile)  # batch sizes are tuned where the tasks will run
    for cube in spec.cubes:
        zstore.create_or_check(cube, out, overwrite=overwrite, storage_options=storage_options,
                               settings=functools.partial(_device_settings, cube, threads))
        tasks = zstore.tasks(cube, out, storage_options)
        done = zstore.done_mask(cube, out, storage_options)
        report.written[cube.name] = int((~done).sum())
        report.skipped[cube.name] = int(done.sum())
        writer = summaries.SummaryWriter(cube, out, tasks, done, storage_options)
        settings = dict(batch_sizes=zstore.batch_sizes(cube, out, storage_options),
                        precision=zstore.precision(cube, out, storage_options), compile=compile,
                        render_threads=render_threads)
        plans.append((cube, tasks, done, writer, settings))
    if not any(report.written.values()):
        echo(f"nothing to do: every task is already in the store (`perturber verify {out}` checks them for damage)")
        report.seconds = time.perf_counter() - start
        return report
    total = sum(tasks.samples(tuple(i)) for _, tasks, done, _, _ in plans for i in np.argwhere(~done))
    writers = {cube.name: writer for cube, _, _, writer, _ in plans}
    bar = tqdm(total=total, unit="sample", desc="precompute", disable=not progress, file=sys.stderr, smoothing=0.1)

    def jobs():
        for cube, tasks, done, _, sizes in plans:
            for i in np.argwhere(~done):
                index = tuple(int(k) for k in i)
                yield cube, index, tasks.region(index), sizes

    def finished(result) -> int:
        name, index, n, values = result
        writers[name].add(index, values)
        bar.update(n)
        return n

    # A generator: the tasks are read as they finish (a bounded window of them in flight).
    calls = ((f"task-{cube.name}-{'-'.join(map(str, index))}", functools.partial(compute_task, **sizes),
              (cube, index, region, out, storage_options)) for cube, index, region, sizes in jobs())
    try:
        if scheduler == "synchronous":
            report.samples = run_in_threads(calls, in_process_plan(workers, compile), finished)
        else:
            report.samples = run_tasks(calls, scheduler, workers, finished, echo)
    finally:
        for writer in writers.values():
            writer.close()
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


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
