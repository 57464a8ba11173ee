"""How much each axis moves each model's top-1 probability (a whole-cube
statistic, :meth:`perturber.pipeline.analysis.Cube.sensitivity`, computed
once per process)."""

from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure

from perturber.viewer.state import CubeState

__all__ = ["SensitivityPanel"]


class SensitivityPanel:
    """One bar chart per model: axes ranked by the mean spread of the top-1 probability (the largest on top)."""

    def __init__(self, state: CubeState):
        plots = []
        for model, by_axis in state.analysis.sensitivity().items():  # the same for every point: drawn once
            items = sorted(by_axis.items(), key=lambda kv: np.nan_to_num(kv[1]))
            source = ColumnDataSource({"axis": [a for a, _ in items], "spread": [float(v) for _, v in items]})
            fig = figure(width=320, height=220, y_range=[a for a, _ in items], x_range=(0, 1), title=model,
                         tools="save", x_axis_label="mean spread of top-1 probability", toolbar_location=None)
            fig.hbar(y="axis", right="spread", height=0.8, source=source, color="#4c72b0")
            fig.add_tools(HoverTool(tooltips=[("axis", "@axis"), ("spread", "@spread{0.000}")]))
            plots.append(pn.pane.Bokeh(fig))
        self.view = pn.Row(*plots, css_classes=["pt-sensitivity"])

    def __panel__(self) -> pn.Row:
        return self.view
