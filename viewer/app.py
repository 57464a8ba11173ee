"""The Panel layout: controls grouped as in the original, the model input, and
the top-5 of two models side by side. Views depend on :class:`viewer.state.CubeState`."""

from __future__ import annotations

import base64
import io
from typing import Any

import panel as pn

from pipeline import factors
from viewer.state import NOT_COMPUTED, CubeState

__all__ = ["build_app", "serve"]

GROUPS = ["Camera", "Lighting & shading", "Object & shape", "Background", "Colour", "Frequency", "Spatial", "Adversarial"]


def _png(image) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _controls(state: CubeState) -> pn.Column:
    sections = []
    for group in GROUPS:
        rows: list[Any] = []
        for name, f in factors.FACTORS.items():
            if f.group != group:
                continue
            if name in state.axes:
                values = state.param[name].objects
                if f.numeric:
                    widget = pn.widgets.DiscreteSlider.from_param(state.param[name], options=values, name=name)
                else:
                    widget = pn.widgets.Select.from_param(state.param[name], name=name)
                rows.append(widget)
            elif name in state.fixed and state.fixed[name] != f.default:
                rows.append(pn.pane.Markdown(f"`{name}` = {state.fixed[name]} *(fixed)*", margin=(0, 10)))
        if rows:
            sections.append(pn.Card(*rows, title=group, collapsed=False, sizing_mode="stretch_width"))
    return pn.Column(*sections, width=320)


def _input_view(state: CubeState):
    @pn.depends(*[state.param[a] for a in state.axes])
    def view(*_):
        image = state.image()
        credits = "<br>".join(state.attributions())
        if image is None:
            body = f"<div class='pt-input pt-missing' style='width:224px;height:224px;display:flex;align-items:center;justify-content:center;background:#eee'>{NOT_COMPUTED}</div>"
        else:
            body = f"<img class='pt-input' src='{_png(image)}' width='{image.shape[1]}' height='{image.shape[0]}'>"
        return pn.pane.HTML(f"<div>{body}<div class='pt-credits' style='font-size:10px;color:#555;max-width:320px'>{credits}</div></div>")

    return view


def _top5_view(state: CubeState, which: str):
    @pn.depends(*[state.param[a] for a in state.axes], state.param[which], state.param.score)
    def view(*_):
        model = getattr(state, which)
        rows = state.top5(model)
        if rows is None:
            table = f"<p class='pt-missing'>{NOT_COMPUTED}</p>"
        else:
            score = (lambda p, l: f"{p:.3f}") if state.score == "probability" else (lambda p, l: f"{l:.2f}")
            items = "".join(f"<tr><td>{i}</td><td>{name}</td><td style='text-align:right'>{score(p, l)}</td></tr>"
                            for i, (name, p, l) in enumerate(rows, 1))
            table = f"<table class='pt-top5'><tr><th>#</th><th>class</th><th>{state.score}</th></tr>{items}</table>"
        return pn.pane.HTML(f"<div class='pt-model pt-{which}'><b>{model}</b>{table}</div>", width=300)

    return view


def build_app(path: str, cube: str) -> pn.template.BaseTemplate | pn.Column:
    """The viewer for one cube of a store."""
    from pipeline.store import StoreError

    try:
        state = CubeState(path, cube)
    except StoreError as exc:
        return pn.Column(pn.pane.Alert(f"Cannot show this store: {exc}", alert_type="danger"))
    header = pn.pane.Markdown(f"## Perturber — {cube}\n`{path}` · {int(state._done.sum())} of {state._done.size} chunks computed")
    models = pn.Row(
        pn.widgets.Select.from_param(state.param.model_a, name="left model"),
        pn.widgets.Select.from_param(state.param.model_b, name="right model"),
        pn.widgets.RadioButtonGroup.from_param(state.param.score, name="show"),
    )
    main = pn.Column(
        pn.Row(_input_view(state), pn.Column(models, pn.Row(_top5_view(state, "model_a"), _top5_view(state, "model_b")))),
    )
    note = pn.pane.Markdown("Points off the grid and factors the cube holds fixed are not computable yet "
                            "(live compute comes with the on-demand engine).", styles={"font-size": "11px"})
    return pn.Column(header, pn.Row(_controls(state), pn.Column(main, note)))


def serve(path: str, cube: str | None = None, port: int = 5006, address: str = "127.0.0.1", show: bool = False):
    """Serve the viewer with Panel's server (blocking)."""
    from viewer.state import cube_names

    name = cube or cube_names(path)[0]
    origin = [f"{address}:{port}", f"localhost:{port}"] if address in ("127.0.0.1", "localhost") else ["*"]
    pn.serve({"/": lambda: build_app(path, name)}, port=port, address=address, show=show,
             websocket_origin=origin, title="Perturber")
