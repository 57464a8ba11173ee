"""saliency-on-object: the metric on hand-built maps and cubes with known answers, and the pruned study end to end."""

import numpy as np
import pytest
import torch
import xarray as xr

from perturber.pipeline import names, spec
from perturber.pipeline.analysis import Cube, class_mask
from perturber.pipeline.studies import StudyError, runner
from perturber.pipeline.studies import saliency_on_object as sal
from perturber.pipeline.studies.synthetic import cube_dataset

S = 32
WIDTH = {"dog": 8, "cat": 16}  # mask columns per object: areas 0.25 and 0.5


def test_share_on_object_known_answer():
    saliency = np.ones((4, 4))
    saliency[:2, :2] = 3.0  # 12 of the 24 units of saliency in the top-left quarter
    mask = np.zeros((4, 4))
    mask[:2, :2] = 1.0
    share, area = sal.share_on_object(saliency, mask)
    assert share == 0.5 and area == 0.25
    share, area = sal.share_on_object(saliency, mask * 0.5)  # a soft (antialiased) mask weighs its pixels
    assert share == 0.25 and area == 0.125
    share, _ = sal.share_on_object(np.zeros((2, 4, 4)), np.ones((2, 4, 4)))
    assert np.isnan(share).all()  # no saliency: no share


def test_edge_map_marks_a_step_on_both_sides_only():
    x = torch.zeros(1, 3, 8, 8)
    x[..., :3] = 1.0  # a vertical step between columns 2 and 3
    e = sal.edge_map(x)[0]
    assert e.shape == (8, 8)
    assert (e[:, [2, 3]] > 0).all() and (e[:, [0, 1, 4, 5, 6, 7]] == 0).all()
    assert torch.allclose(e[:, 2], e[:, 3])
    assert (sal.edge_map(torch.full((2, 3, 8, 8), 0.4)) == 0).all()


def _cube(**extra):
    raw = {"axes": {"object": ["dog", "cat"], "yaw": [0, 90, 180], "background": ["white", "meadow"]},
           "models": ["efficientnet_lite0"], "images": True, "mask": True, "size": S}
    raw.update(extra)
    return spec.parse_spec({"cubes": {"saliency_on_object": raw}}).cubes[0]


def _handbuilt():
    """Masks: the first WIDTH[object] columns. Images: red everywhere on white, red only on the mask on meadow."""
    cube = _cube()
    images = np.zeros((*cube.shape, S, S, 3), np.uint8)
    ds = cube_dataset(cube, np.zeros((*cube.shape, 1, 1000), np.float32), images)
    for o, w in WIDTH.items():
        ds[names.MASK].loc[{"object": o}] = 0
        ds[names.MASK].loc[{"object": o}][..., :w] = 255
        ds[names.IMAGE].loc[{"object": o, "background": "white"}][..., 0] = 255
        ds[names.IMAGE].loc[{"object": o, "background": "meadow"}][..., :w, 0] = 255
    return ds


@pytest.fixture
def fake_saliency(monkeypatch):
    """The saliency of a model replaced by the image's red channel; records the allowed classes."""
    seen = []

    def red(x, model, allowed=None):
        seen.append(allowed)
        return x[:, 0]

    monkeypatch.setattr(sal, "input_saliency", red)
    return seen


def test_study_on_a_handbuilt_cube(fake_saliency):
    table = sal.saliency_on_object(Cube(_handbuilt()), batch=4)
    t = table.sel(model="efficientnet_lite0")
    area = (0.25 + 0.5) / 2
    np.testing.assert_allclose(t["area"].values, [area, area])
    np.testing.assert_allclose(t["share"].sel(background="white"), area)  # uniform saliency: chance
    np.testing.assert_allclose(t["share"].sel(background="meadow"), 1.0)  # all of it on the object
    np.testing.assert_allclose(t["ratio"].values, [1.0, 1.0 / area])
    lo, hi = float(t["ratio_lo"].sel(background="meadow")), float(t["ratio_hi"].sel(background="meadow"))
    assert 1 / 0.5 <= lo < 1 / area < hi <= 1 / 0.25  # within the scenes' extremes (all cats, all dogs)
    np.testing.assert_allclose(t["edge_share"].sel(background="meadow"), 0.5)  # the step's two sides
    assert np.isnan(float(t["edge_share"].sel(background="white")))  # a flat image has no edges
    assert table.attrs["bootstrap_unit"] == "scene" and table.attrs["bootstrap_units"] == 6
    assert "chance" in table.attrs["finding"]
    allowed = torch.cat(fake_saliency).numpy()  # target=object: each sample's own class set
    assert allowed.shape == (12, 1000)
    assert (allowed[:6] == class_mask("dog")).all() and (allowed[6:] == class_mask("cat")).all()


def test_samples_not_computed_are_left_out(fake_saliency):
    ds = _handbuilt()
    ds[names.DONE].values[1, 2] = 0  # cat at yaw 180: not computed
    values = sal.per_sample(Cube(ds), batch=5)
    assert values["area"].dims == ("scene", "background") and values["share"].dims == ("scene", "background", "model")
    assert np.isnan(values["area"].values[5]).all() and not np.isnan(values["area"].values[:5]).any()
    table = sal.saliency_on_object(Cube(ds))
    np.testing.assert_allclose(table["area"].values, (3 * 0.25 + 2 * 0.5) / 5)


def test_top1_target_passes_no_class_set(fake_saliency):
    sal.saliency_on_object(Cube(_handbuilt()), target="top1", batch=100)
    assert fake_saliency == [None]


@pytest.mark.parametrize("extra, params, message", [
    ({"mask": False}, {}, r"needs the cube's mask variable; cube 'saliency_on_object' has none \(its spec needs `mask: true`\)"),
    ({"images": False}, {}, r"needs the cube's image variable"),
    ({}, {"target": "best"}, r"target must be object or top1, got 'best'"),
    ({}, {"batch": 0}, r"batch must be a whole number >= 1, got 0"),
    ({"axes": {"background": ["white", "none"]}}, {}, r"needs a scene axis \(object, yaw, \.\.\.\), it has background"),
    ({"fixed": {"shuffle": 4}}, {}, r"patch shuffling moves pixels off the object mask"),
])
def test_bad_input_is_one_line(extra, params, message):
    cube = _cube(**extra)
    ds = cube_dataset(cube, np.zeros((*cube.shape, 1, 1000), np.float32))
    with pytest.raises(StudyError, match=message) as info:
        sal.saliency_on_object(Cube(ds), **params)
    assert "\n" not in str(info.value)


def test_a_bad_parameter_is_refused_before_any_compute(tmp_path):
    with pytest.raises(StudyError, match=r"^saliency-on-object: target must be object or top1, got 'best'$"):
        runner.run("saliency-on-object", store=str(tmp_path / "s.zarr"), prune=1, params={"target": "best"},
                   scheduler="synchronous", progress=False, echo=lambda *_: None)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.slow
def test_pruned_study_end_to_end(tmp_path):
    store = str(tmp_path / "s.zarr")
    table, files = runner.run("saliency-on-object", store=store, models=["efficientnet_lite0"], prune=2,
                              scheduler="synchronous", progress=False, echo=lambda *_: None)
    assert dict(table["share"].sizes) == {"background": 2, "model": 1}
    assert ((table["share"] >= 0) & (table["share"] <= 1)).all()
    assert ((table["area"] > 0.02) & (table["area"] < 0.8)).all()  # a real object, a real background
    assert (table["share_lo"] <= table["share"]).all() and (table["share"] <= table["share_hi"]).all()
    stored = xr.open_zarr(store, group=names.study_group("saliency-on-object"))
    np.testing.assert_allclose(stored["ratio"].values, table["ratio"].values)
    assert all(p.is_file() for p in files.values())
    assert "Tsipras" in files["report"].read_text()


def test_maps_figure_titles_each_map_with_its_share(fake_saliency):
    fig = sal.maps_figure(Cube(_handbuilt()), [{"object": "dog", "yaw": 0.0, "background": "meadow"},
                                                {"object": "cat", "yaw": 90.0, "background": "white"}])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["dog, 0, meadow", "mask (area 25%)", "lite0: share 100%",
                      "cat, 90, white", "mask (area 50%)", "lite0: share 50%"]
