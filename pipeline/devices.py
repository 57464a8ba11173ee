"""GPU settings: which precision each model may run in, checked on real renders.

Half-precision autocast (bfloat16 or float16) and the channels_last layout
make convolutional networks several times faster on a GPU, and change their
logits slightly. A model may
use a fast setting only where it leaves the model's top-5 *unchanged* on the
reference set, a few real renders (:data:`REFERENCE_POINTS`: catalogue
objects from a few views, as the models see them).

"Unchanged" means: on every reference image, the same five classes in the same
order as in float32 in the default (NCHW) layout on the same device. The
order counts because the store keeps the ordered top-5 (``top_class``) and the
viewer shows it, and the whole-cube views read the top-1; a set comparison
would let a setting reorder what is stored. The price is that a model with
near-ties among its top-5 on the reference set keeps the exact setting: the
check errs towards exactness.

The settings, in order of preference (:data:`perturber.pipeline.inference.PRECISIONS`):
``float32``, ``channels_last``, ``bf16`` (bfloat16 autocast in channels_last)
and ``fp16`` (float16 autocast in channels_last). A model gets the last one
whose top-5 are unchanged. bf16 and fp16 run equally fast on a GPU's tensor
cores; fp16 keeps 10 bits of mantissa to bf16's 7, so it changes the logits
about 8x less (EfficientNet-Lite0 on the CPU: bf16 reorders the top-5 of 7 of
the 12 reference images, fp16 of none), while bf16 keeps float32's range
(a network whose activations overflow float16 gets inf or NaN logits, which
change its top-5, so the check refuses fp16 for it).

On the CPU no check runs: models run in channels_last (measured 1.4-1.6x
faster than NCHW there, docs/benchmarks.md), as they always have; half
precision is slower than float32 on most CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from perturber.pipeline import inference

__all__ = ["REFERENCE_POINTS", "Check", "check", "choose", "Settings", "settings"]

#: The reference set: four catalogue objects (the demo's) from three directions, on white.
REFERENCE_POINTS = tuple({"object": obj, "yaw": yaw, "background": "white"}
                         for obj in ("dog", "cat", "sports_car", "fire_truck") for yaw in (0, 45, 120))


@dataclass
class Check:
    """One model's check on one device: ``reference`` (N, 5) the float32 top-5
    classes per reference image; ``top5`` setting → (N, 5) its top-5;
    ``unchanged`` setting → True when its top-5 equal the reference's, in order,
    on every image; ``chosen``: the last unchanged setting in order of preference."""

    model: str
    device: str
    reference: torch.Tensor
    top5: dict[str, torch.Tensor] = field(default_factory=dict)
    unchanged: dict[str, bool] = field(default_factory=dict)
    chosen: str = "float32"


@torch.no_grad()
def _top5(name: str, images: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """(N, 5) classes, most probable first, of model ``name`` on images (N, 3, H, W) in ``precision``."""
    logits = inference.run_models(images, [name], device=device, batch_size=len(images), precision=precision)[name].logits
    return logits.topk(5, dim=1).indices


def check(name: str, images: torch.Tensor, device: str | torch.device) -> Check:
    """Run model ``name`` on the reference ``images`` (N, 3, H, W) float RGB in
    [0, 1] in every setting on ``device`` and compare each setting's top-5 with
    float32's (module docstring)."""
    device = torch.device(device)
    ref = _top5(name, images, device, "float32")
    result = Check(model=name, device=inference.device_label(device), reference=ref)
    for precision in inference.PRECISIONS[1:]:
        result.top5[precision] = top5 = _top5(name, images, device, precision)
        result.unchanged[precision] = bool(torch.equal(top5, ref))
        if result.unchanged[precision]:
            result.chosen = precision
    return result


def choose(name: str, device: str | torch.device, reference: Callable[[], torch.Tensor]) -> str:
    """The setting model ``name`` runs in on ``device``: on a GPU the fastest one
    that :func:`check` finds unchanged on ``reference()`` (called only then),
    on the CPU channels_last."""
    if torch.device(device).type == "cpu":
        return inference.DEFAULT_PRECISION
    return check(name, reference(), device).chosen


@dataclass
class Settings:
    """What a store records of the device its chunks are computed on: ``device``
    (the GPU's name, or the CPU and its threads), per model ``precision`` and
    ``batch_sizes`` (tuned in that precision)."""

    device: str
    precision: dict[str, str]
    batch_sizes: dict[str, int]


def settings(names: Sequence[str], device: str | torch.device, reference: Callable[[], torch.Tensor],
             threads: int | None = None) -> Settings:
    """Each model's precision (:func:`choose`) and batch size in it on ``device``;
    ``reference()`` gives the reference images, rendered once if a GPU needs them.
    ``threads``: the torch CPU threads the tasks will run on (default: this process's)."""
    device = torch.device(device)
    images: list[torch.Tensor] = []

    def once() -> torch.Tensor:
        if not images:
            images.append(reference())
        return images[0]

    precision = {name: choose(name, device, once) for name in names}
    sizes = {name: inference.tuned_batch_size(name, str(device), precision=precision[name], threads=threads) for name in names}
    return Settings(device=inference.device_label(device, threads), precision=precision, batch_sizes=sizes)
