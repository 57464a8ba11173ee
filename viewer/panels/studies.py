"""The Studies view: the studies in the store (``perturber study``), each study's
definition, its interactive figure redrawn from the stored table, and the table
with its intervals. Clicking a point of the figure moves the explorer there."""

from __future__ import annotations

from html import escape
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn

from perturber.pipeline import studies
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.studies.outputs import default_figure, measured
from perturber.viewer import html, sessions
from perturber.viewer.panels import bokeh_plots
from perturber.viewer.state import CubeState
from perturber.viewer.state.studies import StudyView, read_table, study_names

__all__ = ["StudiesPanel", "figure", "table_frame", "TABLE_ROWS"]

#: Rows of a table shown (the CSV beside the store holds all).
TABLE_ROWS = 200
CHOOSE = "choose a study…"


def figure(name: str, table: Any) -> Any:
    """The study's interactive figure (HoloViews) drawn from its table: the study's
    own ``figure`` when it registered one, else the default one."""
    import matplotlib.pyplot as plt

    known = studies.STUDIES.get(name)
    if known is None:
        try:
            known = studies.get(name)  # imports the built-in studies
        except Exception as exc:  # not registered here (a plugin's study), or a study module that fails to import
            sessions.log.debug("study %r: the default figure (%s)", name, type(exc).__name__)
    draw = (known.figure if known is not None else None) or default_figure
    static, interactive = draw(table, title=name)
    plt.close(static)
    return interactive


def _cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if not np.isfinite(value) else f"{value:.3g}"
    return str(value)


def table_frame(table: Any) -> pd.DataFrame:
    """The table as rows: one column per dimension, each measured variable as ``v [lo, hi]``, the other variables as they are."""
    shown = measured(table)
    dims = {d for v in shown for d in table[v].dims}
    plain = [str(v) for v in table.data_vars if str(v) not in shown and not str(v).endswith(("_lo", "_hi"))
             and (not shown or set(table[v].dims) <= dims)]
    frame = table[shown + [f"{v}_{e}" for v in shown for e in ("lo", "hi")] + plain].to_dataframe().reset_index()
    for v in shown:
        frame[v] = [f"{_cell(a)} [{_cell(lo)}, {_cell(hi)}]" for a, lo, hi in zip(frame[v], frame[f"{v}_lo"], frame[f"{v}_hi"])]
    index = [c for c in frame.columns if c not in table.data_vars]
    return frame[index + shown + plain]


class StudiesPanel:
    """A select over the store's studies; the chosen one's definition, figure and
    table (read when chosen). The explorer ``state`` follows clicks on the figure."""

    def __init__(self, path: str, state: CubeState):
        self.path, self.state = path, state
        self.view_of: StudyView | None = None  # the study shown
        self.taps: list[hv.streams.Tap] = []
        try:
            found = study_names(path)
        except PerturberError as exc:
            self.view: Any = html.markdown(str(exc), "pt-failed")
            return
        if not found:
            self.view = html.markdown("no studies in this store: run `perturber study --list`")
            return
        self.select = pn.widgets.Select(label="study", options=[CHOOSE, *found], value=CHOOSE, width=320,
                                        css_classes=["pt-study-select"])
        self.body = pn.Column(sizing_mode="stretch_width")
        self.select.param.watch(lambda e: self.show(e.new), "value")
        listing = ", ".join(f"`{n}`" for n in found)
        self.view = pn.Column(html.markdown(f"{len(found)} in this store: {listing}. Choose one to see its figure and "
                                            "table; clicking a point of the figure moves the explorer there.", "pt-small"),
                              self.select, self.body, sizing_mode="stretch_width")

    def __panel__(self) -> Any:
        return self.view

    def show(self, name: str) -> None:
        """Show study ``name`` (``CHOOSE``: nothing); a study that cannot be read is one line."""
        self.view_of, self.taps = None, []
        if name == CHOOSE:
            self.body.objects = []
            return
        try:
            table = read_table(self.path, name)
        except Exception as exc:
            self.body.objects = [html.pane(f"<p class='pt-failed'>{escape(sessions.failure(f'study {name}', exc))}</p>")]
            return
        self.view_of = StudyView(self.path, self.state, name, table)
        note = html.pane(self._note(), css_classes=["pt-study-note"], sizing_mode="stretch_width")
        self.view_of.param.watch(lambda *_: setattr(note, "object", self._note()), "note")
        self.body.objects = [html.pane(self._about(table), sizing_mode="stretch_width"), note,
                             self._figure(name, table), self._table(name, table)]

    def _note(self) -> str:
        study = self.view_of
        text = study.note if study is not None and study.note else (
            "" if study is None or study.same_cube() else study.open_hint())
        return f"<div class='pt-study-note'>{escape(text)}</div>"

    def _about(self, table: Any) -> str:
        a = table.attrs
        rows = [("definition", a.get("definition")), ("independent unit", a.get("unit")), ("control", a.get("control")),
                ("published", a.get("published")), ("finding", a.get("finding")), ("cube", a.get("cube")),
                ("parameters", a.get("params") if a.get("params") not in (None, "{}") else "")]
        items = "".join(f"<dt>{k}</dt><dd>{escape(str(v))}</dd>" for k, v in rows if v)
        return f"<dl class='pt-study'>{items}</dl>"

    def _figure(self, name: str, table: Any) -> Any:
        """The figure, one Tap stream per plot of it (a click gives that plot's x value)."""
        try:
            bokeh_plots()
            obj = figure(name, table)
            for plot in obj if isinstance(obj, hv.Layout) else [obj]:
                dims = plot.traverse(lambda e: e.kdims[0].name if e.kdims else None, [hv.Element])
                dim = next((d for d in dims if d), None)
                if dim is None:
                    continue
                tap = hv.streams.Tap(source=plot, x=None, y=None)
                tap.add_subscriber(lambda x=None, y=None, dim=dim: self.view_of and self.view_of.tap(dim, x))
                self.taps.append(tap)
            return pn.pane.HoloViews(obj, css_classes=["pt-study-figure"])
        except Exception as exc:
            return html.pane(f"<p class='pt-failed'>{escape(sessions.failure(f'the figure of study {name}', exc))}</p>")

    def _table(self, name: str, table: Any) -> Any:
        try:
            frame = table_frame(table)
        except Exception as exc:
            return html.pane(f"<p class='pt-failed'>{escape(sessions.failure(f'the table of study {name}', exc))}</p>")
        more = (f"<p class='pt-small'>the first {TABLE_ROWS} of {len(frame)} rows (the study's table.csv holds all)</p>"
                if len(frame) > TABLE_ROWS else "")
        return pn.Column(pn.pane.DataFrame(frame.head(TABLE_ROWS), index=False, css_classes=["pt-study-table"]),
                         *([html.pane(more)] if more else []))
