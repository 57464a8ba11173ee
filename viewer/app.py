"""The Panel layout: controls grouped as in the original, the model input, and
the top-5 of two models side by side. Views depend on :class:`viewer.state.CubeState`."""

from __future__ import annotations

import base64
import functools
import io
from typing import Any

import numpy as np
import panel as pn
import param

from perturber.pipeline import factors
from perturber.viewer.state import NOT_COMPUTED, CubeState, Landscape, expected_probability, failures, sensitivity, softmax

__all__ = ["build_app", "serve"]

NEURONS_PER_GROUP = 8
TILE = 96  # px, one activation map
SETTLE_MS = 20  # the slower views start this long after the quick ones were sent
GROUPS = ["Camera", "Lighting & shading", "Object & shape", "Background", "Colour", "Frequency", "Spatial", "Adversarial"]


class Settled(param.Parameterized):
    """Ticks once the quick views (input, top-5, activations) of a new point
    have been sent; the slower views (landscape, failures, scatter marker)
    depend on it, so the image never waits for them."""

    tick = param.Integer(default=0)

    def __init__(self, state: CubeState, **params: Any):
        super().__init__(**params)
        self._pending = False
        state.param.watch(self._changed, [*state.axes, "model_a", "model_b"])

    def _changed(self, *_):
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:  # no server (tests, benchmarks): at once
            self.tick += 1
        elif not self._pending:  # several changes before it runs: one update
            self._pending = True
            # A next-tick callback can run before the quick views' messages
            # have left; a short timeout lets them go first.
            doc.add_timeout_callback(self._bump, SETTLE_MS)

    def _bump(self):
        self._pending = False
        self.tick += 1


def _png(image) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # lossless; level 1 encodes ~5x faster than 6
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _live_controls(state: CubeState) -> pn.Card:
    """Off the grid: any numeric factor (an axis or a fixed one) at any value of
    its domain, computed by the on-demand engine and marked LIVE."""
    toggle = pn.widgets.Checkbox.from_param(state.param.live_on, name="compute live (off the grid)",
                                            disabled=state.engine is None, css_classes=["pt-live-toggle"])
    factor = pn.widgets.Select.from_param(state.param.live_factor, name="factor")

    def bounds(name):
        domain = factors.get(name).domain
        return float(domain.lo), float(domain.hi)

    lo, hi = bounds(state.live_factor)
    slider = pn.widgets.FloatSlider(name="value", start=lo, end=hi, value=min(max(state.live_value, lo), hi),
                                    step=(hi - lo) / 1000, css_classes=["pt-live-slider"])
    slider.param.watch(lambda e: setattr(state, "live_value", float(e.new)), "value_throttled")

    def on_factor(event):  # the state has already moved live_value to the factor's current value
        lo, hi = bounds(event.new)
        slider.param.update(start=lo, end=hi, step=(hi - lo) / 1000, value=min(max(state.live_value, lo), hi))

    state.param.watch(on_factor, "live_factor")
    status = pn.pane.HTML(pn.bind(lambda text: f"<div class='pt-live-status' style='font-size:11px'>{text}</div>",
                                  state.param.live_status))
    note = ("" if state.engine is not None else
            "<div class='pt-live-off' style='font-size:11px;color:#a00'>Live compute is off: start the viewer with "
            "<code>--engine local</code> (or the address of a Dask scheduler). Grid points work as before.</div>")
    return pn.Card(toggle, factor, slider, status, pn.pane.HTML(note), title="Live (off the grid)",
                   collapsed=False, sizing_mode="stretch_width")


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
    sections.append(_live_controls(state))
    return pn.Column(*sections, width=320)


def _input_view(state: CubeState) -> pn.pane.HTML:
    def html(*_):
        image = state.image()
        credits = "<br>".join(state.attributions())
        if state.live_on:
            badge = (f"<div class='pt-live' style='background:#c0392b;color:white;font-size:11px;padding:2px 6px;display:inline-block'>"
                     f"LIVE · {state.live_factor} = {state.live_value:g}</div>")
            if image is None:
                return f"{badge}<div class='pt-missing' style='width:224px'>{state.live_status or 'computing…'}</div>"
            return f"{badge}<br><img class='pt-input' src='{_png(image)}' width='{image.shape[1]}'><div class='pt-credits' style='font-size:10px;color:#555;max-width:320px'>{credits}</div>"
        if image is None:
            body = f"<div class='pt-input pt-missing' style='width:224px;height:224px;display:flex;align-items:center;justify-content:center;background:#eee'>{NOT_COMPUTED}</div>"
        else:
            body = f"<img class='pt-input' src='{_png(image)}' width='{image.shape[1]}' height='{image.shape[0]}'>"
        return f"<div>{body}<div class='pt-credits' style='font-size:10px;color:#555;max-width:320px'>{credits}</div></div>"

    # One pane whose text is replaced in place: cheaper than a new pane per change.
    return pn.pane.HTML(pn.bind(html, *[state.param[a] for a in state.axes], state.param.live_result, state.param.live_status))


def _top5_view(state: CubeState, which: str) -> pn.pane.HTML:
    def html(*_):
        model = getattr(state, which)
        rows = state.top5(model)
        if rows is None:
            table = f"<p class='pt-missing'>{NOT_COMPUTED}</p>"
        else:
            score = (lambda p, l: f"{p:.3f}") if state.score == "probability" else (lambda p, l: f"{l:.2f}")
            items = "".join(f"<tr><td>{i}</td><td>{name}</td><td style='text-align:right'>{score(p, l)}</td></tr>"
                            for i, (name, p, l) in enumerate(rows, 1))
            table = f"<table class='pt-top5'><tr><th>#</th><th>class</th><th>{state.score}</th></tr>{items}</table>"
        return f"<div class='pt-model pt-{which}'><b>{model}</b>{table}</div>"

    return pn.pane.HTML(pn.bind(html, *[state.param[a] for a in state.axes], state.param[which], state.param.score,
                                state.param.live_result), width=300)


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _landscape_views(state: CubeState, land: Landscape, settled: Settled):
    import holoviews as hv

    hv.extension("bokeh", logo=False)
    names = state.ds["class_name"].values

    def curve_frame(**_):
        # Always two curves (left, right) with NaN where there is nothing: the
        # plot then updates its data in place as the point moves.
        values = state.param[land.axis].objects
        data = land.curves()
        target = land.target_class()
        nan = np.full(len(values), np.nan)
        plots = []
        for side, model in (("left", state.model_a), ("right", state.model_b)):
            p = data[model][1] if data is not None else nan
            plots.append(hv.Curve((list(range(len(values))), p), "index", "probability", label=f"{side}: {model}"))
        here = values.index(getattr(state, land.axis))
        title = f"{NOT_COMPUTED} here" if target is None else f"p({names[target]}) along {land.axis}"
        return (hv.Overlay(plots) * hv.VLine(here).opts(color="black", line_dash="dashed")).opts(title=title)

    @pn.depends(land.param.axis)
    def curves(*_):
        values = state.param[land.axis].objects
        ticks = [(i, _label(v)) for i, v in enumerate(values)]
        dynamic = hv.DynamicMap(curve_frame, streams=[hv.streams.Params(settled, ["tick"]), hv.streams.Params(land, ["target"])])
        return pn.pane.HoloViews(dynamic.opts(hv.opts.Curve(tools=["hover"]), hv.opts.Overlay(
            xticks=ticks, xlabel=land.axis, ylim=(0, 1), width=420, height=240, legend_position="top_left")),
            css_classes=["pt-curves"])

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
        hv.streams.Params(settled, ["tick"]),
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


def _failure_view(state: CubeState, settled: Settled):
    @pn.depends(settled.param.tick)
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


@functools.lru_cache(maxsize=4096)
def _fv_png(path: str, model: str, layer: str, unit: int, parameterisation: str) -> str | None:
    """The stored feature visualisation of a channel as a data URI (None: not in the store or not computed)."""
    from perturber.featureviz import precompute as fv

    ds = _featureviz(path)
    found = fv.lookup(ds, model, layer)
    if found is None or unit not in found[1]:
        return None
    array, position = found
    params = [str(p) for p in ds["parameterisation"].values]
    if parameterisation not in params:
        return None
    p, i = params.index(parameterisation), position[unit]
    if not fv.completed(ds, array.name[3:])[p, i]:
        return None
    return _png(np.asarray(array[p, i].values))


@functools.lru_cache(maxsize=8)
def _featureviz(path: str):
    from perturber.featureviz import precompute as fv

    return fv.open_featureviz(path)


def _positions(state: CubeState, variable: str, label: str) -> list[int]:
    """Positions along ``variable``'s stored neurons of the group ``label``."""
    from perturber.featureviz.groups import neuron_groups

    if label.startswith("stored "):
        lo, hi = (int(v) for v in label.split()[-1].split("-"))
        return list(range(lo, min(hi + 1, state.ds[variable].shape[len(state.axes)])))
    return neuron_groups(state.path, state.cube, variable, NEURONS_PER_GROUP).get(label, [])


def _neuron_view(state: CubeState, layer: pn.widgets.Select, group: pn.widgets.Select,
                 parameterisation: pn.widgets.RadioButtonGroup | None = None, per_model: int = NEURONS_PER_GROUP) -> pn.pane.HTML:
    """Activation maps of up to ``per_model`` neurons of the chosen group for
    each compared model, each beside its feature visualisation when the store has one."""

    def html(*_):
        from PIL import Image

        from perturber.pipeline.figures import activation_overlay

        image = state.image()
        columns = []
        if image is not None:  # overlays at the size shown: 5x fewer pixels to colour and encode
            image = np.asarray(Image.fromarray(image).resize((TILE, TILE), Image.BILINEAR))
        fv_kind = parameterisation.value if parameterisation is not None else "fourier"
        for model in dict.fromkeys([state.model_a, state.model_b]):
            name = f"act_{model}_{layer.value}"
            if layer.value is None or name not in state.ds or image is None:
                continue
            shown = _positions(state, name, str(group.value))[:per_model]
            acts = state.activations(model, str(layer.value), shown)
            if acts is None:
                continue
            neurons = state.ds[f"neuron_{name[4:]}"].values[shown]
            tiles = []
            for n, a in zip(neurons, acts):
                viz = _fv_png(state.path, model, str(layer.value), int(n), fv_kind)
                extra = f"<img class='pt-fv' src='{viz}' width='{TILE}' title='feature visualisation ({fv_kind})'>" if viz else ""
                tiles.append(f"<figure style='display:inline-block;margin:2px'><img src='{_png(activation_overlay(image, a))}' width='{TILE}'>"
                             f"{extra}<figcaption style='font-size:9px'>#{n}</figcaption></figure>")
            columns.append(f"<div class='pt-neurons'><b>{model} · {layer.value}</b> (red positive, blue negative"
                           f"{'; beside each: its feature visualisation' if 'pt-fv' in ''.join(tiles) else ''})<br>{''.join(tiles)}</div>")
        if not columns:
            return f"<p class='pt-missing'>{NOT_COMPUTED if image is None else 'no activations stored'}</p>"
        return "".join(columns)

    deps = [*[state.param[a] for a in state.axes], state.param.model_a, state.param.model_b, layer.param.value, group.param.value,
            state.param.live_result]
    if parameterisation is not None:
        deps.append(parameterisation.param.value)
    return pn.pane.HTML(pn.bind(html, *deps), width=900)


def _gallery_view(path: str):
    """Every stored feature visualisation of one target (a layer's channels or
    directions, or class logits), with how much the optimisation raised its objective."""
    from perturber.featureviz import precompute as fv

    ds = _featureviz(path)
    if ds is None:
        return pn.pane.Markdown("No feature visualisations in this store (`perturber featureviz` adds them).")
    names = {f"{v.attrs['model']} · {v.attrs['layer']} ({v.attrs['kind']}s)": k[3:] for k, v in ds.data_vars.items() if k.startswith("fv_")}
    target = pn.widgets.Select(name="gallery", options=names, width=320)
    kind = pn.widgets.RadioButtonGroup(options=[str(p) for p in ds["parameterisation"].values])
    settings = fv.settings_of(ds)
    classes = None

    def html(name, parameterisation):
        nonlocal classes
        array = ds[f"fv_{name}"]
        p = [str(v) for v in ds["parameterisation"].values].index(parameterisation)
        done = fv.completed(ds, name)[p]
        objective = ds[f"objective_{name}"].values[p]
        units = ds[f"unit_{name}"].values
        if array.attrs["kind"] == "logit" and classes is None:
            from perturber.pipeline.models import imagenet_categories

            classes = imagenet_categories()
        tiles = []
        for i, unit in enumerate(units):
            label = classes[int(unit)] if array.attrs["kind"] == "logit" else f"#{unit}"
            if not done[i]:
                tiles.append(f"<figure style='display:inline-block;margin:2px;width:{TILE}px'><div style='width:{TILE}px;height:{TILE}px;"
                             f"background:#eee;font-size:9px'>{NOT_COMPUTED}</div><figcaption style='font-size:9px'>{label}</figcaption></figure>")
                continue
            start, end = objective[i]
            tiles.append(f"<figure style='display:inline-block;margin:2px;width:{TILE}px'><img src='{_png(np.asarray(array[p, i].values))}' width='{TILE}'>"
                         f"<figcaption style='font-size:9px' title='objective on the starting image, then on this one'>{label}: "
                         f"{start:.2g} → {end:.2g}</figcaption></figure>")
        head = (f"<p style='font-size:11px'>{settings.get('steps')} steps at {settings.get('size')} px, seed {settings.get('seed')}, "
                f"{settings.get('transforms')}; below each: its objective on the starting image → on the result</p>")
        return f"<div class='pt-gallery'>{head}{''.join(tiles)}</div>"

    return pn.Column(pn.Row(target, kind), pn.pane.HTML(pn.bind(html, target, kind), width=900))


def _scatter_view(state: CubeState, settled: Settled):
    import holoviews as hv
    from holoviews.operation.datashader import dynspread, rasterize

    probs = expected_probability(state.path, state.cube)  # (*axes, model), once per process
    models = [str(m) for m in state.ds["model"].values]

    def marker(**_):
        here = probs[state.index()]
        a, b = models.index(state.model_a), models.index(state.model_b)
        return hv.Points([(here[a], here[b])]).opts(color="red", size=10, marker="x", line_width=3)

    # Shading every sample is redone only when the models change; the marker of
    # the current point is a small overlay updated in place.
    @pn.depends(state.param.model_a, state.param.model_b)
    def view(*_):
        a, b = models.index(state.model_a), models.index(state.model_b)
        xa, xb = probs[..., a].ravel(), probs[..., b].ravel()
        keep = ~(np.isnan(xa) | np.isnan(xb))
        points = hv.Points((xa[keep], xb[keep]), [f"p(object's classes), {state.model_a}", f"p(object's classes), {state.model_b}"])
        shaded = dynspread(rasterize(points, width=300, height=300, x_range=(0, 1), y_range=(0, 1))).opts(
            cmap="Blues", cnorm="eq_hist", colorbar=False)
        here = hv.DynamicMap(marker, streams=[hv.streams.Params(settled, ["tick"])])
        return pn.pane.HoloViews((shaded * here).opts(width=380, height=360, xlim=(0, 1), ylim=(0, 1),
                                                     title=f"all {int(keep.sum())} computed samples; x: current point"),
                                 css_classes=["pt-scatter"])

    return view


ALPHAS = tuple(round(a / 10, 1) for a in range(11))  # the transfer view's alpha grid, evaluated after each step


class AttackState(param.Parameterized):
    """PGD at the current point: δ kept across steps, the models on x + αδ."""

    model = param.Selector(doc="Attacked model")
    target = param.Integer(default=-1, bounds=(-1, 999), doc="Target class (-1: suppress the original prediction)")
    eps = param.Number(default=8 / 255, bounds=(1e-4, 64.0), doc="Bound, in [0, 1] pixel units")
    norm = param.Selector(default="linf", objects=["linf", "l2"])
    steps = param.Integer(default=10, bounds=(1, 500), doc="Steps of the 'run' button")
    alpha = param.Selector(default=1.0, objects=list(ALPHAS), doc="Blend: x + alpha * delta")
    delta_only = param.Boolean(default=False, doc="Show delta alone, amplified")
    done = param.Integer(default=0, doc="Steps taken")
    status = param.String(default="")

    def __init__(self, state: CubeState, **params: Any):
        super().__init__(**params)
        self.state = state
        models = [str(m) for m in state.ds["model"].values]
        self.param.model.objects = models
        self.model = state.model_a
        self.delta = None  # (3, S, S) float32
        self.label: int | None = None
        self.logits = None  # (alpha, model, 1000)
        self.models = models
        state.param.watch(self.reset, [*state.axes, "live_result"])
        self.param.watch(self.reset, ["model", "target", "eps", "norm"])

    def reset(self, *_):
        self.delta, self.label, self.logits = None, None, None
        self.param.update(done=0, status="")

    def run(self, steps: int, progress=None) -> None:
        """``steps`` PGD steps (one task each, on the engine when there is one), then the alpha grid."""
        from perturber.viewer.live import EngineError, attack_task

        image = self.state.image()
        if image is None:
            self.status = "nothing to attack here (not computed)"
            return
        if self.delta is None:
            self.delta = np.zeros((3, *image.shape[:2]), dtype=np.float32)
        target = None if self.target < 0 else self.target
        try:
            for i in range(steps):
                last = i == steps - 1
                args = (image, self.delta, self.model, float(self.eps), self.norm, target, self.label, 1,
                        ALPHAS if last else (), self.models if last else [])
                engine = self.state.engine
                self.delta, self.label, logits = engine.call(attack_task, *args) if engine is not None else attack_task(*args)
                self.done += 1
                if progress is not None:
                    progress(i + 1)
            self.logits = logits
        except (EngineError, ValueError) as exc:
            self.status = f"attack failed: {str(exc).splitlines()[0]}"
            return
        except Exception as exc:
            self.status = f"attack failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            return
        flat = self.delta.reshape(-1)
        size = float(np.abs(flat).max()) if self.norm == "linf" else float(np.linalg.norm(flat))
        where = "on the engine" if self.state.engine is not None else "in the viewer"
        self.status = f"{self.done} step(s) {where}; |δ| = {size:.4g} (ε = {self.eps:.4g})"


def _attack_views(state: CubeState):
    """The PGD panel: controls, the attacked input (x + αδ, or δ alone), the
    transfer view (every model on the blended image) and input-gradient saliency."""
    attack = AttackState(state)
    names = state.ds["class_name"].values
    progress = pn.indicators.Progress(value=0, max=100, width=200, visible=False)
    step = pn.widgets.Button(name="PGD step (ε/8)", button_type="primary", css_classes=["pt-pgd-step"])
    run = pn.widgets.Button(name="run N steps", css_classes=["pt-pgd-run"])
    reset = pn.widgets.Button(name="reset δ")

    def go(n):
        progress.param.update(visible=True, max=n, value=0)
        attack.run(n, progress=lambda i: setattr(progress, "value", i))
        progress.visible = False

    step.on_click(lambda _e: go(1))
    run.on_click(lambda _e: go(attack.steps))
    reset.on_click(lambda _e: attack.reset())
    controls = pn.Row(
        pn.widgets.Select.from_param(attack.param.model, name="attacked model", width=170),
        pn.widgets.IntInput.from_param(attack.param.target, name="target (-1: suppress)", width=130),
        pn.widgets.FloatInput.from_param(attack.param.eps, name="ε", width=90),
        pn.widgets.Select.from_param(attack.param.norm, name="norm", width=70),
        pn.widgets.IntInput.from_param(attack.param.steps, name="N", width=70),
    )
    buttons = pn.Row(step, run, reset, progress)
    blend = pn.Row(pn.widgets.DiscreteSlider.from_param(attack.param.alpha, name="α (blend x + αδ)", css_classes=["pt-alpha"]),
                   pn.widgets.Checkbox.from_param(attack.param.delta_only, name="show δ alone (amplified)",
                                                  css_classes=["pt-delta-only"]))

    def view(*_):
        image = state.image()
        if attack.delta is None or attack.logits is None or image is None:
            return f"<div class='pt-attack'><p>{attack.status or 'No perturbation yet: press PGD step.'}</p></div>"
        x = image.astype(np.float32) / 255
        d = attack.delta.transpose(1, 2, 0)
        if attack.delta_only:
            shown = np.clip(0.5 + d / (2 * max(float(np.abs(d).max()), 1e-8)), 0, 1)
        else:
            shown = np.clip(x + attack.alpha * d, 0, 1)
        a = ALPHAS.index(attack.alpha)
        rows = []
        for m, model in enumerate(attack.models):
            p = softmax(attack.logits[a, m])
            before = softmax(attack.logits[0, m])
            top, orig = int(p.argmax()), int(before.argmax())
            mark = " (attacked)" if model == attack.model else ""
            rows.append(f"<tr class='pt-transfer-{model}'><td>{model}{mark}</td><td>{names[orig]} ({before[orig]:.2f})</td>"
                        f"<td>{names[top]} ({p[top]:.2f})</td></tr>")
        table = ("<table class='pt-transfer'><tr><th>model</th><th>α = 0</th><th>α = " + f"{attack.alpha:g}" + "</th></tr>"
                 + "".join(rows) + "</table>")
        label = "δ alone (amplified)" if attack.delta_only else f"x + {attack.alpha:g} δ"
        return (f"<div class='pt-attack'><p class='pt-attack-status'>{attack.status}</p><figure style='display:inline-block'>"
                f"<img class='pt-attacked' src='{_png((shown * 255).round().astype(np.uint8))}' width='224'>"
                f"<figcaption>{label}</figcaption></figure>{table}</div>")

    panel = pn.pane.HTML(pn.bind(view, attack.param.done, attack.param.alpha, attack.param.delta_only, attack.param.status), width=900)
    return pn.Column(controls, buttons, blend, panel), attack


def _saliency_view(state: CubeState):
    """Input-gradient saliency of each compared model at the current point."""
    toggle = pn.widgets.Checkbox(name="input-gradient saliency (computed here)", value=False, css_classes=["pt-saliency-toggle"])

    def html(*_):
        if not toggle.value:
            return ""
        from perturber.pipeline.attack import saliency
        from perturber.pipeline.imageops import to_tensor

        image = state.image()
        if image is None:
            return f"<p class='pt-missing'>{NOT_COMPUTED}</p>"
        x = to_tensor(image).contiguous()
        tiles = []
        for model in dict.fromkeys([state.model_a, state.model_b]):
            s = saliency(x, model)[0].numpy()
            tiles.append(f"<figure style='display:inline-block;margin:2px'><img class='pt-saliency' src='{_png((s * 255).astype(np.uint8))}' "
                         f"width='{TILE * 2}'><figcaption style='font-size:9px'>{model}</figcaption></figure>")
        return "".join(tiles)

    return pn.Column(toggle, pn.pane.HTML(pn.bind(html, toggle, *[state.param[a] for a in state.axes], state.param.model_a,
                                                  state.param.model_b, state.param.live_result), width=900))


def build_app(path: str, cube: str, state: CubeState | None = None, engine: Any = None) -> pn.Column:
    """The viewer for one cube of a store (``state``: an existing state of that
    cube to drive; ``engine``: a viewer.live.LiveEngine for live compute)."""
    from perturber.pipeline.store import StoreError

    try:
        state = state or CubeState(path, cube, engine=engine)
    except StoreError as exc:
        return pn.Column(pn.pane.Alert(f"Cannot show this store: {exc}", alert_type="danger"))
    header = pn.pane.Markdown(f"## Perturber — {cube}\n`{path}` · {int(state._done.sum())} of {state._done.size} chunks computed")
    models = pn.Row(
        pn.widgets.Select.from_param(state.param.model_a, name="left model"),
        pn.widgets.Select.from_param(state.param.model_b, name="right model"),
        pn.widgets.RadioButtonGroup.from_param(state.param.score, name="show"),
    )
    land = Landscape(state)
    settled = Settled(state)
    curves, heatmap = _landscape_views(state, land, settled)
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
    from perturber.featureviz.groups import labels

    stored = [f"stored {i}-{min(i + NEURONS_PER_GROUP, most) - 1}" for i in range(0, most, NEURONS_PER_GROUP)]
    group = pn.widgets.Select(name="neuron group", options=stored + (labels(state.ds) if most else []) or ["-"], width=260)
    fv_kind = pn.widgets.RadioButtonGroup(name="feature visualisation", options=["fourier", "pixel"], value="fourier")
    main.extend([
        pn.pane.Markdown("### Neuron activations"), pn.Row(layer, group, fv_kind), _neuron_view(state, layer, group, fv_kind),
        _saliency_view(state),
        pn.pane.Markdown("### Feature visualisations"), _gallery_view(path),
        pn.pane.Markdown("### Adversarial (PGD): attack one model, see whether the others are fooled too"), _attack_views(state)[0],
        pn.pane.Markdown("### Failure finder"), _failure_view(state, settled),
        pn.pane.Markdown("### Sensitivity: how much each axis moves each model"), _sensitivity_view(state),
        pn.pane.Markdown("### Model against model (datashader, every sample)"), _scatter_view(state, settled),
    ])
    note = pn.pane.Markdown("Points off the grid and factors the cube holds fixed: *Live (off the grid)* among the "
                            "controls computes them with the on-demand engine (`--engine`).", styles={"font-size": "11px"})
    return pn.Column(header, pn.Row(_controls(state), pn.Column(main, note)))


def serve(path: str, cube: str | None = None, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
          engine: str | None = None):
    """Serve the viewer with Panel's server (blocking). ``engine``: None (grid
    points only), 'local' (start a LocalCluster) or a Dask scheduler address."""
    from perturber.viewer.state import cube_names

    name = cube or cube_names(path)[0]
    live = None
    if engine:
        from perturber.viewer.live import LiveEngine

        live = LiveEngine(scheduler=None if engine == "local" else engine)
        print(f"live compute on {live.where}")
    origin = [f"{address}:{port}", f"localhost:{port}"] if address in ("127.0.0.1", "localhost") else ["*"]
    try:
        pn.serve({"/": lambda: build_app(path, name, engine=live)}, port=port, address=address, show=show,
                 websocket_origin=origin, title="Perturber")
    finally:
        if live is not None:
            live.close()
