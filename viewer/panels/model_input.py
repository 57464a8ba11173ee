"""The model input at the current point, with the attribution of the assets it shows."""

from __future__ import annotations

import panel as pn

from perturber.viewer import html
from perturber.viewer.state import NOT_COMPUTED, CubeState

__all__ = ["InputPanel"]


class InputPanel:
    """The exact image the models saw; LIVE and its factor when computed off the grid."""

    def __init__(self, state: CubeState):
        self.state = state
        # One pane whose text is replaced in place: cheaper than a new pane per change.
        self.pane = html.pane(self.html())
        state.param.watch(self._update, ["changed"])

    def __panel__(self) -> pn.pane.HTML:
        return self.pane

    def _update(self, *_) -> None:
        self.pane.object = self.html()

    def html(self) -> str:
        state = self.state
        image = state.image()
        credits = f"<div class='pt-credits'>{'<br>'.join(state.attributions())}</div>"
        if state.live_on:
            badge = f"<div class='pt-live'>LIVE · {state.live_factor} = {state.live_value:g}</div>"
            if image is None:
                return f"{badge}<div class='pt-missing pt-live-waiting'>{state.live_status or 'computing…'}</div>"
            return f"{badge}<br><img class='pt-input' src='{html.png(image)}' width='{image.shape[1]}'>{credits}"
        if image is None:
            body = f"<div class='pt-input pt-missing pt-missing-input'>{NOT_COMPUTED}</div>"
        else:
            body = f"<img class='pt-input' src='{html.png(image)}' width='{image.shape[1]}' height='{image.shape[0]}'>"
        return f"<div>{body}{credits}</div>"
