"""The viewer's layout: the panels of :mod:`perturber.viewer.panels`, assembled.

Served, the page is a Panel template (:data:`TEMPLATE`): the controls in its
sidebar; in its main area the model input, large, with the top-5 of two
models beside it (as in the original tool), and below them the tabs of
:data:`TABS`, each holding :data:`SECTIONS` (a title, a panel built from the
:class:`Viewer` context, the tab). A new panel is a class in its own module of
``viewer/panels/`` plus one line in :data:`SECTIONS` (or in the ``sections`` a
caller passes to :func:`build_app`). Every control and the tab are in the
page's URL (:func:`share`), so a link reopens the same view.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from html import escape
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

import numpy as np
import panel as pn
import param

from perturber.viewer import html, security, sessions, stores, widgets
from perturber.viewer.live import LiveEngine
from perturber.viewer.panels.attack import AttackPanel
from perturber.viewer.panels.controls import ControlsPanel
from perturber.viewer.panels.failures import FailurePanel
from perturber.viewer.panels.gallery import GalleryPanel
from perturber.viewer.panels.landscape import LandscapePanel
from perturber.viewer.panels.model_input import InputPanel
from perturber.viewer.panels.neurons import NeuronPanel
from perturber.viewer.panels.saliency import SaliencyPanel
from perturber.viewer.panels.scatter import ScatterPanel
from perturber.viewer.panels.searches import SearchesPanel
from perturber.viewer.panels.sensitivity import SensitivityPanel
from perturber.viewer.panels.studies import StudiesPanel
from perturber.viewer.panels.top5 import Top5Panel
from perturber.viewer.panels.upload import MAX_MESSAGE_BYTES, UploadPanel
from perturber.viewer.state import CubeState, Settled


__all__ = ["Viewer", "Section", "SECTIONS", "TABS", "TEMPLATE", "PointView", "Page", "build_app", "build_page", "share",
           "serve"]

#: The tabs below the model input, in order; the first is open unless a link says otherwise.
TABS = ["Explore", "Neurons", "Attack", "Searches", "Studies"]


@dataclass
class Viewer:
    """What a panel is built from: the store's path, the cube's state and its settled tick."""

    path: str
    state: CubeState
    settled: Settled


@dataclass(frozen=True)
class Section:
    """A heading (empty: none), how to build its panel, the tab it goes in (one of
    :data:`TABS`), and whether it reads the cube's grid (``grid``: it says so
    while a mesh uploaded in the browser is shown)."""

    title: str
    panel: Callable[[Viewer], Any]
    tab: str = "Explore"
    grid: bool = False


SECTIONS: list[Section] = [  # in the order a session builds them (the open tab's first), as before the tabs
    Section("Response landscape", lambda v: LandscapePanel(v.state, v.settled), grid=True),
    Section("Neuron activations", lambda v: NeuronPanel(v.state), "Neurons"),
    Section("Saliency: the input gradient of each model's top class", lambda v: SaliencyPanel(v.state), "Attack"),
    Section("Feature visualisations", lambda v: GalleryPanel(v.path), "Neurons"),
    Section("Adversarial (PGD): attack one model, see whether the others are fooled too", lambda v: AttackPanel(v.state),
            "Attack"),
    Section("Failure finder: the nearest grid points the left model misreads", lambda v: FailurePanel(v.state, v.settled),
            grid=True),
    Section("Sensitivity: how much each axis moves each model", lambda v: SensitivityPanel(v.state), grid=True),
    Section("Model against model (every sample, counted per pixel)", lambda v: ScatterPanel(v.state, v.settled),
            grid=True),
    Section("Studies: findings computed into this store (`perturber study`)", lambda v: StudiesPanel(v.path, v.state),
            "Studies"),
    Section("Searches: fooling images (`perturber fool`) and failures off the grid (`perturber search`)",
            lambda v: SearchesPanel(v.path, v.state), "Searches"),
]

#: The served page's template (Panel serves its resources itself: the page needs no CDN).
TEMPLATE = pn.template.BootstrapTemplate


class Page(param.Parameterized):
    """What the page shows besides the state: the open tab (a name of :data:`TABS`)."""

    tab = param.Selector(default=TABS[0], objects=TABS)


class PointView(html.Strip):
    """The top of the page, one pane: the header, the notice (a damaged chunk at the
    point, a failure: one line), the model input and the top-5 of both models."""

    def __init__(self, state: CubeState):
        super().__init__(state, InputPanel(state), Top5Panel(state, "model_a"), Top5Panel(state, "model_b"))
        state.param.watch(self.redraw, ["notice", "render_on"])

    def html(self) -> str:
        state = self.state
        done = f"{int(state.done.sum())} of {state.done.size} chunks computed"
        header = f"<h2 class='pt-title'>Perturber — {escape(state.cube)}</h2><p class='pt-where'><code>{escape(state.path)}</code> · {done}</p>"
        strip = super().html()  # read first: a damaged chunk sets the notice
        notice = f"<div class='pt-notice'>{escape(state.notice)}</div>" if state.notice else ""
        return header + notice + strip


def build_app(path: str, cube: str, state: CubeState | None = None, engine: Any = None,
              sections: Sequence[Section] = SECTIONS) -> pn.Row:
    """The viewer for one cube of a store as one layout, the controls beside the main
    area (``state``: an existing state of that cube to drive; ``engine``: a
    :class:`~perturber.viewer.live.LiveEngine` for live compute; ``sections``: the
    panels of the tabs). Served, the sections are built after the first paint
    (:func:`perturber.viewer.sessions.defer`). Never raises: a store it cannot
    show, or a failure, is one line on the page."""
    return pn.Row(*_parts(path, cube, state, engine, sections))


def build_page(path: str, cube: str, engine: Any = None, sections: Sequence[Section] = SECTIONS, tab: str | None = None) -> Any:
    """The served page: :func:`build_app`'s controls in the sidebar of a :data:`TEMPLATE`, the rest in its main area."""
    sidebar, main = _parts(path, cube, None, engine, sections, tab)
    return TEMPLATE(title="Perturber", sidebar=[sidebar], main=[main], sidebar_width=340, header_background="#2c3e50")


def _parts(path: str, cube: str, state: CubeState | None, engine: Any, sections: Sequence[Section],
           tab: str | None = None) -> tuple[Any, Any]:
    """(sidebar, main); a failure is one line in main."""
    try:
        return _build(path, cube, state, engine, sections, tab)
    except Exception as exc:
        return pn.Column(), pn.Column(pn.pane.Alert(f"Cannot show this store: {sessions.failure('building the page', exc)}",
                                                    alert_type="danger"))


def _build(path: str, cube: str, state: CubeState | None, engine: Any,
           sections: Sequence[Section], tab: str | None = None) -> tuple[ControlsPanel, pn.Column]:
    state = state or CubeState(path, cube, engine=engine)
    viewer = Viewer(path, state, Settled(state))
    sessions.register_notice(lambda line: setattr(state, "notice", line))
    # Served, what is built here is the first paint: the controls, the model input with the top-5, the empty tabs.
    page = Page(tab=tab or TABS[0])  # a link's tab overrides it
    share(state, page)  # a link's values, before anything is drawn
    columns = {name: pn.Column(sizing_mode="stretch_width") for name in TABS}
    tabs = pn.Tabs(*columns.items(), dynamic=False, active=TABS.index(page.tab), sizing_mode="stretch_width")
    widgets.link(tabs, page, "tab", to_widget=TABS.index, from_widget=lambda i: TABS[i], prop="active")
    render = widgets.checkbox(state, "render_on", "show the render before the image factors", css_classes=["pt-render-toggle"])
    main = pn.Column(PointView(state), render, tabs, sizing_mode="stretch_width")
    footnote = Section("", lambda v: html.markdown("Points off the grid and factors the cube holds fixed: *Live (off the "
                                                   "grid)* among the controls computes them with the on-demand engine "
                                                   "(`--engine`).", "pt-small"))
    # A session builds them in this order (a link to another tab: that tab's sections first).
    ordered = sorted([*sections, footnote], key=lambda section: page.tab != TABS[0] and section.tab != page.tab)
    for rank, section in enumerate(ordered):
        sessions.defer(rank, lambda section=section: _add(columns.get(section.tab, columns[TABS[0]]), section, viewer))
    controls = ControlsPanel(state)  # live compute's controls follow the first paint, then a mesh upload below them
    sessions.defer(-1, lambda: _add(controls.view, Section("", lambda v: UploadPanel(v.state)), viewer))
    if sessions.served() is not None:
        sessions.BACKLOG.arrived(sessions.served())
    return controls, main


def _add(column: pn.Column, section: Section, viewer: Viewer) -> None:
    """Build one section at the end of its tab's ``column``; a failure is one line there."""
    title = [html.markdown(f"### {section.title}", "pt-section")] if section.title else []
    before = list(column.objects)
    try:
        panel = section.panel(viewer)
        for obj, names in getattr(panel, "shared", lambda: [])():  # the panel's own controls in the page's URL
            share_panel(viewer.state, obj, names)
        if section.grid:
            panel = pn.Column(html.pane(pn.bind(_not_for_uploads, viewer.state.param.uploaded)), panel)
        column.extend(title + [panel])  # served, Panel renders it here
    except Exception as exc:
        column.objects = before + title + [pn.pane.Alert(sessions.failure(section.title or "a view", exc),
                                                         alert_type="warning")]


#: The state's parameters a link holds (with the open tab): every control of the page.
SHARED = ["model_a", "model_b", "score", "render_on", "live_on", "live_factor", "live_value"]


def share(state: CubeState, page: Page) -> None:
    """Served, keep every control (the axes, the models, the score, the render
    toggle, live compute) and the open tab in the page's URL query, both ways:
    a link reopens the same view. A link's value the cube cannot take (not a
    grid value, an unknown model) is left out, and the page says so in one line."""
    location = pn.state.location if sessions.served() is not None else None
    if location is None:
        return
    shared = [*state.axes, *SHARED]
    query, bad = location.query_params, []
    for name, value in query.items():
        target = page if name == "tab" else state if name in shared else None
        if target is not None and not _valid(target, name, value):
            bad.append(f"{name}={value}")
    if bad:
        location.search = "?" + urlencode({k: json.dumps(v) if not isinstance(v, str) else v for k, v in query.items()
                                            if f"{k}={v}" not in bad})
    location.sync(state, shared)
    location.sync(page, ["tab"])
    if bad:  # after the link's other values (a change clears the notice)
        state.notice = f"this link's {', '.join(bad)} cannot be shown here (not a value of this cube); left as it was"


def share_panel(state: CubeState, obj: param.Parameterized, names: dict[str, str]) -> None:
    """Served, keep a panel's own controls (``names``: parameter → query name) in
    the page's URL as :func:`share` does; a link's value they cannot take is one line."""
    location = pn.state.location if sessions.served() is not None else None
    if location is None:
        return
    query = location.query_params
    bad = [f"{q}={query[q]}" for p, q in names.items() if q in query and not _valid(obj, p, query[q])]
    if bad:
        location.search = "?" + urlencode({k: json.dumps(v) if not isinstance(v, str) else v for k, v in query.items()
                                            if f"{k}={v}" not in bad})
    location.sync(obj, names)
    if bad:
        state.notice = f"this link's {', '.join(bad)} cannot be shown here; left as it was"


def _not_for_uploads(name: str) -> str:
    return (f"<div class='pt-small'>Not for your mesh {escape(name)}: this view reads the cube's grid.</div>"
            if name else "")


def _valid(obj: param.Parameterized, name: str, value: Any) -> bool:
    """Whether ``obj.<name> = value`` would be accepted (a link's value, parsed by Panel)."""
    kind = obj.param[name]
    if not isinstance(kind, (param.Selector, param.Boolean, param.Number)):  # e.g. a class choice: its own check
        try:
            kind._validate(value)
        except Exception:
            return False
        return True
    if isinstance(kind, param.Selector):
        return any(value == v and type(value) is not bool for v in kind.objects)
    if isinstance(kind, param.Boolean):
        return isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def serve(path: str, cube: str | None = None, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
          engine: str | None = None, origins: Sequence[str] = (), tab: str | None = None):
    """Serve the viewer with Panel's server (blocking). ``engine``: None (grid
    points only), 'local' (start a LocalCluster) or a Dask scheduler address;
    ``origins``: more ``host:port`` websocket origins to allow (a proxy's);
    ``tab``: the tab a page without one in its link opens on (one of :data:`TABS`).
    Exposed (``address`` not local), the page and its websocket need a token
    (:mod:`perturber.viewer.security`)."""
    name = cube or stores.cube_names(path)[0]
    token = security.new_token() if security.is_exposed(address) else None  # a bad PERTURBER_TOKEN fails before the engine starts
    allowed = security.origins(address, port, origins)
    extra: dict[str, Any] = {"extra_patterns": [security.component_route()]}
    if token is not None:
        extra["auth_provider"] = security.TokenAuth(token, port)
        host = address if address not in security.ALL_INTERFACES else socket.gethostname()
        print(f"exposed on {address}:{port}: token required, open http://{host}:{port}/?token={token} ; "
              f"websocket origins limited to {', '.join(allowed)}", flush=True)
    else:
        print(f"local only (no token needed): websocket origins limited to {', '.join(allowed)}", flush=True)
    _read_summaries(path, name)
    pn.config.exception_handler = sessions.handle_exception  # tracebacks to the log, one line to the page
    pn.config.console_output = "disable"
    live = None
    if engine:
        live = LiveEngine(scheduler=None if engine == "local" else engine)
        print(f"live compute on {live.where}")
    try:
        pn.serve({"/": lambda: build_page(path, name, engine=live, tab=tab)}, port=port, address=address, show=show and token is None,
                 websocket_origin=allowed, title="Perturber",
                 websocket_max_message_size=MAX_MESSAGE_BYTES, **extra)
    finally:
        if live is not None:
            live.close()


def _read_summaries(path: str, cube: str) -> None:
    """The cube's whole-cube summaries (done marks, top-1, expected-class
    probability), read before serving: once per process, and not on the event
    loop under the first session (a million samples take about a minute).
    A store the viewer cannot show is said by its page too."""
    try:
        stores.done_marks(path, cube)
        summary = stores.analysis(path, cube)
        summary.top1, summary.expected_probability  # noqa: B018 (cached properties, read for their side effect)
    except Exception as exc:
        sessions.failure(f"reading the summaries of cube {cube!r}", exc)
