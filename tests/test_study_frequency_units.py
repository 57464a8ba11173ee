"""The frequency and units-vs-directions studies: their metrics on hand-built cubes
with known answers, and their pruned YAMLs end to end (real renderer, real model)."""

import base64
import io
import itertools
import json

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from perturber.pipeline import names, spec
from perturber.pipeline import store as zstore
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import StudyError, runner
from perturber.pipeline.studies.frequency import CLEAN, CUBES, frequency
from perturber.pipeline.studies.synthetic import cube_dataset
from perturber.pipeline.studies.units_directions import (chance_coherence, coherence, random_directions, top_k,
                                                         units_vs_directions)

MODEL = "efficientnet_lite0"
CLASS = {"dog": 207, "cat": 281}  # golden retriever, tabby: in each object's class set
WRONG = 0  # tench: in neither set
SCENES = {"object": ["dog", "cat"], "yaw": [0, 90]}


def _cube(name, axes, **extra):
    return spec.parse_spec({"cubes": {name: {"axes": axes, "models": [MODEL], "images": False, **extra}}}).cubes[0]


def _confident(cube, right):
    """Logits (*shape, 1, 1000): each sample's own class at 30 where ``right`` (*shape) holds, tench at 30 elsewhere:
    class-set probability 1 or 0 (within 1e-9)."""
    logits = np.zeros(cube.shape + (1, 1000), dtype=np.float32)
    objects = np.array(dict(cube.axes)["object"])
    own = np.vectorize(CLASS.get)(objects).reshape((-1,) + (1,) * (len(cube.shape) - 1))
    own = np.broadcast_to(own, cube.shape)
    index = np.where(right, own, WRONG)
    np.put_along_axis(logits, index[..., None, None], 30.0, axis=-1)
    return logits


def _frequency_cubes(blur_scenes=SCENES):
    """The five cubes of a 4-scene study (dog/cat × yaw 0/90): clean everywhere right; band_low removed: all
    wrong; band_mid: all right; band_high removed: only (dog, 0) wrong; blur 0.5: both dogs wrong."""
    levels = {"band_low": [0.0, 1.0], "band_mid": [0.0, 1.0], "band_high": [0.0, 1.0], "blur": [0.0, 0.5]}
    clean = _cube(CLEAN, SCENES)
    cubes = {CLEAN: Cube(cube_dataset(clean, _confident(clean, np.ones(clean.shape, bool))))}
    for factor, name in CUBES.items():
        c = _cube(name, {**(blur_scenes if factor == "blur" else SCENES), factor: levels[factor]})
        right = np.ones(c.shape, bool)  # (object, yaw, level)
        if factor == "band_low":
            right[:, :, 0] = False
        elif factor == "band_high":
            right[0, 0, 0] = False
        elif factor == "blur":
            right[0, :, 1] = False
        cubes[name] = Cube(cube_dataset(c, _confident(c, right)))
    return cubes


# ---------------------------------------------------------------- frequency


def test_frequency_drops_and_low_minus_high_have_the_known_values():
    t = frequency(_frequency_cubes())
    assert list(t["level"].values) == [0.0, 0.5, 1.0]  # the union of the gains and the blur pixels
    assert t["drop"].dims == ("factor", "level", "model")
    d = t["drop"].sel(model=MODEL)
    np.testing.assert_allclose(d.sel(factor="band_low", level=[0.0, 1.0]), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(d.sel(factor="band_mid", level=[0.0, 1.0]), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(d.sel(factor="band_high", level=[0.0, 1.0]), [0.25, 0.0], atol=1e-6)
    np.testing.assert_allclose(d.sel(factor="blur", level=[0.0, 0.5]), [0.0, 0.5], atol=1e-6)
    assert np.isnan(d.sel(factor="band_low", level=0.5)) and np.isnan(d.sel(factor="blur", level=1.0))
    np.testing.assert_allclose(t["in_set"].sel(model=MODEL, factor="band_high", level=0.0), 0.75)
    np.testing.assert_allclose(t["set_prob"].sel(model=MODEL, factor="band_low", level=0.0), 0.0, atol=1e-6)
    lmh = t["low_minus_high"].sel(model=MODEL)
    np.testing.assert_allclose(lmh.sel(level=[0.0, 1.0]), [0.75, 0.0], atol=1e-6)
    assert np.isnan(lmh.sel(level=0.5))
    # per scene the difference is 0, 1, 1, 1: a resampled mean is 0 with probability 0.4 % and at most 0.25 with
    # probability 5 %, so the 2.5 % quantile is 0.25; at least 0.75 with probability 74 %, so the 97.5 % one is 1
    lo, hi = float(t["low_minus_high_lo"].sel(model=MODEL, level=0.0)), float(t["low_minus_high_hi"].sel(model=MODEL, level=0.0))
    assert lo == pytest.approx(0.25, abs=1e-6) and hi == pytest.approx(1.0, abs=1e-6)
    assert t.attrs["bootstrap_unit"] == "scene" and t.attrs["bootstrap_units"] == 4
    finding = t.attrs["finding"]
    assert "removing the low band costs 1.000" in finding and "the high band 0.250" in finding
    assert "for 1 of 1 models" in finding  # the interval of the difference, [0.25, 1], lies above 0


def test_frequency_refuses_cubes_that_do_not_share_their_scenes():
    with pytest.raises(StudyError, match="'freq_blur' has the scenes .*every frequency cube must vary the same scene axes"):
        frequency(_frequency_cubes(blur_scenes={"object": ["dog", "cat"], "yaw": [0, 45]}))
    cubes = _frequency_cubes()
    cubes[CUBES["band_mid"]] = cubes[CLEAN]
    with pytest.raises(StudyError, match="cube 'freq_band_mid' must sweep 'band_mid'"):
        frequency(cubes)


# ---------------------------------------------------------------- units-vs-directions


def test_chance_coherence_is_the_exact_mean_over_every_subset():
    assert chance_coherence([2, 2], 2) == pytest.approx(2 / 3)  # aa, bb: 1; the four mixed pairs: 1/2
    assert chance_coherence([5], 3) == 1.0 and chance_coherence([3, 4], 1) == 1.0
    values = np.repeat([0, 1, 2], [3, 4, 5])
    brute = np.mean([np.bincount(values[list(s)]).max() / 4 for s in itertools.combinations(range(12), 4)])
    assert chance_coherence([3, 4, 5], 4) == pytest.approx(brute, rel=1e-12)
    with pytest.raises(ValueError):
        chance_coherence([2, 2], 5)


def test_top_k_sorts_by_score_then_position_and_coherence_counts_the_modal_value():
    scores = np.array([[1.0, 0.0], [3.0, 0.0], [3.0, 2.0], [0.0, 2.0], [2.0, 1.0]])
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 2, 4], [2, 3, 4]])
    rng = np.random.default_rng(3)
    many = rng.integers(0, 5, (200, 6)).astype(float)  # many ties
    expected = np.argsort(-many, axis=0, kind="stable")[:7].T
    np.testing.assert_array_equal(top_k(many, 7), expected)
    np.testing.assert_allclose(coherence(np.array([[0, 0, 1, 2], [3, 3, 3, 3]])), [0.5, 1.0])


def test_random_directions_are_unit_vectors_from_the_seed():
    d = random_directions(5, 7, seed=4)
    assert d.shape == (5, 7)
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0)
    np.testing.assert_array_equal(d, random_directions(5, 7, seed=4))
    assert not np.allclose(d, random_directions(5, 7, seed=5))


AXES = {"object": ["dog", "cat"], "yaw": [0, 90, 180], "hue": [0, 120]}  # 12 samples, flat order object, yaw, hue


def _activation_cube(images=True):
    """12 samples with two layers of known mean activations (every map constant), images grey by yaw."""
    cube = _cube("units_directions", AXES, images=images, size=32)
    ds = cube_dataset(cube, np.zeros(cube.shape + (1, 1000)),
                      images=np.broadcast_to((np.arange(3) * 80).reshape(1, 3, 1, 1, 1, 1), cube.shape + (32, 32, 3)).astype(np.uint8)
                      if images else None)
    o, y, h = np.meshgrid(*(np.arange(n) for n in cube.shape), indexing="ij")
    position = np.arange(12).reshape(cube.shape)
    stage4 = np.stack([(y == 2) * 1.0,  # top-4: the yaw-180 samples (object 1/2, yaw 1, hue 1/2)
                       (o == 0) * (1.0 + (h == 0)),  # dog at hue 0 (3), then the first dog at hue 120
                       -position * 1.0], -1)  # the first four positions: dog at yaws 0 and 90
    cat = (o == 1) * 1.0
    stage6 = np.stack([cat, cat], -1)  # every direction scores ±cat: top or bottom four, both first in order
    layout = zstore.Layout({(MODEL, "stage4"): ([0, 1, 2], 2, 2), (MODEL, "stage6"): ([5, 9], 1, 1)})
    template = zstore.template(cube, layout)
    for layer, mean in (("stage4", stage4), ("stage6", stage6)):
        act = names.activation(MODEL, layer)
        var = template[act.variable]
        maps = np.broadcast_to(mean[..., None, None], cube.shape + var.shape[-3:]).astype(np.float16)
        ds[act.variable] = (var.dims, maps, var.attrs)
        ds = ds.assign_coords({act.neuron: template[act.neuron]})
    return Cube(ds)


def test_units_and_directions_coherence_have_the_known_values():
    t = units_vs_directions(_activation_cube(), k=4, show=1)
    assert t["units"].dims == ("model", "layer", "factor") and list(t["factor"].values) == ["object", "yaw", "hue"]
    s4 = t.sel(model=MODEL, layer="stage4")
    np.testing.assert_allclose(s4["units"], [(0.5 + 1 + 1) / 3, (1 + 0.5 + 0.5) / 3, (0.5 + 0.75 + 0.5) / 3])
    s6 = t.sel(model=MODEL, layer="stage6")
    np.testing.assert_allclose(s6["units"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(s6["directions"], [1.0, 0.5, 0.5])  # top or bottom four: the same coherences
    np.testing.assert_allclose(s6["difference"], 0.0)
    np.testing.assert_allclose(s6["difference_lo"], 0.0) and np.testing.assert_allclose(s6["difference_hi"], 0.0)
    for f, n in (("object", 2), ("yaw", 3), ("hue", 2)):  # chance: the mean over all 495 4-subsets
        values = np.repeat(np.arange(n), 12 // n)
        brute = np.mean([np.bincount(values[list(c)]).max() / 4 for c in itertools.combinations(range(12), 4)])
        np.testing.assert_allclose(t["chance"].sel(model=MODEL, factor=f), brute)
    assert np.all(t["units_lo"] <= t["units"]) and np.all(t["units"] <= t["units_hi"])
    assert t.attrs["bootstrap_unit"] == "member" and t.attrs["k"] == 4


def test_units_grid_shows_the_top_k_inputs():
    t = units_vs_directions(_activation_cube(), k=4, show=1)
    rows = json.loads(t.attrs["topk_grid_rows"])
    assert rows[0] == f"{MODEL} stage4 unit 0" and rows[1] == f"{MODEL} stage4 direction 0" and len(rows) == 4
    assert all(p["yaw"] == 180 for p in json.loads(t.attrs["topk_grid_samples"])[0])
    mosaic = np.asarray(Image.open(io.BytesIO(base64.b64decode(t.attrs["topk_grid_jpeg"]))))
    assert mosaic.shape == (4 * 48, 4 * 48, 3)
    assert abs(float(mosaic[:48].mean()) - 160) < 4  # unit 0's four inputs: all yaw 180, grey 160


def test_units_bad_inputs_are_one_line_errors():
    cube = _cube("units_directions", AXES)
    with pytest.raises(StudyError, match="stores no activations"):
        units_vs_directions(Cube(cube_dataset(cube, np.zeros(cube.shape + (1, 1000)))))
    with pytest.raises(StudyError, match="k = 13 but only 12 samples are computed"):
        units_vs_directions(_activation_cube(images=False), k=13)


# ---------------------------------------------------------------- the pruned YAMLs end to end


@pytest.mark.slow
def test_frequency_yaml_runs_pruned(tmp_path):
    table, files = runner.run("frequency", str(tmp_path / "f.zarr"), models=[MODEL], prune=2, scheduler="synchronous",
                              progress=False, out_dir=tmp_path / "out", echo=lambda s: None)
    assert list(table["level"].values) == [0.0, 0.5]
    drops = table["drop"].sel(model=MODEL)
    assert np.isfinite(drops).all() and (np.abs(drops) <= 1).all()
    assert np.isfinite(table["low_minus_high"].sel(model=MODEL, level=0.0))
    np.testing.assert_allclose(drops.sel(factor="blur", level=0.0), 0.0, atol=1e-3)  # blur 0 is the clean image
    stored = xr.open_zarr(tmp_path / "f.zarr", group="studies/frequency")
    assert "removing the low band costs" in stored.attrs["finding"]
    assert "resnet50,resnet50_robust_linf_eps4" in files["report"].read_text()
    assert files["png"].stat().st_size > 10_000


@pytest.mark.slow
def test_units_vs_directions_yaml_runs_pruned(tmp_path):
    table, files = runner.run("units-vs-directions", str(tmp_path / "u.zarr"), models=[MODEL], prune=2,
                              params={"k": 4}, scheduler="synchronous", progress=False, out_dir=tmp_path / "out",
                              echo=lambda s: None)
    assert list(table["layer"].values) == ["stage4", "stage6"]
    assert list(table["factor"].values) == ["object", "yaw", "background", "hue"]
    for v in ("units", "directions", "chance"):
        assert ((table[v] >= 0.5) & (table[v] <= 1)).all()  # every factor has two values in the pruned cube
    assert table.attrs["bootstrap_units"] == "32"
    mosaic = np.asarray(Image.open(io.BytesIO(base64.b64decode(table.attrs["topk_grid_jpeg"]))))
    assert mosaic.shape == (8 * 48, 4 * 48, 3) and mosaic.std() > 5  # 2 layers × (2 units + 2 directions), real images
    assert "Szegedy" in files["report"].read_text()
