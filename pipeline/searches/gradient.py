"""Fooling images by gradient ascent (Nguyen et al. 2015, Yosinski et al. 2015).

One image per requested ImageNet class, all optimised together as one batch on
the best device: Adam ascends the class's logit or log-probability with respect
to the image (the model's weights are frozen). The model sees the image as the
precompute does: resized to its input size by :func:`inference.preprocess`, so
an image below that size is upsampled and scored the same way once stored.

Parameterisations:

- ``pixel``: the image (B, 3, S, S) itself, clamped to [0, 1] after each step.
  With ``regularise`` the readability regularisers of Yosinski et al. 2015
  ("Understanding neural networks through deep visualization", ICML DL
  workshop), see :class:`Regularisers`: L2 decay towards the model's mean
  colour, a Gaussian blur every few steps, clipping of pixels with a small norm
  to the mean colour, and a random jitter (roll) of the image before each
  gradient (as DeepDream and Lucid do);
- ``fourier``: lucent's scaled Fourier spectrum with Lucid's colour
  decorrelation and a sigmoid, exactly as :mod:`perturber.featureviz.optimize`
  builds it (``lucent.optvis.param.image(fft=True, decorrelate=True)``); the
  pixel regularisers do not apply, ``regularise`` adds the jitter only.

Each class's path is independent of the batch it is in: its starting noise (or
Fourier spectrum) comes from its own seed (run seed, class), and a step's jitter
from (run seed, step), the same for every image. After every step the image is
rounded to uint8 and scored; the kept image of a class is its best so far on
that score (ties: the earlier), its ``found_at`` the step that produced it (0:
the start). The stored confidence is scored again by :class:`scoring.Scorer`
on the uint8 image as stored.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from perturber.featureviz.optimize import lucent_modules
from perturber.pipeline import inference, models
from perturber.pipeline.searches import SearchError, fooling, scoring

__all__ = ["Regularisers", "ascend", "OBJECTIVES", "PARAMETERISATIONS", "REGULARISERS"]

OBJECTIVES = ("logit", "logprob")
PARAMETERISATIONS = ("pixel", "fourier")
LR = {"pixel": 0.05, "fourier": 0.05}  # Adam; lucent's default (featureviz); 0.01 left pixels short of 0.99 in 40 steps


@dataclass(frozen=True)
class Regularisers:
    """Yosinski et al. 2015's regularisers, in [0, 1] pixel units of the optimised image.

    After each step, x ← mean + (1 − decay)(x − mean) (L2 decay towards the
    model's mean colour); every ``blur_every`` steps a Gaussian blur of
    ``blur_sigma`` px; then every pixel whose colour distance from the mean is
    below the ``clip_percentile``-th percentile of its image's is set to the mean
    (their "small norm" clipping). Before each gradient the image is rolled by
    up to ``jitter`` px in x and y.

    Yosinski et al. give four hand-picked settings (decay, blur width, blur
    every, norm percentile): (0, 0.5, 4, 50), (0.3, 0, 0, 20), (1e-4, 1.0, 4, 0)
    and (0, 0.5, 4, 0; contribution clipping 90). The defaults take the decay
    of their third, the blur of their first and fourth (0.5 px every 4 steps),
    the norm clipping of their second (20th percentile) and a 4-px jitter; on
    Lite0 (docs/studies/fooling-gradient.md) they still reach 0.99 within the
    stated budget, and the images lose half or more of their high-frequency
    energy. A 1-px blur, the third setting's, slowed the ascent too much (3 of
    5 classes at 0.99 after 60 steps).
    """

    decay: float = 1e-4
    blur_sigma: float = 0.5  # px
    blur_every: int = 4  # steps; 0: never
    clip_percentile: float = 20.0  # 0: never
    jitter: int = 4  # px; 0: none


REGULARISERS = Regularisers()


def _class_seed(seed: int, cls: int, parameterisation: str) -> int:
    key = f"gradient/{seed}/{parameterisation}/{cls}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _start_image(start: str | np.ndarray, size: int) -> torch.Tensor | None:
    """The start image (3, S, S) float in [0, 1], or None for noise; SearchError for a bad one."""
    if isinstance(start, str):
        if start != "noise":
            raise SearchError(f"unknown start {start!r}; give 'noise' or an image ({size}, {size}, 3) uint8 or (3, {size}, {size}) float")
        return None
    a = np.asarray(start)
    if a.dtype == np.uint8 and a.shape == (size, size, 3):
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255
    if a.dtype.kind == "f" and a.shape == (3, size, size):
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise SearchError("start image: float pixels must be finite and in [0, 1]")
        return torch.from_numpy(a.astype(np.float32))
    raise SearchError(f"start image of shape {a.shape} and dtype {a.dtype}; expected ({size}, {size}, 3) uint8 or (3, {size}, {size}) float")


def _check(model: str, classes: Sequence[int], steps: int, objective: str, parameterisation: str, size: int,
           lr: float | None) -> np.ndarray:
    if objective not in OBJECTIVES:
        raise SearchError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if parameterisation not in PARAMETERISATIONS:
        raise SearchError(f"unknown parameterisation {parameterisation!r}; choose one of {', '.join(PARAMETERISATIONS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SearchError(f"steps must be a whole number ≥ 1, not {steps!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024:
        raise SearchError(f"size must be a whole number of pixels in 16..1024, not {size!r}")
    if lr is not None and not (np.isfinite(lr) and lr > 0):
        raise SearchError(f"the learning rate must be a positive number, not {lr!r}")
    if len(classes) == 0:
        raise SearchError("no classes to search; give ImageNet indices 0..999")
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < 1000]
    if bad:
        raise SearchError(f"class {bad[0]!r} is not an ImageNet class index (0..999)")
    if len(set(int(c) for c in classes)) != len(classes):
        raise SearchError("each class may be asked for once")
    models.spec(model)  # a clear one-line error for an unknown model
    return np.asarray([int(c) for c in classes], dtype=np.int64)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, 3, S, S), kernel ±3σ, reflected at the borders."""
    import torchvision.transforms.functional as tf

    k = 2 * int(np.ceil(3 * sigma)) + 1
    return tf.gaussian_blur(x, [k, k], [sigma, sigma])


def _regularise(x: torch.Tensor, mean: torch.Tensor, r: Regularisers, step: int) -> torch.Tensor:
    """Yosinski et al.'s r(x) after gradient step ``step`` (1-based); x (B, 3, S, S)."""
    x = mean + (1 - r.decay) * (x - mean)
    if r.blur_every and r.blur_sigma > 0 and step % r.blur_every == 0:
        x = _blur(x, r.blur_sigma)
    if r.clip_percentile > 0:
        norm = (x - mean).norm(dim=1)  # (B, S, S)
        limit = torch.quantile(norm.flatten(1), r.clip_percentile / 100, dim=1).view(-1, 1, 1)
        x = torch.where((norm < limit)[:, None], mean.expand_as(x), x)
    return x.clamp(0, 1)


def _fourier(n: int, size: int, seeds: Sequence[int], start: torch.Tensor | None):
    """lucent's Fourier image, as featureviz: (params, image_f); the spectrum
    seeded per class (as lucent: N(0, 0.01)), or set so image_f() is ``start``."""
    param, _ = lucent_modules()
    params, image_f = param.image(size, batch=n, fft=True, decorrelate=True)
    spectrum = params[0]
    with torch.no_grad():
        if start is None:
            for i, s in enumerate(seeds):
                g = torch.Generator().manual_seed(s)
                spectrum[i] = (torch.randn(spectrum.shape[1:], generator=g) * 0.01).to(spectrum.device)
        else:
            spectrum.copy_(_spectrum_of(start, spectrum).expand_as(spectrum))
    return params, image_f


def _spectrum_of(image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Invert lucent's fft_image + decorrelation + sigmoid for one (3, S, S)
    image: the spectrum (1, 3, S, F, 2) whose image is ``image`` (up to the
    sigmoid's limits: pixels 0 and 1 become 1/510 and 1 − 1/510)."""
    from lucent.optvis.param import color, spatial

    s = image.shape[-1]
    pre = torch.logit(image.double().clamp(1 / 510, 1 - 1 / 510))
    m = torch.tensor(color.color_correlation_normalized.T, dtype=torch.float64)
    pre = (pre.permute(1, 2, 0) @ torch.linalg.inv(m)).permute(2, 0, 1)  # undo the colour decorrelation
    spectrum = torch.fft.rfftn(pre * 4.0, dim=(-2, -1), norm="ortho")  # lucent divides the image by 4
    freqs = spatial.rfft2d_freqs(s, s)
    scale = torch.from_numpy(1.0 / np.maximum(freqs, 1.0 / s))[:, : spectrum.shape[-1]]
    spectrum = torch.view_as_real(spectrum / scale)
    if spectrum.shape[-2] < like.shape[-2]:  # odd sizes: lucent keeps one more frequency than irfftn reads
        spectrum = torch.nn.functional.pad(spectrum, (0, 0, 0, like.shape[-2] - spectrum.shape[-2]))
    return spectrum[None].to(like.dtype).to(like.device)


def _uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) float → the same rounded to uint8 levels, still float in [0, 1]."""
    return (x.detach().clamp(0, 1) * 255).round() / 255


def ascend(model: str, classes: Sequence[int], *, steps: int = 64, objective: str = "logprob",
           start: str | np.ndarray = "noise", regularise: bool = True, parameterisation: str = "pixel",
           seed: int = 0, size: int = 224, lr: float | None = None, progress: bool = False,
           regularisers: Regularisers = REGULARISERS) -> fooling.Elites:
    """One fooling image per class in ``classes`` (ImageNet indices), by ``steps`` of gradient ascent.

    objective: ``logit`` (the class's pre-softmax score) or ``logprob`` (its
    log-softmax); start: ``"noise"`` (uniform, seeded per class) or one image,
    (S, S, 3) uint8 or (3, S, S) float in [0, 1] with S = ``size``, for every
    class; lr: Adam's step (default 0.05, for pixels and Fourier).
    Returns :class:`fooling.Elites` with images (K, S, S, 3) uint8; history
    (``steps`` + 1 rows, row 0 the start) over all 1000 classes as
    :data:`fooling.DEFINITION` says (the unsearched count as 0); evaluations =
    images through the model (one gradient and one scoring pass per step).
    """
    cls = _check(model, classes, steps, objective, parameterisation, size, lr)
    first = _start_image(start, size)
    t0 = time.perf_counter()
    spec = models.spec(model)
    device = models.best_device()
    net = models.load_model(model, device)
    lr = lr or LR[parameterisation]
    k = len(cls)
    seeds = [_class_seed(seed, int(c), parameterisation) for c in cls]
    r = regularisers
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    if parameterisation == "pixel":
        if first is None:
            x0 = torch.stack([torch.rand(3, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds])
        else:
            x0 = first.expand(k, -1, -1, -1).clone()
        pixels = x0.to(device).requires_grad_(True)
        params, image_f = [pixels], (lambda: pixels)
    else:
        params, image_f = _fourier(k, size, seeds, first)
    optimiser = torch.optim.Adam(params, lr=lr)
    rows = torch.arange(k, device=device)
    target = torch.as_tensor(cls, device=device)
    jitter = r.jitter if regularise else 0
    shifts = np.random.default_rng([seed, 0x6A17]).integers(-jitter, jitter + 1, size=(steps, 2)) if jitter else None

    def score(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = torch.softmax(net(inference.preprocess(_uint8(images), spec)).float(), -1)
        return p[rows, target]

    current = image_f().detach()
    best_conf = score(current)
    best = _uint8(current)
    found = torch.zeros(k, dtype=torch.int64, device=device)
    history = [fooling.history_row(_per_1000(cls, best_conf))]
    for step in tqdm(range(1, steps + 1), desc=f"gradient ascent ({model}, {k} classes)", disable=not progress):
        optimiser.zero_grad(set_to_none=True)
        images = image_f()
        if shifts is not None:
            images = torch.roll(images, shifts=tuple(int(v) for v in shifts[step - 1]), dims=(2, 3))
        logits = net(inference.preprocess(images, spec)).float()
        value = logits if objective == "logit" else torch.log_softmax(logits, -1)
        (-value[rows, target].sum()).backward()  # the images are independent: the sum's gradient is each one's own
        optimiser.step()
        with torch.no_grad():
            if parameterisation == "pixel":
                pixels.copy_(_regularise(pixels, mean, r, step) if regularise else pixels.clamp(0, 1))
            current = image_f().detach()
        conf = score(current)
        better = conf > best_conf
        best = torch.where(better.view(-1, 1, 1, 1), _uint8(current), best)
        best_conf = torch.where(better, conf, best_conf)
        found = torch.where(better, torch.full_like(found, step), found)
        history.append(fooling.history_row(_per_1000(cls, best_conf)))
    images = (best.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    confidence = scoring.Scorer(model, device=device, batch_size=min(k, 64)).probabilities(images)[np.arange(k), cls]
    method = f"gradient-{parameterisation}" + ("-regularised" if regularise else "")
    settings = {
        "objective": objective, "parameterisation": parameterisation, "start": "noise" if first is None else "image",
        "regularise": regularise, "steps": steps, "size": size, "lr": lr, "optimiser": "Adam", "seed": seed,
        "device": str(device), "kept": "best so far on the uint8 image (ties: the earlier); found_at: its step, 0 the start",
        "history": "per step, row 0 the start; over all 1000 classes, the unsearched counting as 0 (fooling.DEFINITION)",
        "regularisers": ({**asdict(r), "applied": "jitter" if parameterisation == "fourier" else "decay, blur, clip, jitter"}
                         if regularise else None),
    }
    return fooling.Elites(
        method=method, model=model, seed=seed, classes=cls, images=images, confidence=confidence.astype(np.float32),
        found_at=found.cpu().numpy().astype(np.int32),
        history={key: np.asarray([h[key] for h in history]) for key in history[0]}, settings=settings,
        evaluations=k * (2 * steps + 2), seconds=time.perf_counter() - t0)


def _per_1000(cls: np.ndarray, conf: torch.Tensor) -> np.ndarray:
    out = np.zeros(1000)
    out[cls] = conf.cpu().numpy()
    return out
