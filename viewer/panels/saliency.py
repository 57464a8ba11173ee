"""Input-gradient saliency of both compared models at the current point (computed in the viewer's process)."""

from __future__ import annotations

import panel as pn

from perturber.pipeline.attack import saliency
from perturber.pipeline.imageops import to_tensor
from perturber.viewer import html
from perturber.viewer.panels.neurons import TILE
from perturber.viewer.state import NOT_COMPUTED, CubeState

__all__ = ["SaliencyPanel"]


class SaliencyPanel(html.HTMLPanel):
    """|∂ logit / ∂ x| of each compared model's top class, when switched on."""

    width = 900

    def __init__(self, state: CubeState):
        self.toggle = pn.widgets.Checkbox(label="input-gradient saliency (computed here)", value=False,
                                          css_classes=["pt-saliency-toggle"])
        super().__init__(state)
        self.toggle.param.watch(self.redraw, "value")

    def __panel__(self) -> pn.Column:
        return pn.Column(self.toggle, self.pane)

    def html(self) -> str:
        if not self.toggle.value:
            return ""
        image = self.state.image()
        if image is None:
            return f"<p class='pt-missing'>{NOT_COMPUTED}</p>"
        x = to_tensor(image).contiguous()
        tiles = []
        for model in dict.fromkeys([self.state.model_a, self.state.model_b]):
            s = saliency(x, model)[0].numpy()
            tiles.append(f"<figure class='pt-tile'><img class='pt-saliency' src='{html.png((s * 255).astype('uint8'))}' "
                         f"width='{TILE * 2}'><figcaption>{model}</figcaption></figure>")
        return "".join(tiles)
