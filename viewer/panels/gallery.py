"""Every stored feature visualisation of one target (a layer's channels or
directions, or class logits), with how much the optimisation raised its objective."""

from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn

from perturber.featureviz import group as fv
from perturber.pipeline import classes, names
from perturber.viewer import html, stores
from perturber.viewer.panels.neurons import TILE
from perturber.viewer.state import NOT_COMPUTED

__all__ = ["GalleryPanel"]


class GalleryPanel:
    """A target and a parameterisation; its visualisations, each with its objective start → end."""

    def __init__(self, path: str):
        self.ds = stores.featureviz(path)
        if self.ds is None:
            self.view: Any = pn.pane.Markdown("No feature visualisations in this store (`perturber featureviz` adds them).")
            return
        targets = {f"{v.attrs['model']} · {v.attrs['layer']} ({v.attrs['kind']}s)": n.target for n, v in names.fv_variables(self.ds)}
        self.target = pn.widgets.Select(label="gallery", options=targets, width=320)
        self.kind = pn.widgets.RadioButtonGroup(options=[str(p) for p in self.ds["parameterisation"].values])
        self.settings = fv.settings_of(self.ds)
        self.view = pn.Column(pn.Row(self.target, self.kind), html.pane(pn.bind(self.html, self.target, self.kind), width=900))

    def __panel__(self) -> Any:
        return self.view

    def html(self, target: str, parameterisation: str) -> str:
        n = names.fv_names(target)
        array = self.ds[n.images]
        p = [str(v) for v in self.ds["parameterisation"].values].index(parameterisation)
        done = fv.completed(self.ds, target)[p]
        objective = self.ds[n.objective].values[p]
        units = self.ds[n.unit].values
        logit = array.attrs["kind"] == "logit"
        tiles = []
        for i, unit in enumerate(units):
            label = classes.imagenet_categories()[int(unit)] if logit else f"#{unit}"
            if not done[i]:
                tiles.append(f"<figure class='pt-tile'><div class='pt-tile-missing'>{NOT_COMPUTED}</div>"
                             f"<figcaption>{label}</figcaption></figure>")
                continue
            start, end = objective[i]
            tiles.append(f"<figure class='pt-tile'><img src='{html.png(np.asarray(array[p, i].values))}' width='{TILE}'>"
                         f"<figcaption title='objective on the starting image, then on this one'>{label}: "
                         f"{start:.2g} → {end:.2g}</figcaption></figure>")
        s = self.settings
        head = (f"<p class='pt-settings'>{s.get('steps')} steps at {s.get('size')} px, seed {s.get('seed')}, "
                f"{s.get('transforms')}; below each: its objective on the starting image → on the result</p>")
        return f"<div class='pt-gallery'>{head}{''.join(tiles)}</div>"

