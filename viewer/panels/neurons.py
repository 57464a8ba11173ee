"""Neuron activation maps of both compared models (red positive, blue negative),
each beside its feature visualisation when the store has one."""

from __future__ import annotations

import numpy as np
import panel as pn
from PIL import Image

from perturber.pipeline import names
from perturber.pipeline.figures import activation_overlay
from perturber.viewer import html, stores
from perturber.viewer.state import CubeState

__all__ = ["NeuronPanel", "TILE", "NEURONS_PER_GROUP"]

NEURONS_PER_GROUP = 8
TILE = 96  # px, one activation map (style.css sizes gallery tiles the same)


class NeuronPanel(html.HTMLPanel):
    """A layer, a group of neurons (stored order, or data-driven groups from
    the store) and the parameterisation of the feature visualisations beside them."""

    width = 900

    def __init__(self, state: CubeState, per_model: int = NEURONS_PER_GROUP):
        self.per_model = per_model
        acts = state.analysis.activations()
        layers = state.layers()
        most = max((state.ds.sizes[a.neuron] for a in acts), default=0)
        stored = [f"stored {i}-{min(i + NEURONS_PER_GROUP, most) - 1}" for i in range(0, most, NEURONS_PER_GROUP)]
        self.layer = pn.widgets.Select(label="layer", options=layers, value=layers[0] if layers else None, width=160)
        self.group = pn.widgets.Select(label="neuron group", options=stored + (state.analysis.group_labels() if most else []) or ["-"],
                                       width=260)
        self.fv_kind = pn.widgets.RadioButtonGroup(label="feature visualisation", options=["fourier", "pixel"], value="fourier")
        super().__init__(state)
        for widget in (self.layer, self.group, self.fv_kind):
            widget.param.watch(self.redraw, "value")

    def __panel__(self) -> pn.Column:
        return pn.Column(pn.Row(self.layer, self.group, self.fv_kind), self.pane)

    def positions(self, act: names.Activation, label: str) -> list[int]:
        """Positions along ``act``'s stored neurons of the group ``label``."""
        if label.startswith("stored "):
            lo, hi = (int(v) for v in label.split()[-1].split("-"))
            return list(range(lo, min(hi + 1, self.state.ds.sizes[act.neuron])))
        return self.state.analysis.neuron_groups(act.variable, NEURONS_PER_GROUP).get(label, [])

    def html(self) -> str:
        state, layer = self.state, self.layer.value
        image = state.image()
        columns = []
        if image is not None:  # overlays at the size shown: 5x fewer pixels to colour and encode
            image = np.asarray(Image.fromarray(image).resize((TILE, TILE), Image.BILINEAR))
        for model in dict.fromkeys([state.model_a, state.model_b]):
            act = names.activation(model, str(layer))
            if layer is None or act.variable not in state.ds or image is None:
                continue
            shown = self.positions(act, str(self.group.value))[: self.per_model]
            values = state.activations(model, str(layer), shown)
            if values is None:
                continue
            neurons = state.ds[act.neuron].values[shown]
            tiles = []
            for n, a in zip(neurons, values):
                viz = stores.fv_png(state.path, model, str(layer), int(n), self.fv_kind.value)
                extra = f"<img class='pt-fv' src='{viz}' width='{TILE}' title='feature visualisation ({self.fv_kind.value})'>" if viz else ""
                tiles.append(f"<figure class='pt-tile'><img src='{html.png(activation_overlay(image, a))}' width='{TILE}'>"
                             f"{extra}<figcaption>#{n}</figcaption></figure>")
            beside = "; beside each: its feature visualisation" if "pt-fv" in "".join(tiles) else ""
            columns.append(f"<div class='pt-neurons'><b>{model} · {layer}</b> (red positive, blue negative{beside})<br>"
                           f"{''.join(tiles)}</div>")
        if not columns:
            return f"<p class='pt-missing'>{state.missing() if image is None else 'no activations stored'}</p>"
        return "".join(columns)
