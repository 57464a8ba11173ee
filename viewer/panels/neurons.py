"""Neuron activation maps of both compared models (red positive, blue negative),
each beside its feature visualisation when the store has one."""

from __future__ import annotations

from html import escape
from typing import Any, Callable

import numpy as np
import panel as pn
from PIL import Image

from perturber.pipeline import names
from perturber.pipeline.figures import activation_overlay
from perturber.viewer import html, sessions, stores
from perturber.viewer.live import LOCAL, EngineError
from perturber.viewer.state import CubeState

__all__ = ["NeuronPanel", "TILE", "NEURONS_PER_GROUP"]

NEURONS_PER_GROUP = 8
_GROUPS_KNOWN: set[tuple[str, str, str]] = set()  # (store, cube, variable) whose neuron groups this process computed
TILE = 96  # px, one activation map (style.css sizes gallery tiles the same)


class NeuronPanel(html.HTMLPanel):
    """A layer, a group of neurons (stored order, or data-driven groups from
    the store) and the parameterisation of the feature visualisations beside them."""

    width = 900

    def __init__(self, state: CubeState, per_model: int = NEURONS_PER_GROUP):
        self.per_model = per_model
        self.grid = stores.group_grid(state.path, state.cube)  # the sub-grid data-driven groups are computed on
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

    def redraw(self, *_: Any) -> None:
        """Served, a data-driven group whose whole-cube statistics are not known yet
        (a pass over every stored activation, once per process) is computed in a
        thread of :data:`~perturber.viewer.live.LOCAL`, then shown."""
        deliver, label = sessions.on_loop(), str(self.group.value)
        missing = [] if deliver is None or label.startswith("stored ") else [
            act.variable for act in self.state.analysis.activations()
            if act.layer == self.layer.value and act.model in (self.state.model_a, self.state.model_b)
            and (self.state.path, self.state.cube, act.variable) not in _GROUPS_KNOWN]
        if not missing:
            super().redraw()
            return
        self.pane.object = f"<p class='pt-missing'>computing the groups “{escape(label)}” over {escape(self.sampled())}…</p>"
        try:
            LOCAL.start(f"{self.state.session}/groups/{'/'.join(missing)}", self._groups, missing, deliver)
        except EngineError as exc:
            self.pane.object = f"<p class='pt-missing'>{escape(str(exc))}</p>"

    def _groups(self, variables: list[str], deliver: Callable) -> None:
        for variable in variables:
            try:
                self.state.analysis.neuron_groups(variable, NEURONS_PER_GROUP, self.grid)
            except Exception as exc:  # shown by the redraw below, which asks again
                sessions.failure("neuron groups", exc)
            _GROUPS_KNOWN.add((self.state.path, self.state.cube, variable))
        deliver(super().redraw)

    def positions(self, act: names.Activation, label: str) -> list[int]:
        """Positions along ``act``'s stored neurons of the group ``label``."""
        if label.startswith("stored "):
            lo, hi = (int(v) for v in label.split()[-1].split("-"))
            return list(range(lo, min(hi + 1, self.state.ds.sizes[act.neuron])))
        return self.state.analysis.neuron_groups(act.variable, NEURONS_PER_GROUP, self.grid).get(label, [])

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
        if not str(self.group.value).startswith("stored "):
            columns.append(f"<p class='pt-small pt-groups-from'>Groups computed over {escape(self.sampled())}.</p>")
        return "".join(columns)

    def sampled(self) -> str:
        """What the data-driven groups are computed over, as the page says it."""
        sizes = [self.state.ds.sizes[a] for a in self.state.axes]
        total, used = int(np.prod(sizes)), int(np.prod([len(self.grid[a]) for a in self.state.axes]))
        if used == total:
            return f"every sample of the cube ({total:,})"
        return (f"{used:,} of the cube's {total:,} samples (a regular sub-grid of at most about {stores.GROUP_CHUNKS} "
                "stored chunks: every object, evenly spaced values of the other axes)")
