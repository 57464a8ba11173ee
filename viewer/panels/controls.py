"""The controls: one widget per axis of the cube, grouped as in the original
tool, the fixed factors, and live compute off the grid."""

from __future__ import annotations

from typing import Any

import panel as pn

from perturber.pipeline import factors
from perturber.viewer import html
from perturber.viewer.state import CubeState

__all__ = ["GROUPS", "ControlsPanel"]

#: The control groups, in the order the original tool shows them; every factor's ``group`` is one of them.
GROUPS = ["Camera", "Lighting & shading", "Object & shape", "Background", "Colour", "Frequency", "Spatial", "Adversarial"]


class ControlsPanel:
    """Axis widgets snapping to the grid values, grouped; fixed factors; live compute."""

    def __init__(self, state: CubeState):
        self.state = state
        self.view = pn.Column(*self._sections(), self._live_controls(), width=320)

    def __panel__(self) -> pn.Column:
        return self.view

    def widget(self, name: str) -> Any:
        """The widget of axis ``name`` (for tests and scripts), or None."""
        return self._widgets.get(name)

    def _sections(self) -> list[pn.Card]:
        state, sections = self.state, []
        self._widgets: dict[str, Any] = {}
        for group in GROUPS:
            rows: list[Any] = []
            for name, f in factors.FACTORS.items():
                if f.group != group:
                    continue
                if name in state.axes:
                    if f.numeric:
                        widget = pn.widgets.DiscreteSlider.from_param(state.param[name], options=state.param[name].objects, name=name)
                    else:
                        widget = pn.widgets.Select.from_param(state.param[name], name=name)
                    self._widgets[name] = widget
                    rows.append(widget)
                elif name in state.fixed and state.fixed[name] != f.default:
                    rows.append(pn.pane.Markdown(f"`{name}` = {state.fixed[name]} *(fixed)*", margin=(0, 10)))
            if rows:
                sections.append(pn.Card(*rows, title=group, collapsed=False, sizing_mode="stretch_width"))
        defaults = [f"`{n}` = {state.fixed[n]}" for n, f in factors.FACTORS.items()
                    if n in state.fixed and state.fixed[n] == f.default and n not in ("expression",)]
        sections.append(pn.Card(html.markdown("<br>".join(defaults), "pt-small"),
                                title="Fixed at their defaults", collapsed=True, sizing_mode="stretch_width"))
        return sections

    def _live_controls(self) -> pn.Card:
        """Off the grid: any numeric factor (an axis or a fixed one) at any value of
        its domain, computed by the on-demand engine and marked LIVE."""
        state = self.state
        toggle = pn.widgets.Checkbox.from_param(state.param.live_on, name="compute live (off the grid)",
                                                disabled=state.engine is None, css_classes=["pt-live-toggle"])
        factor = pn.widgets.Select.from_param(state.param.live_factor, name="factor")

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
        return pn.Card(toggle, factor, slider, status, html.pane(note), title="Live (off the grid)",
                       collapsed=False, sizing_mode="stretch_width")

    def _status(self) -> str:
        return f"<div class='pt-live-status'>{self.state.live_status}</div>"
