"""Where the user is in a cube, and what the store (or live compute) says there.

:class:`CubeState` holds one parameter per axis of the cube, named as the
factor (the same name as in the spec and the store), the two models being
compared, and live compute off the grid. A new state starts at the canonical
view (:func:`canonical`: every axis at its factor's default, or the grid
value nearest to it). Whatever changes what the views
show bumps one event, :attr:`CubeState.changed` ("the point changed"); every
panel depends on it rather than on a list of parameters. :class:`Settled`
ticks shortly after, for the slower views.

Reads at the point go through :func:`perturber.viewer.stores.read_point`: a
damaged chunk reads as nothing (``None``), :meth:`CubeState.missing` says
"damaged chunk" instead of "not computed", and :attr:`CubeState.notice` holds
the one line naming the point and the repair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn
import param

from perturber.pipeline import assets, factors, names
from perturber.pipeline.analysis import softmax
from perturber.pipeline.errors import one_line
from perturber.pipeline.store import task_shape
from perturber.viewer import html, stores
from perturber.viewer.live import EngineError

__all__ = ["CubeState", "Settled", "canonical", "NOT_COMPUTED", "DAMAGED", "SETTLE_MS"]

NOT_COMPUTED = "not computed"
DAMAGED = "damaged chunk"
SETTLE_MS = 20  # the slower views start this long after the quick ones were sent


def canonical(axis: str, values: list[Any]) -> Any:
    """Where a new view starts along ``axis``: its factor's default (the camera's is the
    canonical three-quarter view, yaw 45, pitch 10) or the grid value nearest to it
    (the first of two as near); a categorical default off the grid: the first value."""
    default = factors.get(axis).default
    if factors.get(axis).numeric:
        return min(values, key=lambda v: abs(float(v) - float(default)))
    return default if default in values else values[0]


class CubeState(param.Parameterized):
    """The current grid point of one cube and the models compared there."""

    model_a = param.Selector(doc="Left model")
    model_b = param.Selector(doc="Right model")
    score = param.Selector(default="probability", objects=["probability", "logit"], doc="What the top-5 shows")
    render_on = param.Boolean(default=False, doc="Show the render before the image factors (the stored image at this "
                                                 "scene point with every image factor at its default)")
    live_on = param.Boolean(default=False, doc="Compute the point live (off the grid) instead of reading the store")
    live_factor = param.Selector(doc="The factor set off the grid")
    live_value = param.Number(default=0.0, doc="Its value")
    live_point = param.Dict(default=None, allow_None=True,
                            doc="Several factors set off the grid at once (a search's failing scene); while set, it "
                                "replaces live_factor = live_value, and moving a grid or live control clears it")
    live_status = param.String(default="", doc="What live compute did last")
    live_result = param.Parameter(default=None, doc="The last live result (perturber.viewer.live.LiveResult)")
    live_cancelled = param.Integer(default=0, doc="Stale live requests cancelled in this session")
    uploaded = param.String(default="", doc="The file name of a mesh uploaded in the browser while it is shown "
                                            "(viewer.panels.upload): every point is computed live with it as the object")
    notice = param.String(default="", doc="One line the page shows above the views (a damaged chunk, a failure)")
    changed = param.Integer(default=0, doc="The 'point changed' event: bumped once whatever the views show has changed "
                                           "(the point, a model, the score, a live result)")

    def __init__(self, path: str, cube: str, engine: Any = None, session: str = "", **params: Any):
        self.path, self.cube = path, cube
        self.ds = stores.open_store(path, cube)
        self.analysis = stores.analysis(path, cube)
        self.axes: list[str] = list(self.analysis.axes)
        self.fixed: dict[str, Any] = dict(self.analysis.fixed)
        self.task_shape = list(task_shape(self.ds))
        self.done = stores.done_marks(path, cube)
        models = list(self.analysis.models)
        super().__init__(**params)
        self._position: dict[str, dict[Any, int]] = {}  # axis → grid value → index
        self._top5: dict[tuple, Any] = {}  # (index, model) → top5 rows, the last few points
        self._image: tuple[Any, Any] = (None, None)  # (index, image) of the last image read
        self._damage = ""  # the current point's damaged-chunk message, once a read found it
        for axis in self.axes:
            values = self.analysis.axis_values(axis)
            self._position[axis] = {v: i for i, v in enumerate(values)}
            f = factors.get(axis)
            self.param.add_parameter(axis, param.Selector(default=canonical(axis, values), objects=values, doc=f.doc,
                                                          label=axis))
        self.param.model_a.objects = models
        self.param.model_b.objects = models
        self.model_a = models[0]
        self.model_b = models[1] if len(models) > 1 else models[0]
        # Live compute: any numeric factor, axis or fixed, set to any value in its domain.
        self.engine, self.session = engine, session or str(id(self))
        self._latest: str | None = None  # key of the newest live request
        self._latest_pending = False
        numeric = [n for n, f in factors.FACTORS.items() if f.numeric]
        self.param.live_factor.objects = numeric
        self.live_factor = next((a for a in self.axes if a in numeric), numeric[0])
        self.live_value = float(self.point()[self.live_factor])
        # A new live factor starts from its value at the current point (unless a
        # value comes with it: a link); then the live request (if any) and the one 'changed' event.
        self.param.watch(self._factor_changed, ["live_factor", "live_value"])
        self._live_before = False  # live_on before a live point was loaded (restored when a grid control clears it)
        self.param.watch(self._on_change, ["live_on", "live_factor", "live_value", "live_point", "model_a", "model_b",
                                           "score", *self.axes])

    # ------------------------------------------------------------------ where

    def index(self) -> tuple[int, ...]:
        """Grid index of the current point along each axis."""
        return tuple(self._position[axis][getattr(self, axis)] for axis in self.axes)

    def point(self) -> dict[str, Any]:
        """Every factor's value at the current point (axes from the state, the rest
        fixed, and when live compute is on the live point or the live factor's value)."""
        out = {**self.fixed, **{axis: getattr(self, axis) for axis in self.axes}}
        if self.live_on and self.live_point:
            out.update(self.live_point)
        elif self.live_on:
            out[self.live_factor] = self.live_value
        return out

    def live_where(self) -> str:
        """What live compute sets off the grid: ``yaw = 1.08``, or a live point's
        factors that differ from the grid point (``yaw = 37.5, pitch = 12``)."""
        mesh = f"{self.uploaded}, " if self.uploaded else ""
        if not self.live_point:
            return f"{mesh}{self.live_factor} = {self.live_value:g}"
        grid = {**self.fixed, **{axis: getattr(self, axis) for axis in self.axes}}
        moved = [(k, v) for k, v in self.live_point.items() if grid.get(k) != v]
        return mesh + (", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in moved) or "the grid point")

    def image_key(self) -> tuple:
        """Identifies the model input shown: the grid index, or the live result."""
        return ("live", id(self.live_result)) if self.live_on else ("grid", self.index())

    def computed(self, index: tuple[int, ...] | None = None) -> bool:
        """Whether the task of the current point (or grid ``index``) has been written."""
        task = tuple(i // c for i, c in zip(self.index() if index is None else index, self.task_shape))
        return bool(self.done[task])

    def _sel(self) -> dict[str, Any]:
        return dict(zip(self.axes, self.index()))

    def where(self) -> str:
        """The grid point as the page names it: ``object=dog, yaw=90, hue=0``."""
        values = {axis: getattr(self, axis) for axis in self.axes}
        return ", ".join(f"{a}={v:g}" if isinstance(v, float) else f"{a}={v}" for a, v in values.items())

    def missing(self) -> str:
        """Why the current point shows nothing: :data:`DAMAGED` or :data:`NOT_COMPUTED`."""
        return DAMAGED if self._damage and not self.live_on else NOT_COMPUTED

    def _read(self, variable: str, **extra: Any) -> np.ndarray | None:
        """``variable`` at the current grid point (``extra``: positions along its
        other dimensions); None, and the notice set, when its chunk is damaged."""
        try:
            return stores.read_point(self.path, self.cube, variable, {**self._sel(), **extra}, self.where())
        except stores.DamagedChunk as exc:
            self._damage = str(exc)
            self.notice = self._damage
            return None

    def layers(self) -> list[str]:
        """The layers whose activations the store records (of any model)."""
        return sorted({act.layer for act in self.analysis.activations()})

    def live_layers(self) -> tuple[list[str], dict[str, list[int]]]:
        """(layers, layer → neurons) the store records for the left model, asked of live compute too."""
        layers, neurons = [], {}
        for act in self.analysis.activations(self.model_a):
            layers.append(act.layer)
            neurons[act.layer] = [int(n) for n in self.ds[act.neuron].values]
        return layers, neurons

    # ------------------------------------------------------------------ what

    def image(self) -> np.ndarray | None:
        """The model input at the current point, (S, S, 3) uint8, or None (not computed / not stored)."""
        if self.live_on:
            return None if self.live_result is None else self.live_result.image
        if names.IMAGE not in self.ds or not self.computed():
            return None
        index = self.index()
        if self._image[0] != index:  # the input view and the neuron view show the same image
            image = self._read(names.IMAGE)
            if image is None:
                return None
            self._image = (index, np.asarray(image))
        return self._image[1]

    def image_png(self) -> str | None:
        """:meth:`image` as a PNG data URI (grid points: encoded once per process)."""
        image = self.image()
        if image is None:
            return None
        return html.png(image) if self.live_on else stores.point_png(self.path, self.cube, tuple(sorted(self._sel().items())))

    def render_png(self) -> tuple[str | None, str]:
        """(PNG data URI, '') of the render before the image factors at the current
        grid point: the stored image at the same scene point with every image
        factor at its default; (None, why) when the cube holds no such point."""
        if self.live_on:
            return None, "live: the render before the image factors is shown for grid points only"
        sel, off = {}, [n for n, v in self.fixed.items() if factors.get(n).kind == "image" and v != factors.get(n).default]
        for axis in self.axes:
            f = factors.get(axis)
            value = f.default if f.kind == "image" else getattr(self, axis)
            if value not in self._position[axis]:
                off.append(axis)
            else:
                sel[axis] = self._position[axis][value]
        if off:
            return None, f"not in this cube: {', '.join(off)} never at {'its' if len(off) == 1 else 'their'} default"
        index = tuple(sel[axis] for axis in self.axes)
        if names.IMAGE not in self.ds or not self.computed(index):
            return None, NOT_COMPUTED
        try:
            return stores.point_png(self.path, self.cube, tuple(sorted(sel.items()))), ""
        except Exception:  # a damaged chunk (the image view says so too)
            return None, DAMAGED

    def top5(self, model: str) -> list[tuple[str, float, float]] | None:
        """(class name, probability, logit) for the top classes of ``model``; None if not computed."""
        if self.live_on:
            if self.live_result is None or model not in self.live_result.logits:
                return None
            logits = self.live_result.logits[model].astype(np.float64)
            p = softmax(logits)
            top = np.argsort(-p)[:5]
            class_names = self.analysis.class_names
            return [(str(class_names[c]), float(p[c]), float(logits[c])) for c in top]
        if not self.computed():
            return None
        key = (self.index(), model)
        if key not in self._top5:  # several views ask for the same point's top-5
            if len(self._top5) > 64:
                self._top5.clear()
            top = self._read_top5(model)
            if top is None:
                return None  # damaged: not kept, so the notice comes back with the point
            self._top5[key] = top
        return self._top5[key]

    def _read_top5(self, model: str) -> list[tuple[str, float, float]] | None:
        # Whole reads (every model: one chunk holds them all) are shared by the sessions at this point.
        classes, probs, logits = (self._read(v) for v in (names.TOP_CLASS, names.TOP_PROB, names.LOGITS))
        if classes is None or probs is None or logits is None:
            return None
        m = self.analysis.models.index(model)
        classes, probs, logits = classes[m], probs[m], logits[m]
        if np.isnan(classes).any() or np.isnan(probs).any():  # a done chunk holding the fill value: its data never arrived
            self._damage = self.notice = f"damaged chunk at {self.where()} ({names.TOP_CLASS}): {stores.repair_hint(self.path)}"
            return None
        logits = logits.astype(np.float32)
        class_names = self.analysis.class_names
        return [(str(class_names[int(c)]), float(p), float(logits[int(c)])) for c, p in zip(classes, probs)]

    def activations(self, model: str, layer: str, positions: list[int]) -> np.ndarray | None:
        """(N, h, w) float32 activations of the stored neurons at ``positions``."""
        if self.live_on:
            if self.live_result is None:
                return None
            live = self.live_result.activations.get(model, {}).get(layer)
            return None if live is None else live[positions].astype(np.float32)
        variable = names.activation(model, layer).variable
        if variable not in self.ds or not self.computed():
            return None
        values = self._read(variable)
        return None if values is None else values[positions].astype(np.float32)

    def attributions(self) -> list[str]:
        """Attributions of the assets at the current point (CC-BY); an uploaded mesh is the user's own."""
        return [f"your mesh {self.uploaded}"] if self.uploaded else assets.attributions(self.point())

    # ------------------------------------------------------------------ live compute

    def _factor_changed(self, *events):
        moved = {event.name: event.new for event in events}
        if "live_factor" not in moved or "live_value" in moved:
            return  # a value came with the factor (a link): it stays
        on = self.live_on
        with param.parameterized.discard_events(self):  # no request (nor 'changed') for the old value on the new factor
            self.live_on = False
            self.live_value = float(self.point()[moved["live_factor"]])  # its value on the grid
            self.live_on = on

    def load_point(self, values: dict[str, Any], **params: Any) -> None:
        """Compute ``values`` (every factor, or some over the grid point) live, in one
        change (``params``: other parameters set with it, e.g. ``model_a``). Moving a
        grid control clears it (live compute goes back to as it was before), as
        does moving a live control (live compute stays on)."""
        if self.live_point is None:
            self._live_before = self.live_on
        self.param.update(live_point=dict(values), live_on=True, **params)

    def _on_change(self, *events):
        moved = {event.name for event in events}
        live_controls = {"live_factor", "live_value", "live_on"}
        if self.live_point is not None and "live_point" not in moved and moved & {*self.axes, *live_controls}:
            live = self.live_on if moved & live_controls else self._live_before
            self.param.update(live_point=None, live_on=live)  # that change makes the request and the one 'changed' event
            return
        if any(event.name != "score" for event in events):  # the score only changes how the top-5 reads
            self._damage = ""
            self.notice = ""
            self._update_live()
        self.changed += 1

    def _update_live(self) -> None:
        """Ask the engine for the current point. In a served session the answer
        arrives later (the server stays responsive, and a newer request cancels
        this one); without a server (tests, scripts) it is waited for."""
        if not self.live_on:
            self.param.update(live_result=None, live_status="")
            return
        if self.engine is None:
            self.param.update(live_result=None, live_status="live compute is off: start the viewer with --engine")
            return
        layers, neurons = self.live_layers()
        point = dict(self.point())
        models = list(dict.fromkeys([self.model_a, self.model_b]))
        size = int(self.ds.sizes.get(names.Y, 224))
        try:
            factors.validate(point)  # a bad value answers at once, without a task
            key = self.engine.key(point, models, layers, neurons, size)
            hit = self.engine.cached(key)
            if hit is not None:
                self._latest = key
                self._show(hit, True)
                return
            key, future = self.engine.submit(self.session, point, models, layers, neurons, size)
        except Exception as exc:  # a bad value gets the factor's own one-line error; nothing else may stop the server
            self.param.update(live_result=None, live_status=f"live compute failed: {one_line(exc)}")
            return
        if self._latest is not None and self._latest_pending:
            self.live_cancelled += 1  # the engine cancelled the session's stale request
        self._latest, self._latest_pending = key, True
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            self.live_status = f"computing {self.live_where()}…"
            future.add_done_callback(lambda _f: doc.add_next_tick_callback(lambda: self._deliver(key, future, True)))
        else:
            self._deliver(key, future, False)

    def _deliver(self, key: str, future: Any, later: bool) -> None:
        """Show a live result; ``later``: it arrived after the change that asked
        for it, so the views must hear of it."""
        if key != self._latest:
            return  # stale: a newer request is on its way
        self._latest_pending = False
        try:
            result = self.engine.result(key, future)
        except EngineError as exc:
            self.param.update(live_result=None, live_status=f"live compute failed: {exc}")
        else:
            self._show(result, False)
        if later:
            self.changed += 1

    def _show(self, result: Any, hit: bool) -> None:
        stale = f"; {self.live_cancelled} stale request{'s' if self.live_cancelled != 1 else ''} cancelled" if self.live_cancelled else ""
        status = (f"live: {self.live_where()}, "
                  + ("from the cache" if hit else f"computed in {result.seconds * 1000:.0f} ms") + stale)
        self.param.update(live_status=status, live_result=result)


class Settled(param.Parameterized):
    """Ticks once the quick views (input, top-5, activations) of a new grid
    point have been sent; the slower whole-cube views (landscape, failures,
    scatter marker) depend on it, so the image never waits for them. Those
    views stay on the grid: a live result off the grid does not tick it."""

    tick = param.Integer(default=0)

    def __init__(self, state: CubeState, **params: Any):
        super().__init__(**params)
        self.state = state
        self._pending = False
        self._shown = self._key()
        state.param.watch(self._changed, ["changed"])

    def _key(self) -> tuple:
        return (self.state.index(), self.state.model_a, self.state.model_b)

    def _changed(self, *_):
        if self._key() == self._shown:
            return
        self._shown = self._key()
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
