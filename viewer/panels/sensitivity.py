"""How much each axis moves each model's top-1 probability (a whole-cube
statistic, :meth:`perturber.pipeline.analysis.Cube.sensitivity`)."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn

from perturber.viewer.panels import bokeh_plots
from perturber.viewer.state import CubeState

__all__ = ["SensitivityPanel"]


class SensitivityPanel:
    """One bar chart per model: axes ranked by the mean spread of the top-1 probability."""

    def __init__(self, state: CubeState):
        bokeh_plots()
        plots = []
        for model, by_axis in state.analysis.sensitivity().items():  # the same for every point: drawn once
            items = sorted(by_axis.items(), key=lambda kv: -np.nan_to_num(kv[1]))
            bars = hv.Bars(items, hv.Dimension("axis"), hv.Dimension("spread", label="mean spread of top-1 probability"))
            plots.append(pn.pane.HoloViews(bars.opts(title=model, width=320, height=220, invert_axes=True,
                                                     tools=["hover"], color="#4c72b0", ylim=(0, 1))))
        self.view = pn.Row(*plots, css_classes=["pt-sensitivity"])

    def __panel__(self) -> pn.Row:
        return self.view
