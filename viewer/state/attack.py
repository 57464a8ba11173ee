"""PGD at the current point: the attack's settings, δ kept across steps, and
every model's logits on x + αδ. Served, the steps run in a thread
(:meth:`AttackState.start`), bounded with the engine's other work, and each
step's δ comes back to the session's event loop."""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import param

from perturber.pipeline.errors import one_line
from perturber.viewer import classes
from perturber.viewer.live import LOCAL, EngineError, attack_task
from perturber.viewer.state.cube import CubeState

__all__ = ["AttackState", "ALPHAS"]

ALPHAS = tuple(round(a / 10, 1) for a in range(11))  # the transfer view's alpha grid, evaluated after each step


class Target(classes.ClassChoice):
    """PGD's target: one class index (PGD pushes towards one class, not a set) or
    :data:`~perturber.viewer.classes.UNTARGETED`."""

    special = (classes.UNTARGETED,)


class AttackState(param.Parameterized):
    """PGD at the current point: δ kept across steps, the models on x + αδ."""

    model = param.Selector(doc="Attacked model")
    target = Target(default=classes.UNTARGETED, doc="Target class index, or 'none': suppress the original prediction")
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
        self._generation = 0  # bumped by reset: a run's late results for an older attack are dropped
        state.param.watch(self._point_changed, ["changed"])
        self.param.watch(self.reset, ["model", "target", "eps", "norm"])

    def _point_changed(self, *_):
        """A new model input (another point, a new live result) starts a new attack."""
        if self.state.image_key() != self._image_key:
            self._image_key = self.state.image_key()
            self.reset()

    def reset(self, *_):
        self._generation += 1  # a run still going stops at its next step, and what it sends back is dropped
        self.delta, self.label, self.logits = None, None, None
        self.param.update(done=0, status="")

    def run(self, steps: int, progress: Callable[[int], None] | None = None) -> None:
        """``steps`` PGD steps (one task each, on the engine when there is one), then
        the alpha grid, waited for (scripts, tests; a served viewer uses :meth:`start`)."""
        job = self._job(steps)
        if job is not None:
            self._steps(job, lambda callback: callback(), progress)

    def start(self, steps: int, deliver: Callable[[Callable[[], Any]], Any], progress: Callable[[int], None] | None = None,
              finished: Callable[[], None] | None = None) -> bool:
        """Run :meth:`run`'s steps in a thread of the engine's (or the viewer's)
        :class:`~perturber.viewer.live.Work`, counted against its bound; each
        step's result comes back through ``deliver(callback)`` (thread-safe:
        ``Document.add_next_tick_callback``). False, with the reason in
        :attr:`status`, when there is nothing to attack or the work is refused."""
        job = self._job(steps)
        if job is None:
            return False
        work = self.state.engine if self.state.engine is not None else LOCAL
        try:
            work.start(f"{self.state.session}/attack", self._steps, job, deliver, progress, finished)
        except EngineError as exc:
            self.status = f"attack refused: {exc}"
            return False
        self.status = f"running {steps} step(s)…"
        return True

    def _job(self, steps: int) -> dict[str, Any] | None:
        """What a run needs, copied (the thread never reads the state), or None (status says why)."""
        image = self.state.image()
        if image is None:
            self.status = f"nothing to attack here ({self.state.missing()})"
            return None
        delta = self.delta if self.delta is not None else np.zeros((3, *image.shape[:2]), dtype=np.float32)
        return dict(steps=steps, image=image, delta=delta, label=self.label, model=self.model, eps=float(self.eps),
                    norm=self.norm, target=None if self.target == classes.UNTARGETED else int(self.target), generation=self._generation,
                    engine=self.state.engine)

    def _steps(self, job: dict[str, Any], deliver: Callable[[Callable[[], Any]], Any],
               progress: Callable[[int], None] | None, finished: Callable[[], None] | None = None) -> None:
        """The step loop (in a thread when started): each step's δ goes back through ``deliver``."""
        delta, label, engine, steps = job["delta"], job["label"], job["engine"], job["steps"]
        error = None
        try:
            for i in range(steps):
                if self._generation != job["generation"]:
                    return  # reset, or a new point: nobody wants the rest
                last = i == steps - 1
                args = (job["image"], delta, job["model"], job["eps"], job["norm"], job["target"], label, 1,
                        ALPHAS if last else (), self.models if last else [])
                delta, label, logits = engine.call(attack_task, *args) if engine is not None else attack_task(*args)
                deliver(functools.partial(self._stepped, job["generation"], delta, label, logits if last else None,
                                          i + 1, progress))
        except (EngineError, ValueError) as exc:
            error = one_line(exc)
        except Exception as exc:
            error = one_line(exc, typed=True)
        finally:
            deliver(functools.partial(self._finished, job["generation"], error, finished))

    def _stepped(self, generation: int, delta: np.ndarray, label: int, logits: np.ndarray | None, i: int,
                 progress: Callable[[int], None] | None) -> None:
        if generation != self._generation:
            return
        self.delta, self.label = delta, label
        if logits is not None:
            self.logits = logits
        self.done += 1
        if progress is not None:
            progress(i)

    def _finished(self, generation: int, error: str | None, finished: Callable[[], None] | None) -> None:
        if finished is not None:
            finished()
        if generation != self._generation:
            return
        if error is not None:
            self.status = f"attack failed: {error}"
            return
        flat = self.delta.reshape(-1)
        size = float(np.abs(flat).max()) if self.norm == "linf" else float(np.linalg.norm(flat))
        where = "on the engine" if self.state.engine is not None else "in the viewer"
        self.status = f"{self.done} step(s) {where}; |δ| = {size:.4g} (ε = {self.eps:.4g})"
