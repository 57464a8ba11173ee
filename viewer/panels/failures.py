"""The failure finder: the nearest grid points where the left model stops
reading the object as its classes, one click away."""

from __future__ import annotations

import panel as pn

from perturber.viewer.panels.landscape import label
from perturber.viewer.state import CubeState, Settled

__all__ = ["FailurePanel"]


class FailurePanel:
    """Buttons to the nearest misread points (:meth:`perturber.pipeline.analysis.Cube.failures`),
    listed again once the point has settled."""

    def __init__(self, state: CubeState, settled: Settled, limit: int = 8):
        self.state, self.limit = state, limit
        self.view = pn.Column(*self._rows())
        settled.param.watch(self._update, ["tick"])

    def __panel__(self) -> pn.Column:
        return self.view

    def _update(self, *_) -> None:
        self.view.objects = self._rows()

    def _rows(self) -> list:
        state = self.state
        found = state.analysis.failures(state.model_a, state.index(), limit=self.limit)
        if not found:
            return [pn.pane.Markdown(f"No failure of {state.model_a} for this object in the computed cells.")]
        rows: list = [pn.pane.Markdown(f"Nearest points where **{state.model_a}** stops reading this object "
                                       "(click to go there):")]
        for f in found:
            changes = ", ".join(f"{a}={label(f[a])}" for a in state.axes if f[a] != getattr(state, a))
            button = pn.widgets.Button(label=f"{changes or 'here'} → {f['top1']} ({f['p']:.2f})", color="light",
                                       css_classes=["pt-failure"], width=460)
            button.on_click(lambda _event, target=f: state.param.update(**{a: target[a] for a in state.axes}))
            rows.append(button)
        return rows
