"""The Panel layout: controls grouped as in the original, the model input, and
the top-5 of two models side by side. Views depend on :class:`viewer.state.CubeState`."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import panel as pn

from pipeline import factors
from viewer.state import NOT_COMPUTED, CubeState, Landscape, expected_probability, failures, sensitivity

__all__ = ["build_app", "serve"]

NEURONS_PER_GROUP = 8
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
    defaults = [f"`{n}` = {state.fixed[n]}" for n, f in factors.FACTORS.items()
                if n in state.fixed and state.fixed[n] == f.default and n not in ("expression",)]
    sections.append(pn.Card(pn.pane.Markdown("<br>".join(defaults), styles={"font-size": "11px"}),
                            title="Fixed at their defaults", collapsed=True, sizing_mode="stretch_width"))
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


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _landscape_views(state: CubeState, land: Landscape):
    import holoviews as hv

    hv.extension("bokeh", logo=False)
    names = state.ds["class_name"].values

    @pn.depends(*[state.param[a] for a in state.axes], state.param.model_a, state.param.model_b,
                land.param.target, land.param.axis)
    def curves(*_):
        data = land.curves()
        if data is None:
            return pn.pane.HTML(f"<p class='pt-missing'>{NOT_COMPUTED}</p>")
        target = land.target_class()
        plots = [hv.Curve((list(range(len(v))), p), "index", "probability", label=m).opts(tools=["hover"])
                 for m, (v, p) in data.items()]
        values = next(iter(data.values()))[0]
        here = values.index(getattr(state, land.axis))
        overlay = hv.Overlay(plots) * hv.VLine(here).opts(color="black", line_dash="dashed")
        ticks = [(i, _label(v)) for i, v in enumerate(values)]
        return pn.pane.HoloViews(overlay.opts(
            title=f"p({names[target]}) along {land.axis}", xticks=ticks, xlabel=land.axis, ylim=(0, 1),
            width=420, height=240, legend_position="top_left"), css_classes=["pt-curves"])

    tap = hv.streams.Tap(x=None, y=None)

    def heatmap(**_):
        # The same cells every time (NaN where there is nothing to show): Bokeh
        # updates its data source in place and rejects columns changing length.
        xs, ys = state.param[land.x].objects, state.param[land.y].objects
        data = land.heatmap()
        p = data[2] if data is not None else np.full((len(ys), len(xs)), np.nan)
        target = land.target_class()
        if land.x == land.y:
            title = "choose two different axes"
        elif target is None:
            title = f"{NOT_COMPUTED} here"
        else:
            title = f"p({names[target]}), {state.model_a}: click a cell to go there"
        cells = [(_label(x), _label(y), float(p[j, i])) for j, y in enumerate(ys) for i, x in enumerate(xs)]
        return hv.HeatMap(cells, [hv.Dimension("hx", label=land.x), hv.Dimension("hy", label=land.y)], "probability").opts(
            title=title, cmap="viridis", clim=(0, 1), colorbar=True, width=460, height=280, tools=["tap", "hover"])

    dynamic = hv.DynamicMap(heatmap, streams=[
        tap,
        hv.streams.Params(state, [*state.axes, "model_a"]),
        hv.streams.Params(land, ["target", "x", "y"]),
    ])

    def on_tap(x=None, y=None):
        if x is None or y is None:
            return
        for axis, label in ((land.x, x), (land.y, y)):
            for value in state.param[axis].objects:
                if _label(value) == str(label):
                    setattr(state, axis, value)

    tap.add_subscriber(on_tap)
    return curves, pn.pane.HoloViews(dynamic, css_classes=["pt-heatmap"])


def _sensitivity_view(state: CubeState):
    import holoviews as hv

    ranking = sensitivity(state)  # whole-cube statistic: computed once per session
    plots = []
    for model, by_axis in ranking.items():
        items = sorted(by_axis.items(), key=lambda kv: -np.nan_to_num(kv[1]))
        bars = hv.Bars(items, hv.Dimension("axis"), hv.Dimension("spread", label="mean spread of top-1 probability"))
        plots.append(pn.pane.HoloViews(bars.opts(title=model, width=320, height=220, invert_axes=True,
                                                 tools=["hover"], color="#4c72b0", ylim=(0, 1))))
    return pn.Row(*plots, css_classes=["pt-sensitivity"])


def _failure_view(state: CubeState):
    @pn.depends(*[state.param[a] for a in state.axes], state.param.model_a)
    def view(*_):
        found = failures(state, state.model_a, limit=8)
        if not found:
            return pn.pane.Markdown(f"No failure of {state.model_a} for this object in the computed cells.")
        rows = []
        for f in found:
            changes = ", ".join(f"{a}={_label(f[a])}" for a in state.axes if f[a] != getattr(state, a))
            button = pn.widgets.Button(name=f"{changes or 'here'} → {f['top1']} ({f['p']:.2f})", button_type="light",
                                       css_classes=["pt-failure"], width=460)
            button.on_click(lambda _event, target=f: state.param.update(**{a: target[a] for a in state.axes}))
            rows.append(button)
        return pn.Column(pn.pane.Markdown(f"Nearest points where **{state.model_a}** stops reading this object "
                                          "(click to go there):"), *rows)

    return view


def _neuron_view(state: CubeState, layer: pn.widgets.Select, group: pn.widgets.Select):
    @pn.depends(*[state.param[a] for a in state.axes], state.param.model_a, state.param.model_b, layer.param.value,
                group.param.value)
    def view(*_):
        from pipeline.figures import activation_overlay

        image = state.image()
        columns = []
        for model in dict.fromkeys([state.model_a, state.model_b]):
            name = f"act_{model}_{layer.value}"
            if layer.value is None or name not in state.ds or image is None:
                continue
            acts = state.ds[name].isel(**dict(zip(state.axes, state.index()))).values.astype(np.float32)
            neurons = state.ds[f"neuron_{name[4:]}"].values
            start = int(group.value or 0)
            shown = slice(start, start + NEURONS_PER_GROUP)
            tiles = "".join(f"<figure style='display:inline-block;margin:2px'><img src='{_png(activation_overlay(image, a))}' width='96'>"
                            f"<figcaption style='font-size:9px'>#{n}</figcaption></figure>" for n, a in zip(neurons[shown], acts[shown]))
            columns.append(f"<div class='pt-neurons'><b>{model} · {layer.value}</b> (red positive, blue negative)<br>{tiles}</div>")
        if not columns:
            return pn.pane.HTML(f"<p class='pt-missing'>{NOT_COMPUTED if image is None else 'no activations stored'}</p>")
        return pn.pane.HTML("".join(columns), width=900)

    return view


def _scatter_view(state: CubeState):
    import holoviews as hv
    from holoviews.operation.datashader import dynspread, rasterize

    probs = expected_probability(state.path, state.cube)  # (*axes, model), once per process
    models = [str(m) for m in state.ds["model"].values]

    @pn.depends(*[state.param[a] for a in state.axes], state.param.model_a, state.param.model_b)
    def view(*_):
        a, b = models.index(state.model_a), models.index(state.model_b)
        xa, xb = probs[..., a].ravel(), probs[..., b].ravel()
        keep = ~(np.isnan(xa) | np.isnan(xb))
        points = hv.Points((xa[keep], xb[keep]), [f"p(object's classes), {state.model_a}", f"p(object's classes), {state.model_b}"])
        here = probs[state.index()]
        marker = hv.Points([(here[a], here[b])]).opts(color="red", size=10, marker="x", line_width=3)
        shaded = dynspread(rasterize(points, width=300, height=300, x_range=(0, 1), y_range=(0, 1))).opts(
            cmap="Blues", cnorm="eq_hist", colorbar=False)
        return pn.pane.HoloViews((shaded * marker).opts(width=380, height=360, xlim=(0, 1), ylim=(0, 1),
                                                       title=f"all {int(keep.sum())} computed samples; x: current point"),
                                 css_classes=["pt-scatter"])

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
    land = Landscape(state)
    curves, heatmap = _landscape_views(state, land)
    landscape_controls = pn.Row(
        pn.widgets.IntInput.from_param(land.param.target, name="class (-1: top class here)", width=170),
        pn.widgets.Select.from_param(land.param.axis, name="curve axis", width=120),
        pn.widgets.Select.from_param(land.param.x, name="heatmap x", width=120),
        pn.widgets.Select.from_param(land.param.y, name="heatmap y", width=120),
    )
    main = pn.Column(
        pn.Row(_input_view(state), pn.Column(models, pn.Row(_top5_view(state, "model_a"), _top5_view(state, "model_b")))),
        pn.pane.Markdown("### Response landscape"),
        landscape_controls,
        pn.Row(curves, heatmap),
    )
    layers = sorted({str(state.ds[v].attrs.get("layer")) for v in state.ds.data_vars if v.startswith("act_")})
    layer = pn.widgets.Select(name="layer", options=layers, value=layers[0] if layers else None, width=160)
    most = max((state.ds[v].shape[len(state.axes)] for v in state.ds.data_vars if v.startswith("act_")), default=0)
    starts = {f"neurons {i}-{min(i + NEURONS_PER_GROUP, most) - 1}": i for i in range(0, most, NEURONS_PER_GROUP)}
    group = pn.widgets.Select(name="neuron group (stored order)", options=starts or {"-": 0}, width=200)
    main.extend([
        pn.pane.Markdown("### Neuron activations"), pn.Row(layer, group), _neuron_view(state, layer, group),
        pn.pane.Markdown("### Failure finder"), _failure_view(state),
        pn.pane.Markdown("### Sensitivity: how much each axis moves each model"), _sensitivity_view(state),
        pn.pane.Markdown("### Model against model (datashader, every sample)"), _scatter_view(state),
    ])
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
