"""The failure finder: the nearest grid points where the left model stops
reading the object as its classes, one click away."""

from __future__ import annotations

from typing import Any

import panel as pn

from perturber.viewer.panels.landscape import label
from perturber.viewer.state import CubeState, Settled

__all__ = ["FailurePanel"]


class FailurePanel:
    """Buttons to the nearest misread points (:meth:`perturber.pipeline.analysis.Cube.failures`),
    listed again once the point has settled: one button group made once, whose
    options a new point replaces (new buttons cost a served session ~5 ms each,
    new options one message)."""

    def __init__(self, state: CubeState, settled: Settled, limit: int = 8):
        self.state, self.limit = state, limit
        self.header = pn.pane.Markdown("")
        self.targets: list[dict[str, Any]] = []
        self.buttons = pn.widgets.RadioButtonGroup(options={}, value=None, orientation="vertical", color="light",
                                                   css_classes=["pt-failure"], width=460)
        self.buttons.param.watch(self._go, ["value"])
        self._update()
        self.view = pn.Column(self.header, self.buttons)
        settled.param.watch(self._update, ["tick"])

    def __panel__(self) -> pn.Column:
        return self.view

    def _go(self, event: Any) -> None:
        if event.new is not None and event.new < len(self.targets):
            target = self.targets[event.new]
            self.state.param.update(**{a: target[a] for a in self.state.axes})
        if self.buttons.value is not None:  # a button is a link, not a choice: clicking it again goes there again
            self.buttons.value = None

    def _update(self, *_: Any) -> None:
        state = self.state
        self.targets = state.analysis.failures(state.model_a, state.index(), limit=self.limit)
        if not self.targets:
            self.header.object = f"No failure of {state.model_a} for this object in the computed cells."
        else:
            self.header.object = (f"Nearest points where **{state.model_a}** stops reading this object "
                                  "(click to go there):")
        labels = {}
        for k, f in enumerate(self.targets):
            changes = ", ".join(f"{a}={label(f[a])}" for a in state.axes if f[a] != getattr(state, a))
            labels[f"{changes or 'here'} → {f['top1']} ({f['p']:.2f})"] = k
        self.buttons.param.update(options=labels, value=None, visible=bool(labels))
