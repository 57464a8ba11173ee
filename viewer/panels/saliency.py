"""Input-gradient saliency of both compared models at the current point
(computed in the viewer's process; served, in a thread of
:data:`perturber.viewer.live.LOCAL`, never on the event loop)."""

from __future__ import annotations

from html import escape
from typing import Any, Callable

import numpy as np
import panel as pn

from perturber.pipeline.attack import saliency
from perturber.pipeline.imageops import to_tensor
from perturber.viewer import html, sessions
from perturber.viewer.live import LOCAL, EngineError
from perturber.viewer.panels.neurons import TILE
from perturber.viewer.state import CubeState

__all__ = ["SaliencyPanel"]


class SaliencyPanel(html.HTMLPanel):
    """|∂ logit / ∂ x| of each compared model's top class, when switched on."""

    width = 900

    def __init__(self, state: CubeState):
        self.toggle = pn.widgets.Checkbox(label="input-gradient saliency (computed here)", value=False,
                                          css_classes=["pt-saliency-toggle"])
        self._generation = 0  # the latest request; a late result of an older one is dropped
        super().__init__(state)
        self.toggle.param.watch(self.redraw, "value")

    def __panel__(self) -> pn.Column:
        return pn.Column(self.toggle, self.pane)

    def redraw(self, *_: Any) -> None:
        deliver = sessions.on_loop()
        if deliver is None or not self.toggle.value or self.state.image() is None:
            super().redraw()
            return
        self._generation += 1
        models = list(dict.fromkeys([self.state.model_a, self.state.model_b]))
        self.pane.object = "<p class='pt-missing'>computing saliency…</p>"
        try:
            LOCAL.start(f"{self.state.session}/saliency/{self._generation}", self._compute, self.state.image(), models,
                        self._generation, deliver)
        except EngineError as exc:
            self.pane.object = f"<p class='pt-missing'>saliency refused: {escape(str(exc))}</p>"

    def _compute(self, image: np.ndarray, models: list[str], generation: int, deliver: Callable) -> None:
        """In a thread: the tiles, handed back to the session's event loop."""
        try:
            text = self.tiles(image, models)
        except Exception as exc:
            text = f"<p class='pt-failed'>{escape(sessions.failure('saliency', exc))}</p>"
        deliver(lambda: setattr(self.pane, "object", text) if generation == self._generation else None)

    def html(self) -> str:
        if not self.toggle.value:
            return ""
        image = self.state.image()
        if image is None:
            return f"<p class='pt-missing'>{self.state.missing()}</p>"
        return self.tiles(image, list(dict.fromkeys([self.state.model_a, self.state.model_b])))

    @staticmethod
    def tiles(image: np.ndarray, models: list[str]) -> str:
        """One |∂ logit / ∂ x| map per model, as HTML."""
        x = to_tensor(image).contiguous()
        tiles = []
        for model in models:
            s = saliency(x, model)[0].numpy()
            tiles.append(f"<figure class='pt-tile'><img class='pt-saliency' src='{html.png((s * 255).astype('uint8'))}' "
                         f"width='{TILE * 2}'><figcaption>{model}</figcaption></figure>")
        return "".join(tiles)
