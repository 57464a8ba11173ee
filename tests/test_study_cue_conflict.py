"""cue-conflict: categories, decisions and shape bias on hand-built cubes with known answers, and a pruned run."""

import numpy as np
import pytest
import xarray as xr

from perturber.pipeline import names, spec
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, get
from perturber.pipeline.studies.cue_conflict import categories, cue_conflict, per_view
from perturber.pipeline.studies.synthetic import cube_dataset

GOLDEN, TABBY, TIGER_CAT, PERSIAN, EGYPTIAN, LEOPARD, JAGUAR, TISSUE = 207, 281, 282, 283, 285, 288, 290, 999
DOGS = range(151, 269)
TEXTURES = ["image:dog_fur", "image:tabby_fur", "image:leopard"]


def _cube(axes, models=("efficientnet_lite0",)):
    return spec.parse_spec({"cubes": {"c": {"axes": axes, "models": list(models), "images": False}}}).cubes[0]


def test_categories_merge_overlapping_class_sets():
    cats = categories(["dog", "cat", "siamese_cat"], ["image:tabby_fur", "image:leopard", "image:dog_fur"])
    # The cat (@cats), the Siamese cat (@cats) and the tabby fur (tabby, tiger cat, Egyptian cat) are one category.
    assert cats.names == ["dog", "cat", "leopard"]
    assert cats.shape.tolist() == [0, 1, 1] and cats.texture.tolist() == [1, 2, 0]
    assert cats.masks.sum(1).tolist() == [118, 5, 4] and not (cats.masks.sum(0) > 1).any()
    lookup = cats.lookup()
    assert lookup[GOLDEN] == 0 and lookup[TABBY] == 1 and lookup[JAGUAR] == 2 and lookup[TISSUE] == -1
    w = cats.weights("mean")
    assert np.allclose(w.sum(0), 1) and np.allclose(cats.weights("sum").sum(0), [118, 5, 4])


def test_a_shape_or_texture_without_classes_is_refused():
    with pytest.raises(StudyError, match="texture 'image:brick' has no classes"):
        categories(["dog"], ["image:brick"])
    with pytest.raises(StudyError, match="texture 'off' has no classes"):
        categories(["dog"], ["off"])


def _known_cube():
    """Two shapes (dog, cat) × three textures (dog fur, tabby fur, leopard) × two yaws.

    Conflicts (8): dog×tabby, dog×leopard, cat×dog fur, cat×leopard in each view; controls (4):
    dog×dog fur, cat×tabby. Top-1 decisions: shape 4, texture 3, neither 1 (bias 4/7).
    """
    cube = _cube({"object": ["dog", "cat"], "texture": TEXTURES, "yaw": [0, 90]})
    logits = np.zeros(cube.shape + (1, 1000))

    def top(o, t, y, cls):
        logits[o, t, y, 0, cls] = 10.0

    # view 0: dog×dog fur → dog (control ✓), dog×tabby → dog (shape), dog×leopard → leopard (texture)
    top(0, 0, 0, GOLDEN); top(0, 1, 0, GOLDEN); top(0, 2, 0, LEOPARD)
    #         cat×dog fur → tabby (shape), cat×tabby → tabby (control ✓), cat×leopard → jaguar (texture)
    top(1, 0, 0, TABBY); top(1, 1, 0, TABBY); top(1, 2, 0, JAGUAR)
    # view 1: dog×dog fur → tissue (control ✗; forced: cat, the Persian's 2), dog×tabby → tiger cat (texture),
    #         dog×leopard → golden retriever (shape)
    top(0, 0, 1, TISSUE); logits[0, 0, 1, 0, PERSIAN] = 2.0
    top(0, 1, 1, TIGER_CAT); top(0, 2, 1, GOLDEN)
    #         cat×dog fur → tissue (neither by top-1; forced: every dog class at 3 against the tabby's 6:
    #         by mean the cat (shape), by sum the dog (texture)), cat×tabby → tiger cat (control ✓),
    #         cat×leopard → Egyptian cat (shape)
    top(1, 0, 1, TISSUE); logits[1, 0, 1, 0, list(DOGS)] = 3.0; logits[1, 0, 1, 0, TABBY] = 6.0
    top(1, 1, 1, TIGER_CAT); top(1, 2, 1, EGYPTIAN)
    return Cube(cube_dataset(cube, logits))


def test_decision_counts_per_view():
    counts, _ = per_view(_known_cube())
    assert counts.sizes == {"view": 2, "subset": 6, names.MODEL: 1}
    assert counts["subset"].values.tolist() == ["all", "shape:dog", "shape:cat", "texture:dog_fur", "texture:tabby_fur",
                                                "texture:leopard"]
    c = counts.sel(subset="all").isel(model=0)
    assert c["conflict_n"].values.tolist() == [4, 4] and c["control_n"].values.tolist() == [2, 2]
    assert c["shape_top1"].values.tolist() == [2, 2] and c["texture_top1"].values.tolist() == [2, 1]
    assert c["control_top1"].values.tolist() == [2, 1]
    assert c["shape_forced"].values.tolist() == [2, 3] and c["texture_forced"].values.tolist() == [2, 1]
    assert counts["control_forced"].sel(subset="shape:dog").isel(model=0).values.tolist() == [1, 0]
    # The leopard on both shapes: view 0 texture, texture (dog, cat); view 1 shape, shape.
    leopard = counts.sel(subset="texture:leopard").isel(model=0)
    assert leopard["texture_top1"].values.tolist() == [2, 0] and leopard["shape_top1"].values.tolist() == [0, 2]


def test_shape_bias_and_control_known_answers():
    table = cue_conflict(_known_cube())
    all_ = table.sel(subset="all", model="efficientnet_lite0")
    assert float(all_["shape_bias_top1"]) == pytest.approx(4 / 7)
    assert float(all_["shape_bias_forced"]) == pytest.approx(5 / 8)
    assert float(all_["decided_top1"]) == pytest.approx(7 / 8)
    assert float(all_["control_top1"]) == pytest.approx(3 / 4)
    assert float(all_["control_forced"]) == pytest.approx(3 / 4)
    assert int(all_["conflict_images"]) == 8 and int(all_["control_images"]) == 4
    dog, cat = (table.sel(subset=f"shape:{s}", model="efficientnet_lite0") for s in ("dog", "cat"))
    assert float(dog["shape_bias_top1"]) == pytest.approx(2 / 4) and float(cat["shape_bias_top1"]) == pytest.approx(2 / 3)
    assert float(dog["control_top1"]) == pytest.approx(1 / 2) and float(cat["control_top1"]) == pytest.approx(1.0)
    assert float(all_["shape_bias_top1_lo"]) <= 4 / 7 <= float(all_["shape_bias_top1_hi"])
    assert table.attrs["bootstrap_unit"] == "view" and table.attrs["bootstrap_units"] == 2
    tabby = table.sel(subset="texture:tabby_fur", model="efficientnet_lite0")  # on the dog: shape, then texture
    assert float(tabby["shape_bias_top1"]) == pytest.approx(1 / 2) and float(tabby["control_top1"]) == pytest.approx(1.0)
    finding = table.attrs["finding"]
    assert "efficientnet_lite0: shape bias 57 %" in finding and "humans 96 %" in finding and "leopard 50 %" in finding
    assert "below 50 % for dog on efficientnet_lite0" not in finding  # exactly half reaches the goal
    # Summed instead of mean probabilities: the dog's 118 classes win the forced choice of cat × dog fur.
    summed = cue_conflict(_known_cube(), aggregate="sum").sel(subset="all", model="efficientnet_lite0")
    assert float(summed["shape_bias_forced"]) == pytest.approx(4 / 8)


def test_bootstrap_by_unit_counts_equals_resampling():
    """bootstrap(sums=True), the weighted sums the study uses, gives the resampling's own draws and intervals."""
    from perturber.pipeline.studies.bootstrap import bootstrap

    rng = np.random.default_rng(1)
    data = xr.Dataset({"a": (("view", "g"), rng.integers(0, 5, (40, 3))), "b": (("view", "g"), rng.integers(1, 9, (40, 3)))},
                      coords={"g": ["x", "y", "z"]})

    def ratio(d):
        s = d.sum("view")
        return (s["a"] / s["b"]).rename("r")

    slow, fast = bootstrap(data, "view", ratio), bootstrap(data, "view", ratio, sums=True)
    for var in ("r", "r_lo", "r_hi"):
        np.testing.assert_allclose(fast[var].values, slow[var].values, rtol=1e-12)
    assert fast["r"].dims == ("g",) and fast.attrs == slow.attrs


def test_bad_cubes_and_parameters_are_one_line_errors():
    no_texture = Cube(cube_dataset(_cube({"object": ["dog"], "yaw": [0, 90]}), np.zeros((1, 2, 1, 1000))))
    with pytest.raises(StudyError, match="needs a cube with the axes object and texture"):
        per_view(no_texture)
    with pytest.raises(StudyError, match="aggregate must be 'mean' or 'sum'"):
        cue_conflict(_known_cube(), aggregate="max")


@pytest.mark.slow
def test_figure_draws_the_table():
    import matplotlib.pyplot as plt

    table = cue_conflict(_known_cube())
    fig, interactive = get("cue-conflict").figure(table, title="cue-conflict")
    assert len(fig.axes) == 3 and interactive is not None
    plt.close(fig)


@pytest.mark.slow
def test_pruned_study_runs_end_to_end(tmp_path):
    from perturber.pipeline.studies import runner

    store = str(tmp_path / "s.zarr")
    table, files = runner.run("cue-conflict", store, models=["efficientnet_lite0"], prune=2, scheduler="synchronous",
                              progress=False, echo=lambda *_: None)
    assert table.sizes == {"subset": 5, names.MODEL: 1}
    assert table["conflict_images"].sel(subset="all").item() == 8 and table["control_images"].sel(subset="all").item() == 8
    assert table.attrs["categories"] == "dog, cat"
    stored = xr.open_zarr(store, group="studies/cue-conflict")
    assert set(stored.data_vars) >= {"shape_bias_top1", "shape_bias_forced", "control_top1"}
    for kind in ("csv", "png", "html", "report"):
        assert files[kind].is_file()
    report = files["report"].read_text()
    assert "Geirhos" in report and "--models resnet50,resnet50_stylized" in report
