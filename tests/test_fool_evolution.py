"""Fooling images by evolution: the encodings, MAP-Elites on Lite0, resuming, Dask, and `perturber fool`."""

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import refuse

from perturber.featureviz.optimize import high_frequency_energy
from perturber.pipeline import cli, tasks
from perturber.pipeline.searches import SearchError, encodings, mapelites, scoring

MODEL = "efficientnet_lite0"
SMALL = dict(generations=3, population=8, size=64, batch=4, checkpoint_every=2)


def test_polynomial_mutation_keeps_bounds_steps_as_deb_says_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.random(20_000).astype(np.float32)
    wild = encodings.polynomial_mutation(x, np.random.default_rng(1), rate=1.0, eta=0.1)
    assert wild.min() >= 0 and wild.max() <= 1 and wild.dtype == np.float32
    assert np.array_equal(encodings.polynomial_mutation(x, np.random.default_rng(1), rate=0.0, eta=15), x)
    a = encodings.polynomial_mutation(x, np.random.default_rng(2), rate=0.1, eta=15)
    assert np.array_equal(a, encodings.polynomial_mutation(x, np.random.default_rng(2), rate=0.1, eta=15))
    assert abs((a != x).mean() - 0.1) < 0.01  # the per-gene rate
    # far from the bounds the step's density is ∝ (1 - |δ|)^eta: E|δ| = 1 / (eta + 2)
    mid = encodings.polynomial_mutation(np.full(200_000, 0.5), np.random.default_rng(3), rate=1.0, eta=15)
    assert np.abs(mid - 0.5).mean() == pytest.approx(1 / 17, rel=0.02)
    # a gene at a bound can only move inwards
    low = encodings.polynomial_mutation(np.zeros(1000), np.random.default_rng(4), rate=1.0, eta=1)
    assert low.min() == 0 and (low > 0).mean() == pytest.approx(0.5, abs=0.06)


def test_cppn_decodes_known_networks():
    c = encodings.CPPN(size=9)
    zeros = [np.zeros(s) for s in c.shapes()]
    flat = c.decode(c.pack(zeros, ["sine"] * sum(c.hidden))[None])
    assert flat.shape == (1, 3, 9, 9) and torch.allclose(flat, torch.full_like(flat, 0.5))  # sigmoid(0)
    w = [np.zeros(s) for s in c.shapes()]
    w[0][0, 0] = 1  # x → node 0 of each layer, identity all the way, then to R, G and B with weight 2
    w[1][0, 0] = w[2][0, 0] = 1
    w[3][0, :] = 2
    ramp = c.decode(c.pack(w, ["identity"] * sum(c.hidden))[None])[0]
    x = torch.linspace(-1, 1, 9)
    assert torch.allclose(ramp, torch.sigmoid(2 * x).expand(3, 9, 9), atol=1e-6)  # a left-to-right gradient
    acts = ["identity"] * sum(c.hidden)
    acts[0] = "gaussian"  # the first hidden node's own activation is applied, and only there
    bump = c.decode(np.stack([c.pack(w, acts), c.pack(w, ["identity"] * sum(c.hidden))]))
    assert torch.allclose(bump[0], torch.sigmoid(2 * torch.exp(-x * x)).expand(3, 9, 9), atol=1e-6)
    assert torch.allclose(bump[1], ramp, atol=1e-6)
    g = c.initial(5, np.random.default_rng(0))
    assert g.shape == (5, c.solution_dim) and np.array_equal(g, c.initial(5, np.random.default_rng(0)))
    many = c.initial(200, np.random.default_rng(1))  # 1,600 rows a layer: the gather-and-scatter path a GPU takes
    assert torch.allclose(c.decode(many), torch.cat([c.decode(many[i:i + 1]) for i in range(200)]), atol=1e-6)
    m = c.mutate(g, np.random.default_rng(1))
    assert m.shape == g.shape and 0 < (m != g).mean() < 0.3 and np.abs(m[:, :-sum(c.hidden)]).max() <= c.limit


def test_direct_encoding_is_its_pixels_upsampled():
    d = encodings.Direct(size=8, resolution=8)
    g = d.initial(2, np.random.default_rng(0))
    assert torch.equal(d.decode(g), torch.from_numpy(g).view(2, 3, 8, 8))
    half = encodings.Direct(size=8, resolution=4)
    assert half.solution_dim == 48 and torch.allclose(half.decode(np.full((1, 48), 0.25, np.float32)), torch.tensor(0.25))


@pytest.fixture(scope="module")
def cppn_run(tmp_path_factory):
    """A small CPPN MAP-Elites run on Lite0, checkpointed into a store (no interruption)."""
    store = tmp_path_factory.mktemp("cppn") / "s.zarr"
    return store, mapelites.evolve(MODEL, "cppn", seed=0, store=store, run="a", **SMALL)


@pytest.mark.slow
def test_map_elites_on_lite0_improves_the_archive_and_scores_what_it_stores(cppn_run):
    store, e = cppn_run
    mean = e.history["mean_confidence"]
    assert len(mean) == SMALL["generations"] + 1 and len(e.classes) == 1000  # every class has an elite from generation 0
    assert np.all(np.diff(mean) >= 0) and mean[-1] > mean[0]
    assert e.found_at.min() == 0 and e.found_at.max() == SMALL["generations"]
    assert e.evaluations == SMALL["population"] * (SMALL["generations"] + 1)
    best = np.argsort(e.confidence)[-4:]  # the stored uint8 elites, scored again, give the stored confidence
    p = scoring.Scorer(MODEL, batch_size=SMALL["batch"]).probabilities(e.images[best])
    assert np.allclose(p[np.arange(4), e.classes[best]], e.confidence[best], atol=1e-4)
    ds = xr.open_zarr(store, group="fooling/a")
    assert ds.elite.shape == (1000, 64, 64, 3) and list(ds.generation.values) == [0, 1, 2, 3]
    assert np.allclose(ds.mean_confidence.values, mean) and (ds.method.values == "cppn").all()


@pytest.mark.slow
def test_cppn_elites_have_less_high_frequency_energy_than_direct_elites(cppn_run):
    _, cppn = cppn_run
    # Nguyen's direct encoding: every pixel a gene (resolution = size)
    direct = mapelites.evolve(MODEL, "direct", generations=1, population=6, size=64, batch=6, encoding_options={"resolution": 64})
    hf_cppn, hf_direct = high_frequency_energy(cppn.images), high_frequency_energy(direct.images)
    assert np.median(hf_cppn) < 0.5 * np.median(hf_direct)


@pytest.mark.slow
def test_a_resumed_run_equals_an_uninterrupted_one(cppn_run, tmp_path):
    _, whole = cppn_run
    store = tmp_path / "s.zarr"

    def stop(g):
        if g == 2:  # after generation 2; the checkpoint holds generation 1 (checkpoint_every=2)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mapelites.evolve(MODEL, "cppn", seed=0, store=store, run="a", on_generation=stop, **SMALL)
    assert mapelites.checkpoint_path(store, "a").exists()
    done = []
    resumed = mapelites.evolve(MODEL, "cppn", seed=0, store=store, run="a", on_generation=done.append, **SMALL)
    assert done == [2, 3]  # generation 2 again, from the checkpoint of generation 1
    assert np.array_equal(resumed.classes, whole.classes) and np.array_equal(resumed.confidence, whole.confidence)
    assert np.array_equal(resumed.images, whole.images) and np.array_equal(resumed.found_at, whole.found_at)
    assert all(np.array_equal(resumed.history[k], whole.history[k]) for k in whole.history)
    assert resumed.evaluations == whole.evaluations
    with pytest.raises(SearchError, match=r"other settings \(population 8 ≠ 9\).*--overwrite"):
        mapelites.evolve(MODEL, "cppn", seed=0, store=store, run="a", **{**SMALL, "population": 9})


@pytest.mark.slow
def test_dask_batches_give_the_archive_of_the_in_process_run():
    args = dict(generations=2, population=6, size=64, batch=3, seed=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker: the same kernels, so the same rounding
    try:
        here = mapelites.evolve(MODEL, "cppn", **args)
    finally:
        torch.set_num_threads(threads)
    from distributed import Client

    with tasks.start_local_cluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        there = mapelites.evolve(MODEL, "cppn", client=client, threads=1, **args)
    assert np.array_equal(there.images, here.images) and np.array_equal(there.found_at, here.found_at)
    assert np.array_equal(there.confidence, here.confidence)


@pytest.mark.slow
def test_perturber_fool_writes_a_group_with_transfer(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    argv = ["fool", "--model", MODEL, "--method", "direct", "--generations", "1", "--population", "4", "--size", "64",
            "--classes", "goldfish,207", "--transfer", "efficientnet_lite1", "--store", str(store), "--run", "d", "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "images scored" in out and "over 2 classes" in out and "fooling/d" in out
    ds = xr.open_zarr(store, group="fooling/d")
    assert list(ds["class"].values) == [1, 207] and list(ds.class_name.values) == ["goldfish", "golden retriever"]
    assert ds.transfer.dims == ("model", "class") and list(ds.model.values) == ["efficientnet_lite1"]
    assert ((ds.transfer.values > 0) & (ds.transfer.values < 1)).all() and ds.transfer_top1.shape == (1, 2)
    assert (store.parent / "s.zarr-checkpoints" / "fooling-d.pkl").exists()


@pytest.mark.slow
def test_perturber_fool_gradient_branch(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    argv = ["fool", "--model", MODEL, "--method", "gradient", "--classes", "goldfish", "--steps", "2", "--size", "64",
            "--store", str(store), "--quiet"]
    assert cli.main(argv) == 0
    assert "gradient on efficientnet_lite0" in capsys.readouterr().out
    ds = xr.open_zarr(store, group="fooling/gradient-efficientnet_lite0-0")
    assert list(ds["class"].values) == [1] and ds.elite.shape == (1, 64, 64, 3) and str(ds.method.values[0]).startswith("gradient")


@pytest.mark.slow
def test_perturber_fool_gradient_from_a_render(render, tmp_path, capsys):
    import json

    from PIL import Image

    dog = np.ascontiguousarray(render(size=64, object="dog", yaw=30.0).rgba[..., :3])
    Image.fromarray(dog).save(tmp_path / "dog.png")
    store = tmp_path / "s.zarr"
    argv = ["fool", "--model", MODEL, "--method", "gradient", "--classes", "goldfish", "--steps", "2", "--size", "64",
            "--start", str(tmp_path / "dog.png"), "--store", str(store), "--quiet"]
    assert cli.main(argv) == 0
    ds = xr.open_zarr(store, group="fooling/gradient-efficientnet_lite0-0")
    assert json.loads(ds.attrs["settings"])["start"] == "image"
    moved = np.abs(ds.elite.values[0].astype(float) - dog.astype(float)).mean()
    assert moved < 20  # two steps from the render: still the render (uniform noise is ~85 grey levels away)


@pytest.mark.parametrize("extra, message", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--steps", "3"], "--steps does not apply to --method cppn"),
    (["--method", "gradient"], "--method gradient needs --classes"),
    (["--method", "gradient", "--classes", "notaclass"], "'notaclass' is not an ImageNet class name"),
    (["--classes", "1000"], "an ImageNet index is 0..999"),
    (["--workers", "1", "--scheduler", "tcp://127.0.0.1:1"], "give one of --scheduler, --cluster or --workers"),
    (["--run", "a/b"], "name 'a/b'"),
    (["--transfer", "nope"], "unknown model 'nope'"),
    (["--method", "gradient", "--classes", "1", "--generations", "3"], "--generations does not apply to --method gradient"),
    (["--start", "x.png"], "--start does not apply to --method cppn"),
    (["--method", "gradient", "--classes", "1", "--start", "/nonexistent.png"], "--start /nonexistent.png: not a readable image"),
])
def test_bad_options_are_one_line_errors(extra, message, tmp_path, capsys):
    argv = ["fool", "--store", str(tmp_path / "s.zarr"), *(["--model", MODEL] if "--model" not in extra else []), *extra]
    assert message in refuse(argv, capsys, within=10)
    assert not (tmp_path / "s.zarr").exists()
