"""Figures: activation maps over the model input (red positive, blue negative)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["activation_overlay", "activation_figure"]


def activation_overlay(image: np.ndarray, activation: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Blend one activation map over a greyed image: (S, S, 3) uint8.

    image (S, S, 3) uint8; activation (h, w) float, upsampled bilinearly to S.
    Colours: red for positive, blue for negative, white at zero; ``limit`` is
    the activation shown at full colour (default: the map's largest magnitude).
    """
    import matplotlib

    from PIL import Image

    size = image.shape[0]
    act = np.asarray(Image.fromarray(activation.astype(np.float32)).resize((size, size), Image.BILINEAR))
    limit = float(np.abs(activation).max()) if limit is None else float(limit)
    limit = limit if limit > 0 else 1.0
    rgba = matplotlib.colormaps["bwr"](np.clip(act / limit * 0.5 + 0.5, 0.0, 1.0))
    strength = np.clip(np.abs(act) / limit, 0.0, 1.0)[..., None] * 0.85
    grey = image.astype(np.float32).mean(2, keepdims=True) / 255.0
    out = grey * (1.0 - strength) + rgba[..., :3] * strength
    return (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def activation_figure(image: np.ndarray, activations: np.ndarray, neurons: Sequence[int], title: str, path: str) -> None:
    """Save a grid of activation overlays, one per neuron, with a colour bar legend.

    activations (N, h, w) float for the channel indices ``neurons``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(neurons)
    cols = min(n, 6)
    rows = (n + cols - 1) // cols + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("model input", fontsize=8)
    for i, (neuron, act) in enumerate(zip(neurons, activations)):
        ax = axes[1 + i // cols, i % cols]
        ax.imshow(activation_overlay(image, act))
        ax.set_title(f"#{neuron}  max|a|={np.abs(act).max():.2g}", fontsize=8)
    if cols > 1:
        axes[0, 1].text(0.0, 0.5, "red: positive\nblue: negative\n(each map scaled\nto its own max |a|)", fontsize=8, va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
