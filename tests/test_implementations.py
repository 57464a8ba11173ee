"""Every factor has an implementation, registered beside it; ops run in the documented order."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from perturber.pipeline import expression_ops, factors, imageops, implementations, scene  # noqa: F401 (registers)
from perturber.pipeline.factors import FactorError
from perturber.pipeline.implementations import image_op, registered_ops, registered_setters, scene_setter
from perturber.viewer.panels.controls import GROUPS

ROOT = Path(__file__).resolve().parents[1]


def test_every_image_factor_has_exactly_one_op():
    acting = [name for op in registered_ops() for name in op.factors if name not in op.seeds]
    assert len(acting) == len(set(acting)), "a factor with two ops"
    named = {name for op in registered_ops() for name in op.factors}
    assert set(factors.names("image")) == named, set(factors.names("image")) ^ named


def test_every_scene_factor_has_a_setter():
    named = {name for s in registered_setters() for name in s.factors}
    assert set(factors.names("scene")) == named, set(factors.names("scene")) ^ named


def test_implementations_of_unknown_or_taken_factors_are_refused():
    with pytest.raises(FactorError, match="unknown factor 'fadde'.*did you mean 'fade'"):
        image_op("fadde", order=999)(lambda images, x: images)
    with pytest.raises(ValueError, match="'fade' already has an op"):
        image_op("fade", order=998)(lambda images, x: images)
    with pytest.raises(ValueError, match="'yaw' is of kind 'scene', not 'image'"):
        image_op("yaw", order=997)(lambda images, x: images)
    with pytest.raises(ValueError, match="another scene setter already has order 20"):
        scene_setter("yaw", order=20)(lambda renderer, params: None)
    assert all(op.order not in (997, 998, 999) for op in registered_ops())


def test_every_factor_group_is_a_viewer_group():
    assert {f.group for f in factors.FACTORS.values()} <= set(GROUPS)


def test_image_ops_run_in_the_order_the_readme_documents():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Image factors"):readme.index("The colour expression is")]
    documented = [n for row in re.findall(r"^\| (.+?) \|", table, re.M) for n in re.findall(r"`(\w+)`", row)]
    applied = [name for op in registered_ops() for name in op.factors if name not in op.seeds]
    assert [n for n in documented if n in applied] == applied


def test_identity_comes_from_the_factor_defaults():
    rgba = torch.rand(2, 4, 16, 16)
    rgba[:, 3] = 1.0
    defaults = [factors.validate({}) for _ in range(2)]
    for op in registered_ops():
        assert op.at_identity(defaults) == op.skip_at_default, op.factors
    seeded = [factors.validate({"noise_seed": 5, "shuffle_seed": 3})]
    assert all(op.at_identity(seeded) for op in registered_ops() if op.seeds)  # a seed alone changes nothing
    p_only = [factors.validate({"expression_p": 2.0})]  # the default expression at p = 2 is a contrast
    op = next(op for op in registered_ops() if "expression" in op.factors)
    assert not op.at_identity(p_only)
    out = imageops.apply_image_factors(rgba[:1], p_only)
    assert torch.allclose(out[:, :3], ((rgba[:1, :3] - 0.5) * 2 + 0.5).clamp(0, 1), atol=1e-6)


def test_expressions_per_sample_in_one_batch():
    rgba = torch.rand(3, 4, 8, 8)
    rgba[:, 3] = 1.0
    params = [factors.validate({"expression": "(g, r, b)"}), factors.validate({}),
              factors.validate({"expression": "1 - r", "expression_p": 0.5})]
    out = imageops.apply_image_factors(rgba, params)
    assert torch.allclose(out[0, :3], rgba[0, [1, 0, 2]]) and torch.allclose(out[1, :3], rgba[1, :3])
    assert torch.allclose(out[2, :3], (1 - rgba[2, 0]).expand(3, 8, 8))


@pytest.mark.parametrize("name", sorted(expression_ops.FUNCTIONS))
def test_numpy_and_torch_evaluate_every_function_alike(name):
    """Exponents made of numbers alone are checked with numpy; images use torch: same table, same values."""
    arity = expression_ops.FUNCTIONS[name][0]
    args = [np.linspace(-1.5, 2.5, 9) + k for k in range(arity)]
    k_np, k_torch = expression_ops.backend("numpy"), expression_ops.backend("torch")
    with np.errstate(all="ignore"):
        expected = expression_ops.FUNCTIONS[name][1](k_np, *args)
    got = expression_ops.FUNCTIONS[name][1](k_torch, *[torch.tensor(a) for a in args]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12, equal_nan=True)


# Each scene factor set away from its default changes the render (values that make it visible on the dog).
PROBES = {
    "object": {"object": "cat"},
    "morph_target": {"morph_target": "cat", "morph_t": 0.5},
    "morph_t": {"morph_target": "cat", "morph_t": 0.5},
    "texture": {"texture": "off"},
    "tint": {"tint": "#ff0000"},
    "yaw": {"yaw": 135.0},
    "pitch": {"pitch": 45.0},
    "roll": {"roll": 90.0},
    "distance": {"distance": 4.0},
    "pan_x": {"pan_x": 0.2},
    "pan_y": {"pan_y": 0.2},
    "light_azimuth": {"light_azimuth": -90.0},
    "light_elevation": {"light_elevation": -45.0},
    "light_intensity": {"light_intensity": 12.0},
    "light_color": {"light_color": "#0000ff"},
    "ambient": {"ambient": 1.5},
    "shading": {"shading": "flat"},
}
# Scene factors that cannot be shown by changing them alone, and why (none today).
WHY_NOT: dict[str, str] = {}


@pytest.mark.parametrize("name", factors.names("scene"))
def test_every_scene_factor_reaches_the_renderer(render, name):
    assert name in PROBES or name in WHY_NOT, f"add a probe for the scene factor {name!r} (or say why it has none)"
    if name in WHY_NOT:
        return
    base = render(size=64)
    probe = render(size=64, **PROBES[name])
    shown = (base.rgba[..., 3] > 0) | (probe.rgba[..., 3] > 0)
    changed = np.abs(base.rgba.astype(int) - probe.rgba.astype(int))[shown].mean()
    assert changed > 2.0, f"{name}: the render did not change ({changed:.2f} grey levels)"
    again = render(size=64)
    assert np.array_equal(again.rgba, base.rgba), f"{name}: the renderer kept it after the probe"


def test_a_plugin_module_imported_again_replaces_itself(tmp_path, monkeypatch):
    """A notebook re-running a cell, or a reloaded module: the same declaration and op again is no error."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "docs" / "examples"))
    with implementations.scratch_registry():
        first = importlib.import_module("vignette")
        importlib.reload(first)
        assert [op.factors for op in registered_ops()].count(("vignette",)) == 1
        assert factors.get("vignette") == first.VIGNETTE
    sys.modules.pop("vignette", None)
    assert "vignette" not in factors.FACTORS and all("vignette" not in op.factors for op in registered_ops())
