"""The viewer's layout: the panels of :mod:`perturber.viewer.panels`, assembled.

The top row mirrors the original tool (controls; the model input; the top-5
of two models side by side); below it come the :data:`SECTIONS`, each a title
and a panel built from the :class:`Viewer` context. A new panel is a class in
its own module of ``viewer/panels/`` plus one line in :data:`SECTIONS` (or in
the ``sections`` a caller passes to :func:`build_app`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import panel as pn

from perturber.pipeline.store import StoreError
from perturber.viewer import html, stores
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
from perturber.viewer.panels.sensitivity import SensitivityPanel
from perturber.viewer.panels.top5 import Top5Panel
from perturber.viewer.state import CubeState, Settled

__all__ = ["Viewer", "Section", "SECTIONS", "build_app", "serve"]


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
    Section("Model against model (datashader, every sample)", lambda v: ScatterPanel(v.state, v.settled)),
]


def build_app(path: str, cube: str, state: CubeState | None = None, engine: Any = None,
              sections: Sequence[Section] = SECTIONS) -> pn.Column:
    """The viewer for one cube of a store (``state``: an existing state of that
    cube to drive; ``engine``: a :class:`~perturber.viewer.live.LiveEngine` for
    live compute; ``sections``: the panels below the top row)."""
    try:
        state = state or CubeState(path, cube, engine=engine)
    except StoreError as exc:
        return pn.Column(pn.pane.Alert(f"Cannot show this store: {exc}", alert_type="danger"))
    viewer = Viewer(path, state, Settled(state))
    header = pn.pane.Markdown(f"## Perturber — {cube}\n`{path}` · {int(state.done.sum())} of {state.done.size} chunks computed")
    models = pn.Row(
        pn.widgets.Select.from_param(state.param.model_a, name="left model"),
        pn.widgets.Select.from_param(state.param.model_b, name="right model"),
        pn.widgets.RadioButtonGroup.from_param(state.param.score, name="show"),
    )
    main = pn.Column(pn.Row(InputPanel(state), pn.Column(models, pn.Row(Top5Panel(state, "model_a"), Top5Panel(state, "model_b")))))
    for section in sections:
        if section.title:
            main.append(pn.pane.Markdown(f"### {section.title}"))
        main.append(section.panel(viewer))
    main.append(html.markdown("Points off the grid and factors the cube holds fixed: *Live (off the grid)* among the "
                              "controls computes them with the on-demand engine (`--engine`).", "pt-small"))
    return pn.Column(header, pn.Row(ControlsPanel(state), main))


def serve(path: str, cube: str | None = None, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
          engine: str | None = None):
    """Serve the viewer with Panel's server (blocking). ``engine``: None (grid
    points only), 'local' (start a LocalCluster) or a Dask scheduler address."""
    name = cube or stores.cube_names(path)[0]
    live = None
    if engine:
        live = LiveEngine(scheduler=None if engine == "local" else engine)
        print(f"live compute on {live.where}")
    origin = [f"{address}:{port}", f"localhost:{port}"] if address in ("127.0.0.1", "localhost") else ["*"]
    try:
        pn.serve({"/": lambda: build_app(path, name, engine=live)}, port=port, address=address, show=show,
                 websocket_origin=origin, title="Perturber")
    finally:
        if live is not None:
            live.close()
