"""The response landscape: a class's probability along one axis for both
models (curves), and over two axes as a heatmap whose cells move the controls.

Both are plain Bokeh figures made once per session; a new point, target or
axis replaces their data sources' columns in place (one small message each),
so a control change costs the data it shows, not a new plot.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import panel as pn
from bokeh.core.property.vectorization import value
from bokeh.models import ColorBar, ColumnDataSource, FactorRange, FixedTicker, HoverTool, LinearColorMapper, Span, TapTool
from bokeh.palettes import Category10, Viridis256
from bokeh.plotting import figure

from perturber.viewer import classes, sessions, widgets
from perturber.viewer.live import LOCAL, EngineError
from perturber.viewer.state import CubeState, Landscape, Settled

__all__ = ["LandscapePanel", "label"]

TOOLS = "pan,wheel_zoom,box_zoom,save,reset"
#: Served, a change needing more stored chunks than this (a heatmap over two axes outside the chunk,
#: e.g. yaw x pitch: 5,000 at 10M samples, about a second) is read off the event loop.
READ_AT_ONCE = 400


def label(value) -> str:
    """A grid value as the plots label it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


class LandscapePanel:
    """Curves and heatmap of :class:`~perturber.viewer.state.Landscape`, redrawn
    when the point has settled; clicking a heatmap cell goes there."""

    def __init__(self, state: CubeState, settled: Settled):
        self.state, self.settled = state, settled
        self.land = land = Landscape(state)
        self.read_at_once = READ_AT_ONCE
        self.target_field = classes.ClassField(land, "target", "class (or class set)", width=250,
                                               css_classes=["pt-landscape-class"])
        controls = pn.Row(
            self.target_field,
            widgets.select(land, "axis", "curve axis", width=120),
            widgets.select(land, "x", "heatmap x", width=120),
            widgets.select(land, "y", "heatmap y", width=120),
        )
        self.here = Span(location=0, dimension="height", line_color="black", line_dash="dashed")  # the curves' current point
        self.curves, self.curve_source = self._curves_figure()
        self.heat, self.heat_source = self._heatmap_figure()
        self._cells: list[tuple[Any, Any]] = []  # (x value, y value) of each heatmap cell, in the source's order
        self.draw_curves()
        self.draw_heatmap()
        settled.param.watch(self._redraw, ["tick"])
        land.param.watch(self._redraw, ["target", "axis", "x", "y"])
        self.curves.css_classes, self.heat.css_classes = ["pt-curves"], ["pt-heatmap"]  # on the figures' own elements
        self.view = pn.Column(controls, pn.Row(pn.pane.Bokeh(self.curves), pn.pane.Bokeh(self.heat)))


    def shared(self) -> list[tuple[Landscape, dict[str, str]]]:
        """The controls a link holds (:func:`perturber.viewer.app.share_panel`): parameter → URL query name."""
        return [(self.land, {"target": "class", "axis": "curve", "x": "heat_x", "y": "heat_y"})]
    def __panel__(self) -> pn.Column:
        return self.view

    def _redraw(self, *_: Any, deliver: Callable[[Callable[[], Any]], Any] | None = None) -> None:
        """Both plots, at once when their cells are read or few; served (or given
        ``deliver``: how a thread hands a callback to the event loop), more than
        :attr:`read_at_once` chunks are read in a thread of :data:`~perturber.viewer.live.LOCAL`
        (the event loop stays free for every session), and drawn when read."""
        unread, deliver = self.land.unread(), deliver or sessions.on_loop()
        if unread <= self.read_at_once or deliver is None:
            self.draw_curves()
            self.draw_heatmap()
            return
        self.heat.title.text = self.curves.title.text = f"reading {unread:,} stored chunks…"
        try:
            LOCAL.start(f"{self.state.session}/landscape", self._read, deliver)
        except EngineError as exc:  # a read of this session still runs: it redraws when done (and reads again if moved)
            if "already running" not in str(exc):
                self.heat.title.text = self.curves.title.text = f"not read: {exc}"

    def _read(self, deliver: Callable[[Callable[[], Any]], Any]) -> None:
        try:
            self.land.read()
        except Exception as exc:
            line = sessions.failure("reading the response landscape", exc)
            deliver(lambda: self.heat.title.update(text=line))
            return
        deliver(self._redraw)

    # ------------------------------------------------------------ curves

    def _curves_figure(self) -> tuple[Any, ColumnDataSource]:
        source = ColumnDataSource({"index": [], "left": [], "right": []})
        fig = figure(width=420, height=240, y_range=(0, 1), tools=TOOLS, y_axis_label="probability")
        for side, color in (("left", Category10[3][0]), ("right", Category10[3][1])):
            fig.line("index", side, source=source, color=color, line_width=2, legend_label=side)
        fig.add_tools(HoverTool(tooltips=[("index", "@index"), ("left", "@left{0.000}"), ("right", "@right{0.000}")]))
        fig.add_layout(self.here)
        fig.legend.location = "top_left"
        fig.xaxis.ticker = FixedTicker(ticks=[])
        return fig, source

    def draw_curves(self, *_: Any) -> None:
        """Both models' probability of the target (a set's: summed) along the curve axis (NaN where there is nothing)."""
        state, land, fig = self.state, self.land, self.curves
        values = state.param[land.axis].objects
        data = land.curves()
        nan = np.full(len(values), np.nan)
        columns = {"index": list(range(len(values)))}
        for side, model, item in zip(("left", "right"), (state.model_a, state.model_b), fig.legend[0].items):
            columns[side] = data[model][1] if data is not None else nan
            item.label = value(f"{side}: {model}")
        self.curve_source.data = columns
        fig.xaxis.ticker.ticks = list(range(len(values)))
        fig.xaxis.major_label_overrides = {i: label(v) for i, v in enumerate(values)}
        fig.xaxis.axis_label = land.axis
        self.here.location = values.index(getattr(state, land.axis))
        target = land.target_label()
        fig.title.text = f"{state.missing()} here" if target is None else f"p({target}) along {land.axis}"

    # ------------------------------------------------------------ heatmap

    def _heatmap_figure(self) -> tuple[Any, ColumnDataSource]:
        source = ColumnDataSource({"hx": [], "hy": [], "probability": []})
        fig = figure(width=560, height=280, x_range=FactorRange(), y_range=FactorRange(), tools="save,reset")
        mapper = LinearColorMapper(palette=Viridis256, low=0, high=1, nan_color="rgba(0, 0, 0, 0)")
        fig.rect("hx", "hy", 1, 1, source=source, fill_color={"field": "probability", "transform": mapper},
                 line_color=None, nonselection_fill_alpha=1.0)
        fig.add_tools(TapTool(), HoverTool(tooltips=[("x", "@hx"), ("y", "@hy"), ("probability", "@probability{0.000}")]))
        fig.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
        fig.grid.visible = False
        source.selected.on_change("indices", self._on_tap)
        return fig, source

    def draw_heatmap(self, *_: Any) -> None:
        """The left model's probability of the target over the heatmap's two axes
        (the same cells every time the axes stay: NaN where there is nothing)."""
        state, land, fig = self.state, self.land, self.heat
        xs, ys = state.param[land.x].objects, state.param[land.y].objects
        data = land.heatmap()
        p = data[2] if data is not None else np.full((len(ys), len(xs)), np.nan)
        target = land.target_label()
        if land.x == land.y:
            fig.title.text = "choose two different axes"
        elif target is None:
            fig.title.text = f"{state.missing()} here"
        else:
            fig.title.text = f"p({target}), {state.model_a}: click a cell to go there"
        self._cells = [(x, y) for y in ys for x in xs]
        fig.x_range.factors = list(dict.fromkeys(label(x) for x in xs))
        fig.y_range.factors = list(dict.fromkeys(label(y) for y in ys))
        fig.xaxis.axis_label, fig.yaxis.axis_label = land.x, land.y
        self.heat_source.data = {"hx": [label(x) for x, _ in self._cells], "hy": [label(y) for _, y in self._cells],
                                 "probability": np.asarray(p, dtype=float).ravel()}

    def _on_tap(self, _attr: str, _old: list[int], new: list[int]) -> None:
        if not new or new[0] >= len(self._cells):
            return
        x, y = self._cells[new[0]]
        self.heat_source.selected.indices = []
        moves = {self.land.x: x} if self.land.x == self.land.y else {self.land.x: x, self.land.y: y}
        self.state.param.update(**moves)  # one 'changed' for both axes
