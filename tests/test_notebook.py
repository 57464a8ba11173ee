"""perturber.viewer.show: the viewer inline in Jupyter, built without a server.

A real store (a tiny precompute, two models, images and activations), the
real app; the layout is walked, rendered to Bokeh models as Jupyter's
display does, and saved to a standalone HTML file."""

from __future__ import annotations

import html
import subprocess
import sys

import panel as pn
import pytest
from bokeh.models import Slider, Tabs
from panel.models import HTML

import perturber.viewer
from perturber.pipeline import run, spec
from perturber.viewer import notebook
from perturber.viewer.stores import StoreError

pytestmark = pytest.mark.slow

MODELS = ["efficientnet_lite0", "efficientnet_lite1"]
SPEC = {"name": "nb", "cubes": {
    "views": {"axes": {"object": ["dog"], "yaw": [0.0, 90.0]}, "models": MODELS, "layers": ["head"],
              "neurons": {"head": 2}, "images": True},
    "other": {"axes": {"object": ["cat"], "hue": [0, 120]}, "models": MODELS[:1], "images": True}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("notebook") / "nb.zarr")
    run.precompute(spec.parse_spec(SPEC), out, scheduler="synchronous", progress=False)
    return out


def _texts(viewable) -> str:
    """Every HTML and Markdown pane's text in a layout, in order."""
    return "\n".join(str(p.object) for p in viewable.select(lambda o: isinstance(o, (pn.pane.HTML, pn.pane.Markdown))))


def test_show_builds_every_pane_without_a_server(store):
    assert perturber.viewer.show is notebook.show
    layout = perturber.viewer.show(store, cube="views")
    text = _texts(layout)
    # the model input (an image), the top-5 of both models, the controls
    assert "<img class='pt-input' src='data:image/png;base64," in text
    assert "pt-model_a" in text and "pt-model_b" in text and "efficientnet_lite1" in text
    assert "not computed" not in text
    assert any(isinstance(w, pn.widgets.IntSlider) and w.label == "yaw" for w in layout.select(pn.widgets.IntSlider))
    # the deferred sections, built at once: each tab holds its panels
    tabs = layout.select(pn.Tabs)
    assert len(tabs) == 1
    names = [name for name, _ in zip(tabs[0]._names, tabs[0].objects)]
    assert names[:3] == ["Explore", "Neurons", "Attack"]
    for name, column in zip(names, tabs[0].objects):
        assert len(column.objects) > 0, f"the {name} tab is empty"
    assert "Response landscape" in text and "Neuron activations" in text and "Adversarial (PGD)" in text
    assert "Your mesh" in text  # the upload, below live compute in the sidebar


def test_it_renders_as_jupyter_displays_it(store, tmp_path):
    layout = notebook.show(store)  # the store's first cube
    root = layout.get_root()  # the Bokeh models Jupyter's display sends to the page
    texts = " ".join(html.unescape(m.text) for m in root.select({"type": HTML}))
    assert "<img class='pt-input' src='data:image/png;base64," in texts and "Perturber — other" in texts
    tabs = list(root.select({"type": Tabs}))
    assert len(tabs) == 1 and [t.title for t in tabs[0].tabs][:3] == ["Explore", "Neurons", "Attack"]
    assert any(isinstance(m, Slider) and m.title == "hue" for m in root.references())
    mimebundle, metadata = layout._repr_mimebundle_()  # what a notebook cell's output holds
    assert "text/html" in mimebundle and "application/vnd.holoviews_exec.v0+json" in mimebundle
    page = tmp_path / "viewer.html"
    layout.save(str(page), resources="cdn")  # a standalone page, no server
    assert "pt-input" in html.unescape(page.read_text())


def test_a_cube_it_does_not_hold_is_one_line(store, tmp_path):
    with pytest.raises(notebook.NotebookError, match=r"^cube 'nope': no such cube in .* \(it has: other, views\)$"):
        notebook.show(store, cube="nope")
    with pytest.raises(StoreError, match="not a Zarr store"):
        notebook.show(tmp_path / "missing.zarr")


def test_importing_the_viewer_stays_cheap(tmp_path):
    code = ("import sys, perturber.viewer; print(sorted(m for m in ('panel', 'torch', 'bokeh') if m in sys.modules)); "
            "perturber.viewer.show; print('panel' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]
