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
        (cube(axes={"yaw": [0, 400]}), "axis 'yaw': yaw=400 is outside its domain"),
        (cube(axes={"yaw": [0, 0.0]}), "value 0.0 appears twice"),
        (cube(axes={"yaw": []}), "axis 'yaw': no values"),
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
        (cube(chunks={"pitch": 2}), "chunk hint for 'pitch', which is not an axis"),
        (cube(colour="red"), "unknown key 'colour'"),
        (cube(top_k=0), "top_k must be"),
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
