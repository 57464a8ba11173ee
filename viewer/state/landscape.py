"""What the response landscape shows: a class's probability along one axis
(curves, one per compared model) and over two axes (a heatmap of the left model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import param

from perturber.pipeline import factors, names
from perturber.pipeline.analysis import softmax
from perturber.viewer import stores
from perturber.viewer.state.cube import CubeState

__all__ = ["Landscape"]


class Landscape(param.Parameterized):
    """The landscape's settings, and the probabilities it shows at the current point."""

    target = param.Integer(default=-1, bounds=(-1, 999), doc="ImageNet class (-1: the left model's top class here)")
    axis = param.Selector(doc="Axis of the curves")
    x = param.Selector(doc="Heatmap columns")
    y = param.Selector(doc="Heatmap rows")

    def __init__(self, state: CubeState, **params: Any):
        super().__init__(**params)
        self.state = state
        self._cache: dict[tuple, np.ndarray] = {}
        numeric = [a for a in state.axes if factors.get(a).numeric] or state.axes
        self.param.axis.objects = state.axes
        self.param.x.objects = state.axes
        self.param.y.objects = state.axes
        self.axis = numeric[0]
        self.x = numeric[0]
        others = [a for a in numeric if a != self.x] + [a for a in state.axes if a != self.x]
        self.y = others[0] if others else self.x

    def target_class(self) -> int | None:
        if self.target >= 0:
            return self.target
        top = self.state.top5(self.state.model_a)
        if top is None:
            return None
        return self.state.analysis.class_names.index(top[0][0])

    def _probs(self, free: list[str], model: str) -> np.ndarray | None:
        """Probability of the target class with ``free`` axes varying, the others at the current point."""
        target = self.target_class()
        if target is None:
            return None
        s = self.state
        sel = {a: i for a, i in zip(s.axes, s.index()) if a not in free}
        sel[names.MODEL] = s.analysis.models.index(model)
        key = (tuple(free), target, tuple(sel.items()))
        if key not in self._cache:  # moving along a shown axis redraws the same values: read them once
            if len(self._cache) > 32:
                self._cache.clear()
            logits = stores.tolerant(s.ds[names.LOGITS].isel(**sel).transpose(*free, names.CLASS))  # damaged: NaN
            self._cache[key] = softmax(logits)[..., target]
        return self._cache[key]

    def curves(self) -> dict[str, tuple[list, np.ndarray]] | None:
        """model → (axis values, probabilities); NaN where not computed."""
        out = {}
        for model in dict.fromkeys([self.state.model_a, self.state.model_b]):
            p = self._probs([self.axis], model)
            if p is None:
                return None
            out[model] = (list(self.state.param[self.axis].objects), p)
        return out

    def heatmap(self) -> tuple[list, list, np.ndarray] | None:
        """(x values, y values, probabilities (y, x)) for the left model."""
        if self.x == self.y:
            return None
        p = self._probs([self.y, self.x], self.state.model_a)
        if p is None:
            return None
        return list(self.state.param[self.x].objects), list(self.state.param[self.y].objects), p
