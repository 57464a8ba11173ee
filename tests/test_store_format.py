"""Store format 2: sharded per-sample variables, per-sample summaries, one
done file, old stores readable and migrated (real renders, the pip-shipped
EfficientNet-Lite0, a second Zarr implementation)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from perturber.pipeline import analysis, names, run, shards, spec, store, summaries, verify
from perturber.pipeline.store import StoreError



def _spec(shard_yaw: int) -> spec.SweepSpec:
    return spec.parse_spec({"name": "t", "cubes": {"views": {
        "axes": {"object": ["dog", "cat"], "yaw": [0, 45, 90, 135, 180, -90], "hue": [0, 90]},
        "models": ["efficientnet_lite0"], "layers": ["head"], "neurons": {"head": 4}, "size": 32,
        "shards": {"yaw": shard_yaw}}}})


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The same cube with shards of 3 yaws (4 tasks) and of 1 yaw (12 tasks, one chunk each, rendered
    ahead of the models by a render thread)."""
    folder = tmp_path_factory.mktemp("format2")
    out = {}
    for n in (3, 1):
        path = str(folder / f"shards{n}.zarr")
        run.precompute(_spec(n), path, scheduler="synchronous", progress=False, echo=lambda _: None,
                       render_threads=1 if n == 1 else None)
        out[n] = path
    return out


# ------------------------------------------------------------------ choosing shapes


def test_the_10m_sample_cube_stays_under_50k_files():
    shape, chunk = (8, 100, 50, 10, 25), (1, 1, 1, 1, 25)
    per_sample = [2 * 1000 * 2, 2 * 5 * 2, 2 * 5 * 4, 224 * 224 * 3, 16 * 14 * 14 * 2, 16 * 7 * 7 * 2, 16 * 2, 16 * 2]
    shard = shards.shard_shape(shape, chunk, per_sample)
    assert shard == (1, 1, 8, 10, 25)  # 2,000 samples: 10M x 8 variables / 40,000 files
    summary = shards.summary_chunk_shape(shape, shard, models=2)
    assert summary == (2, 100, 50, 10, 25)  # 2.5M samples x 2 models: about SUMMARY_CELLS values
    # 8 x 100 x 7 x 1 x 1 = 5,600 tasks (pitch: 50 in shards of 8), 4 chunks per summary, one done file
    assert shards.files(shape, shard, summary, variables=len(per_sample)) == 8 * 5600 + 3 * 4 + 1 <= 50_000


def test_small_cubes_keep_a_task_per_chunk_and_hints_win():
    assert shards.shard_shape((2, 6, 2), (1, 1, 2), [4000]) == (1, 1, 2)  # 12 chunks < MIN_TASKS
    demo = shards.shard_shape((4, 8, 2, 3, 3), (1, 1, 1, 1, 3), [4000, 150528])
    assert np.prod(shards.grid((4, 8, 2, 3, 3), demo)) == shards.MIN_TASKS
    assert shards.shard_shape((2, 6, 2), (1, 1, 2), [4000], hint={1: 4}) == (1, 4, 2)
    assert shards.shard_shape((2, 6, 2), (1, 2, 2), [4000], hint={1: 3}) == (1, 4, 2)  # whole inner chunks
    with pytest.raises(spec.SpecError, match="shards.pitch: shard hint for 'pitch', which is not an axis"):
        spec.parse_spec({"cubes": {"c": {"axes": {"yaw": [0]}, "models": ["efficientnet_lite0"], "shards": {"pitch": 2}}}})


# ------------------------------------------------------------------ the written store


def test_one_file_per_task_and_summaries_in_large_chunks(sharded):
    path = Path(sharded[3]) / "views"
    ds = xr.open_zarr(sharded[3], group="views")
    assert ds[names.DONE].attrs["task_shape"] == [1, 3, 2] and ds[names.DONE].shape == (2, 2, 1)
    for variable in (names.LOGITS, names.TOP_CLASS, names.TOP_PROB, names.IMAGE, "act_efficientnet_lite0_head"):
        assert _files(path / variable) == 4, variable  # 4 tasks, each a shard of 3 inner chunks
        assert zarr.open_array(sharded[3], path=f"views/{variable}", mode="r").chunks[:3] == (1, 1, 2)
    for variable in (*names.SUMMARIES, names.DONE):
        assert _files(path / variable) == 1, variable
    assert _files(Path(sharded[1]) / "views" / names.LOGITS) == 12


def test_summaries_equal_what_they_summarise(sharded):
    ds = xr.open_zarr(sharded[3], group="views")
    assert ds[names.DONE].values.all()
    assert np.array_equal(ds[names.TOP1_CLASS].values, ds[names.TOP_CLASS].values[..., 0])
    assert np.array_equal(ds[names.TOP1_PROB].values, ds[names.TOP_PROB].values[..., 0])
    p = analysis.softmax(ds[names.LOGITS].values)  # (object, yaw, hue, model, class)
    for i, obj in enumerate(["dog", "cat"]):
        expected = p[i][..., analysis.class_mask(obj)].sum(-1)
        assert np.allclose(ds[names.EXPECTED_PROB].values[i], expected, atol=2e-3)


def test_shards_hold_the_same_results_as_a_task_per_chunk(sharded):
    a, b = (xr.open_zarr(sharded[n], group="views") for n in (3, 1))
    assert np.array_equal(a[names.IMAGE].values, b[names.IMAGE].values)
    assert np.allclose(a[names.LOGITS].values.astype(np.float32), b[names.LOGITS].values.astype(np.float32), atol=0.02)
    assert np.array_equal(a[names.TOP1_CLASS].values, b[names.TOP1_CLASS].values)


def test_tensorstore_reads_the_sharded_arrays(sharded):
    ts = pytest.importorskip("tensorstore")
    ds = xr.open_zarr(sharded[3], group="views")
    for variable in (names.LOGITS, names.IMAGE, names.TOP1_PROB):
        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{sharded[3]}/views/{variable}"}}).result()
        assert np.array_equal(np.asarray(t.read().result()), ds[variable].values, equal_nan=True), variable


def test_a_run_killed_after_a_task_resumes_to_the_same_store(sharded, tmp_path):
    path = str(tmp_path / "resumed.zarr")
    sweep = _spec(3)
    run.run_task(sweep.cubes[0], (1, 0, 0), path)  # what a kill after the first task leaves (template included)
    marks = xr.open_zarr(path, group="views")[names.DONE].values
    assert marks.sum() == 1 and marks[1, 0, 0] == 1
    report = run.precompute(sweep, path, scheduler="synchronous", progress=False, echo=lambda _: None)
    assert report.written == {"views": 3} and report.skipped == {"views": 1}
    a, b = (xr.open_zarr(p, group="views") for p in (path, sharded[3]))
    for variable in (names.TOP1_CLASS, names.TOP1_PROB, names.EXPECTED_PROB, names.LOGITS):
        assert np.array_equal(a[variable].values, b[variable].values, equal_nan=True), variable


def test_the_summary_writer_merges_into_written_chunks_and_keeps_what_arrived(sharded, tmp_path):
    path = str(tmp_path / "writer.zarr")
    shutil.copytree(sharded[3], path)
    cube = _spec(3).cubes[0]
    group = zarr.open_group(path, path="views", mode="r+")
    group[names.DONE][...] = 0
    for name in names.SUMMARIES:
        group[name][...] = group[name].fill_value
    tasks = store.tasks(cube, path)
    truth = xr.open_zarr(sharded[3], group="views")

    def summaries_of(index):
        region = tasks.region(index)
        return summaries.summarise(truth[names.TOP_CLASS].values[region].astype(np.int16), truth[names.TOP_PROB].values[region],
                                   truth[names.EXPECTED_PROB].values[region])

    first = summaries.SummaryWriter(cube, path, tasks, store.done_mask(cube, path), interval=3600)
    first.add((0, 1, 0), summaries_of((0, 1, 0)))
    assert not store.done_mask(cube, path).any()  # its summary chunk (the whole cube) is incomplete: held
    first.close()  # a run that stops here (failed or interrupted) keeps it
    ds = xr.open_zarr(path, group="views")
    assert ds[names.DONE].values.sum() == 1 and ds[names.DONE].values[0, 1, 0] == 1
    assert np.isnan(ds[names.TOP1_CLASS].values[0, :3]).all() and not np.isnan(ds[names.TOP1_CLASS].values[0, 3:]).any()
    second = summaries.SummaryWriter(cube, path, tasks, store.done_mask(cube, path), interval=3600)
    for index in [(0, 0, 0), (1, 0, 0), (1, 1, 0)]:
        second.add(index, summaries_of(index))
    assert store.done_mask(cube, path).all()  # the chunk completed: written without waiting for close
    ds = xr.open_zarr(path, group="views")
    for name in names.SUMMARIES:
        assert np.array_equal(ds[name].values, truth[name].values, equal_nan=True), name


def test_verify_finds_a_damaged_summary_chunk_and_repair_clears_its_tasks(sharded, tmp_path):
    path = tmp_path / "damaged.zarr"
    shutil.copytree(sharded[3], path)
    target = next((path / "views" / names.TOP1_PROB).rglob("c/*"))
    while target.is_dir():
        target = next(target.iterdir())
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    zarr.open_group(str(path), path="views", mode="r+")[names.DONE][0, 0, 0] = 0  # a task to redo, its summary chunk damaged
    with pytest.raises(StoreError, match=r"a chunk of top1_prob in cube 'views' is damaged .* --repair"):
        run.precompute(_spec(3), str(path), scheduler="synchronous", progress=False, echo=lambda _: None)
    lines = []
    assert verify.main(str(path), repair=True, progress=False, echo=lines.append) == 0
    assert any("top1_prob: checksum mismatch" in line for line in lines), lines
    assert not xr.open_zarr(path, group="views")[names.DONE].values.any()  # one summary chunk holds every task here
    report = run.precompute(_spec(3), str(path), scheduler="synchronous", progress=False, echo=lambda _: None)
    assert report.written == {"views": 4}
    assert verify.main(str(path), progress=False, echo=lambda _: None) == 0


# ------------------------------------------------------------------ stores written before sharding


def test_a_format1_store_still_opens_for_reading(format1_store):
    ds = store.open_cube(str(format1_store), "views")
    assert ds.attrs["perturber_format"] == 1 and names.TOP1_CLASS not in ds
    cube = analysis.Cube(ds)
    top, prob = cube.top1
    assert np.array_equal(top, ds[names.TOP_CLASS].values[..., 0]) and not np.isnan(prob).any()
    assert store.task_shape(ds) == (1, 1, 2)
    assert [row.samples for row in cube.summary()] == [6, 6]


def test_precompute_refuses_a_format1_store_and_migrate_rewrites_it(tmp_path, format1_store):
    old = tmp_path / "old.zarr"
    shutil.copytree(format1_store, old)
    sweep = spec.parse_spec({"name": "format1", "cubes": {"views": {
        "axes": {"object": ["dog", "cat"], "yaw": [0, 90, 180], "hue": [0, 90]},
        "models": ["efficientnet_lite0"], "layers": ["head"], "neurons": {"head": 4}, "images": True, "size": 32}}})
    with pytest.raises(StoreError, match=r"older Perturber \(store format 1\); `perturber migrate .* --out NEW`"):
        run.precompute(sweep, str(old), scheduler="synchronous", progress=False)
    new = tmp_path / "new.zarr"
    cli = [sys.executable, "-m", "perturber", "migrate", str(old), "--out", str(new), "--quiet"]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 tasks copied, 0 with samples not computed" in result.stdout
    a, b = (xr.open_zarr(p, group="views") for p in (old, new))
    assert b.attrs["perturber_format"] == store.FORMAT_VERSION and b[names.DONE].values.all()
    for variable in a.data_vars:
        if variable != names.DONE:
            assert np.array_equal(a[variable].values, b[variable].values, equal_nan=True), variable
    assert np.array_equal(b[names.TOP1_CLASS].values, a[names.TOP_CLASS].values[..., 0])
    report = run.precompute(sweep, str(new), scheduler="synchronous", progress=False, echo=lambda _: None)
    assert report.samples == 0  # the migrated store is complete for its spec
    again = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 tasks copied" in again.stdout and "6 already in" in again.stdout
    same = subprocess.run([sys.executable, "-m", "perturber", "migrate", str(old), "--out", str(old)],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 2 and same.stderr.count("\n") == 1 and "--out must be a new store" in same.stderr


def test_the_viewer_looks_up_a_points_task(tmp_path):
    from perturber.viewer.state import CubeState

    path = str(tmp_path / "partial.zarr")
    cube = _spec(3).cubes[0]
    store.create_or_check(cube, path)
    run.run_task(cube, (1, 1, 0), path)  # the cat at yaw 135, 180 and -90 (a task of 3 inner chunks)
    s = CubeState(path, "views")
    s.object, s.yaw = "cat", 180.0
    assert s.computed() and s.image() is not None
    s.yaw = 90.0  # the cat's first task: not computed
    assert not s.computed() and s.missing() == "not computed"
    s.object, s.yaw = "dog", -90.0
    assert not s.computed()
