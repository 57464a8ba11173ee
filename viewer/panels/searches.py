"""The Searches view: the store's fooling runs (``perturber fool``) as a gallery of
elites with the other models' verdicts, and its factor-space searches
(``perturber search``) as a list of failures, each one click from live compute,
with the failure map when the run made one."""

from __future__ import annotations

from html import escape
from typing import Any, Callable

import holoviews as hv
import panel as pn

from perturber.pipeline import names
from perturber.pipeline.errors import PerturberError
from perturber.viewer import html, sessions
from perturber.viewer.panels import bokeh_plots
from perturber.viewer.state import CubeState
from perturber.viewer.state.searches import FAILURES, SHOWN, THUMB, FoolingView, SearchView, runs

__all__ = ["SearchesPanel", "FoolingPanel", "FailuresPanel", "NONE", "TILE"]

NONE = "no searches in this store: `perturber fool` and `perturber search` add them"
TILE = THUMB  # px an elite is shown at (pixelated: the model's own pixels, not a smoothed copy)
STYLE = ("<style>figure.pt-elite{display:inline-block;vertical-align:top;width:150px;margin:3px;font-size:10px}"
         f"figure.pt-elite img{{image-rendering:pixelated;width:{TILE}px;height:{TILE}px}}"
         ".pt-verdict{color:#555}</style>")


def _failed(what: str, exc: Exception) -> Any:
    return html.pane(f"<p class='pt-failed'>{escape(sessions.failure(what, exc))}</p>", sizing_mode="stretch_width")


class _Runs:
    """A select over a kind's runs (shown when there are several) and the chosen run's body, built by ``show``."""

    def __init__(self, found: list[str], label: str, css: str, show: Callable[[str], list[Any]]):
        self.body = pn.Column(sizing_mode="stretch_width")
        self._show = show
        self.select = pn.widgets.Select(label=label, options=found, value=found[0], width=320, css_classes=[css])
        self.select.param.watch(lambda e: self.show(e.new), "value")
        self.view = pn.Column(*([self.select] if len(found) > 1 else []), self.body, sizing_mode="stretch_width")
        self.show(found[0])

    def show(self, run: str) -> None:
        try:
            self.body.objects = self._show(run)
        except Exception as exc:  # a corrupt or foreign group: one line, the rest of the page keeps working
            self.body.objects = [_failed(f"run {run}", exc)]


class FoolingPanel:
    """The elites of one fooling run (a select when there are several): a class-name
    filter, a least confidence, the first ``limit`` matches by confidence."""

    def __init__(self, path: str, found: list[str], limit: int = SHOWN):
        self.path, self.limit = path, limit
        self.fooling: FoolingView | None = None
        self.filter = pn.widgets.TextInput(label="class name (Enter)", placeholder="e.g. retriever", width=200,
                                           css_classes=["pt-fool-filter"])
        self.least = pn.widgets.FloatSlider(label="least confidence", start=0.0, end=1.0, step=0.01, value=0.0, width=200,
                                            css_classes=["pt-fool-least"])
        self.gallery = html.pane("", sizing_mode="stretch_width", css_classes=["pt-fool-gallery"])
        self.filter.param.watch(lambda e: self._set(text=e.new), "value")
        self.least.param.watch(lambda e: self._set(min_confidence=float(e.new)), "value_throttled")
        self.runs = _Runs(found, "fooling run", "pt-fool-run", self._run)

    def __panel__(self) -> Any:
        return self.runs.view

    def _run(self, run: str) -> list[Any]:
        self.fooling = FoolingView(self.path, run, text=self.filter.value, min_confidence=float(self.least.value))
        self.gallery.object = self.html()
        return [html.pane(f"<p class='pt-small'>{escape(self.fooling.summary())}</p>", sizing_mode="stretch_width"),
                self._history(), pn.Row(self.filter, self.least), self.gallery]

    def _set(self, **filters: Any) -> None:
        if self.fooling is not None:
            self.fooling.param.update(**filters)
            self.gallery.object = self.html()

    def html(self) -> str:
        """The shown elites: image, class name, index and confidence, method and generation, the other models' verdicts."""
        view = self.fooling
        shown, total = view.shown(self.limit)
        count = f"{len(shown)} of {total} shown" if total > len(shown) else f"{total} shown"
        view.read_images(shown)
        tiles = []
        for i in shown:
            verdicts = "".join(f"<br><span class='pt-verdict'>{escape(v)}</span>" for v in view.verdicts(i))
            tiles.append(f"<figure class='pt-elite'><img src='{view.image_png(i)}'>"
                         f"<figcaption><b>{escape(view.caption(i))}</b><br>{escape(view.found(i))}{verdicts}</figcaption></figure>")
        return (f"{STYLE}<p class='pt-small pt-fool-count'>{count} of {len(view)} elites, highest confidence first</p>"
                + "".join(tiles))

    def _history(self) -> Any:
        frame = self.fooling.history_frame()
        if frame is None:
            return html.pane("<p class='pt-small'>no history stored</p>")
        bokeh_plots()
        curves = [hv.Curve((frame["generation"], frame[c]), "generation", "confidence", label=c.split("_")[0])
                  for c in ("mean_confidence", "median_confidence") if c in frame]
        plots = []
        if curves:
            plots.append(hv.Overlay(curves).opts(title="confidence over 1000 classes", width=320, height=180,
                                                 legend_position="bottom_right"))
        if "classes_above_099" in frame:
            plots.append(hv.Curve(frame, "generation", "classes_above_099").opts(title="classes ≥ 0.99", width=320,
                                                                                 height=180))
        return pn.pane.HoloViews(hv.Layout(plots).cols(2), css_classes=["pt-fool-history"])


class FailuresPanel:
    """The failures of one factor-space search (a select when there are several), nearest
    first, each a button that loads its full scene into live compute; the failure map."""

    def __init__(self, path: str, state: CubeState, found: list[str]):
        self.path, self.state = path, state
        self.search: SearchView | None = None
        self.note = html.pane("", sizing_mode="stretch_width")
        self.runs = _Runs(found, "search run", "pt-search-run", self._run)

    def __panel__(self) -> Any:
        return self.runs.view

    def _run(self, run: str) -> list[Any]:
        self.search = view = SearchView(self.path, run, self.state)
        view.param.watch(lambda *_: self._note(), "note")
        self._note()
        order = view.order()
        buttons = []
        for i in order[:FAILURES]:
            button = pn.widgets.Button(label=view.label(i), color="light", css_classes=["pt-search-failure"], width=620)
            button.on_click(lambda _event, i=i: view.load(i))
            buttons.append(button)
        more = f"the nearest {FAILURES} of {len(order)} failures" if len(order) > FAILURES else f"{len(order)} failures"
        head = html.pane(self._about(view) + f"<p class='pt-small'>{more}, nearest to the start first (click one to "
                         "compute it live):</p>", sizing_mode="stretch_width")
        return [head, self.note, *buttons, *self._map(view)]

    def _note(self) -> None:
        text = self.search.note if self.search is not None else ""
        self.note.object = f"<div class='pt-search-note pt-small'>{escape(text)}</div>"

    def _about(self, view: SearchView) -> str:
        a = view.attrs
        rows = [("method", a.get("method")), ("model", a.get("model")), ("object", a.get("object")),
                ("factors", ", ".join(view.factors)), ("evaluations", f"{a.get('evaluations', '?')} of budget "
                                                                      f"{a.get('budget', '?')}, seed {a.get('seed', '?')}"),
                ("render size", f"{a['size']} px (live compute renders at the cube's size)" if "size" in a else ""),
                ("definition", a.get("definition"))]
        items = "".join(f"<dt>{k}</dt><dd>{escape(str(v))}</dd>" for k, v in rows if v)
        return f"<dl class='pt-study'>{items}</dl>"

    def _map(self, view: SearchView) -> list[Any]:
        found = view.failure_map()
        if found is None:
            return []
        a, b, xs, ys, grid = found
        bokeh_plots()
        mesh = hv.QuadMesh((xs, ys, grid.T), [a, b], "least distance from the start").opts(
            title=f"failure map: least distance from the start per cell ({a} × {b}; blank: none found)", width=520,
            height=360, colorbar=True, cmap="viridis_r", tools=["hover"])
        return [pn.pane.HoloViews(mesh, css_classes=["pt-search-map"])]


class SearchesPanel:
    """The fooling gallery and the search failures of the store at ``path``; a one-line note when it has neither."""

    def __init__(self, path: str, state: CubeState):
        parts: list[Any] = []
        for kind, build in ((names.FOOLING, lambda found: FoolingPanel(path, found)),
                            (names.SEARCH, lambda found: FailuresPanel(path, state, found))):
            try:
                found = runs(path, kind)
            except PerturberError as exc:
                parts.append(html.markdown(str(exc), "pt-failed"))
                continue
            if found:
                title = "Fooling images" if kind == names.FOOLING else "Failures off the grid"
                parts += [html.markdown(f"**{title}** ({', '.join(f'`{r}`' for r in found)})"), build(found)]
        self.parts = parts
        self.view: Any = pn.Column(*parts, sizing_mode="stretch_width") if parts else html.markdown(NONE, "pt-small")

    def __panel__(self) -> Any:
        return self.view
