"""The model input at the current point, with the attribution of the assets it shows."""

from __future__ import annotations

from html import escape

from perturber.pipeline import names
from perturber.viewer import html
from perturber.viewer.state import CubeState

#: What the model input says for a cube whose spec stores no images (the top-5 and the views still work).
NO_IMAGES = "no images stored in this cube (its spec says images: false); live compute renders them"

__all__ = ["InputPanel", "MIN_PX", "shown_size"]

MIN_PX = 320  # the model input is shown at least this large, scaled by a whole factor (pixelated)


def shown_size(size: int) -> int:
    """The on-screen width (px) of a ``size`` px model input: ``size`` times the
    smallest whole number that makes it at least :data:`MIN_PX` (224 → 448)."""
    return size * max(1, -(-MIN_PX // max(size, 1)))


class InputPanel(html.HTMLPanel):
    """The exact image the models saw, large and pixelated; LIVE and its factor when
    computed off the grid; the render before the image factors when that toggle is on."""

    state: CubeState

    def html(self) -> str:
        state = self.state
        image = state.image()
        credits = f"<div class='pt-credits'>{'<br>'.join(state.attributions())}</div>"
        size = int(state.ds.sizes.get("y", 224)) if image is None else image.shape[1]
        px = shown_size(size)
        box = f"style='width:{px}px;height:{px}px'"
        if state.live_on:
            badge = f"<div class='pt-live'>LIVE · {state.live_where()}</div>"
            if image is None:
                return f"{badge}<div class='pt-missing pt-live-waiting' {box}>{state.live_status or 'computing…'}</div>"
            return f"{badge}<br><img class='pt-input' src='{html.png(image)}' width='{px}' height='{px}'>{credits}"
        if state.render_on:
            src, why = state.render_png()
            label = "<div class='pt-render-label'>the render before the image factors (each at its default)</div>"
            if src is None:
                return f"{label}<div class='pt-input pt-missing pt-render-missing' {box}>{escape(why)}</div>{credits}"
            return f"{label}<img class='pt-input pt-render' src='{src}' width='{px}' height='{px}'>{credits}"
        if image is None:
            why = state.missing() if names.IMAGE in state.ds else NO_IMAGES
            body = f"<div class='pt-input pt-missing pt-missing-input' {box}>{why}</div>"
        else:
            body = f"<img class='pt-input' src='{state.image_png()}' width='{px}' height='{px}'>"
        return f"<div>{body}{credits}</div>"
