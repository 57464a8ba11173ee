"""Cube analysis on a small cube with known answers (any Dataset with the store's layout)."""

import json

import numpy as np
import pytest
import xarray as xr

from perturber.pipeline import classes
from perturber.pipeline.analysis import Cube, class_indices, class_mask, softmax

NAN = np.nan
GOLDEN, TABBY, WRONG_DOG, WRONG_CAT = 207, 281, 506, 999
# top-1 class and probability of two models: object (dog, cat) x yaw (0, 90, 180); the cat at 180 is not computed
TOP1 = np.array([[[GOLDEN, GOLDEN], [GOLDEN, GOLDEN], [WRONG_DOG, GOLDEN]],
                 [[TABBY, TABBY], [WRONG_CAT, TABBY], [NAN, NAN]]])
PROB = np.array([[[0.9, 0.6], [0.5, 0.6], [0.2, 0.6]],
                 [[0.8, 0.7], [0.4, 0.7], [NAN, NAN]]])


def _cube(expected_prob: bool = True, act: np.ndarray | None = None) -> xr.Dataset:
    shape = TOP1.shape  # object, yaw, model
    logits = np.zeros(shape + (1000,), dtype=np.float32)
    for index in np.ndindex(*shape):
        if not np.isnan(TOP1[index]):
            logits[index + (int(TOP1[index]),)] = np.log(999.0)  # p(top-1) = 0.5, every other class 1/1998
        else:
            logits[index] = np.nan
    top_class = np.stack([TOP1, np.where(np.isnan(TOP1), NAN, 1.0)], axis=-1)  # rank 1, rank 2 (class 1)
    top_prob = np.stack([PROB, PROB / 10], axis=-1)
    data = {"logits": (("object", "yaw", "model", "class"), logits),
            "top_class": (("object", "yaw", "model", "rank"), top_class),
            "top_prob": (("object", "yaw", "model", "rank"), top_prob),
            "done": (("chunk_object", "chunk_yaw"), np.ones((2, 3), np.uint8))}
    if expected_prob:
        data["expected_prob"] = (("object", "yaw", "model"), np.full(shape, 0.25))
    coords = {"object": np.array(["dog", "cat"], dtype=object), "yaw": [0.0, 90.0, 180.0],
              "model": np.array(["m1", "m2"], dtype=object), "rank": [1, 2], "class": np.arange(1000),
              "class_name": ("class", np.array(classes.imagenet_categories(), dtype=object))}
    if act is not None:
        data["act_m1_head"] = (("object", "yaw", "neuron_m1_head", "ay_m1_head", "ax_m1_head"), act, {"model": "m1", "layer": "head"})
        coords["neuron_m1_head"] = [0, 1, 2]
    fixed = {"pitch": 10.0, "background": "white"}
    return xr.Dataset(data, coords=coords, attrs={"axes": ["object", "yaw"], "fixed": json.dumps(fixed)})


def test_objects_and_their_classes():
    cube = Cube(_cube())
    assert cube.objects == ["dog", "cat"] and cube.axes == ["object", "yaw"] and cube.models == ["m1", "m2"]
    assert class_mask("dog").sum() == 118 and class_mask("dog")[GOLDEN] and not class_mask("dog")[TABBY]
    assert class_indices("cat") == [281, 282, 283, 284, 285]
    assert class_indices("my_mesh.obj") is None and not class_mask("my_mesh.obj").any()
    # a cube without an object axis holds its object fixed: the factor's default unless the spec says
    fixed = _cube().isel(object=1, drop=True).assign_attrs(axes=["yaw"], fixed=json.dumps({"object": "cat"}))
    assert Cube(fixed).objects == ["cat"]
    default = fixed.assign_attrs(fixed=json.dumps({}))
    assert Cube(default).objects == ["dog"]  # factors.get("object").default


def test_misreadings_and_failures_nearest_first():
    cube = Cube(_cube())
    assert cube.misread("m1").tolist() == [[False, False, True], [False, True, False]]  # not computed is no failure
    assert not cube.misread("m2").any()
    found = cube.failures("m1", here=(0, 0))  # at the dog, yaw 0: only the dog's own failures
    assert found == [{"object": "dog", "yaw": 180.0, "top1": classes.imagenet_categories()[WRONG_DOG], "p": 0.2}]
    assert [f["yaw"] for f in cube.failures("m1", here=(1, 2))] == [90.0]


def test_sensitivity_is_the_mean_spread_along_each_axis():
    ranking = Cube(_cube()).sensitivity()
    # yaw: dog 0.9 - 0.2, cat 0.8 - 0.4 (180 not computed) -> mean 0.55; object: |0.9-0.8|, |0.5-0.4|, 0 (one value)
    assert ranking["m1"]["yaw"] == pytest.approx(0.55)
    assert ranking["m1"]["object"] == pytest.approx(0.2 / 3)
    assert ranking["m2"]["yaw"] == pytest.approx(0.0) and ranking["m2"]["object"] == pytest.approx(0.2 / 3)


@pytest.mark.parametrize("dask", [False, True])
def test_expected_probability_is_read_or_derived_from_the_logits(dask):
    stored = Cube(_cube())
    assert (stored.expected_probability == 0.25).all()
    ds = _cube(expected_prob=False)
    derived = Cube(ds.chunk() if dask else ds).expected_probability
    assert derived.shape == (2, 3, 2)
    # the top-1 (p = 0.5) plus the object's other classes at 1/1998 each; a misread top-1 is outside the classes
    dog = 0.5 + 117 / 1998
    assert derived[0, 0, 0] == pytest.approx(dog, rel=1e-5)
    assert derived[0, 2, 0] == pytest.approx(118 / 1998, rel=1e-5)  # 506 is not a dog
    assert derived[1, 0, 0] == pytest.approx(0.5 + 4 / 1998, rel=1e-5)
    assert np.isnan(derived[1, 2]).all()


def test_summary_counts_the_most_frequent_top1():
    rows = {(r.object, r.model): r for r in Cube(_cube()).summary()}
    dog = rows[("dog", "m1")]
    assert (dog.samples, dog.top1_share, dog.reads_as_class) == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert dog.top1 == classes.imagenet_categories()[GOLDEN]
    cat = rows[("cat", "m1")]
    assert cat.samples == 2 and cat.top1 == classes.imagenet_categories()[TABBY] and cat.reads_as_class == 0.5


def test_neuron_groups_rank_by_mean_activation_and_change():
    act = np.zeros((2, 3, 3, 2, 2), dtype=np.float32)
    act[0, :, 2] = 5.0  # neuron 2: the dog's strongest, constant along yaw
    act[1, :, 0] = 4.0  # neuron 0: the cat's strongest
    act[:, :, 1] = np.array([0.0, 1.0, 3.0])[None, :, None, None]  # neuron 1 changes most along yaw
    cube = Cube(_cube(act=act))
    assert [a.variable for a in cube.activations()] == ["act_m1_head"] and cube.activations("m2") == []
    groups = cube.neuron_groups("act_m1_head", size=2)
    assert cube.group_labels() == list(groups) == ["most active for dog", "most active for cat",
                                                   "changes most along object", "changes most along yaw"]
    assert groups["most active for dog"] == [2, 1] and groups["most active for cat"] == [0, 1]
    assert groups["changes most along yaw"][0] == 1
    assert cube.mean_activation("act_m1_head").shape == (2, 3, 3)


def test_softmax_is_nan_aware():
    p = softmax(np.array([[0.0, np.log(3.0)], [np.nan, np.nan]], dtype=np.float16))
    assert p[0] == pytest.approx([0.25, 0.75], abs=1e-3) and np.isnan(p[1]).all()
