"""The one evaluate() engine: factor values in; images, predictions and activations out.

Both the precompute job (a chunk of the hypercube) and the viewer's on-demand
path (one off-grid point) call :func:`evaluate`. It renders each distinct scene
point of the batch once, applies the image factors batched, and runs every
model batched on the best available device.

The points go through in *groups* (a multiple of every model's batch size).
With render threads (the default on a GPU) the renders of the next group are
made while the device runs the current one: each render thread keeps its own
renderer (an OpenGL context belongs to the thread that made it) and works
ahead of the device by one group. The groups and their batches are the same
with and without render threads, so the results are too.
:func:`evaluate_batches` evaluates several lists of points with the render
threads working ahead across them (a precompute task's few hundred points at
a time).
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from perturber.pipeline import devices, factors, imageops, inference, models, plugins, scene
from perturber.pipeline.pools import kept_pool

__all__ = ["Evaluation", "evaluate", "evaluate_batches", "model_input", "group_size", "reference_images", "device_settings"]

#: A group holds at least this many points (when there are that many), per
#: device type: a GPU wants large batches of image factors; a CPU is fastest
#: when a group's images stay in its caches (EfficientNet-Lite's benchmark
#: sweep on 2 cores: 8.9 ms of image factors per image in groups of 108, 4.3 in
#: groups of 54, 3.3 in groups of 18, on one thread).
MIN_GROUP = {"cpu": 16, "cuda": 64}


@dataclass
class Evaluation:
    """What :func:`evaluate` returns for B points.

    - ``params``: the B validated factor dicts.
    - ``images``: (B, S, S, 3) uint8, the exact RGB image the models saw before
      their own resize and normalisation (S: the render size).
    - ``alpha``: (B, S, S) uint8, the render's alpha before the image factors:
      255 where the object covers the pixel, 0 where the background shows
      (the object mask; no image factor changes it).
    - ``logits``: model → (B, 1000) float32.
    - ``top_class``: model → (B, k) int64 class indices, most probable first;
      ``top_prob``: model → (B, k) float32 softmax probabilities.
    - ``activations``: model → layer → (B, N, h, w) float32, the chosen
      neurons (channels) of each requested layer, in the order asked for.
    - ``neurons``: model → layer → the channel indices of ``activations``.
    - ``renders``: how many distinct scenes were rendered.
    """

    params: list[dict[str, Any]]
    images: np.ndarray
    alpha: np.ndarray | None = None
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    top_class: dict[str, torch.Tensor] = field(default_factory=dict)
    top_prob: dict[str, torch.Tensor] = field(default_factory=dict)
    activations: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    neurons: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    renders: int = 0


def model_input(rgba: torch.Tensor) -> torch.Tensor:
    """RGBA (B, 4, H, W) → RGB (B, 3, H, W): where alpha < 1 (background 'none')
    the image is shown over black, as a model sees a transparent pixel."""
    return rgba[:, :3] * rgba[:, 3:4]


def group_size(batch_sizes: Sequence[int], device_type: str) -> int:
    """Points per group: the smallest multiple of every model's batch size that
    is at least :data:`MIN_GROUP` of ``device_type`` (so no group splits a
    model's batch), or of the largest batch size when their least common
    multiple is over 4096."""
    unit = math.lcm(*batch_sizes) if batch_sizes else 1
    if unit > 4096:
        unit = max(batch_sizes)
    return unit * math.ceil(MIN_GROUP.get(device_type, MIN_GROUP["cuda"]) / unit)


def _scenes(params: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[int]]:
    """(the distinct scenes in order of first use, each point's index into them)."""
    index: dict[tuple, int] = {}
    first: list[Mapping[str, Any]] = []
    which = []
    for p in params:
        key = tuple(sorted(factors.scene_params(p).items()))
        if key not in index:
            index[key] = len(first)
            first.append(p)
        which.append(index[key])
    return first, which


def _render(p: Mapping[str, Any], size: int) -> np.ndarray:
    """(S, S, 4) uint8 RGBA of the scene of validated factors ``p``, by this thread's renderer."""
    return scene.default_renderer().render(p, size).rgba


class _Renders:
    """The renders of the distinct scenes, asked for in order (``get``) and made by
    render threads ahead of the caller (``ahead``), or in the calling thread when
    ``threads`` is 0. A render's error is raised by ``get``, as it was raised."""

    def __init__(self, scenes: Sequence[Mapping[str, Any]], size: int, threads: int):
        self.scenes, self.size = scenes, size
        self.pool = kept_pool("render", threads) if threads > 0 else None
        self.futures: dict[int, Future] = {}
        self.submitted = 0

    def ahead(self, until: int) -> None:
        """Start rendering every scene below index ``until``."""
        if self.pool is None:
            return
        for i in range(self.submitted, min(until, len(self.scenes))):
            self.futures[i] = self.pool.submit(_render, self.scenes[i], self.size)
        self.submitted = max(self.submitted, until)

    def get(self, i: int) -> np.ndarray:
        if self.pool is None:
            return _render(self.scenes[i], self.size)
        self.ahead(i + 1)
        return self.futures.pop(i).result()

    def close(self) -> None:
        """Drop the renders not asked for, waiting for those under way (no thread is left rendering)."""
        for future in self.futures.values():
            future.cancel()
        for future in self.futures.values():
            if not future.cancelled():
                future.exception()  # waits; the error, if any, belongs to a render nobody asked for
        self.futures.clear()


def evaluate(
    points: Sequence[Mapping[str, Any]],
    model_names: Sequence[str],
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    neurons: Mapping[str, Sequence[int]] | None = None,
    size: int = 224,
    k: int = 5,
    device: str | torch.device | None = None,
    batch_size: int | Mapping[str, int] | None = None,
    precision: str | Mapping[str, str] | None = None,
    compile: bool = False,
    render_threads: int | None = None,
    group: int | None = None,
) -> Evaluation:
    """Evaluate B points (factor name → value; unnamed factors take defaults).

    ``layers``: friendly layer names (or module paths) to record, the same for
    every model, or per model. ``neurons``: layer → channel indices to keep
    (default: all channels). ``size``: render side in pixels; each model
    resizes to its own input size. Runs on ``device`` (default: CUDA when
    available) in batches of ``batch_size`` (one for all models or one per
    model; default: each model's measured best, :func:`perturber.pipeline.inference.tuned_batch_size`),
    in ``precision`` (:data:`perturber.pipeline.inference.PRECISIONS`, one for
    all models or per model; default channels_last), compiled with
    :func:`torch.compile` when ``compile``.

    ``render_threads``: threads rendering ahead of the device (0: render in this
    thread; default: 1 on a GPU, 0 on the CPU). ``group``: points per group
    (default: :func:`group_size` of the batch sizes). Neither changes the results.
    """
    with contextlib.closing(evaluate_batches([points], model_names, layers, neurons, size, k, device, batch_size,
                                             precision, compile, render_threads, group)) as results:
        return next(results)


def evaluate_batches(
    batches: Sequence[Sequence[Mapping[str, Any]]],
    model_names: Sequence[str],
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    neurons: Mapping[str, Sequence[int]] | None = None,
    size: int = 224,
    k: int = 5,
    device: str | torch.device | None = None,
    batch_size: int | Mapping[str, int] | None = None,
    precision: str | Mapping[str, str] | None = None,
    compile: bool = False,
    render_threads: int | None = None,
    group: int | None = None,
) -> Iterator[Evaluation]:
    """:func:`evaluate` of each list of points in ``batches``, in order (a generator).

    The render threads work ahead across the batches, so a task that evaluates
    its points a few hundred at a time keeps the device busy between them.
    Each Evaluation equals ``evaluate(batch)`` (groups never span two
    batches), except that a scene shared with an earlier batch is rendered
    once: ``renders`` counts the scenes first rendered for the batch.
    Use it in a ``with contextlib.closing(...)`` block, or iterate it to the end.
    """
    if not batches or not all(batches):
        raise ValueError("evaluate() needs at least one point")
    plugins.load()  # factors from other packages (a Dask worker runs this first)
    device = torch.device(device) if device is not None else models.best_device()
    per_batch = [[factors.validate(p) for p in points] for points in batches]
    for name in model_names:
        models.spec(name)  # a clear error for an unknown model, before any render
    steps = inference.batch_sizes(model_names, device, batch_size, precision)
    n = group or group_size(list(steps.values()), device.type)
    threads = (1 if device.type == "cuda" else 0) if render_threads is None else render_threads
    params = [p for points in per_batch for p in points]
    groups: list[tuple[int, range]] = []  # (batch, its points' indices into params)
    offset = 0
    for b, points in enumerate(per_batch):
        groups += [(b, range(offset + start, offset + min(start + n, len(points)))) for start in range(0, len(points), n)]
        offset += len(points)
    scenes, which = _scenes(params)
    # Scenes are numbered in order of first use: those below upto[g] are all
    # that groups 0..g use; a scene is dropped after the last group using it.
    upto, last_group = [], {}
    for g, (_, members) in enumerate(groups):
        upto.append(max([which[i] + 1 for i in members] + upto[-1:]))
        last_group.update((which[i], g) for i in members)
    drop: list[list[int]] = [[] for _ in groups]
    for j, g in last_group.items():
        drop[g].append(j)

    renders = _Renders(scenes, size, threads)
    kept: dict[int, np.ndarray] = {}
    parts: list = []
    rendered = 0
    try:
        for g, (b, members) in enumerate(groups):
            for i in members:
                if which[i] not in kept:
                    kept[which[i]] = renders.get(which[i])
            renders.ahead(upto[min(g + 1, len(groups) - 1)])  # the next group renders while the device runs this one
            parts.append(_evaluate_group([params[i] for i in members], [which[i] for i in members], kept, model_names,
                                         layers, neurons, device, steps, precision, compile))
            for j in drop[g]:
                del kept[j]
            if g + 1 == len(groups) or groups[g + 1][0] != b:
                yield _evaluation(per_batch[b], parts, model_names, k, upto[g] - rendered)
                parts, rendered = [], upto[g]
    finally:
        renders.close()


def _evaluation(params: list[dict[str, Any]], parts: list, model_names: Sequence[str], k: int, renders: int) -> Evaluation:
    """One batch's :class:`Evaluation` from its groups' (images, alpha, outputs)."""
    result = Evaluation(params=params, images=np.concatenate([p[0] for p in parts]),
                        alpha=np.concatenate([p[1] for p in parts]), renders=renders)
    for name in model_names:
        outs = [p[2][name] for p in parts]
        logits = torch.cat([o.logits for o in outs])
        probs, classes = logits.softmax(1).topk(k, dim=1)
        result.logits[name] = logits
        result.top_class[name] = classes
        result.top_prob[name] = probs
        result.activations[name] = {layer: torch.cat([o.activations[layer] for o in outs]) for layer in outs[0].activations}
        result.neurons[name] = outs[0].neurons
    return result


def _evaluate_group(params: list[dict[str, Any]], scene_of: list[int], renders: Mapping[int, np.ndarray],
                    model_names: Sequence[str], layers, neurons, device: torch.device, steps: Mapping[str, int],
                    precision, compile: bool) -> tuple[np.ndarray, np.ndarray, dict[str, inference.Outputs]]:
    """One group: (images (G, S, S, 3) uint8, alpha (G, S, S) uint8, model → outputs).

    The group's distinct renders go to the device once, as uint8, and are
    repeated there for the points that share a scene."""
    position: dict[int, int] = {}
    for j in scene_of:
        position.setdefault(j, len(position))
    distinct = imageops.to_tensor(np.stack([renders[j] for j in position]), device)
    rgba = distinct[torch.tensor([position[j] for j in scene_of], device=device)]
    alpha = np.stack([renders[j][..., 3] for j in scene_of])  # the renders' own alpha: no image factor changes it
    rgb = model_input(imageops.apply_image_factors(rgba, params))
    outputs = inference.run_models(rgb, model_names, layers=layers, neurons=neurons, device=device, batch_size=dict(steps),
                                   precision=precision, compile=compile)
    return imageops.to_uint8(rgb), alpha, outputs


def reference_images(size: int = 224) -> torch.Tensor:
    """(N, 3, S, S) float RGB in [0, 1]: :data:`perturber.pipeline.devices.REFERENCE_POINTS`
    rendered and through their image factors, as the models see them."""
    params = [factors.validate(p) for p in devices.REFERENCE_POINTS]
    rgba = imageops.to_tensor([_render(p, size) for p in params])
    return model_input(imageops.apply_image_factors(rgba, params))


def device_settings(model_names: Sequence[str], device: str | torch.device | None = None,
                    threads: int | None = None) -> devices.Settings:
    """Each model's precision and batch size on ``device`` (default: the best
    here) for tasks on ``threads`` torch CPU threads (default: this process's),
    the GPU's precision checked on :func:`reference_images`
    (:func:`perturber.pipeline.devices.settings`); what a store records."""
    device = torch.device(device) if device is not None else models.best_device()
    return devices.settings(model_names, device, reference_images, threads)
