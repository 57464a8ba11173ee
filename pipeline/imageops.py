"""Image factors: pure batched torch ops on rendered images, each registered
against the factors it implements.

Every op takes ``images`` (B, 3, H, W) float in [0, 1] and one argument per
factor, in the order the op names them: a (B,) float64 tensor for a numeric
factor, a list of B strings otherwise. It returns new images of the same
shape, clamped to [0, 1]. Ops never sample parameters: noise and shuffles take
a seed per sample, and draw from a generator seeded with it on the CPU, so the
same seed gives the same pixels on any device. Ops run on the images' device.

An op registers itself with
:func:`~perturber.pipeline.implementations.image_op`, next to its definition::

    @image_op("fade", order=10)
    def fade(images, amount): ...

:func:`apply_image_factors` applies every registered op to a batch, in
ascending ``order``; an op is skipped when every sample has its factors at
their defaults (:attr:`Factor.default`, the identity), seeds aside. The
order of the built-in ops:

| order | op | factors |
| ---: | --- | --- |
| 0 | background composite | background (RGBA in, RGBA out; runs at its default too) |
| 10-70 | colour | fade, brightness, contrast, saturation, hue, gamma, expression (+ expression_p) |
| 80-90 | frequency | band_low, band_mid, band_high; blur |
| 100 | spatial | shuffle (+ shuffle_seed) |
| 110-130 | noise | noise_uniform, noise_gaussian, noise_salt_pepper (+ noise_seed) |

A plugin's op takes a free ``order`` between these (see CONTRIBUTING.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from perturber.pipeline import assets, expression, factors
from perturber.pipeline.implementations import image_op, registered_ops

__all__ = ["composite", "fade", "brightness", "contrast", "saturation", "hue_shift", "gamma", "colour_expression",
           "laplacian_pyramid", "collapse_pyramid", "band_gains", "gaussian_blur", "patch_shuffle", "uniform_noise",
           "gaussian_noise", "salt_and_pepper", "background", "apply_image_factors", "to_tensor", "to_uint8",
           "background_batch"]


def _per_sample(value: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """A (B,) parameter as (B, 1, 1, 1) on the images' device and dtype."""
    t = torch.as_tensor(value, dtype=images.dtype, device=images.device)
    return t.reshape(-1, 1, 1, 1).expand(images.shape[0], 1, 1, 1)


# --------------------------------------------------------------------------
# Background
# --------------------------------------------------------------------------


def composite(images: torch.Tensor, backgrounds: torch.Tensor, opaque: torch.Tensor) -> torch.Tensor:
    """Alpha-composite straight-alpha RGBA ``images`` over ``backgrounds``.

    images (B, 4, H, W) in [0, 1]; backgrounds (B, 3, H, W) in [0, 1];
    opaque (B,) bool: where False (background 'none') the image is returned
    unchanged, alpha included. Returns (B, 4, H, W).
    """
    alpha = images[:, 3:4]
    rgb = images[:, :3] * alpha + backgrounds * (1.0 - alpha)
    out = torch.cat([rgb, torch.ones_like(alpha)], dim=1)
    return out if bool(opaque.all()) else torch.where(opaque[:, None, None, None], out, images)


@image_op("background", order=0, rgba=True, skip_at_default=False)
def background(images: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Composite RGBA ``images`` (B, 4, H, W) over the backgrounds ``names`` (B
    factor values: a photo id, a colour, or 'none' to keep the alpha)."""
    backgrounds, opaque = background_batch(names, images.shape[-1], images.device)
    return composite(images, backgrounds, opaque)


# --------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------


@image_op("fade", order=10)
def fade(images: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Fade to black: ``amount`` (B,) in [0, 1], 0 unchanged, 1 black."""
    return images * (1.0 - _per_sample(amount, images))


@image_op("brightness", order=20)
def brightness(images: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Add ``offset`` (B,) in [-1, 1] to every channel."""
    return (images + _per_sample(offset, images)).clamp(0.0, 1.0)


@image_op("contrast", order=30)
def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale about mid-grey: ``(x - 0.5) * factor + 0.5`` (the original tool's contrast)."""
    return ((images - 0.5) * _per_sample(factor, images) + 0.5).clamp(0.0, 1.0)


@image_op("gamma", order=60)
def gamma(images: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``x ** exponent`` per sample; exponent > 0, 1 unchanged, > 1 darkens."""
    return images.clamp(0.0, 1.0).pow(_per_sample(exponent, images))


def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) RGB → hue in turns [0, 1), saturation, value; each (B, H, W). (Elementwise maximum and
    masked_fill give the values of max(1) and where, in a fraction of the time on a CPU.)"""
    r, g, b = rgb.unbind(1)
    value = torch.maximum(torch.maximum(r, g), b)
    delta = value - torch.minimum(torch.minimum(r, g), b)
    grey, black = ~(delta > 0), ~(value > 0)
    safe = delta.masked_fill(grey, 1.0)
    hue = torch.where(
        value == r, ((g - b) / safe) % 6.0, torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = (hue / 6.0).masked_fill_(grey, 0.0)
    sat = (delta / value.masked_fill(black, 1.0)).masked_fill_(black, 0.0)
    return hue, sat, value


def _hsv_to_rgb(hue: torch.Tensor, sat: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`: (B, 3, H, W)."""
    h6 = (hue % 1.0) * 6.0
    chroma = value * sat
    channels = []
    for offset in (5.0, 3.0, 1.0):  # channel by channel: three planes in cache, not a (B, 3, H, W) stack of k
        k = (offset + h6) % 6.0
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=1)


@image_op("saturation", order=40)
def saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply HSV saturation by ``factor`` (B,) ≥ 0 (0: grey, 1: unchanged), clamped to 1."""
    hue, sat, value = _rgb_to_hsv(images)
    sat = (sat * _per_sample(factor, images)[:, 0]).clamp(0.0, 1.0)
    return _hsv_to_rgb(hue, sat, value)


@image_op("hue", order=50)
def hue_shift(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate HSV hue by ``degrees`` (B,); 360 is a full turn."""
    hue, sat, value = _rgb_to_hsv(images)
    return _hsv_to_rgb(hue + _per_sample(degrees, images)[:, 0] / 360.0, sat, value)


@image_op("expression", "expression_p", order=70)
def colour_expression(images: torch.Tensor, text: str | Sequence[str], p: torch.Tensor) -> torch.Tensor:
    """A user's sandboxed colour expression over r, g, b and slider ``p`` (B,):
    one text for the whole batch, or one per sample (each distinct text is
    applied in one batched call)."""
    p = torch.as_tensor(p, dtype=images.dtype, device=images.device)
    if isinstance(text, str):
        return expression.apply_expression(images, text, p)
    out = images.clone()
    for one in dict.fromkeys(text):
        idx = [i for i, t in enumerate(text) if t == one]
        out[idx] = expression.apply_expression(images[idx], one, p.expand(images.shape[0])[idx])
    return out


# --------------------------------------------------------------------------
# Frequency
# --------------------------------------------------------------------------

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial low-pass, edge pixels repeated (B, C, H, W)."""
    c = images.shape[1]
    k = _BINOMIAL.to(images)
    x = F.pad(images, (2, 2, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    x = F.pad(x, (0, 0, 2, 2), mode="replicate")
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _up(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def laplacian_pyramid(images: torch.Tensor, levels: int = 4) -> list[torch.Tensor]:
    """Laplacian pyramid: ``levels`` detail bands (finest first) then the low-pass residual.

    Each band has half the resolution of the one before. :func:`collapse_pyramid`
    of the result reproduces ``images`` exactly (up to float rounding).
    """
    bands = []
    current = images
    for _ in range(levels):
        down = _smooth(current)[:, :, ::2, ::2]
        bands.append(current - _up(down, current.shape[-2:]))
        current = down
    bands.append(current)
    return bands


def collapse_pyramid(bands: Sequence[torch.Tensor], gains: Sequence[torch.Tensor | float] | None = None) -> torch.Tensor:
    """Rebuild an image from :func:`laplacian_pyramid` bands, each scaled by its gain
    (a float or a (B,) tensor; default 1)."""
    gains = gains if gains is not None else [1.0] * len(bands)
    image = bands[-1] * _per_sample(gains[-1], bands[-1])
    for band, g in zip(reversed(bands[:-1]), reversed(gains[:-1])):
        image = _up(image, band.shape[-2:]) + band * _per_sample(g, band)
    return image


@image_op("band_low", "band_mid", "band_high", order=80)
def band_gains(images: torch.Tensor, low: torch.Tensor, mid: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Scale three frequency bands of a 4-level Laplacian pyramid (gains (B,) each).

    high: the finest level (periods of 2 to 4 pixels); mid: the next two
    (4 to 16 pixels); low: the coarsest detail level and the residual
    (16 pixels and up). All gains 1 reproduce the input.
    """
    bands = laplacian_pyramid(images, levels=4)
    out = collapse_pyramid(bands, [high, mid, mid, low, low])
    return out.clamp(0.0, 1.0)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 2 * radius + 1) normalised 1-D Gaussians; sigma 0 gives a delta."""
    x = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    s = sigma.reshape(-1, 1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    k = torch.exp(-0.5 * (x / safe) ** 2)
    delta = (x == 0).to(sigma.dtype).expand_as(k)
    k = torch.where(s > 0, k, delta)
    return k / k.sum(1, keepdim=True)


@image_op("blur", order=90)
def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with per-sample ``sigma`` (B,) in pixels (0: unchanged).

    The kernel reaches ``ceil(3 * max sigma)`` pixels; borders are mirrored
    (``reflect``, as scipy's ``mode='mirror'``).
    """
    b, c, h, w = images.shape
    sigma = torch.as_tensor(sigma, dtype=images.dtype, device=images.device).reshape(-1).expand(b)
    radius = int(math.ceil(3.0 * float(sigma.max()))) if b else 0
    if radius == 0:
        return images
    radius = min(radius, h - 1, w - 1)
    k = _gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (B*C, K)
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return x.reshape(b, c, h, w)


# --------------------------------------------------------------------------
# Spatial
# --------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


@image_op("shuffle", "shuffle_seed", order=100, seeds=("shuffle_seed",))
def patch_shuffle(images: torch.Tensor, k: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Cut each image into a k×k grid of patches and permute them (seeded).

    k (B,) integers ≥ 1 (1: unchanged); seed (B,) integers. With sides not
    divisible by k, the remainder strip at the right and bottom stays in place.
    """
    out = images.clone()
    ks = [int(v) for v in torch.as_tensor(k).reshape(-1).expand(images.shape[0])]
    seeds = [int(v) for v in torch.as_tensor(seed).reshape(-1).expand(images.shape[0])]
    h, w = images.shape[-2:]
    for i, (kk, s) in enumerate(zip(ks, seeds)):
        if kk <= 1:
            continue
        ph, pw = h // kk, w // kk
        grid = images[i, :, : ph * kk, : pw * kk]
        patches = grid.reshape(-1, kk, ph, kk, pw).permute(1, 3, 0, 2, 4).reshape(kk * kk, -1, ph, pw)
        order = torch.randperm(kk * kk, generator=_generator(s)).to(images.device)
        shuffled = patches[order].reshape(kk, kk, -1, ph, pw).permute(2, 0, 3, 1, 4).reshape(-1, ph * kk, pw * kk)
        out[i, :, : ph * kk, : pw * kk] = shuffled
    return out


# --------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------


def _draws(images: torch.Tensor, seed: torch.Tensor, draw) -> torch.Tensor:
    """Per-sample random tensors (B, ...) drawn on the CPU from each sample's seed."""
    seeds = [int(v) for v in torch.as_tensor(seed).reshape(-1).expand(images.shape[0])]
    return torch.stack([draw(_generator(s)) for s in seeds]).to(device=images.device, dtype=images.dtype)


@image_op("noise_uniform", "noise_seed", order=110, seeds=("noise_seed",))
def uniform_noise(images: torch.Tensor, amplitude: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Add uniform noise in [-amplitude, amplitude] (B,), seeded per sample."""
    shape = images.shape[1:]
    noise = _draws(images, seed, lambda g: torch.rand(shape, generator=g) * 2.0 - 1.0)
    return (images + noise * _per_sample(amplitude, images)).clamp(0.0, 1.0)


@image_op("noise_gaussian", "noise_seed", order=120, seeds=("noise_seed",))
def gaussian_noise(images: torch.Tensor, sigma: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Add Gaussian noise of standard deviation ``sigma`` (B,), seeded per sample."""
    shape = images.shape[1:]
    noise = _draws(images, seed, lambda g: torch.randn(shape, generator=g))
    return (images + noise * _per_sample(sigma, images)).clamp(0.0, 1.0)


@image_op("noise_salt_pepper", "noise_seed", order=130, seeds=("noise_seed",))
def salt_and_pepper(images: torch.Tensor, fraction: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Set a ``fraction`` (B,) of pixels to black or white (half each), seeded per sample."""
    shape = (1, *images.shape[2:])
    u = _draws(images, seed, lambda g: torch.rand(shape, generator=g))
    f = _per_sample(fraction, images)
    out = torch.where(u < f / 2.0, torch.zeros_like(images), images)
    return torch.where((u >= f / 2.0) & (u < f), torch.ones_like(images), out)


# --------------------------------------------------------------------------
# All image factors of a batch
# --------------------------------------------------------------------------


def apply_image_factors(rgba: torch.Tensor, params: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Apply every image factor to a batch of renders, op by op in their order.

    rgba (B, 4, H, W) float in [0, 1], straight alpha; ``params`` B validated
    factor dicts (:func:`perturber.pipeline.factors.validate`). Returns
    (B, 4, H, W): RGB after all ops; alpha 1 except where the background is 'none'.

    An op runs only on the rows it changes (:meth:`perturber.pipeline.implementations.ImageOp.acting`), so a
    sample's result never depends on the other samples of its batch.
    """
    images, rgb, alpha = rgba, None, None  # RGBA until an RGB op splits off the alpha (no copy)
    for op in registered_ops():
        rows = op.acting(params)
        if not rows:
            continue
        args = [_argument(name, [params[i] for i in rows]) for name in op.factors]
        if op.rgba:
            if rgb is not None:
                images, rgb = torch.cat([rgb, alpha], dim=1), None
            images = _on_rows(op.fn, images, rows, args)
        else:
            if rgb is None:
                rgb, alpha = images[:, :3], images[:, 3:]
            rgb = _on_rows(op.fn, rgb, rows, args)
    return images if rgb is None else torch.cat([rgb, alpha], dim=1)


def _on_rows(fn: Callable, images: torch.Tensor, rows: list[int], args: list) -> torch.Tensor:
    """``fn(images[rows], *args)`` put back into a copy of ``images`` (B, C, H, W); the other rows unchanged."""
    if len(rows) == images.shape[0]:
        return fn(images, *args)
    index = torch.tensor(rows, device=images.device)
    changed = fn(images[index], *args)
    return images.index_copy(0, index, changed.to(images.dtype))


def _argument(name: str, params: Sequence[Mapping[str, Any]]) -> torch.Tensor | list[str]:
    """One factor's values across the batch: (B,) float64 when numeric, else B strings."""
    if factors.get(name).numeric:
        return torch.tensor([p[name] for p in params], dtype=torch.float64)
    return [p[name] for p in params]


# --------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------


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
    distinct = {n: assets.load_background(n, size) for n in names}  # each converted once, then repeated
    opaque = torch.tensor([distinct[n] is not None for n in names], device=device)
    blank = np.zeros((size, size, 3), np.uint8)
    stacked = to_tensor([blank if im is None else im for im in distinct.values()], device)
    position = {n: i for i, n in enumerate(distinct)}
    return stacked[torch.tensor([position[n] for n in names], device=device)], opaque
