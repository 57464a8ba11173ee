"""Figures: activation maps over the model input (red positive, blue negative),
and contact sheets of renders."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from perturber.pipeline import assets, factors

__all__ = ["activation_overlay", "activation_figure", "contact_sheet"]


def activation_overlay(image: np.ndarray, activation: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Blend one activation map over a greyed image: (S, S, 3) uint8.

    image (S, S, 3) uint8; activation (h, w) float, upsampled bilinearly to S.
    Colours: red for positive, blue for negative, white at zero; ``limit`` is
    the activation shown at full colour (default: the map's largest magnitude).
    """
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
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend

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


def contact_sheet(rows: Sequence[dict[str, Any]], sweep: tuple[str, list[Any]], size: int,
                  render: Callable[[Mapping[str, Any], int], np.ndarray], progress: bool = True) -> np.ndarray:
    """Render every row (factor values) at every sweep value: an (H, W, 3) uint8 sheet.

    ``render(values, size)`` gives one (size, size, 4) uint8 RGBA image
    (:func:`perturber.pipeline.scene.render`). Labels name the row's object and
    the swept value; the footer lists the attribution of every asset shown (CC-BY).
    """
    name, values = sweep
    label_h, pad = 18, 4
    jobs = [(r, v) for r in rows for v in values]
    tiles = []
    credits: list[str] = []
    for row, value in tqdm(jobs, desc="rendering", unit="image", disable=not progress):
        params = factors.validate({**row, name: value})
        tiles.append(render(params, size))
        credits.extend(c for c in assets.attributions(params) if c not in credits)
    footer_h = 14 * len(credits) + 2 * pad
    width = len(values) * (size + pad) + pad
    height = len(rows) * (size + label_h + pad) + pad + label_h + footer_h
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, value in enumerate(values):
        text = f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
        draw.text((pad + j * (size + pad), pad), text, fill="black")
    for i, row in enumerate(rows):
        y0 = pad + label_h + i * (size + label_h + pad)
        for j in range(len(values)):
            tile = Image.fromarray(tiles[i * len(values) + j]).convert("RGBA")
            checker = Image.new("RGBA", tile.size, (255, 255, 255, 255))
            sheet.paste(Image.alpha_composite(checker, tile).convert("RGB"), (pad + j * (size + pad), y0 + label_h))
        label = ", ".join(f"{k}={v}" for k, v in row.items())
        draw.text((pad, y0 + 2), label, fill="black")
    y = height - footer_h + pad
    for line in credits:
        draw.text((pad, y), line, fill=(60, 60, 60))
        y += 14
    return np.asarray(sheet)
