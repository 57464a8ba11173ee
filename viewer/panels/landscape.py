"""The response landscape: a class's probability along one axis for both
models (curves), and over two axes as a heatmap whose cells move the controls."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn

from perturber.viewer import widgets
from perturber.viewer.panels import bokeh_plots
from perturber.viewer.state import CubeState, Landscape, Settled

__all__ = ["LandscapePanel", "label"]


def label(value) -> str:
    """A grid value as the plots label it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


class LandscapePanel:
    """Curves and heatmap of :class:`~perturber.viewer.state.Landscape`, redrawn
    when the point has settled; clicking a heatmap cell goes there."""

    def __init__(self, state: CubeState, settled: Settled):
        bokeh_plots()
        self.state, self.settled = state, settled
        self.land = Landscape(state)
        self.tap = hv.streams.Tap(x=None, y=None)
        self.tap.add_subscriber(self._on_tap)
        land = self.land
        controls = pn.Row(
            widgets.int_input(land, "target", "class (-1: top class here)", width=170),
            widgets.select(land, "axis", "curve axis", width=120),
            widgets.select(land, "x", "heatmap x", width=120),
            widgets.select(land, "y", "heatmap y", width=120),
        )
        heatmap = hv.DynamicMap(self._heatmap, streams=[
            self.tap,
            hv.streams.Params(settled, ["tick"]),
            hv.streams.Params(land, ["target", "x", "y"]),
        ])
        self.view = pn.Column(controls, pn.Row(pn.bind(self._curves, land.param.axis),
                                               pn.pane.HoloViews(heatmap, css_classes=["pt-heatmap"])))

    def __panel__(self) -> pn.Column:
        return self.view

    def _curve_frame(self, **_):
        # Always two curves (left, right) with NaN where there is nothing: the
        # plot then updates its data in place as the point moves.
        state, land = self.state, self.land
        values = state.param[land.axis].objects
        data = land.curves()
        target = land.target_class()
        nan = np.full(len(values), np.nan)
        plots = []
        for side, model in (("left", state.model_a), ("right", state.model_b)):
            p = data[model][1] if data is not None else nan
            plots.append(hv.Curve((list(range(len(values))), p), "index", "probability", label=f"{side}: {model}"))
        here = values.index(getattr(state, land.axis))
        title = f"{state.missing()} here" if target is None else f"p({state.analysis.class_names[target]}) along {land.axis}"
        return (hv.Overlay(plots) * hv.VLine(here).opts(color="black", line_dash="dashed")).opts(title=title)

    def _curves(self, axis: str) -> pn.pane.HoloViews:
        values = self.state.param[axis].objects
        ticks = [(i, label(v)) for i, v in enumerate(values)]
        dynamic = hv.DynamicMap(self._curve_frame, streams=[hv.streams.Params(self.settled, ["tick"]),
                                                            hv.streams.Params(self.land, ["target"])])
        return pn.pane.HoloViews(dynamic.opts(hv.opts.Curve(tools=["hover"]), hv.opts.Overlay(
            xticks=ticks, xlabel=axis, ylim=(0, 1), width=420, height=240, legend_position="top_left")),
            css_classes=["pt-curves"])

    def _heatmap(self, **_):
        # The same cells every time (NaN where there is nothing to show): Bokeh
        # updates its data source in place and rejects columns changing length.
        state, land = self.state, self.land
        xs, ys = state.param[land.x].objects, state.param[land.y].objects
        data = land.heatmap()
        p = data[2] if data is not None else np.full((len(ys), len(xs)), np.nan)
        target = land.target_class()
        if land.x == land.y:
            title = "choose two different axes"
        elif target is None:
            title = f"{state.missing()} here"
        else:
            title = f"p({state.analysis.class_names[target]}), {state.model_a}: click a cell to go there"
        cells = [(label(x), label(y), float(p[j, i])) for j, y in enumerate(ys) for i, x in enumerate(xs)]
        return hv.HeatMap(cells, [hv.Dimension("hx", label=land.x), hv.Dimension("hy", label=land.y)], "probability").opts(
            title=title, cmap="viridis", clim=(0, 1), colorbar=True, width=460, height=280, tools=["tap", "hover"])

    def _on_tap(self, x=None, y=None) -> None:
        if x is None or y is None:
            return
        moves = {}
        for axis, text in ((self.land.x, x), (self.land.y, y)):
            for value in self.state.param[axis].objects:
                if label(value) == str(text):
                    moves[axis] = value
        self.state.param.update(**moves)  # one 'changed' for both axes
