"""Feature visualisation by optimisation, many units in one batch (lucent).

One batch element per unit: each element's image is optimised to raise its own
unit, so a whole layer goes through the model together. A *unit* is

- a channel of a layer (``kind="channel"``: the channel's mean activation),
- a direction in a layer's activation space (``kind="direction"``: the mean
  over positions of the activation vector's dot product with a unit vector;
  Szegedy et al. 2014 found these indistinguishable from single channels),
- a class logit (``kind="logit"``: the pre-softmax score).

Parameterisations (lucent): ``pixel`` (raw pixels, no colour decorrelation)
and ``fourier`` (a scaled Fourier spectrum with Lucid's colour decorrelation),
both with lucent's standard transformation robustness (pad, jitter, scale,
rotate, jitter). Seeded: each unit's starting image comes from its own seed and
every step's random transforms from the run's seed and the step number, so a
unit optimised in a batch and on its own follow the same path (up to floating
point differences between batched and single convolutions).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from perturber.pipeline import inference, models

__all__ = ["Settings", "Result", "visualise", "unit_seed", "PARAMETERISATIONS", "KINDS", "high_frequency_energy",
           "random_directions"]

PARAMETERISATIONS = ("pixel", "fourier")
KINDS = ("channel", "direction", "logit")


@dataclass(frozen=True)
class Settings:
    """How visualisations are optimised (recorded with every stored result)."""

    size: int = 128  # px, square
    steps: int = 128
    lr: float = 0.05  # Adam, lucent's default
    seed: int = 0
    transforms: bool = True  # lucent's standard_transforms
    channels_last: bool = False  # measured: no gain on CPU, 4x slower on an H200 (depthwise convolutions)
    precision: str = "float32"  # the network's forward pass: float32, bfloat16 or float16 (autocast)

    def to_dict(self) -> dict:
        return {"size": self.size, "steps": self.steps, "lr": self.lr, "seed": self.seed,
                "transforms": "lucent.optvis.transform.standard_transforms" if self.transforms else "none",
                "channels_last": self.channels_last, "precision": self.precision, "optimiser": "Adam"}


@dataclass
class Result:
    """Images (B, S, S, 3) uint8; the objective (mean activation, dot product or
    logit) on the starting and the final image, without transforms, (B,) each;
    seconds per step split into its parts."""

    images: np.ndarray
    start: np.ndarray
    end: np.ndarray
    timing: dict[str, float] = field(default_factory=dict)


def unit_seed(seed: int, model: str, target: str, kind: str, parameterisation: str, unit: int) -> int:
    """The seed of one unit's starting image: independent of the batch it is in."""
    key = f"{seed}/{model}/{target}/{kind}/{parameterisation}/{unit}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """lucent's transforms draw from numpy's global generator: seed it for one
    step and put the caller's state back."""
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(state)


def lucent_modules():
    """lucent's ``param`` and ``transform`` modules, imported without their deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lucent and kornia 0.4 warn about deprecated torch APIs on import
        from lucent.optvis import param, transform
    return param, transform


def _objective(kind: str, out: torch.Tensor, units: torch.Tensor, directions: torch.Tensor | None) -> torch.Tensor:
    """(B,) objective per batch element; ``out`` the layer's (B, C, h, w) or the logits (B, 1000)."""
    rows = torch.arange(out.shape[0], device=out.device)
    if kind == "logit":
        return out[rows, units]
    if kind == "channel":
        return out[rows, units].mean(dim=(1, 2))
    return (out * directions[:, :, None, None]).sum(1).mean(dim=(1, 2))


def visualise(model: str, target: str, units: Sequence[int], kind: str = "channel", parameterisation: str = "fourier",
              settings: Settings = Settings(), directions: np.ndarray | None = None,
              net: torch.nn.Module | None = None) -> Result:
    """Optimise one image per unit, all in one batch.

    model: a registry name (data/models.yaml); target: a layer (friendly name or
    module path) or ``"logits"``; units: channel indices, direction indices
    (rows of ``directions``, (n, C) unit vectors) or class indices.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {parameterisation!r}; choose one of {', '.join(PARAMETERISATIONS)}")
    if (kind == "logit") != (target == "logits"):
        raise ValueError("class-logit visualisations take target 'logits', and only they do")
    if kind == "direction" and directions is None:
        raise ValueError("direction visualisations need the directions")
    param, transform = lucent_modules()
    spec = models.spec(model)
    path = None if kind == "logit" else spec.layer_path(target)
    n, s = len(units), settings.size
    fft = parameterisation == "fourier"
    params, image_f = param.image(s, batch=n, fft=fft, decorrelate=fft)
    tensor = params[0]
    device = str(tensor.device)  # lucent's: the GPU when there is one
    net = net if net is not None else models.load_model(model, device)
    units_t = torch.as_tensor(list(units), device=device)
    dirs = None if directions is None else torch.as_tensor(directions, dtype=torch.float32, device=device)[units_t]
    with torch.no_grad():  # each unit's own starting point, whatever batch it is in
        for i, unit in enumerate(units):
            g = torch.Generator().manual_seed(unit_seed(settings.seed, model, target, kind, parameterisation, int(unit)))
            tensor[i] = (torch.randn(tensor.shape[1:], generator=g) * 0.01).to(tensor.device)
    optimiser = torch.optim.Adam(params, lr=settings.lr)
    steps_transforms = transform.standard_transforms if settings.transforms else []

    autocast = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[settings.precision]

    def forward(images: torch.Tensor) -> torch.Tensor:
        x = inference.preprocess(images, spec, resize=False)  # as Lucid: the network sees the image at its size
        if settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # only the network in low precision: the transforms invert matrices
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            if path is None:
                return _objective(kind, net(x), units_t, dirs).float()
            with inference.capture(net, [path], detach=False) as captured:
                net(x)
            return _objective(kind, captured[path], units_t, dirs).float()

    with torch.no_grad():
        start = forward(image_f()).float().cpu().numpy()
    timing = {"parameterise + transforms": 0.0, "forward": 0.0, "backward + step": 0.0}

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for step in range(settings.steps):
        t0 = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        images = image_f()
        with _numpy_seed(settings.seed * 1_000_003 + step):
            for t in steps_transforms:
                images = t(images)
        sync()
        t1 = time.perf_counter()
        loss = -forward(images).sum()  # elements are independent: the sum's gradient is each one's own
        sync()
        t2 = time.perf_counter()
        loss.backward()
        optimiser.step()
        sync()
        t3 = time.perf_counter()
        timing["parameterise + transforms"] += t1 - t0
        timing["forward"] += t2 - t1
        timing["backward + step"] += t3 - t2
    with torch.no_grad():
        final = image_f()
        end = forward(final).float().cpu().numpy()
        images = (final.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return Result(images=images, start=start, end=end,
                  timing={k: v / max(settings.steps, 1) for k, v in timing.items()})


def random_directions(channels: int, count: int, seed: int) -> np.ndarray:
    """(count, channels) float32 unit vectors, uniformly distributed on the sphere."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((count, channels))
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


def high_frequency_energy(images: np.ndarray, cutoff: float = 0.25) -> np.ndarray:
    """(B,) share of each image's spectral energy (mean removed) above ``cutoff``
    cycles per pixel; images (B, S, S, 3) uint8."""
    x = images.astype(np.float64).mean(-1)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x)) ** 2
    f = np.fft.fftfreq(x.shape[1])
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    high = power[:, radius > cutoff].sum(1)
    return high / np.maximum(power.sum(axis=(1, 2)), 1e-12)
