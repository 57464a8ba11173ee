"""The background study: in-scene metrics on cubes with known answers, the IN-9 reader on a tiny folder, and a pruned run."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from perturber.pipeline import assets, spec
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, in9, runner
from perturber.pipeline.studies.background import background, chance, per_scene
from perturber.pipeline.studies.synthetic import cube_dataset

DOG, CAT, TENCH = 207, 281, 0  # golden retriever (@dogs, IN-9 dog), tabby (@cats, no IN-9 class), tench (IN-9 fish)
YAML = Path(__file__).resolve().parents[1] / "workflows" / "studies" / "background.yaml"


def _cube(axes, models=("efficientnet_lite0", "efficientnet_lite1")):
    return spec.parse_spec({"cubes": {"c": {"axes": axes, "models": list(models), "images": False}}}).cubes[0]


def _known_cube():
    """dog and cat × yaw 0, 90 × none, white, meadow; lite0 as below, lite1 always right.

    lite0, correct on (none, white, meadow): dog 0: (1, 1, 1) robust; dog 90: (1, 1, 0) flipped by the meadow;
    cat 0: (0, 1, 1) robust but wrong alone; cat 90: (0, 0, 0).
    """
    c = _cube({"object": ["dog", "cat"], "yaw": [0, 90], "background": ["none", "white", "meadow"]})
    right = np.array([DOG, CAT])[:, None, None]
    lite0 = np.array([[[1, 1, 1], [1, 1, 0]], [[0, 1, 1], [0, 0, 0]]], dtype=bool)
    logits = np.zeros(c.shape + (2, 1000), np.float32)
    chosen = np.stack([np.where(lite0, right, TENCH), np.broadcast_to(right, lite0.shape)], axis=-1)
    np.put_along_axis(logits, chosen[..., None], 10.0, axis=-1)
    return Cube(cube_dataset(c, logits))


# ---------------------------------------------------------------- in-scene metrics


def test_accuracy_per_background_and_adversarial_on_a_known_cube():
    table = background(_known_cube())
    acc = table.accuracy.to_pandas()
    expected = {"none": 0.5, "white": 0.75, "meadow": 0.5, "adversarial": 0.5, "adversarial_given_none": 0.5}
    for condition, value in expected.items():
        assert acc.loc[condition, "efficientnet_lite0"] == pytest.approx(value), condition
        assert acc.loc[condition, "efficientnet_lite1"] == 1.0
    # lite1 is right everywhere: every resample gives 1, so its interval has no width
    assert float(table.accuracy_lo.sel(condition="adversarial", model="efficientnet_lite1")) == 1.0
    lo, hi = (float(table[v].sel(condition="adversarial", model="efficientnet_lite0")) for v in ("accuracy_lo", "accuracy_hi"))
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert list(table.units.values) == [4] * 5 and table.attrs["bootstrap_units"] == 4
    assert "IN-9 not evaluated" in table.attrs["finding"] and "--param in9=" in table.attrs["finding"]


def test_chance_levels_of_the_known_cube():
    table = background(_known_cube())
    # a constant 'golden retriever' is right on the dog's views: half of them, on every background alike
    assert float(table.chance.sel(condition="white")) == 0.5 and float(table.chance.sel(condition="adversarial")) == 0.5
    assert float(table.chance_random.sel(condition="none")) == pytest.approx((118 + 5) / 2000)
    # a uniformly random guess must hit the class set on both tested backgrounds
    assert float(table.chance_random.sel(condition="adversarial")) == pytest.approx((0.118 ** 2 + 0.005 ** 2) / 2)
    assert np.isnan(float(table.chance.sel(condition="adversarial_given_none")))
    # weights follow the object-views: three dog views and one teapot view
    levels = chance(np.array(["dog", "dog", "dog", "teapot"]), tested=1)
    assert levels["accuracy"] == (0.75, pytest.approx((3 * 0.118 + 0.002) / 4))


def test_uncomputed_scenes_are_left_out_and_bad_cubes_are_one_line_errors():
    cube = _known_cube()
    ds = cube.ds.copy(deep=True)
    ds["top_class"].values[0, 1, 2] = -1  # dog at yaw 90 on the meadow: as if not computed ...
    ds["top_class"] = ds["top_class"].where(ds["top_class"] >= 0)
    scenes = per_scene(Cube(ds))
    assert np.isnan(float(scenes.robust.sel(model="efficientnet_lite0")[1]))
    table = background(Cube(ds))  # ... so adversarial is over the three complete dog/cat views: dog 0 and cat 0 robust
    assert float(table.accuracy.sel(condition="adversarial", model="efficientnet_lite0")) == pytest.approx(2 / 3)
    no_axis = _cube({"object": ["dog"], "yaw": [0, 90]})
    with pytest.raises(StudyError, match="needs a cube with a background axis"):
        background(Cube(cube_dataset(no_axis, np.zeros(no_axis.shape + (2, 1000)))))
    alone = _cube({"object": ["dog"], "background": ["none"]})
    with pytest.raises(StudyError, match="at least one background besides 'none'"):
        background(Cube(cube_dataset(alone, np.zeros(alone.shape + (2, 1000)))))


def test_the_yaml_covers_every_catalogue_background_and_object_with_classes():
    sf = runner.load(str(YAML))
    axes = dict(sf.sweep.cube("background_scenes").axes)
    assert list(axes["background"]) == ["none", *assets.background_ids()]
    assert set(axes["object"]) == {o for o in assets.object_ids() if assets.imagenet_class_indices(o)}
    assert int(np.prod(sf.sweep.cube("background_scenes").shape)) <= 1000


# ---------------------------------------------------------------- IN-9


def test_the_in9_table_matches_the_challenges_in_to_in9_json():
    # chosen indices: a golden retriever, the two dogs the challenge leaves out, a tabby, a sports car, a tench, a lion
    top1 = np.array([DOG, 171, 172, CAT, 817, TENCH, 291, 999, 555, 513, 7, 33, 300, 365, 389])
    assert in9.to_in9(top1).tolist() == [0, -1, -1, -1, 2, 8, 4, -1, 2, 6, 1, 3, 5, 7, 8]
    # per-class counts of in_to_in9.json (MadryLab/backgrounds_challenge @ 46d224bb): the table is the whole map
    counts = np.bincount(in9.LOOKUP + 1, minlength=10).tolist()
    assert counts == [630, 116, 52, 42, 36, 35, 27, 26, 20, 16]


def _folder(root, variants, images, per_class=None):
    """root/<variant>/val/<class>/*.JPEG: ``images`` (a list of RGB arrays) in 00_dog and one of them in
    every other class (``per_class``: class folder -> list of images instead)."""
    for variant in variants:
        for label, name in enumerate(in9.CLASSES):
            folder = root / variant / "val" / name
            folder.mkdir(parents=True)
            chosen = (per_class or {}).get(name, images if label == 0 else images[:1])
            for i, img in enumerate(chosen):
                Image.fromarray(img).save(folder / f"n{label:08d}_{i}.JPEG", quality=92)
    return root


def test_in9_accuracy_and_bg_gap_with_a_known_classifier(tmp_path):
    grey = [np.full((224, 224, 3), 128, np.uint8)] * 2
    root = _folder(tmp_path / "bg", ["original", "mixed_rand"], grey)
    _folder(tmp_path / "bg", ["mixed_same"], grey * 2)  # four images under 00_dog, one under each other class
    folders = in9.scan(root)
    assert [f.variant for f in folders] == ["original", "mixed_same", "mixed_rand"]
    per_image = in9.evaluate(folders, ["always_dog"], predict=lambda x, models: {"always_dog": np.full(len(x), DOG)})
    table = in9.table(per_image).accuracy.to_pandas()["always_dog"]
    assert table["in9_original"] == pytest.approx(2 / 10) and table["in9_mixed_rand"] == pytest.approx(2 / 10)
    assert table["in9_mixed_same"] == pytest.approx(4 / 12)
    assert table["in9_bg_gap"] == pytest.approx(4 / 12 - 2 / 10)
    limited = in9.scan(root, limit=1)
    assert len(limited[0].paths) == 9


def test_bad_in9_folders_are_one_line_errors(tmp_path):
    with pytest.raises(StudyError, match="is not a folder"):
        in9.scan(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="none of the IN-9 variant folders"):
        in9.scan(tmp_path / "empty")
    (tmp_path / "novalue" / "mixed_rand").mkdir(parents=True)
    with pytest.raises(StudyError, match=r"mixed_rand/val is missing"):
        in9.scan(tmp_path / "novalue")
    root = _folder(tmp_path / "bg", ["only_fg"], [np.zeros((224, 224, 3), np.uint8)])
    with pytest.raises(StudyError, match="in9_limit must be a whole number >= 1, got 'all'"):
        in9.scan(root, limit="all")
    (root / "only_fg" / "val" / "03_reptile" / "n00000003_0.JPEG").unlink()
    with pytest.raises(StudyError, match="03_reptile holds no images"):
        in9.scan(root)
    (root / "only_fg" / "val" / "03_reptile").rmdir()
    with pytest.raises(StudyError, match="the class folder .*03_reptile is missing") as err:
        in9.scan(root)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def dog_renders():
    from perturber.pipeline import scene

    return [scene.render({"object": "dog", "yaw": yaw, "pitch": 10, "background": "white"}, size)[..., :3]
            for yaw, size in ((0, 224), (90, 300))]  # a 300 px image exercises the resize and centre crop


@pytest.mark.slow
def test_renders_of_our_dog_count_as_00_dog_for_a_real_model(tmp_path, dog_renders):
    # lite0 reads the dog at yaw 0 and 90 on white as a retriever or Labrador (IN-9 dog) after JPEG
    root = _folder(tmp_path / "bg", ["original"], dog_renders)
    per_image = in9.evaluate(in9.scan(root), ["efficientnet_lite0"])
    assert (in9.to_in9(per_image.top1.values[:, 0]) == 0).all()
    assert per_image.correct.values[:, 0].tolist() == [1.0, 1.0] + [0.0] * 8


@pytest.mark.slow
def test_the_pruned_study_runs_end_to_end(tmp_path, dog_renders):
    root = _folder(tmp_path / "bg", ["original", "mixed_same", "mixed_rand"], dog_renders)
    store = str(tmp_path / "s.zarr")
    table, files = runner.run("background", store, models=["efficientnet_lite0"], prune=2, scheduler="synchronous",
                              params={"in9": str(root)}, progress=False, echo=lambda _: None)
    conditions = list(table["condition"].values)
    assert conditions == ["none", "white", "adversarial", "adversarial_given_none", "in9_original",
                          "in9_mixed_same", "in9_mixed_rand", "in9_bg_gap"]
    assert float(table.accuracy.sel(condition="in9_original", model="efficientnet_lite0")) == pytest.approx(0.2)
    assert float(table.accuracy.sel(condition="in9_bg_gap", model="efficientnet_lite0")) == pytest.approx(0.0)
    assert table.units.sel(condition="white").item() == 8  # 2 objects x 2 yaws x 2 pitches
    for kind in ("csv", "png", "html", "report"):
        assert files[kind].stat().st_size > 0
    report = files["report"].read_text()
    assert "adversarial" in report and "resnet50,resnet50_robust_l2_eps3" in report and "IN-9 BG-gap" in report
    again, _ = runner.run("background", store, models=["efficientnet_lite0"], prune=2, scheduler="synchronous",
                          compute=False, out_dir=tmp_path / "out", progress=False, echo=lambda _: None)
    assert "in9_original" not in list(again["condition"].values) and "--param in9=" in again.attrs["finding"]
    with pytest.raises(StudyError, match="is not a folder"):
        runner.run("background", store, models=["efficientnet_lite0"], prune=2, compute=False,
                   params={"in9": str(tmp_path / "missing")}, progress=False, echo=lambda _: None)
    assert json.loads(again.attrs["params"]) == {"in9": None, "in9_limit": None}


def test_a_bad_in9_folder_is_refused_before_any_cube_is_computed(tmp_path):
    store = tmp_path / "never.zarr"
    with pytest.raises(StudyError, match="is not a folder"):
        runner.run("background", str(store), models=["efficientnet_lite0"], prune=2, scheduler="synchronous",
                   params={"in9": str(tmp_path / "missing")}, progress=False, echo=lambda _: None)
    assert not store.exists()
