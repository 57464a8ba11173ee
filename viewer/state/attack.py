"""PGD at the current point: the attack's settings, δ kept across steps, and
every model's logits on x + αδ."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import param

from perturber.pipeline.errors import one_line
from perturber.viewer.live import EngineError, attack_task
from perturber.viewer.state.cube import CubeState

__all__ = ["AttackState", "ALPHAS"]

ALPHAS = tuple(round(a / 10, 1) for a in range(11))  # the transfer view's alpha grid, evaluated after each step


class AttackState(param.Parameterized):
    """PGD at the current point: δ kept across steps, the models on x + αδ."""

    model = param.Selector(doc="Attacked model")
    target = param.Integer(default=-1, bounds=(-1, 999), doc="Target class (-1: suppress the original prediction)")
    eps = param.Number(default=8 / 255, bounds=(1e-4, 64.0), doc="Bound, in [0, 1] pixel units")
    norm = param.Selector(default="linf", objects=["linf", "l2"])
    steps = param.Integer(default=10, bounds=(1, 500), doc="Steps of the 'run' button")
    alpha = param.Selector(default=1.0, objects=list(ALPHAS), doc="Blend: x + alpha * delta")
    delta_only = param.Boolean(default=False, doc="Show delta alone, amplified")
    done = param.Integer(default=0, doc="Steps taken")
    status = param.String(default="")

    def __init__(self, state: CubeState, **params: Any):
        super().__init__(**params)
        self.state = state
        self.models = list(state.analysis.models)
        self.param.model.objects = self.models
        self.model = state.model_a
        self.delta: np.ndarray | None = None  # (3, S, S) float32
        self.label: int | None = None
        self.logits: np.ndarray | None = None  # (alpha, model, 1000)
        self._image_key = state.image_key()
        state.param.watch(self._point_changed, ["changed"])
        self.param.watch(self.reset, ["model", "target", "eps", "norm"])

    def _point_changed(self, *_):
        """A new model input (another point, a new live result) starts a new attack."""
        if self.state.image_key() != self._image_key:
            self._image_key = self.state.image_key()
            self.reset()

    def reset(self, *_):
        self.delta, self.label, self.logits = None, None, None
        self.param.update(done=0, status="")

    def run(self, steps: int, progress: Callable[[int], None] | None = None) -> None:
        """``steps`` PGD steps (one task each, on the engine when there is one), then the alpha grid."""
        image = self.state.image()
        if image is None:
            self.status = "nothing to attack here (not computed)"
            return
        if self.delta is None:
            self.delta = np.zeros((3, *image.shape[:2]), dtype=np.float32)
        target = None if self.target < 0 else self.target
        try:
            for i in range(steps):
                last = i == steps - 1
                args = (image, self.delta, self.model, float(self.eps), self.norm, target, self.label, 1,
                        ALPHAS if last else (), self.models if last else [])
                engine = self.state.engine
                self.delta, self.label, logits = engine.call(attack_task, *args) if engine is not None else attack_task(*args)
                self.done += 1
                if progress is not None:
                    progress(i + 1)
            self.logits = logits
        except (EngineError, ValueError) as exc:
            self.status = f"attack failed: {one_line(exc)}"
            return
        except Exception as exc:
            self.status = f"attack failed: {one_line(exc, typed=True)}"
            return
        flat = self.delta.reshape(-1)
        size = float(np.abs(flat).max()) if self.norm == "linf" else float(np.linalg.norm(flat))
        where = "on the engine" if self.state.engine is not None else "in the viewer"
        self.status = f"{self.done} step(s) {where}; |δ| = {size:.4g} (ε = {self.eps:.4g})"
