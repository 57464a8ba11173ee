"""The viewer's layout: the panels of :mod:`perturber.viewer.panels`, assembled.

The top row mirrors the original tool (controls; the model input; the top-5
of two models side by side); below it come the :data:`SECTIONS`, each a title
and a panel built from the :class:`Viewer` context. A new panel is a class in
its own module of ``viewer/panels/`` plus one line in :data:`SECTIONS` (or in
the ``sections`` a caller passes to :func:`build_app`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from html import escape
from typing import Any, Callable, Sequence

import panel as pn

from perturber.viewer import html, security, sessions, stores
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
from perturber.viewer.state import CubeState, Settled

__all__ = ["Viewer", "Section", "SECTIONS", "PointView", "build_app", "serve"]


@dataclass
class Viewer:
    """What a panel is built from: the store's path, the cube's state and its settled tick."""

    path: str
    state: CubeState
    settled: Settled


@dataclass(frozen=True)
class Section:
    """A heading (empty: none) and how to build its panel."""

    title: str
    panel: Callable[[Viewer], Any]


SECTIONS: list[Section] = [
    Section("Response landscape", lambda v: LandscapePanel(v.state, v.settled)),
    Section("Neuron activations", lambda v: NeuronPanel(v.state)),
    Section("", lambda v: SaliencyPanel(v.state)),
    Section("Feature visualisations", lambda v: GalleryPanel(v.path)),
    Section("Adversarial (PGD): attack one model, see whether the others are fooled too", lambda v: AttackPanel(v.state)),
    Section("Failure finder", lambda v: FailurePanel(v.state, v.settled)),
    Section("Sensitivity: how much each axis moves each model", lambda v: SensitivityPanel(v.state)),
    Section("Model against model (every sample, counted per pixel)", lambda v: ScatterPanel(v.state, v.settled)),
    Section("Studies: findings computed into this store (`perturber study`)", lambda v: StudiesPanel(v.path, v.state)),
    Section("Searches: fooling images (`perturber fool`) and failures off the grid (`perturber search`)",
            lambda v: SearchesPanel(v.path, v.state)),
]


class PointView(html.Strip):
    """The top of the page, one pane: the header, the notice (a damaged chunk at the
    point, a failure: one line), the model input and the top-5 of both models."""

    def __init__(self, state: CubeState):
        super().__init__(state, InputPanel(state), Top5Panel(state, "model_a"), Top5Panel(state, "model_b"))
        state.param.watch(self.redraw, ["notice"])

    def html(self) -> str:
        state = self.state
        done = f"{int(state.done.sum())} of {state.done.size} chunks computed"
        header = f"<h2 class='pt-title'>Perturber — {escape(state.cube)}</h2><p class='pt-where'><code>{escape(state.path)}</code> · {done}</p>"
        strip = super().html()  # read first: a damaged chunk sets the notice
        notice = f"<div class='pt-notice'>{escape(state.notice)}</div>" if state.notice else ""
        return header + notice + strip


def build_app(path: str, cube: str, state: CubeState | None = None, engine: Any = None,
              sections: Sequence[Section] = SECTIONS) -> pn.Row | pn.Column:
    """The viewer for one cube of a store (``state``: an existing state of that
    cube to drive; ``engine``: a :class:`~perturber.viewer.live.LiveEngine` for
    live compute; ``sections``: the panels below the top row). Served, the
    sections are built after the first paint (:func:`perturber.viewer.sessions.defer`).
    Never raises: a store it cannot show, or a failure, is one line on the page."""
    try:
        return _build(path, cube, state, engine, sections)
    except Exception as exc:
        return pn.Column(pn.pane.Alert(f"Cannot show this store: {sessions.failure('building the page', exc)}",
                                       alert_type="danger"))


def _build(path: str, cube: str, state: CubeState | None, engine: Any, sections: Sequence[Section]) -> pn.Row:
    state = state or CubeState(path, cube, engine=engine)
    viewer = Viewer(path, state, Settled(state))
    sessions.register_notice(lambda line: setattr(state, "notice", line))
    # Served, what is built here is the first paint: one pane, the controls, two layouts.
    main = pn.Column(PointView(state))
    footnote = Section("", lambda v: html.markdown("Points off the grid and factors the cube holds fixed: *Live (off the "
                                                   "grid)* among the controls computes them with the on-demand engine "
                                                   "(`--engine`).", "pt-small"))
    for rank, section in enumerate([*sections, footnote]):  # a session builds them in this order
        sessions.defer(rank, lambda section=section: _add(main, section, viewer))
    layout = pn.Row(ControlsPanel(state), main)
    if sessions.served() is not None:
        sessions.BACKLOG.arrived(sessions.served())
    return layout


def _add(main: pn.Column, section: Section, viewer: Viewer) -> None:
    """Build one section at the end of ``main``; a failure is one line there."""
    title = [pn.pane.Markdown(f"### {section.title}")] if section.title else []
    before = list(main.objects)
    try:
        main.extend(title + [section.panel(viewer)])  # served, Panel renders it here
    except Exception as exc:
        main.objects = before + title + [pn.pane.Alert(sessions.failure(section.title or "a view", exc), alert_type="warning")]


def serve(path: str, cube: str | None = None, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
          engine: str | None = None, origins: Sequence[str] = ()):
    """Serve the viewer with Panel's server (blocking). ``engine``: None (grid
    points only), 'local' (start a LocalCluster) or a Dask scheduler address;
    ``origins``: more ``host:port`` websocket origins to allow (a proxy's).
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
        pn.serve({"/": lambda: build_app(path, name, engine=live)}, port=port, address=address, show=show and token is None,
                 websocket_origin=allowed, title="Perturber", **extra)
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
