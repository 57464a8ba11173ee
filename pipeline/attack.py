"""Adversarial perturbations (PGD) and input-gradient saliency on the model input.

Everything works on the model-input image x: (B, 3, S, S) float in [0, 1], the
same image the precompute stores. A perturbation δ has x's shape; the attacked
image is clamp(x + δ, 0, 1). PGD (Madry et al. 2018) without random start:

- L∞: δ ← clip_ε(δ + α · sign(∇)), then x + δ clipped to [0, 1];
- L2:  δ ← δ + α · ∇ / ‖∇‖₂, scaled back onto the ε-ball, then clipped to [0, 1];

ascending the cross-entropy of the original prediction ("suppress") or
descending that of a target class. The step α defaults to ε/8, as in the
original Perturber. The bound holds exactly after every step: the projection
scales onto the ball with a margin below floating-point rounding, and clipping
to [0, 1] can only shrink δ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from perturber.pipeline import inference, models
from perturber.pipeline.errors import PerturberError

__all__ = ["Attack", "AttackError", "pgd_step", "pgd", "norm_of", "blend", "saliency", "NORMS"]

NORMS = ("linf", "l2")


class AttackError(PerturberError):
    """An attack cannot run as asked; the message is one line."""


@dataclass(frozen=True)
class Attack:
    """One PGD attack: the attacking model, the norm, ε (in [0, 1] pixel units;
    L2 over the whole image), the step (default ε/8) and the goal: a target
    class, or None to suppress the original prediction."""

    model: str
    eps: float
    norm: str = "linf"
    target: int | None = None
    step: float | None = None

    def __post_init__(self):
        if self.norm not in NORMS:
            raise AttackError(f"unknown norm {self.norm!r}; choose linf or l2")
        if not (self.eps > 0) or self.eps != self.eps or self.eps == float("inf"):
            raise AttackError(f"epsilon must be a positive number, not {self.eps!r}")
        if self.norm == "linf" and self.eps > 1:
            raise AttackError(f"an L-infinity epsilon above 1 allows any image (got {self.eps})")
        if self.step is not None and not self.step > 0:
            raise AttackError(f"the step must be positive, not {self.step!r}")
        if self.target is not None and not 0 <= int(self.target) < 1000:
            raise AttackError(f"target class {self.target} is not an ImageNet class (0-999)")
        models.spec(self.model)  # a clear error for an unknown model

    @property
    def alpha(self) -> float:
        return self.step if self.step is not None else self.eps / 8


def _logits(net: torch.nn.Module, spec: models.ModelSpec, x: torch.Tensor) -> torch.Tensor:
    return net(inference.preprocess(x, spec)).float()


def norm_of(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """(B,) the L∞ or L2 norm of each perturbation."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _eps(attack: Attack, like: torch.Tensor) -> torch.Tensor:
    """ε in the tensor's dtype, rounded down: float32(8/255) is above 8/255."""
    e = torch.tensor(attack.eps, dtype=like.dtype, device=like.device)
    return torch.nextafter(e, torch.zeros_like(e)) if float(e) > attack.eps else e


def _onto_ball(delta: torch.Tensor, attack: Attack) -> torch.Tensor:
    eps = _eps(attack, delta)
    if attack.norm == "linf":
        return torch.minimum(torch.maximum(delta, -eps), eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = torch.clamp(eps * (1 - 1e-6) / n, max=1.0)  # margin: the norm's rounding never leaves the ball
    return delta * factor.view(-1, 1, 1, 1)


def _project(x: torch.Tensor, delta: torch.Tensor, attack: Attack) -> torch.Tensor:
    """Onto the ε-ball, keep x + δ in [0, 1], and onto the ball again (x + δ - x
    can round a hair outside it; the attacked image is clamp(x + δ, 0, 1))."""
    delta = _onto_ball(delta, attack)
    return _onto_ball((x + delta).clamp(0, 1) - x, attack)


def pgd_step(x: torch.Tensor, delta: torch.Tensor, attack: Attack, label: torch.Tensor,
             net: torch.nn.Module | None = None, spec: models.ModelSpec | None = None) -> torch.Tensor:
    """One PGD step: the new δ (detached). ``label``: (B,) the original
    prediction (suppress) or the target class. The gradient is taken at the
    attacked image itself, as Madry et al.'s and torchattacks' PGD do. ``spec``:
    the attacked model's entry when the caller has it (a loop of steps)."""
    spec = spec or models.spec(attack.model)
    net = net if net is not None else models.load_model(attack.model, x.device)
    adv = (x + delta).clamp(0, 1).detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(_logits(net, spec, adv), label)
    (grad,) = torch.autograd.grad(loss, adv)
    sign = -1.0 if attack.target is not None else 1.0  # towards the target, away from the original
    with torch.no_grad():
        if attack.norm == "linf":
            adv = adv + sign * attack.alpha * grad.sign()
        else:
            g = grad.flatten(1).norm(dim=1).clamp_min(1e-10).view(-1, 1, 1, 1)
            adv = adv + sign * attack.alpha * grad / g
        return _project(x, adv - x, attack).detach()


def label_for(x: torch.Tensor, attack: Attack, net: torch.nn.Module | None = None) -> torch.Tensor:
    """(B,) what the attack pushes against: the target, or the original top-1."""
    if attack.target is not None:
        return torch.full((x.shape[0],), int(attack.target), dtype=torch.long, device=x.device)
    net = net if net is not None else models.load_model(attack.model, x.device)
    with torch.no_grad():
        return _logits(net, models.spec(attack.model), x).argmax(1)


def pgd(x: torch.Tensor, attack: Attack, steps: int, delta: torch.Tensor | None = None,
        label: torch.Tensor | None = None, progress=None) -> torch.Tensor:
    """``steps`` PGD steps from ``delta`` (default zero: no random start); the final δ."""
    if steps < 1:
        raise AttackError(f"steps must be at least 1, not {steps}")
    net = models.load_model(attack.model, x.device)
    label = label if label is not None else label_for(x, attack, net)
    delta = torch.zeros_like(x) if delta is None else delta
    for i in range(steps):
        delta = pgd_step(x, delta, attack, label, net)
        if progress is not None:
            progress(i + 1)
    return delta


def blend(x: torch.Tensor, delta: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """(len(alphas) · B, 3, S, S): clamp(x + α δ) for each α (alpha-major), the transfer view's batch."""
    return torch.cat([(x + a * delta).clamp(0, 1) for a in alphas])


def saliency(x: torch.Tensor, model: str, target: int | None = None) -> torch.Tensor:
    """(B, S, S) input-gradient saliency in [0, 1]: |∂ logit / ∂ x| (max over
    colour channels) of the target class (default: each image's top class),
    scaled by each map's largest value."""
    spec = models.spec(model)
    net = models.load_model(model, x.device)
    x = x.detach().clone().requires_grad_(True)
    logits = _logits(net, spec, x)
    classes = logits.argmax(1) if target is None else torch.full((x.shape[0],), int(target), device=x.device)
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), x)
    s = grad.abs().amax(1)
    return s / s.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
