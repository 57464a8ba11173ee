"""Model against model over every sample (datashader): each model's probability
of the object's classes, the current point marked."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
from holoviews.operation.datashader import dynspread, rasterize

from perturber.viewer.panels import bokeh_plots
from perturber.viewer.state import CubeState, Settled

__all__ = ["ScatterPanel"]


class ScatterPanel:
    """Shading every sample is redone only when the compared models change; the
    marker of the current point is a small overlay updated in place once the point has settled."""

    def __init__(self, state: CubeState, settled: Settled):
        bokeh_plots()
        self.state, self.settled = state, settled
        self.probs = state.analysis.expected_probability  # (*axes, model), once per process
        self._pair = (state.model_a, state.model_b)
        self.pane = pn.pane.HoloViews(self._plot(), css_classes=["pt-scatter"])
        state.param.watch(self._update, ["changed"])

    def __panel__(self) -> pn.pane.HoloViews:
        return self.pane

    def _update(self, *_) -> None:
        pair = (self.state.model_a, self.state.model_b)
        if pair != self._pair:
            self._pair = pair
            self.pane.object = self._plot()

    def _marker(self, **_):
        models = self.state.analysis.models
        here = self.probs[self.state.index()]
        a, b = models.index(self.state.model_a), models.index(self.state.model_b)
        return hv.Points([(here[a], here[b])]).opts(color="red", size=10, marker="x", line_width=3)

    def _plot(self):
        state, models = self.state, self.state.analysis.models
        a, b = models.index(state.model_a), models.index(state.model_b)
        xa, xb = self.probs[..., a].ravel(), self.probs[..., b].ravel()
        keep = ~(np.isnan(xa) | np.isnan(xb))
        points = hv.Points((xa[keep], xb[keep]), [hv.Dimension("left", label=f"p(object's classes), {state.model_a}"),
                                                  hv.Dimension("right", label=f"p(object's classes), {state.model_b}")])
        shaded = dynspread(rasterize(points, width=300, height=300, x_range=(0, 1), y_range=(0, 1))).opts(
            cmap="Blues", cnorm="eq_hist", colorbar=False)
        here = hv.DynamicMap(self._marker, streams=[hv.streams.Params(self.settled, ["tick"])])
        return (shaded * here).opts(width=380, height=360, xlim=(0, 1), ylim=(0, 1),
                                    title=f"all {int(keep.sum())} computed samples; x: current point")
