"""The yaw-fluctuation and patch-shuffle studies: metrics with known answers on synthetic cubes, and pruned end-to-end runs."""

import numpy as np
import pytest
import xarray as xr
from perturber.pipeline import spec
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import STUDIES, StudyError, analyse, runner
from perturber.pipeline.studies import patch_shuffle as ps
from perturber.pipeline.studies import yaw_fluctuation as yf
from perturber.pipeline.studies.synthetic import cube_dataset

MODELS = ["efficientnet_lite0", "efficientnet_lite1"]
GOLDEN, TABBY, OTHER = 207, 281, 500


def _spec(axes: dict, models=MODELS):
    return spec.parse_spec({"cubes": {"c": {"axes": axes, "models": models, "images": False}}}).cubes[0]


# ---------------------------------------------------------------- yaw-fluctuation


def _yaw_cube(yaws=(30.0, -70.0, -23.3)):
    """object (dog, cat) × yaw × pitch (0, 10), two models; model 1's logits are model 0's times 3.

    At every sample classes 0..9 have logits 10, 9, ..., 1 (the prototype's top-10),
    plus 2 at yaw -70: each top-10 trace moves by 2, then 0 (fluctuation 1 logit per
    step, 3 for model 1). The dog's top-1 becomes class 500 (logit 20) at yaw 30
    (pitch 0: one change) and at yaws 30 and -70 (pitch 10: two changes).
    """
    cube = _spec({"object": ["dog", "cat"], "yaw": list(yaws), "pitch": [0, 10]})
    logits = np.zeros(cube.shape + (2, 1000))  # object, yaw, pitch, model, class
    logits[..., :10] = np.arange(10, 0, -1)
    logits[:, list(yaws).index(-70.0), :, :, :10] += 2
    logits[0, list(yaws).index(30.0), :, :, OTHER] = 20
    logits[0, list(yaws).index(-70.0), 1, :, OTHER] = 20
    logits[..., 1, :] *= 3
    return cube, logits


def test_yaw_metrics_known_answer():
    cube, logits = _yaw_cube()
    views = yf.per_view(Cube(cube_dataset(cube, logits)), prototype_yaw=-23.3)
    spread = np.std(np.r_[np.arange(10, 0, -1), np.zeros(990)])  # 0.618: the 1000 logits at the prototype
    assert views["fluctuation"].sel(model=MODELS[0]).values == pytest.approx(np.ones((2, 2)))
    assert views["fluctuation"].sel(model=MODELS[1]).values == pytest.approx(np.full((2, 2), 3.0))
    assert views["spread"].sel(model=MODELS[1]).values == pytest.approx(np.full((2, 2), 3 * spread), rel=1e-4)
    # normalised: the same for a model whose logits are 3 times larger
    assert views["fluctuation_norm"].values == pytest.approx(np.full((2, 2, 2), 1 / spread), rel=1e-4)
    assert views["top1_changes"].sel(model=MODELS[0]).values.tolist() == [[1, 2], [0, 0]]


def test_yaw_table_bootstraps_views_and_adds_all():
    cube, logits = _yaw_cube()
    table = yf.yaw_fluctuation(Cube(cube_dataset(cube, logits)))
    assert table["object"].values.tolist() == ["dog", "cat", "all"]
    ch = table["top1_changes"].sel(model=MODELS[0])
    assert ch.values.tolist() == [1.5, 0.0, 0.75]
    assert float(table["top1_changes_lo"].sel(model=MODELS[0], object="dog")) == 1.0
    assert float(table["top1_changes_hi"].sel(model=MODELS[0], object="dog")) == 2.0
    assert table["fluctuation"].sel(object="all").values == pytest.approx([1.0, 3.0])
    assert table.attrs["prototype_yaw"] == pytest.approx(-23.3)
    # lite1 fluctuates more raw on both objects, the same normalised: no object wins, ranking flips
    assert "lite1 fluctuates more than efficientnet_lite0 on 2 of 2 objects" in table.attrs["finding"]
    assert "normalised: efficientnet_lite1 fluctuates more than efficientnet_lite0 on 0 of 2" in table.attrs["finding"]
    assert "flips after normalisation" in table.attrs["finding"]
    assert "intervals apart on 2" in table.attrs["finding"]
    # with the published pair in the cube, the finding compares them as the paper did
    published = yf.finding(table.assign_coords(model=np.array(["resnet50", "resnet50_robust_l2_eps3"], dtype=object)))
    assert "resnet50_robust_l2_eps3 fluctuates more than resnet50 on 2 of 2" in published
    assert published.endswith("here 2 of 2 raw and 0 normalised.")


def test_yaw_uncomputed_view_is_left_out():
    cube, logits = _yaw_cube()
    logits[1, 0, 1] = np.nan  # the cat at pitch 10, one yaw: not computed
    table = yf.yaw_fluctuation(Cube(cube_dataset(cube, logits)))
    per = yf.per_view(Cube(cube_dataset(cube, logits)))
    assert np.isnan(per["fluctuation"].sel(object="cat", pitch=10)).all()
    assert table["fluctuation"].sel(object="cat").values == pytest.approx([1.0, 3.0])  # the one computed view


def test_yaw_bad_input():
    cube, logits = _yaw_cube()
    ds = cube_dataset(cube, logits)
    with pytest.raises(StudyError, match="prototype yaw 0° is not on the cube's yaw grid"):
        yf.per_view(Cube(ds), prototype_yaw=0)
    with pytest.raises(StudyError, match="top must be 1..1000"):
        yf.per_view(Cube(ds), top=0)
    flat = _spec({"object": ["dog"], "pitch": [0, 10]})
    with pytest.raises(StudyError, match="needs a cube with a yaw axis"):
        yf.per_view(Cube(cube_dataset(flat, np.zeros(flat.shape + (2, 1000)))))


def test_yaw_reads_logits_lazily():
    """Only the prototype's logits are reduced eagerly; the sweep is one blockwise pass (a dask graph)."""
    cube, logits = _yaw_cube()
    ds = cube_dataset(cube, logits).chunk({"yaw": 1})
    assert ds["logits"].chunks is not None
    views = yf.per_view(Cube(ds))
    assert views["fluctuation"].sel(model=MODELS[0]).values == pytest.approx(np.ones((2, 2)))


@pytest.mark.slow  # imports HoloViews and Bokeh
def test_yaw_figure_draws_the_table(tmp_path):
    cube, logits = _yaw_cube()
    table = yf.yaw_fluctuation(Cube(cube_dataset(cube, logits)))
    fig, interactive = STUDIES["yaw-fluctuation"].figure(table, title="yaw-fluctuation")
    fig.savefig(tmp_path / "f.png")
    assert len(fig.axes) == 3 and interactive is not None


# ---------------------------------------------------------------- patch-shuffle

#: Whether the top-1 is in the object's class set: model, distance, object, k (1..4), seed (0, 1); same at both yaws.
IN_SET = {
    # model 0, near: the dog holds up to k = 2 (k = 3: one seed of two), the cat up to k = 3
    (0, 0, "dog"): [[1, 1], [1, 1], [1, 0], [0, 0]],
    (0, 0, "cat"): [[1, 1], [1, 1], [1, 1], [0, 0]],
    # model 0, far: only unshuffled
    (0, 1, "dog"): [[1, 1], [0, 0], [0, 0], [0, 0]],
    (0, 1, "cat"): [[1, 1], [0, 0], [0, 0], [0, 0]],
    # model 1: wrong unshuffled, right shuffled (k_keep 0: share must hold from k = 1 on)
    (1, 0, "dog"): [[0, 0], [1, 1], [1, 1], [1, 1]],
    (1, 0, "cat"): [[0, 0], [1, 1], [1, 1], [1, 1]],
    (1, 1, "dog"): [[0, 0], [1, 1], [1, 1], [1, 1]],
    (1, 1, "cat"): [[0, 0], [1, 1], [1, 1], [1, 1]],
}


def _shuffle_cube():
    cube = _spec({"object": ["dog", "cat"], "yaw": [0, 45], "distance": [2.2, 4.0], "shuffle": [1, 2, 3, 4],
                  "shuffle_seed": [0, 1]})
    logits = np.zeros(cube.shape + (2, 1000))  # object, yaw, distance, shuffle, seed, model, class
    for (m, d, obj), table in IN_SET.items():
        o = ["dog", "cat"].index(obj)
        hit = np.array(table, dtype=bool)  # k, seed
        right = GOLDEN if obj == "dog" else TABBY
        logits[o, :, d, :, :, m, right] = np.where(hit, 30.0, 0.0)
        logits[o, :, d, :, :, m, OTHER] = np.where(hit, 0.0, 30.0)
    return cube, logits


def test_shuffle_metrics_known_answer():
    cube, logits = _shuffle_cube()
    table = ps.patch_shuffle(Cube(cube_dataset(cube, logits)))
    share = table["share"].transpose("model", "distance", "shuffle").values
    assert share.tolist() == [[[1, 1, 0.75, 0], [1, 0, 0, 0]], [[0, 1, 1, 1], [0, 1, 1, 1]]]
    assert table["set_prob"].transpose("model", "distance", "shuffle").values == pytest.approx(share, abs=1e-6)
    assert table["k_keep"].transpose("model", "distance").values.tolist() == [[3, 1], [0, 0]]
    # every scene agrees far away: the interval is a point
    far = {"model": MODELS[0], "distance": 4.0}
    assert float(table["k_keep_lo"].sel(far)) == float(table["k_keep_hi"].sel(far)) == 1
    assert float(table["share_lo"].sel(far | {"shuffle": 3})) == 0.0
    assert float(table["share_lo"].sel(model=MODELS[0], distance=2.2, shuffle=3)) == 0.5  # a draw of dog scenes only (p = 1/16)
    assert table["share"].dims == ("shuffle", "distance", "model")
    f = table.attrs["finding"]
    assert "efficientnet_lite0 3 at distance 2.2, 1 at distance 4" in f
    assert "The dog alone: k = efficientnet_lite0 3 at distance 2.2" in f and "k = 7" in f


def test_shuffle_scenes_average_seeds():
    cube, logits = _shuffle_cube()
    scenes = ps.per_scene(Cube(cube_dataset(cube, logits)))
    assert scenes.sizes["scene"] == 4 and scenes["scene_object"].values.tolist() == ["dog", "dog", "cat", "cat"]
    dog = scenes["in_set"].sel(scene=0, model=MODELS[0], distance=2.2).values
    assert dog.tolist() == [1, 1, 0.5, 0]


def test_k_keep():
    share = xr.DataArray([[0.9, 0.6, 0.4, 0.7], [np.nan, 0.9, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5]],
                         dims=("model", "shuffle"), coords={"shuffle": [1, 2, 4, 8]})
    assert ps.k_keep(share).values.tolist() == [2, 0, 8]


def test_shuffle_bad_input():
    cube, logits = _shuffle_cube()
    ds = cube_dataset(cube, logits)
    with pytest.raises(StudyError, match="threshold must be in"):
        ps.patch_shuffle(Cube(ds), threshold=0)
    flat = _spec({"object": ["dog"], "yaw": [0, 45]})
    with pytest.raises(StudyError, match="needs a cube with a shuffle axis"):
        ps.per_scene(Cube(cube_dataset(flat, np.zeros(flat.shape + (2, 1000)))))


@pytest.mark.slow  # imports HoloViews and Bokeh
def test_shuffle_figure_facets_distance(tmp_path):
    cube, logits = _shuffle_cube()
    table = ps.patch_shuffle(Cube(cube_dataset(cube, logits)))
    fig, interactive = STUDIES["patch-shuffle"].figure(table, title="patch-shuffle")
    fig.savefig(tmp_path / "f.png")
    assert len(fig.axes) == 4 and interactive is not None  # (share, set_prob) × 2 distances


# ---------------------------------------------------------------- pruned end to end


@pytest.mark.slow
def test_yaw_fluctuation_pruned_end_to_end(tmp_path):
    store = str(tmp_path / "s.zarr")
    table, files = runner.run("yaw-fluctuation", store, models=["efficientnet_lite0"], prune=2,
                              params={"prototype_yaw": -46.67}, scheduler="synchronous", progress=False,
                              out_dir=tmp_path / "out", echo=lambda s: None)
    assert table["object"].values.tolist() == ["dog", "cat", "all"]
    assert np.isfinite(table["fluctuation"]).all() and np.isfinite(table["fluctuation_norm"]).all()
    assert ((table["top1_changes"] >= 0) & (table["top1_changes"] <= 1)).all()  # two yaws: one step
    assert table.attrs["prototype_yaw"] == pytest.approx(-46.667, abs=1e-3)
    assert xr.open_zarr(store, group="studies/yaw-fluctuation")["fluctuation"].shape == (3, 1)
    assert {"csv", "png", "html", "report"} <= set(files) and files["png"].stat().st_size > 0
    # the full YAML's prototype is not on the pruned grid: a one-line error, before any work
    with pytest.raises(StudyError, match="not on the cube's yaw grid"):
        analyse("yaw-fluctuation", store, {"prototype_yaw": -23.3})


@pytest.mark.slow
def test_patch_shuffle_pruned_end_to_end(tmp_path):
    store = str(tmp_path / "s.zarr")
    table, files = runner.run("patch-shuffle", store, models=["efficientnet_lite0"], prune=2,
                              scheduler="synchronous", progress=False, out_dir=tmp_path / "out", echo=lambda s: None)
    assert table["share"].sizes == {"shuffle": 2, "distance": 2, "model": 1}
    assert ((table["share"] >= 0) & (table["share"] <= 1)).all() and np.isfinite(table["set_prob"]).all()
    assert set(np.unique(table["k_keep"].values)) <= {0, 1, 2}
    assert "Published" in table.attrs["finding"] and files["report"].read_text().count("k = 7") >= 1
