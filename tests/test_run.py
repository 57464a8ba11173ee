"""The precompute job and its store: real renders, real models, real Zarr, real Dask."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from perturber.pipeline import clusters, run, spec, store, tasks
from perturber.pipeline.store import StoreError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = [p for p in sorted(ROOT.glob("workflows/*.yaml")) if not p.name.startswith("featureviz")]

SMALL = {
    "name": "small",
    "cubes": {
        "views": {
            "axes": {"object": ["dog", "cat"], "yaw": [0.0, 90.0, 180.0], "hue": [0, 120]},
            "models": ["efficientnet_lite0"],
            "layers": ["stage4", "head"],
            "neurons": {"stage4": 4, "head": [3, 1]},
        }
    },
}


@pytest.fixture(scope="module")
def small_spec():
    return spec.parse_spec(SMALL)


@pytest.fixture(scope="module")
def reference_store(small_spec, tmp_path_factory):
    """An uninterrupted in-process run of the small spec."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run.precompute(small_spec, str(out), scheduler="synchronous", progress=False)
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_runs_pruned(path, tmp_path):
    s = spec.load_spec(path).prune(2)
    report = run.precompute(s, str(tmp_path / "w.zarr"), scheduler="synchronous", progress=False)
    for c in s.cubes:
        ds = xr.open_zarr(tmp_path / "w.zarr", group=c.name)
        assert ds["done"].values.all()
        assert not np.isnan(ds["logits"].values).any()
        assert report.samples == sum(x.samples for x in s.cubes)


def test_store_is_plain_xarray(reference_store, small_spec):
    ds = xr.open_zarr(reference_store, group="views")
    assert ds["logits"].dims == ("object", "yaw", "hue", "model", "class")
    assert ds["logits"].dtype == np.float16
    assert list(ds["object"].values) == ["dog", "cat"] and list(ds["yaw"].values) == [0.0, 90.0, 180.0]
    assert ds["yaw"].attrs["units"] == "degrees" and ds["yaw"].attrs["long_name"]
    assert ds["hue"].attrs["units"] == "degrees"
    assert ds.attrs["spec_sha256"] == small_spec.cubes[0].sha256()
    assert any("Dog by" in a for a in ds.attrs["attributions"])
    assert '"background": "white"' in ds.attrs["fixed"]
    # Nearest-neighbour selection on a numeric axis.
    near = ds.sel(yaw=80, method="nearest").sel(object="dog", hue=0, model="efficientnet_lite0")
    assert float(near["yaw"]) == 90.0
    # Top-k is consistent with the logits.
    logits = ds["logits"].sel(model="efficientnet_lite0").values.astype(np.float32)
    top1 = ds["top_class"].sel(model="efficientnet_lite0", rank=1).values
    agree = (logits.argmax(-1) == top1).mean()
    assert agree > 0.9  # float16 ties aside
    assert str(ds["class_name"].values[int(top1[0, 0, 0])])
    # Activations of the chosen neurons, images of the model input.
    assert ds["act_efficientnet_lite0_head"].sizes["neuron_efficientnet_lite0_head"] == 2
    assert list(ds["neuron_efficientnet_lite0_head"].values) == [3, 1]
    assert ds["image"].dtype == np.uint8 and ds["image"].shape[-3:] == (224, 224, 3)
    # The hue axis changes the image, not the render: same silhouette, other colours.
    a, b = ds["image"].isel(object=0, yaw=0, hue=0).values, ds["image"].isel(object=0, yaw=0, hue=1).values
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_store_matches_evaluate(reference_store, small_spec):
    from perturber.pipeline import engine

    ds = xr.open_zarr(reference_store, group="views")
    ev = engine.evaluate([{"object": "cat", "yaw": 90.0, "hue": 120}], ["efficientnet_lite0"], layers=["head"], neurons={"head": [3, 1]})
    stored = ds["logits"].sel(object="cat", yaw=90.0, hue=120, model="efficientnet_lite0").values
    assert np.allclose(stored.astype(np.float32), ev.logits["efficientnet_lite0"][0].numpy(), atol=0.02)
    assert np.array_equal(ds["image"].sel(object="cat", yaw=90.0, hue=120).values, ev.images[0])


def test_unwritten_cells_are_nan(small_spec, tmp_path):
    c = small_spec.cubes[0]
    out = str(tmp_path / "partial.zarr")
    store.create_or_check(c, out)
    run.run_task(c, (0, 0, 0), out)
    ds = xr.open_zarr(out, group="views")
    assert ds["done"].values.sum() == 1
    logits = ds["logits"].values
    assert not np.isnan(logits[0, 0]).any() and np.isnan(logits[1]).all() and np.isnan(logits[0, 1:]).all()
    assert np.isnan(ds["top_class"].values[1]).all() and np.isnan(ds["top_prob"].values[1]).all()
    assert np.isnan(ds["act_efficientnet_lite0_stage4"].values[1]).all()


def test_rerun_does_nothing_and_changed_spec_is_refused(reference_store, small_spec, tmp_path):
    import shutil

    out = tmp_path / "copy.zarr"
    shutil.copytree(reference_store, out)
    report = run.precompute(small_spec, str(out), scheduler="synchronous", progress=False)
    assert report.samples == 0 and report.written == {"views": 0}
    changed = spec.parse_spec({**SMALL, "cubes": {"views": {**SMALL["cubes"]["views"], "axes": {"object": ["dog"], "yaw": [0.0]}}}})
    with pytest.raises(StoreError, match="different spec .* use --overwrite") as err:
        run.precompute(changed, str(out), scheduler="synchronous", progress=False)
    assert "\n" not in str(err.value)
    # The refused run left the store as it was.
    assert xr.open_zarr(out, group="views").sizes["yaw"] == 3
    run.precompute(changed, str(out), scheduler="synchronous", progress=False, overwrite=True)
    ds = xr.open_zarr(out, group="views")
    assert ds.sizes["yaw"] == 1 and ds["done"].values.all()


def test_foreign_and_corrupt_stores_get_clear_errors(small_spec, tmp_path):
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(foreign, group="views", zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="not written by Perturber"):
        run.precompute(small_spec, str(foreign), scheduler="synchronous", progress=False)
    corrupt = tmp_path / "corrupt.zarr"
    store.create_or_check(small_spec.cubes[0], str(corrupt))
    (corrupt / "zarr.json").write_text("{ this is not json")
    before = sorted(p.name for p in corrupt.rglob("*"))
    with pytest.raises(StoreError, match="cannot read the store: it is damaged") as err:
        run.precompute(small_spec, str(corrupt), scheduler="synchronous", progress=False)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in corrupt.rglob("*")) == before  # nothing written over


def _store_bytes(path: Path) -> dict[str, bytes]:
    """Every chunk file of a store (metadata aside)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != "zarr.json"}


def _run_cli(spec_path, out, *extra):
    cmd = [sys.executable, "-m", "perturber", "precompute", str(spec_path), "--out", str(out), "--quiet", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_tasks(out: Path, n: int, proc, timeout: float = 120.0):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            return
        try:
            done = zarr.open_group(str(out), mode="r")["views"]["done"][...]
            if done.sum() >= n:
                return
        except Exception:
            pass
        time.sleep(0.2)


@pytest.mark.parametrize("extra", [["--scheduler", "synchronous"], ["--workers", "2"]], ids=["in-process", "local-cluster"])
def test_killed_job_resumes_to_the_same_bytes(reference_store, tmp_path, extra):
    # Torch's CPU kernels may round differently with another thread count, so
    # "the same bytes" holds between runs of the same configuration: the
    # reference for the LocalCluster case is an uninterrupted LocalCluster run.
    import yaml

    spec_path = tmp_path / "small.yaml"
    spec_path.write_text(yaml.safe_dump(SMALL, sort_keys=False))  # axis order is storage order
    if extra[0] == "--workers":
        reference_store = tmp_path / "reference.zarr"
        assert _run_cli(spec_path, reference_store, *extra).wait() == 0
    out = tmp_path / "killed.zarr"
    proc = _run_cli(spec_path, out, *extra)
    _wait_for_tasks(out, 1, proc)  # the job writes done marks every half second or so
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its workers, mid-run
    proc.wait()
    done = zarr.open_group(str(out), mode="r")["views"]["done"][...]
    assert 0 < done.sum() < done.size, "the kill should land mid-run"
    resumed = subprocess.run([sys.executable, "-m", "perturber", "precompute", str(spec_path), "--out", str(out),
                              "--quiet", *extra], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"wrote {done.size - int(done.sum())} tasks" in resumed.stdout
    assert _store_bytes(out) == _store_bytes(reference_store)


def test_killed_worker_is_replaced_and_the_store_is_complete(tmp_path):
    import psutil
    import yaml

    spec_path = tmp_path / "small.yaml"
    spec_path.write_text(yaml.safe_dump(SMALL, sort_keys=False))
    reference = tmp_path / "reference.zarr"
    assert _run_cli(spec_path, reference, "--workers", "2").wait() == 0
    out = tmp_path / "out.zarr"
    proc = _run_cli(spec_path, out, "--workers", "2")
    _wait_for_tasks(out, 1, proc)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2, "expected two worker processes"
    assert not zarr.open_group(str(out), mode="r")["views"]["done"][...].all(), "the kill should land mid-run"
    workers[0].kill()  # one worker dies mid-run; its Nanny starts another and its task is retried
    assert proc.wait(timeout=300) == 0
    assert zarr.open_group(str(out), mode="r")["views"]["done"][...].all()
    assert _store_bytes(out) == _store_bytes(reference)


def test_fsspec_stores(small_spec, tmp_path):
    pruned = small_spec.prune(1)
    run.precompute(pruned, "memory://perturber-test/m.zarr", scheduler="synchronous", progress=False)
    ds = xr.open_zarr("memory://perturber-test/m.zarr", group="views")
    assert ds["done"].values.all() and not np.isnan(ds["logits"].values).any()
    url = (tmp_path / "f.zarr").as_uri()
    run.precompute(pruned, url, scheduler="synchronous", progress=False)
    assert xr.open_zarr(url, group="views")["done"].values.all()


def test_dry_run_and_summary(reference_store, small_spec, capsys):
    run.dry_run(small_spec)
    out = capsys.readouterr().out
    assert "object[2] x yaw[3] x hue[2] = 12 samples" in out and "6 chunks" in out and "MiB" in out
    table = run.summary(small_spec, str(reference_store))
    assert "dog" in table and "efficientnet_lite0" in table and "reads as its class" in table


def test_slurm_recipe_builds_its_cluster():
    recipe = ROOT / "workflows" / "clusters" / "slurm-gpu.yaml"
    cluster = clusters.build(recipe, scale=False)
    try:
        script = cluster.job_script()
        assert "#SBATCH --gres=gpu:1" in script and "PYOPENGL_PLATFORM=egl" in script and "-p gpu" in script
    finally:
        cluster.close()


def test_a_local_cluster_run_counts_its_samples_and_leaves_this_process_alone(small_spec, tmp_path):
    import torch

    watched = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    environ, threads = {k: os.environ.get(k) for k in watched}, torch.get_num_threads()
    report = run.precompute(small_spec, str(tmp_path / "lc.zarr"), workers=2, progress=False, echo=lambda _: None)
    assert report.samples == sum(c.samples for c in small_spec.cubes)
    # the batch sizes are tuned on the threads a worker runs on, not on this process's
    worker_threads = tasks.plan_workers(os.cpu_count() or 1, workers=2).threads
    assert {xr.open_zarr(tmp_path / "lc.zarr", group=c.name).attrs["device"] for c in small_spec.cubes} == {f"cpu-{worker_threads}threads"}
    # Dask sets these to 1 (and 65536) in the starting process unless put back
    assert {k: os.environ.get(k) for k in watched} == environ and torch.get_num_threads() == threads
