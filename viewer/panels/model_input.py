"""The model input at the current point, with the attribution of the assets it shows."""

from __future__ import annotations

from perturber.viewer import html
from perturber.viewer.state import CubeState

__all__ = ["InputPanel"]


class InputPanel(html.HTMLPanel):
    """The exact image the models saw; LIVE and its factor when computed off the grid."""

    state: CubeState

    def html(self) -> str:
        state = self.state
        image = state.image()
        credits = f"<div class='pt-credits'>{'<br>'.join(state.attributions())}</div>"
        if state.live_on:
            badge = f"<div class='pt-live'>LIVE · {state.live_where()}</div>"
            if image is None:
                return f"{badge}<div class='pt-missing pt-live-waiting'>{state.live_status or 'computing…'}</div>"
            return f"{badge}<br><img class='pt-input' src='{html.png(image)}' width='{image.shape[1]}'>{credits}"
        if image is None:
            body = f"<div class='pt-input pt-missing pt-missing-input'>{state.missing()}</div>"
        else:
            body = f"<img class='pt-input' src='{state.image_png()}' width='{image.shape[1]}' height='{image.shape[0]}'>"
        return f"<div>{body}{credits}</div>"
