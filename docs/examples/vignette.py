"""Worked example (CONTRIBUTING.md): an image factor from outside Perturber.

``vignette`` darkens the model input towards its corners. The factor is
declared and implemented in one place: the decorator registers the
:class:`~perturber.pipeline.factors.Factor` and its op together. Importing
this module is all it takes; a package makes Perturber import it in every
process (the command line, Dask workers) with an entry point::

    [project.entry-points."perturber.plugins"]
    vignette = "vignette"

``tests/test_contributing.py`` follows it from a spec to the store, the
command line, the viewer and the image.
"""

from __future__ import annotations

import torch

from perturber.pipeline.factors import Factor, Interval
from perturber.pipeline.implementations import image_op

VIGNETTE = Factor("vignette", "image", Interval(0.0, 1.0), 0.0, "fraction",
                  "Darkens the image towards its corners: 0 unchanged, 1 black corners.", "Colour")


@image_op(VIGNETTE, order=65)  # after gamma (60), before the colour expression (70)
def vignette(images: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1]; amount (B,) in [0, 1]: each pixel is
    scaled by 1 - amount * r², r the distance from the centre (1 at the corners)."""
    h, w = images.shape[-2:]
    y = torch.linspace(-1.0, 1.0, h, dtype=images.dtype, device=images.device)
    x = torch.linspace(-1.0, 1.0, w, dtype=images.dtype, device=images.device)
    r2 = (y[:, None] ** 2 + x[None, :] ** 2) / 2.0
    a = torch.as_tensor(amount, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
    return (images * (1.0 - a * r2)).clamp(0.0, 1.0)
