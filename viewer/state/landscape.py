"""What the response landscape shows: a class's probability (a class set's: the
sum over its classes) along one axis (curves, one per compared model) and over
two axes (a heatmap of the left model).

A control change reads the logits of the heatmap's cells, one stored chunk
per cell (all of a chunk's models and image factors come with it): the
default heatmap therefore puts an axis that lies whole inside a chunk (an
image factor, e.g. hue) on its rows when the cube has one, and the curves
are taken from the heatmap's cells when their axis is one of its axes.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Sequence

import numpy as np
import param

from perturber.pipeline import factors, names
from perturber.viewer import classes, stores
from perturber.viewer.state.cube import CubeState

__all__ = ["Landscape", "target_probability"]


def target_probability(logits: np.ndarray, target: int | Sequence[int]) -> np.ndarray:
    """(...) the softmax probability of class ``target`` (of a list of classes: their
    sum, a class set's probability) from (..., class) logits (float32 arithmetic;
    NaN where the logits are NaN)."""
    z = np.array(logits, dtype=np.float32)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: not computed
        z -= np.nanmax(z, axis=-1, keepdims=True)
    np.exp(z, out=z)
    chosen = z[..., target] if isinstance(target, (int, np.integer)) else z[..., list(target)].sum(axis=-1)
    return chosen / z.sum(axis=-1)


class Target(classes.ClassChoice):
    """The landscape's class: an index, a class set (its summed probability) or :data:`~perturber.viewer.classes.TOP`."""

    special = (classes.TOP,)
    sets = True


class Landscape(param.Parameterized):
    """The landscape's settings, and the probabilities it shows at the current point."""

    target = Target(default=classes.TOP, doc="ImageNet class index, class set ('@dogs') or 'top' (the left model's top class here)")
    axis = param.Selector(doc="Axis of the curves")
    x = param.Selector(doc="Heatmap columns")
    y = param.Selector(doc="Heatmap rows")

    def __init__(self, state: CubeState, **params: Any):
        super().__init__(**params)
        self.state = state
        self._cache: dict[tuple, np.ndarray] = {}  # probabilities shown lately
        self._logit_blocks: dict[tuple, np.ndarray] = {}  # the last logits read (a heatmap's: ~10 MB)
        self._lock = threading.Lock()
        numeric = [a for a in state.axes if factors.get(a).numeric] or state.axes
        chunk = dict(zip(state.axes, state.ds[names.DONE].attrs["chunk_shape"]))
        self.param.axis.objects = state.axes
        self.param.x.objects = state.axes
        self.param.y.objects = state.axes
        self.axis = numeric[0]
        self.x = numeric[0]
        others = [a for a in numeric if a != self.x] + [a for a in state.axes if a != self.x]
        inside = [a for a in others if chunk[a] >= state.ds.sizes[a] >= 2]  # read with the x axis' chunks
        self.y = (inside or others or [self.x])[0]

    def target_class(self) -> int | None:
        """The one class shown (the top class here for ``top``); None for a class
        set, or when the top class here cannot be read."""
        if self.target != classes.TOP:
            return None if isinstance(self.target, str) else self.target
        top = self.state.top5(self.state.model_a)
        if top is None:
            return None
        return self.state.analysis.class_names.index(top[0][0])

    def target_classes(self) -> list[int] | None:
        """The classes whose summed probability is shown (one, or a class set's); None as :meth:`target_class`."""
        if self.target == classes.TOP:
            one = self.target_class()
            return None if one is None else [one]
        return classes.indices(self.target)

    def target_label(self) -> str | None:
        """The shown class as plots name it: ``golden retriever``, ``any dog breed``; None: nothing to show."""
        if isinstance(self.target, str) and self.target != classes.TOP:
            return classes.SET_LABELS.get(self.target, self.target)
        one = self.target_class()
        return None if one is None else str(self.state.analysis.class_names[one])

    def _key(self, free: list[str]) -> tuple:
        s = self.state
        return tuple(free), tuple((a, i) for a, i in zip(s.axes, s.index()) if a not in free)

    def _logits(self, free: list[str]) -> np.ndarray:
        """(*free, model, class) logits with ``free`` axes varying, the others at the
        current point (NaN where not computed or damaged); the last few reads kept."""
        s = self.state
        key = self._key(free)
        found = self._logit_blocks.get(key)
        if found is None:  # moving along a shown axis redraws the same cells: read them once
            sel = dict(key[1])
            logits = stores.read_values(s.path, s.cube, names.LOGITS, sel, on_bad=np.nan)  # the chunks of these cells
            dims = [d for d in s.ds[names.LOGITS].dims if d not in sel]
            found = np.transpose(logits, [dims.index(d) for d in (*free, names.MODEL, names.CLASS)])
            with self._lock:  # read in a thread too (:meth:`read`)
                while len(self._logit_blocks) >= 2:
                    self._logit_blocks.pop(next(iter(self._logit_blocks)))
                self._logit_blocks[key] = found
        return found

    def blocks(self) -> list[list[str]]:
        """The free axes of each block of logits the current settings show."""
        heat = [self.y, self.x] if self.x != self.y else []
        return ([heat] if heat else []) + ([] if self.axis in heat else [[self.axis]])

    def unread(self) -> int:
        """Stored chunks the current settings need that are not read yet."""
        s = self.state
        chunk = dict(zip(s.axes, s.ds[names.DONE].attrs["chunk_shape"]))
        return sum(int(np.prod([-(-s.ds.sizes[a] // chunk[a]) for a in free]))
                   for free in self.blocks() if self._key(free) not in self._logit_blocks)

    def read(self) -> None:
        """Read what the current settings show (in a thread: :class:`LandscapePanel` does for large heatmaps)."""
        for free in self.blocks():
            self._logits(free)

    def _probs(self, free: list[str], model: str, along: str | None = None) -> np.ndarray | None:
        """(*free) probability of the target class for ``model`` with ``free`` axes
        varying, the others at the current point; ``along``: only that one of the
        free axes varies, the others at the current point too (NaN where not computed)."""
        target = self.target_classes()
        if target is None:
            return None
        s = self.state
        here = dict(zip(s.axes, s.index()))
        at = tuple(slice(None) if along in (None, a) else here[a] for a in free)
        fixed = [a for a in s.axes if (a not in free if along is None else a != along)]  # what the values depend on
        key = (tuple(free), along, model, tuple(target), tuple((a, here[a]) for a in fixed))
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = target_probability(self._logits(free)[at + (self._model(model),)],
                                                  target[0] if len(target) == 1 else target)
        return self._cache[key]

    def _model(self, model: str) -> int:
        return self.state.analysis.models.index(model)

    def curves(self) -> dict[str, tuple[list, np.ndarray]] | None:
        """model → (axis values, probabilities); NaN where not computed. When the
        curve axis is one of the heatmap's, from the heatmap's cells (no read)."""
        s = self.state
        free = [self.y, self.x] if self.x != self.y and self.axis in (self.x, self.y) else [self.axis]
        out = {}
        for model in dict.fromkeys([s.model_a, s.model_b]):
            p = self._probs(free, model, along=self.axis)
            if p is None:
                return None
            out[model] = (list(s.param[self.axis].objects), p)
        return out

    def heatmap(self) -> tuple[list, list, np.ndarray] | None:
        """(x values, y values, probabilities (y, x)) for the left model."""
        if self.x == self.y:
            return None
        p = self._probs([self.y, self.x], self.state.model_a)
        if p is None:
            return None
        return list(self.state.param[self.x].objects), list(self.state.param[self.y].objects), p
