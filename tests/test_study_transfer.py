"""The transfer study: its metrics on hand-made logits, the noise control's norm, the batching, PGD
against noise on real renders, and the pruned study YAML end to end."""

import numpy as np
import pytest
import torch
import xarray as xr

from perturber.pipeline import engine, names, spec
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, synthetic
from perturber.pipeline.studies import transfer as tr

MODEL = "efficientnet_lite0"


def _cube(axes, images, models=(MODEL,), size=32):
    """A cube with these stored images (*shape, S, S, 3) and zero logits."""
    c = spec.parse_spec({"cubes": {"scenes": {"axes": axes, "models": list(models), "images": True, "size": size}}}).cubes[0]
    return Cube(synthetic.cube_dataset(c, np.zeros((*c.shape, len(models), 1000)), images))


def _logits(*entries):
    """(N, 1000) logits of -1e4 (probability exactly 0) but for {class: logit} per row."""
    z = np.full((len(entries), 1000), -1e4)
    for row, entry in enumerate(entries):
        for cls, value in entry.items():
            z[row, cls] = value
    return z


def test_flips_and_drops_on_hand_made_logits():
    classes = np.zeros((3, 1000), bool)
    classes[0, [1, 2]] = classes[1, [1, 2]] = True  # row 2: an object without classes
    clean = _logits({1: 0.0, 3: 0.0}, {2: np.log(3.0), 5: 0.0}, {7: 1.0})
    adv = _logits({3: 0.0}, {2: 0.0, 5: 0.0}, {8: 1.0})
    flip, drop = tr.flips_and_drops(clean, adv, classes)
    # row 0: top-1 1 (tie, first index) -> 3, set probability 0.5 -> 0; row 1: top-1 2 -> 2 (tie), 0.75 -> 0.5
    np.testing.assert_array_equal(flip, [1.0, 0.0, 1.0])
    np.testing.assert_allclose(drop[:2], [0.5, 0.25], atol=1e-6)
    assert np.isnan(drop[2])


def test_summary_separates_white_box_transfer_and_noise():
    flip = np.array([[[[1, 0], [1, 1]]], [[[1, 1], [0, 0]]]], np.float32)  # (scene 2, eps 1, source 2, model 2)
    per = xr.Dataset({"flip": (("scene", "eps", "source", "model"), flip), "drop": (("scene", "eps", "source", "model"), flip / 2),
                      "noise_flip": (("scene", "eps", "model"), np.array([[[0, 1]], [[0, 0]]], np.float32)),
                      "noise_drop": (("scene", "eps", "model"), np.zeros((2, 1, 2), np.float32))})
    s = tr.summary(per)
    np.testing.assert_allclose(s["white_box_flip"].values[:, 0], [1.0, 0.5])  # diagonals (1, 1) and (1, 0)
    np.testing.assert_allclose(s["transfer_flip"].values[:, 0], [0.5, 0.5])   # off-diagonals (0, 1) and (1, 0)
    np.testing.assert_allclose(s["noise_flip"].values[:, 0], [0.5, 0.0])
    np.testing.assert_allclose(s["white_box_drop"].values[:, 0], [0.5, 0.25])
    assert "transfer_flip" not in tr.summary(per.isel(source=[0], model=[0]))  # one model: no transfer pair


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_noise_control_has_the_exact_norm_and_ignores_the_batch(norm):
    u = tr.noise_direction(range(5), (3, 16, 16), norm, seed=3)
    eps = 8 / 255 if norm == "linf" else 0.5
    delta = torch.from_numpy(eps * u)
    if norm == "linf":
        np.testing.assert_array_equal(np.abs(u), 1.0)  # every pixel moves by exactly ±ε
        assert 0.4 < (u > 0).mean() < 0.6
        np.testing.assert_allclose(delta.flatten(1).abs().amax(1).numpy(), eps, rtol=1e-6)
    else:
        np.testing.assert_allclose(delta.flatten(1).norm(dim=1).numpy(), eps, rtol=1e-5)
    np.testing.assert_array_equal(tr.noise_direction([3], (3, 16, 16), norm, seed=3)[0], u[3])  # scene 3 alone: the same draw
    assert not np.array_equal(u[0], u[1])
    assert not np.array_equal(tr.noise_direction([0], (3, 16, 16), norm, seed=4)[0], u[0])


def test_eps_parsing():
    assert tr.parse_eps("8/255", "linf") == (8 / 255,)
    assert tr.parse_eps(["2/255", 0.5, "1/255"], "linf") == (1 / 255, 2 / 255, 0.5)
    assert tr.parse_eps("1/255, 4/255", "linf") == (1 / 255, 4 / 255)
    assert tr.parse_eps(None, "l2") == tr.DEFAULT_EPS["l2"]
    assert tr.parse_eps(3, "l2") == (3.0,)
    for bad, norm in [(0, "linf"), (-1, "l2"), ("abc", "linf"), ("1/0", "linf"), (2, "linf"), ([], "linf"), ("nan", "l2")]:
        with pytest.raises(StudyError) as info:
            tr.parse_eps(bad, norm)
        assert "\n" not in str(info.value) and "eps" in str(info.value)


def test_scenes_flatten_the_axes_in_order():
    shape = (2, 3)  # yaw, object: the object axis second
    images = np.zeros((*shape, 32, 32, 3), np.uint8)
    images[...] = np.arange(6, dtype=np.uint8).reshape(*shape, 1, 1, 1)
    cube = _cube({"yaw": [0, 45], "object": ["dog", "cat", "teapot"]}, images)
    flat, objects = tr.scene_images(cube)
    np.testing.assert_array_equal(np.asarray(flat)[:, 0, 0, 0], np.arange(6))
    assert objects == ["dog", "cat", "teapot"] * 2


def test_bad_inputs_are_one_line_before_any_model_runs():
    c = spec.parse_spec({"cubes": {"scenes": {"axes": {"yaw": [0, 45]}, "models": [MODEL], "images": False}}}).cubes[0]
    no_images = Cube(synthetic.cube_dataset(c, np.zeros((2, 1, 1000))))
    cube = _cube({"yaw": [0, 45]}, np.zeros((2, 32, 32, 3), np.uint8))
    for target, kwargs, words in [(no_images, {}, "images: true"), (cube, {"norm": "l1"}, "norm"),
                                  (cube, {"steps": 0}, "steps"), (cube, {"batch": 2.5}, "batch"),
                                  (cube, {"step": 2}, "step"), (cube, {"device": "tpu"}, "device"),
                                  (cube, {"eps": "x"}, "eps")]:
        with pytest.raises(StudyError) as info:
            tr.transfer(target, **kwargs)
        assert "\n" not in str(info.value) and words in str(info.value)


@pytest.mark.slow
def test_no_perturbation_flips_nothing_and_batches_agree():
    """A zero attack: no flip and no drop, exactly; the noise control is the same in any batching."""
    rng = np.random.default_rng(0)
    cube = _cube({"object": ["dog", "cat"], "yaw": [0, 45]}, rng.integers(0, 256, (2, 2, 32, 32, 3), dtype=np.uint8))
    zero = lambda x, source, eps, label: torch.zeros_like(x)
    one = tr.per_scene(cube, [0.5], "linf", zero, batch=4, progress=False)
    assert one["flip"].shape == (4, 1, 1, 1)
    np.testing.assert_array_equal(one["flip"].values, 0.0)
    np.testing.assert_array_equal(one["drop"].values, 0.0)
    assert np.isfinite(one["noise_drop"].values).all() and set(np.unique(one["noise_flip"].values)) <= {0.0, 1.0}
    assert float(one["noise_flip"].mean()) > 0  # noise of 0.5 per pixel changes a random image's top-1
    three = tr.per_scene(cube, [0.5], "linf", zero, batch=3, progress=False)
    np.testing.assert_array_equal(one["noise_flip"].values, three["noise_flip"].values)
    np.testing.assert_allclose(one["noise_drop"].values, three["noise_drop"].values, atol=1e-5)


@pytest.mark.slow
def test_pgd_flips_real_renders_far_more_than_same_norm_noise():
    points = [{"object": o, "yaw": y, "background": "meadow"} for o in ("dog", "bulldog") for y in (0.0, 45.0)]
    images = engine.evaluate(points, [MODEL], size=224, device="cpu").images.reshape(2, 2, 224, 224, 3)
    cube = _cube({"object": ["dog", "bulldog"], "yaw": [0, 45]}, images, size=224)
    per = tr.per_scene(cube, [8 / 255], "linf", tr.pgd_attack("linf", steps=5, step=0.25), progress=False)
    assert float(per["clean_in_set"].mean()) == 1.0  # lite0 reads all four as dogs
    white_box, noise = float(per["flip"].mean()), float(per["noise_flip"].mean())
    assert white_box >= 0.75 and noise < white_box, (white_box, noise)
    # noise may swap one dog breed for another (a flip), but it barely moves the class-set probability
    assert float(per["drop"].mean()) > 0.3 and float(per["noise_drop"].mean()) < 0.15


@pytest.mark.slow
@pytest.mark.parametrize("models, prune", [([MODEL], 2), ([MODEL, "efficientnet_lite1"], 1)])
def test_pruned_study_end_to_end(tmp_path, models, prune):
    from perturber.pipeline.studies import runner

    store = str(tmp_path / "s.zarr")
    table, files = runner.run("transfer", store, models=models, prune=prune, params={"eps": "8/255", "steps": 2},
                              scheduler="synchronous", progress=False, echo=lambda _: None)
    assert table["flip_rate"].dims == ("eps", "source", names.MODEL)
    assert table["flip_rate"].shape == (1, len(models), len(models))
    assert table.attrs["bootstrap_units"] == (8 if prune == 2 else 1)
    for var in ("flip_rate", "noise_flip_rate"):
        assert 0 <= float(table[var].min()) and float(table[var].max()) <= 1
    stored = xr.open_zarr(store, group=names.study_group("transfer"))
    np.testing.assert_allclose(stored["flip_rate"].values, table["flip_rate"].values)
    assert all(p.exists() for p in files.values())
    finding = table.attrs["finding"]
    assert ("no transfer pair" in finding) if len(models) == 1 else ("transfer" in finding and "Szegedy" in finding)
