"""Batched class probabilities of one model on images: the searches' fitness.

A :class:`Scorer` holds the model warm on the best device and answers
``probabilities(images)`` for a population in batches of ``batch_size``
(tuned per model and device by :func:`inference.tuned_batch_size` unless
given). ``score_batch`` is the same as a plain function, so a Dask worker can
run it on a batch of offspring (the model stays loaded in the worker's
process between tasks).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from perturber.pipeline import inference, models

__all__ = ["Scorer", "score_batch", "transfer"]


class Scorer:
    """Softmax probabilities (N, 1000) float32 of ``model`` on images (N, 3, S, S) in [0, 1]."""

    def __init__(self, model: str, device: str | torch.device | None = None, batch_size: int | None = None):
        self.model = model
        self.spec = models.spec(model)  # a clear error for an unknown model
        self.device = torch.device(device or models.best_device())
        self.net = models.load_model(model, self.device)
        self.batch_size = batch_size or inference.tuned_batch_size(model, str(self.device))
        self.evaluated = 0  # images scored so far

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(images)
        if x.dtype == torch.uint8:  # (N, S, S, 3) stored images
            x = x.permute(0, 3, 1, 2).float() / 255
        out = []
        for i in range(0, len(x), self.batch_size):
            batch = x[i:i + self.batch_size].to(self.device, non_blocking=True)
            logits = self.net(inference.preprocess(batch, self.spec)).float()
            out.append(torch.softmax(logits, -1).cpu())
        self.evaluated += len(x)
        return torch.cat(out).numpy() if out else np.zeros((0, 1000), np.float32)


def score_batch(model: str, images: np.ndarray) -> np.ndarray:
    """(N, 1000) probabilities of ``model`` on (N, 3, S, S) float images; for Dask tasks."""
    return Scorer(model).probabilities(images)


def transfer(images: np.ndarray, classes: Sequence[int], others: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each model in ``others``: (its probability of each image's class (K,),
    its top-1 class (K,)) on uint8 images (K, S, S, 3)."""
    out = {}
    idx = np.asarray(classes, dtype=np.int64)
    for name in others:
        p = Scorer(name).probabilities(images)
        out[name] = (p[np.arange(len(idx)), idx].astype(np.float32), p.argmax(1).astype(np.int32))
    return out
