"""The searches' shared pieces: the Scorer, transfer, and the fooling/<run> group layout."""

import numpy as np
import pytest
import xarray as xr

from perturber.pipeline import classes
from perturber.pipeline import groups
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.searches import fooling, scoring

MODEL = "efficientnet_lite0"


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_history_row_known_answer():
    c = np.zeros(1000)
    c[:3] = [0.5, 0.995, 0.99]
    row = fooling.history_row(c)
    assert row == {"mean_confidence": pytest.approx(2.485 / 1000), "median_confidence": 0.0, "classes_above_099": 2}


def test_scorer_reads_stored_images_as_the_float_images_and_batches_do_not_matter():
    images = _images(5)
    as_float = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    p1 = scoring.Scorer(MODEL, device="cpu", batch_size=1).probabilities(images)
    p4 = scoring.Scorer(MODEL, device="cpu", batch_size=4).probabilities(as_float)
    assert p1.shape == (5, 1000) and np.allclose(p1.sum(1), 1, atol=1e-5)
    assert np.allclose(p1, p4, atol=1e-5)


def test_the_group_round_trips_through_plain_xarray_with_transfer(tmp_path):
    images = _images(3, seed=1)
    e = fooling.Elites("cppn", MODEL, 7, classes=np.array([1, 207, 999]), images=images,
                       confidence=np.array([0.2, 0.5, 0.99]), found_at=np.array([0, 3, 4]),
                       history={k: np.array([v, v]) for k, v in fooling.history_row(np.zeros(1000)).items()},
                       settings={"population": 8}, evaluations=40, seconds=1.5)
    tr = scoring.transfer(images, e.classes, ["efficientnet_lite1"])
    store = tmp_path / "s.zarr"
    fooling.write(store, "cppn-run", e, tr)
    ds = xr.open_zarr(store, group="fooling/cppn-run")
    assert list(ds["class"].values) == [1, 207, 999]
    assert list(ds.class_name.values) == [classes.imagenet_categories()[i] for i in (1, 207, 999)]
    assert (ds.elite.values == images).all() and list(ds.method.values) == ["cppn"] * 3 and (ds.seed.values == 7).all()
    assert list(ds.generation.values) == [0, 1] and ds.attrs["evaluations"] == 40
    p = scoring.Scorer("efficientnet_lite1", device="cpu").probabilities(images)
    assert np.allclose(ds.transfer.sel(model="efficientnet_lite1").values, p[[0, 1, 2], [1, 207, 999]], atol=1e-6)
    assert list(ds.transfer_top1.sel(model="efficientnet_lite1").values) == list(p.argmax(1))
    assert fooling.runs(store) == ["cppn-run"]
    assert ds.elite.encoding["chunks"] == (1, 64, 64, 3)  # one elite per chunk: a gallery reads only what it shows


@pytest.mark.parametrize("run", ["", "a/b", ".hidden"])
def test_bad_run_names_are_refused(run):
    with pytest.raises(PerturberError, match="for a fooling group"):
        fooling.group(run)


def test_reading_a_missing_run_names_the_runs_there(tmp_path):
    with pytest.raises(PerturberError, match="no fooling group 'x' .*none"):
        fooling.read(tmp_path / "none.zarr", "x")


def test_a_write_that_fails_part_way_leaves_the_earlier_group_whole(tmp_path):
    import dask.array as da

    store = tmp_path / "s.zarr"
    groups.write(store, "fooling", "run", xr.Dataset({"v": ("i", np.arange(4.0))}))

    def fails_on_the_second_block(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 1:
            raise RuntimeError("out of memory while computing")
        return block

    lazy = da.arange(4.0, chunks=2).map_blocks(fails_on_the_second_block, dtype=float) + 10
    with pytest.raises(RuntimeError, match="out of memory"):
        groups.write(store, "fooling", "run", xr.Dataset({"v": ("i", lazy)}))
    assert list(xr.open_zarr(store, group="fooling/run").v.values) == [0, 1, 2, 3]
    assert groups.names(store, "fooling") == ["run"]  # the half-written one is never listed
    groups.write(store, "fooling", "run", xr.Dataset({"v": ("i", np.arange(4.0) + 10)}))
    assert list(xr.open_zarr(store, group="fooling/run").v.values) == [10, 11, 12, 13]
    assert sorted(p.name for p in (store / "fooling").iterdir()) == ["run", "zarr.json"]
