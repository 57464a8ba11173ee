"""Worked example (CONTRIBUTING.md): a viewer panel.

A panel is a class that shows something about the current point and depends
on the state's one ``changed`` event; the layout lists it as a
:class:`~perturber.viewer.app.Section`. This one prints the point's axis
values and the left model's top-1 class. :class:`~perturber.viewer.html.HTMLPanel`
does the plumbing of a panel that is one HTML pane (the pane, the watcher on
``changed``, ``__panel__``); a panel of widgets or plots does the same by hand.
"""

from __future__ import annotations

from perturber.viewer import html
from perturber.viewer.state import NOT_COMPUTED, CubeState


class PointPanel(html.HTMLPanel):
    """One line: where the user is in the cube, and what the left model says there."""

    state: CubeState

    def html(self) -> str:
        state = self.state
        where = ", ".join(f"{axis} = {getattr(state, axis)}" for axis in state.axes)
        top = state.top5(state.model_a)
        said = NOT_COMPUTED if top is None else f"{state.model_a}: {top[0][0]} ({top[0][1]:.2f})"
        return f"<p class='pt-point pt-small'>{where} · {said}</p>"
