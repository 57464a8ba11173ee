"""Image factors: pure batched torch ops on RGBA renders.

An op takes ``images`` (B, C, H, W) float in [0, 1] and per-sample parameters
(tensors of shape (B,) or (B, ...)) and returns new images; it never samples
parameters. Ops run on whatever device the images are on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["composite", "to_tensor", "to_uint8", "background_batch"]


def composite(images: torch.Tensor, backgrounds: torch.Tensor, opaque: torch.Tensor) -> torch.Tensor:
    """Alpha-composite straight-alpha RGBA ``images`` over ``backgrounds``.

    images (B, 4, H, W) in [0, 1]; backgrounds (B, 3, H, W) in [0, 1];
    opaque (B,) bool: where False (background 'none') the image is returned
    unchanged, alpha included. Returns (B, 4, H, W).
    """
    alpha = images[:, 3:4]
    rgb = images[:, :3] * alpha + backgrounds * (1.0 - alpha)
    out = torch.cat([rgb, torch.ones_like(alpha)], dim=1)
    return torch.where(opaque[:, None, None, None], out, images)


def to_tensor(rgba: np.ndarray | Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 images (B, H, W, C) or a list of (H, W, C) → float (B, C, H, W) in [0, 1]."""
    batch = np.stack(list(rgba)) if not isinstance(rgba, np.ndarray) or rgba.ndim == 3 else rgba
    if batch.ndim == 3:
        batch = batch[None]
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [0, 1] → uint8 (B, H, W, C), rounded."""
    return (images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def background_batch(names: Sequence[str], size: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Backgrounds for factor values ``names``: ((B, 3, size, size) in [0, 1], opaque (B,) bool)."""
    from pipeline.assets import load_background

    images = [load_background(n, size) for n in names]
    opaque = torch.tensor([im is not None for im in images], device=device)
    blank = np.zeros((size, size, 3), np.uint8)
    stacked = to_tensor([blank if im is None else im for im in images], device)
    return stacked, opaque
