"""Store names in one place: module-path layers (``_blocks.3``, ``path@k``) from the store to the viewer."""

import pytest

from perturber.pipeline import names, run, spec
from perturber.viewer.panels.neurons import NeuronPanel
from perturber.viewer.state import CubeState


def test_names_mangle_dots_and_call_indices():
    act = names.activation("efficientnet_lite0", "_blocks.2@1")
    assert act.variable == "act_efficientnet_lite0__blocks_2_1"
    assert (act.neuron, act.ay, act.ax) == ("neuron_efficientnet_lite0__blocks_2_1", "ay_efficientnet_lite0__blocks_2_1",
                                            "ax_efficientnet_lite0__blocks_2_1")
    fv = names.fv_target("lite.v2", "_blocks.3", "direction")
    assert (fv.target, fv.images, fv.unit) == ("lite_v2__blocks_3_dir", "fv_lite_v2__blocks_3_dir", "unit_lite_v2__blocks_3_dir")
    assert names.fv_names(fv.target) == fv
    assert names.study_group("shape_bias") == "studies/shape_bias"
    assert names.FEATUREVIZ in names.NOT_CUBES


@pytest.mark.slow
def test_module_path_layers_reach_the_viewer(tmp_path):
    """A cube that records layers by module path (``_blocks.3``, ``_blocks.2@0``)
    shows their activations in the viewer (it said "no activations stored")."""
    sweep = spec.parse_spec({"name": "paths", "cubes": {"views": {
        "axes": {"yaw": [0.0, 90.0]}, "models": ["efficientnet_lite0"], "layers": ["_blocks.3", "_blocks.2@0"],
        "neurons": {"_blocks.3": 4, "_blocks.2@0": 3}}}})
    out = str(tmp_path / "paths.zarr")
    run.precompute(sweep, out, scheduler="synchronous", progress=False)
    state = CubeState(out, "views")
    assert state.layers() == ["_blocks.2@0", "_blocks.3"]
    found = {(a.model, a.layer): a.variable for a in state.analysis.activations()}
    assert found == {("efficientnet_lite0", "_blocks.3"): "act_efficientnet_lite0__blocks_3",
                     ("efficientnet_lite0", "_blocks.2@0"): "act_efficientnet_lite0__blocks_2_0"}
    assert state.activations("efficientnet_lite0", "_blocks.3", [0, 1, 2, 3]).shape[0] == 4
    panel = NeuronPanel(state)
    for layer, shown in (("_blocks.3", 4), ("_blocks.2@0", 3)):
        panel.layer.value = layer
        html = panel.pane.object
        assert "no activations stored" not in html and html.count("<figure") == shown, layer
    layers, neurons = state.live_layers()  # what live compute is asked for
    assert sorted(layers) == ["_blocks.2@0", "_blocks.3"] and neurons == {"_blocks.3": [0, 1, 2, 3], "_blocks.2@0": [0, 1, 2]}
