"""The studies framework: bootstrap intervals, per-sample quantities, outputs, the runner and the command."""

import csv
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from perturber.pipeline import cli, spec, studies
from perturber.pipeline.analysis import Cube
from perturber.pipeline.studies import outputs, runner
from perturber.pipeline.studies.bootstrap import bootstrap
from perturber.pipeline.studies.samples import per_sample
from perturber.pipeline.studies.synthetic import cube_dataset, write_store

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
TINY = """\
name: read_as_class
budget: 100
cubes:
  views:
    axes:
      object: [dog, cat]
      yaw: [0, 90]
    models: [efficientnet_lite0]
    images: false
    size: 96
"""


def _cube(axes, models=("efficientnet_lite0",)):
    return spec.parse_spec({"cubes": {"c": {"axes": axes, "models": list(models), "images": False}}}).cubes[0]


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_of_a_mean_matches_the_normal_interval():
    values = xr.DataArray(np.r_[np.zeros(200), np.ones(200)], dims=("view",))
    table = bootstrap(values.rename("share"), unit="view")
    assert float(table["share"]) == 0.5
    half = 1.96 * np.sqrt(0.25 / 400)  # the normal approximation of the mean's 95 % interval
    assert float(table["share_lo"]) == pytest.approx(0.5 - half, abs=0.01)
    assert float(table["share_hi"]) == pytest.approx(0.5 + half, abs=0.01)
    assert table.attrs["bootstrap_units"] == 400 and table.attrs["bootstrap_unit"] == "view"
    again = bootstrap(values.rename("share"), unit="view")
    assert float(again["share_lo"]) == float(table["share_lo"])  # a fixed seed: the same table every run


def test_bootstrap_of_constant_units_has_no_width_and_keeps_other_dims():
    values = xr.DataArray(np.tile([[0.2, 0.7]], (30, 1)), dims=("seed", "model"), coords={"model": ["a", "b"]})
    table = bootstrap(values, unit="seed")
    assert table["value"].dims == ("model",)
    np.testing.assert_allclose(table["value_lo"], [0.2, 0.7])
    np.testing.assert_allclose(table["value_hi"], [0.2, 0.7])


def test_bootstrap_resamples_a_ratio_by_unit():
    # Each unit has shape + texture = 1 decision, so the ratio of sums is exactly the share of shape decisions
    shape = xr.DataArray(np.r_[np.ones(30), np.zeros(10)], dims=("view",))
    data = xr.Dataset({"shape": shape, "texture": 1 - shape})
    ratio = bootstrap(data, "view", lambda d: (d.shape.sum("view") / (d.shape.sum("view") + d.texture.sum("view"))).rename("bias"))
    share = bootstrap(shape.rename("bias"), "view")
    assert float(ratio["bias"]) == 0.75
    assert float(ratio["bias_lo"]) == pytest.approx(float(share["bias_lo"]))
    assert float(ratio["bias_hi"]) == pytest.approx(float(share["bias_hi"]))


def test_bootstrap_ignores_units_not_computed():
    values = xr.DataArray([1.0, 1.0, np.nan, 1.0], dims=("view",))
    table = bootstrap(values, unit="view")
    assert float(table["value"]) == 1.0 and float(table["value_lo"]) == 1.0
    with pytest.raises(ValueError, match="'scene' is not a dimension"):
        bootstrap(values, unit="scene")


# ---------------------------------------------------------------- per-sample quantities


def test_per_sample_knows_each_objects_class_set():
    cube = _cube({"object": ["dog", "cat"], "yaw": [0, 90, 180]}, ("efficientnet_lite0", "efficientnet_lite2"))
    logits = np.zeros(cube.shape + (2, 1000), dtype=np.float32)
    logits[..., 207] = 10.0  # golden retriever: the dog's set, not the cat's
    logits[1, :, 1, 281] = 20.0  # the cat, second model: tabby cat
    s = per_sample(Cube(cube_dataset(cube, logits)))
    assert s["in_set"].dims == ("object", "yaw", "model")
    np.testing.assert_array_equal(s["in_set"].values[0], 1.0)
    np.testing.assert_array_equal(s["in_set"].values[1], [[0.0, 1.0]] * 3)
    np.testing.assert_array_equal(s["top1"].values[1, :, 1], 281)
    dogs = (np.exp(10) + 117) / (np.exp(10) + 999)  # the golden retriever and the 117 other breeds at logit 0
    np.testing.assert_allclose(s["set_prob"].values[0, :, 0], dogs, rtol=1e-5)
    assert s["in_set"].chunks is not None  # lazy: a reduction reads chunk by chunk


def test_per_sample_marks_uncomputed_chunks_nan(tmp_path):
    cube = _cube({"object": ["dog"], "yaw": [0, 90]})
    ds = cube_dataset(cube, np.zeros(cube.shape + (1, 1000)))
    ds["top_class"][:, 1] = -1  # as the template leaves a chunk not yet written
    ds["top_prob"][:, 1] = np.nan
    ds["top_class"] = ds["top_class"].astype("float32").where(ds["top_class"] >= 0)
    s = per_sample(Cube(ds))
    assert np.isnan(s["in_set"].values[0, 1, 0]) and not np.isnan(s["in_set"].values[0, 0, 0])


# ---------------------------------------------------------------- outputs


def test_outputs_write_a_table_figures_and_a_report(tmp_path):
    rng = np.random.default_rng(1)
    values = xr.DataArray(rng.random((20, 2, 4)), dims=("seed", "model", "k"),
                          coords={"model": ["m1", "m2"], "k": [1, 2, 3, 4]}, attrs={"long_name": "share", "units": "1"})
    table = bootstrap(values.rename("share"), "seed")
    table.attrs["finding"] = "m1 and m2 agree"
    s = studies.Study("x-study", "c", "The share of things.", lambda cube: None, unit="seed", control="A control.",
                      published="Someone et al.: 42 %.", published_models=("resnet50", "resnet50_stylized"))
    files = outputs.write_outputs(s, table, "st.zarr", tmp_path / "out")
    rows = list(csv.DictReader(open(files["csv"])))
    assert len(rows) == 8 and {"model", "k", "share", "share_lo", "share_hi"} <= set(rows[0])
    first = table.sel(model="m1", k=1)
    assert float(rows[0]["share"]) == pytest.approx(float(first["share"]))
    report = files["report"].read_text()
    for text in ("The share of things.", "A control.", "Someone et al.: 42 %.", "m1 and m2 agree",
                 "--models resnet50,resnet50_stylized", "bootstrap intervals over 20 independent units (seed)",
                 f"{float(first['share']):.3g} [{float(first['share_lo']):.3g}, {float(first['share_hi']):.3g}]"):
        assert text in report
    assert files["png"].read_bytes()[:4] == b"\x89PNG" and b"<html" in files["html"].read_bytes()[:2000].lower()


# ---------------------------------------------------------------- the runner and the command


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """The worked example study (docs/examples/read_as_class.py) with a YAML of its cube, registered for one test."""
    monkeypatch.setattr(studies, "STUDIES", dict(studies.STUDIES))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("read_as_class", None)
    importlib.import_module("read_as_class")
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "read_as_class.yaml").write_text(TINY)
    monkeypatch.setenv("PERTURBER_STUDIES", str(folder))
    yield folder
    sys.modules.pop("read_as_class", None)


@pytest.mark.slow
def test_the_command_computes_the_cube_then_writes_everything(tiny_study, tmp_path, capsys):
    store = str(tmp_path / "s.zarr")
    argv = ["study", "read_as_class", "--store", store, "--scheduler", "synchronous", "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    table = xr.open_zarr(store, group="studies/read_as_class")
    assert table.attrs["study"] == "read_as_class" and table["share"].dims == ("object", "model")
    top1 = xr.open_zarr(store, group="views")["top_class"].sel(rank=1).values[..., 0]
    assert float(table["share"].sel(object="dog")[0]) == pytest.approx(np.isin(top1[0], range(151, 269)).mean())
    folder = tmp_path / "s-studies" / "read_as_class"
    for name in ("table.csv", "figure.png", "figure.html", "report.md"):
        assert (folder / name).is_file() and str(folder / name) in printed
    assert cli.main(argv) == 0 and "computed" not in capsys.readouterr().out  # the second run computes nothing


def test_a_study_of_a_store_without_its_cube_names_the_cube_and_the_command(tiny_study, tmp_path, capsys):
    store = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", [1])}).to_zarr(store, group="else", zarr_format=3, consolidated=False)
    assert cli.main(["study", "read_as_class", "--store", str(store), "--no-compute"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "needs the cube 'views'" in err and f"perturber study read_as_class --store {store}" in err


def test_bad_study_requests_are_one_line_errors(tiny_study, tmp_path, capsys):
    store = str(tmp_path / "s.zarr")
    cases = [
        (["study", "read_as_clas", "--store", store], "did you mean 'read_as_class'"),
        (["study", "read_as_class", "--store", store, "--param", "depth=3"], "has no parameter 'depth'"),
        (["study", "read_as_class", "--store", store, "--param", "nothing"], "expected KEY=VALUE"),
        (["study", "read_as_class", "--store", store, "--models", "no_such_model"], "no_such_model"),
        (["study"], "name a study"),
        (["study", str(tmp_path / "missing.yaml")], "no such study file"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (argv, err)
    bad = tiny_study / "read_as_class.yaml"
    bad.write_text(TINY.replace("name: read_as_class\n", "name: read_as_class\nstudy: {parms: 1}\n"))
    assert cli.main(["study", "read_as_class", "--store", store]) == 2
    assert "unknown key 'parms'" in capsys.readouterr().err
    assert not Path(store).exists()  # nothing was computed


def test_models_replace_the_studys_own_and_prune_shrinks_it(tiny_study):
    sf = runner.load("read_as_class", models=["efficientnet_lite2"], prune=1)
    (cube,) = sf.sweep.cubes
    assert cube.models == ("efficientnet_lite2",) and cube.shape == (1, 1)


def test_the_list_names_every_builtin_study(capsys):
    assert cli.main(["study", "--list"]) == 0
    printed = capsys.readouterr().out
    for name in ("yaw-fluctuation", "background", "cue-conflict", "patch-shuffle", "frequency", "transfer",
                 "units-vs-directions", "saliency-on-object"):
        assert name in printed
        assert name in runner.study_files()  # each has its YAML


def test_a_generated_store_reads_like_a_computed_one(tmp_path):
    cube = _cube({"object": ["dog", "cat"], "yaw": [0, 90, 180]})
    store = str(tmp_path / "g.zarr")
    write_store(cube, store, lambda slices, rng: np.full(tuple(s.stop - s.start for s in slices) + (1, 1000), 0.0) +
                np.eye(1000)[207] * 5)
    s = per_sample(Cube(xr.open_zarr(store, group="c")))
    np.testing.assert_array_equal(s["in_set"].values[..., 0], [[1.0] * 3, [0.0] * 3])
