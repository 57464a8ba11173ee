"""Model against model over every sample: each model's probability of the
object's classes, counted into a grid of pixels (an image shaded by histogram
equalisation, as datashader does), the current point marked.

The counts of a model pair are computed once per process (one pass over the
expected-class probabilities, a bincount: about 0.1 s per 10M samples) and
shared by its sessions; zooming counts the visible range again. A new point
moves only the marker.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import panel as pn
from bokeh.events import RangesUpdate
from bokeh.models import ColumnDataSource, EqHistColorMapper
from bokeh.palettes import Blues256
from bokeh.plotting import figure

from perturber.viewer import stores
from perturber.viewer.state import CubeState, Settled

__all__ = ["ScatterPanel", "bin_counts", "PIXELS"]

PIXELS = 300  # the image's width and height


def bin_counts(x: np.ndarray, y: np.ndarray, x_range: tuple[float, float], y_range: tuple[float, float],
               width: int = PIXELS, height: int = PIXELS) -> np.ndarray:
    """(height, width) float: how many of the points (x, y) (arrays of one shape) fall in each pixel of
    the rectangle ``x_range`` × ``y_range`` (row 0 at the bottom), NaN where none.
    A pixel holds [left, right) and [bottom, top); the rectangle's right and top
    edges belong to its last pixels; NaN coordinates and points outside are left out."""
    (x0, x1), (y0, y1) = x_range, y_range
    col = (x - np.float32(x0)) * np.float32(width / (x1 - x0))  # float32: one pass each over millions of samples
    row = (y - np.float32(y0)) * np.float32(height / (y1 - y0))
    with np.errstate(invalid="ignore"):
        inside = (col >= 0) & (col <= width) & (row >= 0) & (row <= height)  # NaN: outside
    col = np.minimum(col[inside].astype(np.int64), width - 1)
    row = np.minimum(row[inside].astype(np.int64), height - 1)
    counts = np.bincount((row * width + col).ravel(), minlength=width * height).reshape(height, width).astype(np.float64)
    counts[counts == 0] = np.nan
    return counts


@functools.lru_cache(maxsize=32)
def _counts(path: str, cube: str, a: int, b: int, x_range: tuple[float, float], y_range: tuple[float, float]) -> np.ndarray:
    """:func:`bin_counts` of the expected-class probabilities of models ``a`` and ``b``, once per process."""
    probs = stores.analysis(path, cube).expected_probability
    return bin_counts(probs[..., a], probs[..., b], x_range, y_range)  # strided views: no copy of millions of samples


@functools.lru_cache(maxsize=32)
def _computed(path: str, cube: str, a: int, b: int) -> int:
    probs = stores.analysis(path, cube).expected_probability
    return int((np.isfinite(probs[..., a]) & np.isfinite(probs[..., b])).sum())


class ScatterPanel:
    """Counting every sample is redone only when the compared models change (or
    the view is zoomed); the marker of the current point moves in place once
    the point has settled."""

    def __init__(self, state: CubeState, settled: Settled):
        self.state = state
        self.image = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self.marker = ColumnDataSource({"x": [np.nan], "y": [np.nan]})
        fig = figure(width=380, height=360, x_range=(0, 1), y_range=(0, 1), tools="pan,wheel_zoom,box_zoom,save,reset",
                     match_aspect=False)
        mapper = EqHistColorMapper(palette=list(reversed(Blues256))[40:], nan_color="rgba(0, 0, 0, 0)")
        fig.image("image", "x", "y", "dw", "dh", source=self.image, color_mapper=mapper)
        fig.scatter("x", "y", source=self.marker, marker="x", size=10, line_width=3, color="red")
        fig.grid.visible = False
        fig.on_event(RangesUpdate, self._zoomed)
        self.fig = fig
        self._pair: tuple[str, str] | None = None
        self._range = ((0.0, 1.0), (0.0, 1.0))
        self._draw()
        fig.css_classes = ["pt-scatter"]  # on the figure's own element
        self.pane = pn.pane.Bokeh(fig)
        settled.param.watch(self._draw, ["tick"])

    def __panel__(self) -> pn.pane.Bokeh:
        return self.pane

    def _indices(self) -> tuple[int, int]:
        models = self.state.analysis.models
        return models.index(self.state.model_a), models.index(self.state.model_b)

    def _draw(self, *_: Any) -> None:
        state = self.state
        a, b = self._indices()
        pair = (state.model_a, state.model_b)
        if pair != self._pair:
            self._pair = pair
            self._shade()
            self.fig.xaxis.axis_label = f"p(object's classes), {state.model_a}"
            self.fig.yaxis.axis_label = f"p(object's classes), {state.model_b}"
            self.fig.title.text = f"all {_computed(state.path, state.cube, a, b)} computed samples; x: current point"
        here = state.analysis.expected_probability[state.index()]
        self.marker.data = {"x": [float(here[a])], "y": [float(here[b])]}

    def _shade(self) -> None:
        a, b = self._indices()
        (x0, x1), (y0, y1) = self._range
        counts = _counts(self.state.path, self.state.cube, a, b, (x0, x1), (y0, y1))
        self.image.data = {"image": [counts], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}

    def _zoomed(self, event: Any) -> None:
        if None in (event.x0, event.x1, event.y0, event.y1) or event.x1 <= event.x0 or event.y1 <= event.y0:
            return
        view = ((float(event.x0), float(event.x1)), (float(event.y0), float(event.y1)))
        if view != self._range:
            self._range = view
            self._shade()
