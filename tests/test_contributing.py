"""CONTRIBUTING.md's recipes, carried out on their worked examples (docs/examples/)."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from bokeh.document import Document
from PIL import Image

from conftest import mask
from perturber.pipeline import cli, implementations, run, spec, studies
from perturber.viewer.app import Section, build_app
from perturber.viewer.panels.controls import ControlsPanel
from perturber.viewer.state import CubeState

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.fixture
def example(monkeypatch):
    """load(name) imports the example module ``name``; whatever it registers is undone afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(studies, "STUDIES", dict(studies.STUDIES))
    loaded = []

    def load(name: str):
        sys.modules.pop(name, None)
        loaded.append(name)
        return importlib.import_module(name)

    with implementations.scratch_registry():
        yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def dog_store(tmp_path_factory):
    """A small real cube: the dog from the front and from behind, Lite0."""
    sweep = spec.parse_spec({"name": "dog", "cubes": {"views": {"axes": {"yaw": [0.0, 180.0]}, "models": ["efficientnet_lite0"]}}})
    out = str(tmp_path_factory.mktemp("contributing") / "dog.zarr")
    run.precompute(sweep, out, scheduler="synchronous", progress=False)
    return out


def _help(capsys, command: str = "render") -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return capsys.readouterr().out


def test_an_image_factor_from_outside_the_package(example, tmp_path, capsys):
    example("vignette")
    cube = {"axes": {"vignette": [0.0, 0.9]}, "models": ["efficientnet_lite0"]}
    with pytest.raises(spec.SpecError, match=r"vignette=1.5 is outside its domain \[0, 1\] fraction"):
        spec.parse_spec({"name": "toy", "cubes": {"views": {**cube, "axes": {"vignette": [0.0, 1.5]}}}})
    out = str(tmp_path / "toy.zarr")
    run.precompute(spec.parse_spec({"name": "toy", "cubes": {"views": cube}}), out, scheduler="synchronous", progress=False)

    # a store coordinate, with its units; the images darken towards the corners only
    ds = xr.open_zarr(out, group="views")
    assert ds["vignette"].values.tolist() == [0.0, 0.9] and ds["vignette"].attrs["units"] == "fraction"
    plain, darkened = ds["image"].values.astype(float)
    assert darkened[:20, :20].mean() < 0.5 * plain[:20, :20].mean()
    assert darkened[100:124, 100:124].mean() > 0.95 * plain[100:124, 100:124].mean()

    # a --vignette option of the command line
    assert "--vignette" in _help(capsys) and "Darkens the image towards its corners" in _help(capsys)
    assert cli.main(["render", "--vignette", "0.9", "--size", "64", "-o", str(tmp_path / "v.png")]) == 0
    assert cli.main(["render", "--size", "64", "-o", str(tmp_path / "p.png")]) == 0
    corner = lambda name: np.asarray(Image.open(tmp_path / name))[:8, :8, :3].mean()  # noqa: E731
    assert corner("v.png") < 0.5 * corner("p.png")

    # a viewer widget among the colour controls, moving the state and the image
    state = CubeState(out, "views")
    widget = ControlsPanel(state).widget("vignette")
    assert widget is not None and (widget.start, widget.end) == (0, 1)  # a slider over the grid's two positions
    before = state.image()
    widget.value = 1
    assert state.vignette == 0.9 and not np.array_equal(state.image(), before)


def test_a_scene_factor_from_outside_the_package(example, render, capsys):
    example("stretch")
    spec.parse_spec({"name": "toy", "cubes": {"views": {"axes": {"stretch": [1.0, 1.5]}, "models": ["efficientnet_lite0"]}}})
    base, tall = render(size=96, distance=4.0), render(size=96, distance=4.0, stretch=1.5)  # far enough to fit

    def height(result):
        rows = np.nonzero(mask(result).any(1))[0]
        return rows.max() - rows.min() + 1

    assert 1.3 < height(tall) / height(base) < 1.7
    assert np.array_equal(render(size=96, distance=4.0).rgba, base.rgba)  # set back at its default
    assert "--stretch" in _help(capsys)


def test_a_model_of_your_own(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERTURBER_MODELS", "")  # restored afterwards: --models-file adds to it for this process
    registry = str(EXAMPLES / "models.yaml")
    args = ["predict", "--object", "dog", "--size", "96", "--models", "my_lite0,efficientnet_lite0", "--layer", "early"]
    assert cli.main([*args[:-2], "--models-file", registry]) == 0  # without its layer
    printed = capsys.readouterr().out
    mine, builtin = printed.split("efficientnet_lite0:")
    assert mine.startswith("my_lite0:") and mine.split("\n")[1] == builtin.split("\n")[1]  # the same weights, the same top-1
    assert cli.main(["predict", "--models", "my_lite0", "--models-file", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err


def test_a_viewer_panel(example, dog_store):
    point_panel = example("point_panel")
    state = CubeState(dog_store, "views")
    app = build_app(dog_store, "views", state=state, sections=[Section("Where", lambda v: point_panel.PointPanel(v.state))])
    root = app.get_root(Document())

    def shown() -> str:
        texts = [str(getattr(m, "text", "")) for m in root.references()]  # Panel's HTML panes, as Bokeh models
        return next(t for t in texts if "pt-point" in t)

    assert "yaw = 0.0" in shown() and "efficientnet_lite0:" in shown()
    state.yaw = 180.0
    assert "yaw = 180.0" in shown() and state.top5("efficientnet_lite0")[0][0] in shown()


def test_a_study(example, dog_store, tmp_path):
    example("read_as_class")
    table = studies.run_study("read_as_class", dog_store)
    stored = xr.open_zarr(dog_store, group="studies/read_as_class")
    top1 = xr.open_zarr(dog_store, group="views")["top_class"].sel(rank=1, model="efficientnet_lite0").values
    expected = np.isin(top1, range(151, 269)).mean()  # the dog's classes: every dog breed
    assert float(stored["share"].sel(object="dog", model="efficientnet_lite0")) == pytest.approx(expected)
    assert float(table["share"][0, 0]) == pytest.approx(expected) and int(stored["samples"][0, 0]) == 2
    assert "top-1 class" in stored.attrs["definition"] and stored.attrs["cube"] == "views"
    with pytest.raises(studies.StudyError, match="unknown study 'read_as_clas' .*did you mean 'read_as_class'"):
        studies.run_study("read_as_clas", dog_store)
    empty = str(tmp_path / "empty.zarr")
    xr.Dataset({"a": ("x", [1])}).to_zarr(empty, group="other", zarr_format=3, consolidated=False)
    with pytest.raises(studies.StudyError, match="needs the cube 'views'"):
        studies.run_study("read_as_class", empty)
