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

from perturber.viewer.sessions import failure

__all__ = ["CSS", "png", "pane", "markdown", "HTMLPanel", "Strip"]

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
    it shows in :meth:`html`. ``state`` is a :class:`perturber.viewer.state.CubeState`.
    The pane is made when the panel is first laid out: a panel shown inside
    another's pane (:class:`Strip`) costs none."""

    width: int | None = None

    def __init__(self, state: Any):
        self.state = state
        self._pane: pn.pane.HTML | None = None

    @property
    def pane(self) -> pn.pane.HTML:
        if self._pane is None:
            self._pane = pane(self.render(), **({"width": self.width} if self.width else {}))
            self.state.param.watch(self.redraw, ["changed"])
        return self._pane

    def __panel__(self) -> pn.pane.HTML:
        return self.pane

    def redraw(self, *_: Any) -> None:
        if self._pane is not None:
            self._pane.object = self.render()

    def render(self) -> str:
        """:meth:`html`, or one line saying it failed (the traceback goes to the server's log)."""
        try:
            return self.html()
        except Exception as exc:
            return f"<p class='pt-failed'>{escape(failure(type(self).__name__, exc))}</p>"

    def html(self) -> str:
        raise NotImplementedError


class Strip(HTMLPanel):
    """Several HTML panels of one state side by side in one pane (a pane and a
    layout cost a served session ~2 and ~5 ms each to build; the model input
    and the two top-5 tables are redrawn together anyway)."""

    def __init__(self, state: Any, *panels: HTMLPanel, css_class: str = "pt-strip"):
        super().__init__(state)
        self.panels, self.css_class = panels, css_class

    def html(self) -> str:
        return f"<div class='{self.css_class}'>{''.join(p.render() for p in self.panels)}</div>"
