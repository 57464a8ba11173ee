"""Sweep specs: validated before any compute, hashable, prunable."""

from pathlib import Path

import pytest
import yaml

from perturber.pipeline import spec
from perturber.pipeline.spec import SpecError

WORKFLOWS = [p for p in sorted(Path(__file__).resolve().parents[1].glob("workflows/*.yaml")) if not p.name.startswith("featureviz")]


def cube(**over):
    base = {"axes": {"object": ["dog", "cat"], "yaw": [0, 90]}, "models": ["efficientnet_lite0"], "layers": ["stage4"]}
    base.update(over)
    return {"name": "t", "cubes": {"c": base}}


def test_every_workflow_loads():
    assert WORKFLOWS, "no sweep specs in workflows/"
    for path in WORKFLOWS:
        s = spec.load_spec(path)
        assert s.cubes and all(c.samples > 0 for c in s.cubes)


def test_axes_values_ranges_and_defaults():
    s = spec.parse_spec(cube(axes={"yaw": {"linspace": [-90, 90, 3]}, "pitch": {"range": [0, 30, 10]}, "background": ["white", "#ff0000"]},
                             fixed={"object": "cat"}))
    c = s.cubes[0]
    assert dict(c.axes)["yaw"] == (-90.0, 0.0, 90.0)
    assert dict(c.axes)["pitch"] == (0.0, 10.0, 20.0, 30.0)
    assert dict(c.axes)["background"] == ("white", "#ff0000")
    assert c.shape == (3, 4, 2) and c.samples == 24
    assert c.point((0, 1, 1)) == {"object": "cat", "yaw": -90.0, "pitch": 10.0, "background": "#ff0000"}
    # Image axes stay whole inside a chunk; scene axes are split.
    assert c.chunk_shape == (1, 1, 2) and c.chunk_grid == (3, 4, 1) and c.renders == 12


def test_hash_is_stable_and_sensitive():
    a = spec.parse_spec(cube()).cubes[0]
    b = spec.parse_spec(cube()).cubes[0]
    c = spec.parse_spec(cube(axes={"object": ["dog", "cat"], "yaw": [0, 91]})).cubes[0]
    assert a.sha256() == b.sha256() != c.sha256()


def test_prune_keeps_the_first_values():
    s = spec.parse_spec(cube(axes={"yaw": [0, 45, 90, 135], "hue": [0, 90, 180]})).prune(2)
    assert s.cubes[0].shape == (2, 2)


@pytest.mark.parametrize(
    "data, message",
    [
        (cube(axes={"yaww": [0]}), "unknown factor 'yaww' (did you mean 'yaw'?)"),
        (cube(axes={"yaw": [0, 400]}), "cube 'c': axes.yaw: yaw=400 is outside its domain"),
        (cube(axes={"yaw": [0, 0.0]}), "value 0.0 appears twice"),
        (cube(axes={"yaw": []}), "axes.yaw: no values"),
        (cube(axes={}), "needs at least one axis"),
        (cube(axes={"yaw": {"range": [0, 90, -10]}}), "never reaches"),
        (cube(axes={"object": {"linspace": [0, 1, 2]}}), "ranges need a numeric factor"),
        (cube(axes={"yaw": "0,90"}), "expected a list of values"),
        (cube(fixed={"yaw": 10}), "'yaw' is both an axis and fixed"),
        (cube(fixed={"hue": 999}), "hue=999 is outside"),
        (cube(models=[]), "needs at least one model"),
        (cube(models=["resnet9000"]), "unknown model 'resnet9000'"),
        (cube(layers=["stage99"]), "has no layer 'stage99'"),
        (cube(neurons={"head": 4}), "neurons given for 'head', which is not in layers"),
        (cube(neurons={"stage4": -1}), "positive count or a list"),
        # wrong types and shapes, each named by its field path
        (cube(axes={"yaw": {"linspace": [0, 90]}}), "cube 'c': axes.yaw.linspace: must be [start, stop, count], got [0, 90]"),
        (cube(axes={"yaw": {"linspace": [0, 90, -3]}}), "axes.yaw.linspace: count must be a whole number >= 1, got -3"),
        (cube(axes={"yaw": {"linspace": [0, 90, 2.7]}}), "axes.yaw.linspace: count must be a whole number >= 1, got 2.7"),
        (cube(axes={"yaw": {"linspace": [0, 90, True]}}), "count must be a whole number >= 1, got True"),
        (cube(axes={"yaw": {"linspace": ["a", 90, 3]}}), "axes.yaw.linspace: start must be a finite number, got 'a'"),
        (cube(axes={"yaw": {"range": [0, float("nan"), 1]}}), "axes.yaw.range: stop must be a finite number, got nan"),
        (cube(axes={"yaw": {"range": "0:90:10"}}), "axes.yaw.range: must be [start, stop, step]"),
        (cube(axes={"yaw": {"range": [0, 90, 1e-320]}}), "axes.yaw.range: step 9.99989e-321 is too small"),
        (cube(axes={"yaw": {"linspace": [0, 90, 3], "range": [0, 90, 10]}}), "axes.yaw: expected a list of values"),
        (cube(axes=["yaw"]), "cube 'c': axes: must map factor names to values, got ['yaw']"),
        (cube(axes={5: [0]}), "cube 'c': axes: keys must be names, got 5"),
        (cube(models=5), "cube 'c': models: must be a list of model names, got 5"),
        (cube(models=[5]), "cube 'c': models: must be a list of model names; 5 is not a name"),
        (cube(models=["efficientnet_lite0", "efficientnet_lite0"]), "models: 'efficientnet_lite0' is listed twice"),
        (cube(fixed=[1, 2]), "cube 'c': fixed: must map factor names to values, got [1, 2]"),
        (cube(layers="stage4", neurons=[1]), "cube 'c': neurons: must map layers to a count or a list of channels"),
        (cube(neurons={"stage4": True}), "neurons.stage4: must be a positive count or a list of channel indices, got True"),
        (cube(neurons={"stage4": [1, 1]}), "neurons.stage4: channel 1 is listed twice"),
        (cube(neurons={"stage4": [0, -1]}), "neurons.stage4: a channel index must be a whole number >= 0, got -1"),
        (cube(chunks=[2]), "cube 'c': chunks: must map axes to samples per chunk"),
        (cube(chunks={"yaw": True}), "chunks.yaw: chunk size must be a whole number >= 1, got True"),
        (cube(images="no"), "cube 'c': images: must be true or false, got 'no'"),
        (cube(top_k=True), "cube 'c': top_k: must be a whole number in 1..1000, got True"),
        (cube(size=224.5), "cube 'c': size: must be a whole number in 32..1024, got 224.5"),
        ({"cubes": {"c": []}}, "cube 'c': must map its keys (axes, models, ...) to values, got []"),
        ({"budget": True, "cubes": {}}, "spec: budget: must be a whole number >= 1, got True"),
        ({"name": [1], "cubes": {}}, "spec: name: must be a non-empty string, got [1]"),
        ({"cubes": [1]}, "spec: cubes: must map cube names to cubes, got [1]"),
        (5, "spec: a spec must be a mapping with 'cubes', got 5"),
        (cube(chunks={"pitch": 2}), "chunk hint for 'pitch', which is not an axis"),
        (cube(colour="red"), "unknown key 'colour'"),
        (cube(top_k=0), "top_k: must be"),
        ({"cubes": {}}, "needs at least one cube"),
        ({"name": "x", "cubes": {"bad name": {}}}, "must be a simple identifier"),
        ({"cubes": {"c": {"axes": {"yaw": [0, 1, 2]}, "models": ["efficientnet_lite0"]}}, "budget": 2}, "3 samples exceed the budget of 2"),
        (cube(axes={"morph_t": [0.5]}), "morph_t needs a morph_target"),
    ],
)
def test_bad_specs_get_one_line_errors(data, message):
    with pytest.raises(SpecError) as err:
        spec.parse_spec(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_budget_can_be_forced():
    data = {"budget": 2, "cubes": {"c": {"axes": {"yaw": [0, 1, 2]}, "models": ["efficientnet_lite0"]}}}
    assert spec.parse_spec(data, force=True).cubes[0].samples == 3


def test_module_paths_are_layers_too():
    s = spec.parse_spec(cube(layers=["_blocks.3", "_swish@0"]))
    assert s.cubes[0].layers == ("_blocks.3", "_swish@0")


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        spec.load_spec(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cubes: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        spec.load_spec(bad)


def test_yaml_round_trip():
    s = spec.parse_spec(cube(fixed={"background": "meadow"}))
    again = spec.parse_spec(yaml.safe_load(s.to_yaml()))
    assert again.cubes[0].sha256() == s.cubes[0].sha256()
