"""Running registry models on images: preprocessing, activations, batch sizes.

:func:`run_models` is the one place that runs every model of a list on a
batch; the evaluate() engine, attacks, the store's layout and feature
visualisation all go through it (or through :func:`preprocess` and
:func:`capture` when they need gradients).

Activations are captured by module path with forward hooks that copy the
output (an in-place ReLU after the hooked module would otherwise overwrite
it); a module that runs several times per forward pass is addressed as
``path@k``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from perturber.pipeline import atomic, config, models

__all__ = ["preprocess", "capture", "Outputs", "run_models", "layer_shapes", "tuned_batch_size", "classify"]


def preprocess(images: torch.Tensor, s: models.ModelSpec, resize: bool = True) -> torch.Tensor:
    """RGB (B, 3, H, W) in [0, 1] → the model's input: resized to ``input_size``
    (bilinear, antialiased; unless ``resize`` is False, as feature visualisation
    does: the network sees the optimised image at its own size) and normalised
    with its mean and std."""
    x = images
    if resize and (x.shape[-1] != s.input_size or x.shape[-2] != s.input_size):
        x = torch.nn.functional.interpolate(x, size=(s.input_size, s.input_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(s.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(s.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def capture(model: torch.nn.Module, paths: Sequence[str], detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of modules ``paths`` during forward passes in the block.

    Yields a dict path → tensor, filled by each forward pass. The tensor is a
    copy (an in-place op later in the network cannot change it). A module that
    runs several times per pass must be named ``path@k`` (k-th call, from 0).
    """
    modules = dict(model.named_modules())
    wanted: dict[str, dict[int | None, str]] = {}
    for p in paths:
        base, _, index = p.partition("@")
        if base not in modules:
            raise models.ModelError(f"no layer {base!r} in this model")
        if index and not index.isdigit():
            raise models.ModelError(f"layer {p!r}: the call index after @ must be a number")
        wanted.setdefault(base, {})[int(index) if index else None] = p
    out: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook_for(base: str):
        def hook(module, inputs, output):
            k = calls.get(base, 0)
            calls[base] = k + 1
            t = output.detach() if detach else output
            for index, name in wanted[base].items():
                if index is None and k == 1:
                    raise models.ModelError(f"layer {base!r} runs more than once per forward pass; name a call as {base}@0, {base}@1, ...")
                if index is None or index == k:
                    out[name] = t.clone()

        return hook

    for base in wanted:
        handles.append(modules[base].register_forward_hook(hook_for(base)))
    pre = model.register_forward_pre_hook(lambda *_: calls.clear())
    try:
        yield out
    finally:
        pre.remove()
        for h in handles:
            h.remove()


@torch.no_grad()
def classify(model: torch.nn.Module, images: np.ndarray, size: int = 224) -> torch.Tensor:
    """Softmax probabilities (B, 1000) for uint8 RGB(A) images (B, H, W, C) and an
    ImageNet-normalised model of input side ``size``. Alpha is dropped."""
    x = torch.from_numpy(np.ascontiguousarray(images[..., :3])).permute(0, 3, 1, 2).float() / 255.0
    s = models.ModelSpec("", "", {}, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    device = next(model.parameters()).device
    return model(preprocess(x.to(device), s)).softmax(dim=1).cpu()


@dataclass
class Outputs:
    """One model's outputs for B images, on the CPU: ``logits`` (B, 1000)
    float32; ``activations`` layer → (B, N, h, w) float32, the neurons
    (channels) ``neurons[layer]`` of each layer asked for, in that order."""

    logits: torch.Tensor
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    neurons: dict[str, list[int]] = field(default_factory=dict)


def run_models(images: torch.Tensor, names: Sequence[str], layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
               neurons: Mapping[str, Sequence[int]] | None = None, device: str | torch.device | None = None,
               batch_size: int | Mapping[str, int] | None = None) -> dict[str, Outputs]:
    """Every model of ``names`` on the same images: model → :class:`Outputs`.

    images (B, 3, H, W) float RGB in [0, 1]; each model resizes them to its own
    input size. ``layers``: friendly layer names (or module paths) to record,
    the same for every model or per model; ``neurons``: layer → channel indices
    to keep (default: all). Runs on ``device`` (default: CUDA when available)
    in batches of ``batch_size`` (one for all models or per model; default:
    each model's measured best, :func:`tuned_batch_size`). Gradients are off.
    """
    device = torch.device(device) if device is not None else models.best_device()
    images = images.to(device)
    out: dict[str, Outputs] = {}
    for name in names:
        s = models.spec(name)
        wanted = list(layers.get(name, ()) if isinstance(layers, Mapping) else (layers or ()))
        paths = [s.layer_path(layer) for layer in wanted]
        net = models.load_model(name, device)
        chosen = batch_size.get(name) if isinstance(batch_size, Mapping) else batch_size
        step = chosen or tuned_batch_size(name, str(device))
        logits, acts = [], {layer: [] for layer in wanted}
        with torch.no_grad(), capture(net, paths) as captured:
            for start in range(0, len(images), step):
                x = preprocess(images[start : start + step].float(), s)
                logits.append(net(x).float())
                for layer, path in zip(wanted, paths):
                    acts[layer].append(_chosen(captured[path], (neurons or {}).get(layer), name, layer))
        activations = {layer: torch.cat(v) for layer, v in acts.items()}
        out[name] = Outputs(
            logits=torch.cat(logits).cpu(),
            activations=activations,
            neurons={layer: list((neurons or {}).get(layer) or range(a.shape[1])) for layer, a in activations.items()},
        )
    return out


def _chosen(a: torch.Tensor, chosen: Sequence[int] | None, model: str, layer: str) -> torch.Tensor:
    """The channels ``chosen`` (default: all) of an activation map, as float32 on the CPU."""
    if a.ndim != 4:
        raise models.ModelError(f"layer {layer!r} of {model} gives {a.ndim}-D output, not a map")
    if chosen is not None:
        if max(chosen, default=-1) >= a.shape[1] or min(chosen, default=0) < 0:
            raise models.ModelError(f"layer {layer!r} of {model} has {a.shape[1]} channels; neuron out of range")
        a = a[:, list(chosen)]
    return a.float().cpu()


def layer_shapes(name: str, layers: Sequence[str], size: int = 224) -> dict[str, tuple[int, int, int]]:
    """layer → (channels, rows, columns) of ``name``'s activation maps, from one
    forward pass of a black image of side ``size`` on the CPU."""
    outputs = run_models(torch.zeros(1, 3, size, size), [name], layers=list(layers), device="cpu", batch_size=1)[name]
    return {layer: tuple(a.shape[1:]) for layer, a in outputs.activations.items()}


def tuned_batch_size(name: str, device: str, candidates: tuple[int, ...] = (1, 2, 4, 8, 16)) -> int:
    """The fastest batch size for model ``name`` on ``device``, measured once.

    The best batch size is a property of the machine, not of the model
    (EfficientNet-Lite0 on a 2-core CPU: 85 images/s at batch 2, 45 at 32);
    the result is cached on disk (in ``PERTURBER_CACHE``) per model, device
    and thread count.
    """
    dev = torch.device(device)
    label = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    return _tuned_batch_size(name, str(dev), label, candidates, config.cache_dir())


@functools.lru_cache(maxsize=16)
def _tuned_batch_size(name: str, device: str, label: str, candidates: tuple[int, ...], cache: Path) -> int:
    dev = torch.device(device)
    path = cache / "batch-sizes.json"
    key = f"{name}|{label}"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return int(known[key])
    s = models.spec(name)
    net = models.load_model(name, dev)
    n = max(candidates) * 2
    x = preprocess(torch.rand(n, 3, s.input_size, s.input_size, device=dev), s)
    best, best_rate = candidates[0], 0.0
    with torch.no_grad():
        for bs in candidates:
            net(x[:bs])  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            for i in range(0, n, bs):
                net(x[i : i + bs])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            rate = n / (time.perf_counter() - start)
            if rate > best_rate:
                best, best_rate = bs, rate
    known[key] = best
    with atomic.replacing(path, "w") as f:
        f.write(json.dumps(known, indent=1, sort_keys=True))
    return best
