"""The top-5 classes of one compared model at the current point, as the original
showed them: a bar per class (probability, or logit per the state's ``score``),
the classes of the object's class set marked as correct, and an example image
of each class: the first image of the class in an ImageNet folder when the
viewer has one (:func:`perturber.viewer.classes.set_example_folder`), else the
class logit's feature visualisation when the store holds one, else none."""

from __future__ import annotations

import base64
import functools
import io
import logging
from html import escape

import numpy as np
from PIL import Image

from perturber.featureviz import group as fv
from perturber.pipeline import names
from perturber.pipeline.analysis import class_indices
from perturber.viewer import classes, html, stores
from perturber.viewer.state import CubeState

__all__ = ["Top5Panel", "fv_thumbnail"]

log = logging.getLogger(__name__)



@functools.lru_cache(maxsize=4096)
def fv_thumbnail(path: str, model: str, index: int, size: int = classes.THUMBNAIL) -> tuple[str, str] | None:
    """(a JPEG data URI of the stored feature visualisation of class ``index``'s logit,
    its parameterisation) for ``model``, Fourier when there is one; None when the
    store has none written (a damaged chunk: none, said in the log)."""
    ds = stores.featureviz(path)
    found = fv.lookup(ds, model, "logits")
    if found is None or index not in found[1]:
        return None
    array, position = found
    params = [str(p) for p in ds["parameterisation"].values]
    done = fv.completed(ds, names.fv_target(model, "logits").target)[:, position[index]]
    order = sorted(range(len(params)), key=lambda p: params[p] != "fourier")
    p = next((p for p in order if done[p]), None)
    if p is None:
        return None
    try:
        image = Image.fromarray(np.asarray(array[p, position[index]].values))
    except Exception as exc:
        log.warning("feature visualisation of %s's logit %d cannot be read (%s); `perturber verify` finds damaged chunks",
                    model, index, type(exc).__name__)
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), params[p]


@functools.lru_cache(maxsize=64)
def _fv_models(path: str, model: str) -> tuple[str, ...]:
    """``model``, then the store's other models with class-logit visualisations."""
    ds = stores.featureviz(path)
    if ds is None:
        return ()
    others = [str(v.attrs["model"]) for _, v in names.fv_variables(ds) if v.attrs.get("kind") == "logit"]
    return tuple(dict.fromkeys([model, *others]))


class Top5Panel(html.HTMLPanel):
    """The left (``which='model_a'``) or right (``'model_b'``) model's top-5, as probabilities or logits."""

    width = 380

    def __init__(self, state: CubeState, which: str):
        self.which = which
        super().__init__(state)
        self._index: dict[str, int] | None = None  # class name → index
        self._expected: dict[str, frozenset[int]] = {}  # object → its classes

    def class_index(self, name: str) -> int:
        if self._index is None:
            self._index = {n: i for i, n in enumerate(self.state.analysis.class_names)}
        return self._index[name]

    def expected(self) -> frozenset[int]:
        """The classes of the object at the current point (none for a mesh file)."""
        if self.state.uploaded:  # a mesh from the browser: no ImageNet class is its own
            return frozenset()
        obj = str(self.state.point().get("object", ""))
        if obj not in self._expected:
            self._expected[obj] = frozenset(class_indices(obj) or ())
        return self._expected[obj]

    def example(self, index: int, model: str) -> str:
        """The example cell of class ``index``: an image, a blank with a title, or nothing."""
        name = escape(str(self.state.analysis.class_names[index]))
        found = classes.example(index)
        if found is None:
            for m in _fv_models(self.state.path, model):
                shown = fv_thumbnail(self.state.path, m, index)
                if shown is not None:
                    found = classes.Example(shown[0], f"feature visualisation of the {name} logit ({m}, {shown[1]})")
                    break
        if found is None:
            return "<td></td>"
        title = escape(found.title)
        if found.src is None:
            return f"<td><div class='pt-example-blank' title='{title}'></div></td>"
        return f"<td><img class='pt-example' src='{found.src}' title='{title}' alt='{name}'></td>"

    def html(self) -> str:
        state = self.state
        model = getattr(state, self.which)
        rows = state.top5(model)
        if rows is None:
            table = f"<p class='pt-missing'>{state.missing()}</p>"
        else:
            expected = self.expected()
            logit = state.score == "logit"
            top = max(max(l for _, _, l in rows), 1e-6)  # logit bars: a share of the largest logit shown
            items = []
            for i, (name, p, l) in enumerate(rows, 1):
                index = self.class_index(name)
                right = index in expected
                bar = min(max(l / top, 0.0), 1.0) if logit else p
                mark = " <span class='pt-mark' title=\"one of the object's classes\">✓</span>" if right else ""
                items.append(f"<tr class='pt-rank{' pt-correct' if right else ''}'><td>{i}</td>"
                             f"<td class='pt-class'>{escape(name)} <span class='pt-index'>({index})</span>{mark}</td>"
                             f"<td class='pt-score'><progress class='pt-bar' value='{bar:.4f}' max='1'></progress>"
                             f"{f'{l:.2f}' if logit else f'{p:.3f}'}</td>{self.example(index, model)}</tr>")
            table = (f"<table class='pt-top5'><tr><th>#</th><th>class</th><th>{state.score}</th><th></th></tr>"
                     f"{''.join(items)}</table>")
        return f"<div class='pt-model pt-{self.which}'><b>{model}</b>{table}</div>"
