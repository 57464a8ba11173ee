"""HTML for the viewer's panes: images as data URIs, and the one stylesheet.

Every style lives in ``style.css`` (classes ``pt-…``); panes get it through
:func:`pane`, which attaches it to the pane's shadow root (Panel renders
each pane in its own shadow DOM, where a page-wide stylesheet does not reach).
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import panel as pn
from PIL import Image

__all__ = ["CSS", "png", "pane", "markdown", "HTMLPanel"]

#: The viewer's stylesheet.
CSS = (Path(__file__).parent / "style.css").read_text()


def png(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a PNG data URI (lossless; compression level 1
    encodes ~5x faster than the default)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pane(object: Any = "", **params: Any) -> pn.pane.HTML:
    """An HTML pane styled by :data:`CSS`."""
    return pn.pane.HTML(object, stylesheets=[CSS], **params)


def markdown(text: str, css_class: str = "", **params: Any) -> pn.pane.Markdown:
    """A Markdown pane styled by :data:`CSS` (``css_class`` e.g. ``pt-small``)."""
    return pn.pane.Markdown(text, stylesheets=[CSS], css_classes=[css_class] if css_class else [], **params)


class HTMLPanel:
    """A panel that is one HTML pane, its text replaced in place (cheaper than a
    new pane) whenever the state's ``changed`` event fires; subclasses say what
    it shows in :meth:`html`. ``state`` is a :class:`perturber.viewer.state.CubeState`."""

    width: int | None = None

    def __init__(self, state: Any):
        self.state = state
        self.pane = pane(self.render(), **({"width": self.width} if self.width else {}))
        state.param.watch(self.redraw, ["changed"])

    def __panel__(self) -> pn.pane.HTML:
        return self.pane

    def redraw(self, *_: Any) -> None:
        self.pane.object = self.render()

    def render(self) -> str:
        """:meth:`html`, or one line saying it failed (the traceback goes to the server's log)."""
        try:
            return self.html()
        except Exception as exc:
            from perturber.viewer.sessions import failure

            return f"<p class='pt-failed'>{escape(failure(type(self).__name__, exc))}</p>"

    def html(self) -> str:
        raise NotImplementedError
