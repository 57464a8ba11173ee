"""The controls: one widget per axis of the cube, grouped as in the original
tool, the fixed factors, and live compute off the grid."""

from __future__ import annotations

from html import escape
from typing import Any

import panel as pn

from perturber.pipeline import factors
from perturber.viewer import html, sessions, widgets
from perturber.viewer.state import CubeState

__all__ = ["GROUPS", "ControlsPanel"]

#: The control groups, in the order the original tool shows them; every factor's ``group`` is one of them.
GROUPS = ["Camera", "Lighting & shading", "Object & shape", "Background", "Colour", "Frequency", "Spatial", "Adversarial"]


class ControlsPanel:
    """Axis widgets snapping to the grid values, grouped; fixed factors; live compute."""

    def __init__(self, state: CubeState):
        self.state = state
        self.view = pn.Column(*self._sections(), width=320)
        # Served, live compute's controls come just after the first paint (the grid's come with it).
        sessions.defer(-1, lambda: self.view.append(self._live_controls()))

    def __panel__(self) -> pn.Column:
        return self.view

    def widget(self, name: str) -> Any:
        """The widget of axis ``name`` (for tests and scripts), or None."""
        return self._widgets.get(name)

    def _sections(self) -> list[Any]:
        """Per group, a heading (with the factors it holds fixed) and its axis widgets;
        then the factors fixed at their defaults, folded. Headings are HTML, not
        Cards: a Card costs ~25 ms a session, this whole column ~40 ms."""
        state = self.state
        sections: list[Any] = [html.pane("<div class='pt-group'>Models</div>", sizing_mode="stretch_width"),
                               widgets.select(state, "model_a", "left model"), widgets.select(state, "model_b", "right model"),
                               widgets.select(state, "score", "show")]
        self._widgets: dict[str, Any] = {}
        for group in GROUPS:
            rows: list[Any] = []
            fixed: list[str] = []
            for name, f in factors.FACTORS.items():
                if f.group != group:
                    continue
                if name in state.axes:
                    if f.numeric:
                        widget = widgets.grid_slider(state, name, list(state.param[name].objects), name)
                    else:
                        widget = widgets.select(state, name, name)
                    self._widgets[name] = widget
                    rows.append(widget)
                elif name in state.fixed and state.fixed[name] != f.default:
                    fixed.append(f"<code>{escape(name)}</code> = {escape(str(state.fixed[name]))} <i>(fixed)</i>")
            if rows or fixed:
                sections.append(html.pane(f"<div class='pt-group'>{group}</div>" + "<br>".join(fixed),
                                          sizing_mode="stretch_width"))
                sections.extend(rows)
        defaults = [f"<code>{escape(n)}</code> = {escape(str(state.fixed[n]))}" for n, f in factors.FACTORS.items()
                    if n in state.fixed and state.fixed[n] == f.default and n not in ("expression",)]
        sections.append(html.pane(f"<details class='pt-small'><summary class='pt-group'>Fixed at their defaults</summary>"
                                  f"{'<br>'.join(defaults)}</details>", sizing_mode="stretch_width"))
        return sections

    def _live_controls(self) -> pn.Column:
        """Off the grid: any numeric factor (an axis or a fixed one) at any value of
        its domain, computed by the on-demand engine and marked LIVE."""
        state = self.state
        toggle = widgets.checkbox(state, "live_on", "compute live (off the grid)", disabled=state.engine is None,
                                  css_classes=["pt-live-toggle"])
        factor = widgets.select(state, "live_factor", "factor")

        def bounds(name: str) -> tuple[float, float]:
            domain = factors.get(name).domain
            return float(domain.lo), float(domain.hi)

        lo, hi = bounds(state.live_factor)
        slider = pn.widgets.FloatSlider(label="value", start=lo, end=hi, value=min(max(state.live_value, lo), hi),
                                        step=(hi - lo) / 1000, css_classes=["pt-live-slider"])
        slider.param.watch(lambda e: setattr(state, "live_value", float(e.new)), "value_throttled")

        def on_factor(event):  # the state has already moved live_value to the factor's current value
            lo, hi = bounds(event.new)
            slider.param.update(start=lo, end=hi, step=(hi - lo) / 1000, value=min(max(state.live_value, lo), hi))

        state.param.watch(on_factor, "live_factor")
        status = html.pane(self._status())
        state.param.watch(lambda *_: setattr(status, "object", self._status()), ["changed"])
        note = ("" if state.engine is not None else
                "<div class='pt-live-off'>Live compute is off: start the viewer with "
                "<code>--engine local</code> (or the address of a Dask scheduler). Grid points work as before.</div>")
        return pn.Column(html.pane(f"<div class='pt-group'>Live (off the grid)</div>{note}", sizing_mode="stretch_width"),
                         toggle, factor, slider, status, sizing_mode="stretch_width")

    def _status(self) -> str:
        return f"<div class='pt-live-status'>{escape(self.state.live_status)}</div>"
