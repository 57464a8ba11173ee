"""The one evaluate() engine: factor values in; images, predictions and activations out.

Both the precompute job (a chunk of the hypercube) and the viewer's on-demand
path (one off-grid point) call :func:`evaluate`. It renders each distinct scene
point of the batch once, applies the image factors to the whole batch at once,
and runs every model batched on the best available device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from perturber.pipeline import factors, imageops, inference, models, plugins, scene

__all__ = ["Evaluation", "evaluate", "model_input"]


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


def _render_batch(params: Sequence[Mapping[str, Any]], size: int) -> tuple[torch.Tensor, int]:
    """(B, 4, S, S) float renders, each distinct scene rendered once."""
    renderer = scene.default_renderer()
    keys = [tuple(sorted(factors.scene_params(p).items())) for p in params]
    distinct: dict[tuple, np.ndarray] = {}
    for key, p in zip(keys, params):
        if key not in distinct:
            distinct[key] = renderer.render(p, size).rgba
    return imageops.to_tensor([distinct[k] for k in keys]), len(distinct)


def evaluate(
    points: Sequence[Mapping[str, Any]],
    model_names: Sequence[str],
    layers: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    neurons: Mapping[str, Sequence[int]] | None = None,
    size: int = 224,
    k: int = 5,
    device: str | torch.device | None = None,
    batch_size: int | Mapping[str, int] | None = None,
) -> Evaluation:
    """Evaluate B points (factor name → value; unnamed factors take defaults).

    ``layers``: friendly layer names (or module paths) to record, the same for
    every model, or per model. ``neurons``: layer → channel indices to keep
    (default: all channels). ``size``: render side in pixels; each model
    resizes to its own input size. Runs on ``device`` (default: CUDA when
    available) in batches of ``batch_size`` (one for all models or one per
    model; default: each model's measured best, :func:`perturber.pipeline.inference.tuned_batch_size`).
    """
    if not points:
        raise ValueError("evaluate() needs at least one point")
    plugins.load()  # factors from other packages (a Dask worker runs this first)
    device = torch.device(device) if device is not None else models.best_device()
    params = [factors.validate(p) for p in points]
    for name in model_names:
        models.spec(name)  # a clear error for an unknown model, before any render

    rgba, renders = _render_batch(params, size)
    alpha = (rgba[:, 3] * 255.0).round().to(torch.uint8).numpy()  # exact: the renders are uint8
    rgba = imageops.apply_image_factors(rgba.to(device), params)
    rgb = model_input(rgba)
    result = Evaluation(params=params, images=imageops.to_uint8(rgb), alpha=alpha, renders=renders)

    outputs = inference.run_models(rgb, model_names, layers=layers, neurons=neurons, device=device, batch_size=batch_size)
    for name, out in outputs.items():
        probs, classes = out.logits.softmax(1).topk(k, dim=1)
        result.logits[name] = out.logits
        result.top_class[name] = classes
        result.top_prob[name] = probs
        result.activations[name] = out.activations
        result.neurons[name] = out.neurons
    return result
