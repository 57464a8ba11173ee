"""What keeps the viewer flat with the cube's size, against known answers:
the nearest failures without sorting every misread sample, the scatter's
per-pixel counts, the sub-grid of the neuron groups, the landscape's
probability of one class; then the whole app on a small real store."""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from perturber.pipeline import run, spec
from perturber.pipeline.analysis import Cube, nearest, softmax
from perturber.viewer.panels.scatter import bin_counts
from perturber.viewer.state.landscape import target_probability


def _brute_force(mask, here, limit, fixed):
    """The definition: every True point of the slice, sorted by (axes changed, steps), ties in C order."""
    here = np.asarray(here)
    points = np.argwhere(mask)
    for k in fixed:
        points = points[points[:, k] == here[k]]
    changed, steps = (points != here).sum(1), np.abs(points - here).sum(1)
    return points[np.lexsort((steps, changed))[:limit]]


def test_nearest_failures_on_a_small_grid():
    mask = np.zeros((2, 4, 3), dtype=bool)
    mask[0, 3, 0] = True  # one axis changed, 3 steps
    mask[0, 1, 1] = True  # two axes changed, 2 steps
    mask[0, 0, 2] = True  # one axis changed, 2 steps
    mask[1, 0, 0] = True  # another object: never
    found = nearest(mask, (0, 0, 0), limit=10, fixed=[0])
    assert found.tolist() == [[0, 0, 2], [0, 3, 0], [0, 1, 1]]
    assert nearest(mask, (0, 0, 0), limit=2, fixed=[0]).tolist() == [[0, 0, 2], [0, 3, 0]]
    assert nearest(mask, (0, 0, 0), limit=10).tolist() == [[1, 0, 0], [0, 0, 2], [0, 3, 0], [0, 1, 1]]  # object free: 1 step
    assert nearest(mask, (1, 2, 2), limit=10, fixed=[0]).tolist() == [[1, 0, 0]]
    assert nearest(np.zeros((3, 3), bool), (1, 1), limit=5).shape == (0, 2)
    assert nearest(mask, (0, 1, 1), limit=1, fixed=[0]).tolist() == [[0, 1, 1]]  # here itself first


def test_nearest_failures_equal_the_brute_force_answer():
    rng = np.random.default_rng(0)
    for _ in range(600):
        shape = tuple(int(n) for n in rng.integers(1, 7, rng.integers(1, 5)))
        mask = rng.random(shape) < rng.choice([0.0, 0.002, 0.02, 0.2, 0.6, 0.97])
        here = tuple(int(rng.integers(0, n)) for n in shape)
        fixed = [k for k in range(len(shape)) if rng.random() < 0.3]
        limit = int(rng.integers(1, 25))
        assert np.array_equal(nearest(mask, here, limit, fixed), _brute_force(mask, here, limit, fixed)), (shape, here, fixed)


def test_nearest_failures_far_away_in_a_large_grid_fall_back_to_ranking():
    # two failures, both at the far corner: the neighbourhood search gives way to ranking the slice's points
    mask = np.zeros((3, 40, 30, 20), dtype=bool)
    mask[1, 39, 29, 19] = mask[1, 39, 29, 18] = True
    mask[2, 0, 0, 1] = True  # another object
    found = nearest(mask, (1, 0, 0, 0), limit=5, fixed=[0])
    assert found.tolist() == _brute_force(mask, (1, 0, 0, 0), 5, [0]).tolist() == [[1, 39, 29, 18], [1, 39, 29, 19]]


def test_scatter_counts_per_pixel():
    x = np.array([0.0, 0.05, 0.99, 1.0, 0.5, np.nan, 1.2, 0.5], dtype=np.float32)
    y = np.array([0.0, 0.05, 0.99, 1.0, 0.5, 0.5, 0.5, -0.1], dtype=np.float32)
    counts = bin_counts(x, y, (0.0, 1.0), (0.0, 1.0), width=10, height=10)
    assert counts.shape == (10, 10)
    assert counts[0, 0] == 2 and counts[9, 9] == 2 and counts[5, 5] == 1  # the top and right edges: the last pixels
    assert np.nansum(counts) == 5 and np.isnan(counts[3, 3])  # NaN, outside: left out; empty pixels NaN
    zoomed = bin_counts(x, y, (0.0, 0.1), (0.0, 0.1), width=10, height=10)
    assert zoomed[0, 0] == 1 and zoomed[5, 5] == 1 and np.nansum(zoomed) == 2


def _cube(sizes: dict[str, int], chunk: list[int]) -> Cube:
    coords = {a: np.arange(n) if a != "object" else np.array([f"o{i}" for i in range(n)], dtype=object) for a, n in sizes.items()}
    data = {"done": (tuple(f"chunk_{a}" for a in sizes), np.ones([-(-n // c) for n, c in zip(sizes.values(), chunk)], np.uint8))}
    ds = xr.Dataset(data, coords={**coords, "model": ["m"]}, attrs={"axes": list(sizes), "fixed": json.dumps({})})
    return Cube(ds)


def test_neuron_groups_sub_grid():
    cube = _cube({"object": 3, "yaw": 50, "pitch": 10, "hue": 25}, [1, 1, 1, 25])  # 1,500 chunks
    grid = cube.sample_grid(100, [1, 1, 1, 25])
    assert grid["object"] == [0, 1, 2] and grid["hue"] == list(range(25))  # every object; hue lies in the chunk: whole
    chunks = len(grid["object"]) * len(grid["yaw"]) * len(grid["pitch"])
    assert chunks <= 100 and len(grid["yaw"]) >= 2 and len(grid["pitch"]) >= 2
    assert grid["yaw"][0] == 0 and grid["yaw"][-1] == 49 and grid["yaw"] == sorted(set(grid["yaw"]))  # evenly spread, ends kept
    small = cube.sample_grid(5000, [1, 1, 1, 25])  # few enough chunks: the whole cube
    assert small == {"object": [0, 1, 2], "yaw": list(range(50)), "pitch": list(range(10)), "hue": list(range(25))}
    tight = cube.sample_grid(1, [1, 1, 1, 25])  # never below every object and two values of each axis
    assert [len(tight[a]) for a in cube.axes] == [3, 2, 2, 25]
    blocks = _cube({"object": 1, "yaw": 9}, [1, 2]).sample_grid(2, [1, 2])  # whole chunks of 2 (the last one short)
    assert blocks["yaw"] == [0, 1, 8]


def test_target_probability_is_the_softmax_of_that_class():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(4, 3, 1000)) * 5).astype(np.float16)
    logits[1, 2] = np.nan
    p = target_probability(logits, 17)
    assert p.shape == (4, 3) and np.isnan(p[1, 2])
    assert np.allclose(p, softmax(logits)[..., 17], rtol=1e-5, equal_nan=True)


# ------------------------------------------------------------------ the whole app on a real store

SPEC = {
    "name": "scale",
    "cubes": {"views": {"axes": {"object": ["dog", "cat"], "yaw": [0.0, 90.0, 180.0], "pitch": [0.0, 30.0], "hue": [0, 120]},
                        "models": ["efficientnet_lite0", "efficientnet_lite1"], "layers": ["head"], "neurons": {"head": 4}}},
}


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("scale") / "scale.zarr")
    run.precompute(spec.parse_spec(SPEC), path, scheduler="synchronous", progress=False)
    return path


@pytest.mark.slow
def test_a_control_change_updates_the_whole_apps_plots_in_place(real_store):
    from bokeh.document import Document

    from perturber.viewer import app
    from perturber.viewer.panels.failures import FailurePanel
    from perturber.viewer.panels.landscape import LandscapePanel
    from perturber.viewer.panels.scatter import ScatterPanel
    from perturber.viewer.state import CubeState, Settled

    state = CubeState(real_store, "views")
    settled = Settled(state)
    land, failures, scatter = LandscapePanel(state, settled), FailurePanel(state, settled), ScatterPanel(state, settled)
    app.build_app(real_store, "views", state=state).get_root(Document())
    assert (land.land.x, land.land.y) == ("yaw", "hue")  # hue lies whole in a chunk: the heatmap reads a chunk per column
    figures = (land.heat, land.curves, scatter.fig)
    state.param.update(yaw=90.0, pitch=30.0)
    assert all(a is b for a, b in zip(figures, (land.heat, land.curves, scatter.fig)))  # the same figures, new data
    xs, ys, p = land.land.heatmap()
    assert np.array_equal(land.heat_source.data["probability"], p.ravel(), equal_nan=True)
    assert land.heat_source.data["hx"][:3] == ["0", "90", "180"] and land.heat_source.data["hy"][::3] == ["0", "120"]
    logits = state.ds["logits"].isel(object=0, pitch=1, hue=0, model=0).values
    target = land.land.target_class()
    assert np.allclose(land.curve_source.data["left"], softmax(logits)[:, target], rtol=1e-5)
    assert land.here.location == 1 and "along yaw" in land.curves.title.text
    expected = state.analysis.failures(state.model_a, state.index(), limit=8)
    assert len(failures.buttons.options) == len(expected) and failures.buttons.visible == bool(expected)
    here = state.analysis.expected_probability[state.index()]
    assert scatter.marker.data == {"x": [float(here[0])], "y": [float(here[1])]}
    assert np.nansum(scatter.image.data["image"][0]) == 24  # every computed sample counted once
    # Clicking a heatmap cell (its index in the source) moves both axes.
    cell = land.heat_source.data["hx"].index("180") + 3  # hue 120, yaw 180
    land.heat_source.selected.indices = [cell]
    assert (state.yaw, state.hue) == (180.0, 120) and land.heat_source.selected.indices == []
    found = state.analysis.failures(state.model_a, state.index(), limit=8)
    assert found  # Lite0 misreads the dog from behind (the demo's finding)
    failures.buttons.value = 0  # the first failure button: goes there
    assert {a: getattr(state, a) for a in state.axes} == {a: found[0][a] for a in state.axes}
    assert failures.buttons.value is None
    # The data-driven neuron groups say what they were computed over: here the whole cube (it has 12 chunks of 2 hues).
    from perturber.viewer.panels.neurons import NeuronPanel

    neurons = NeuronPanel(state)
    assert neurons.grid == {a: list(range(state.ds.sizes[a])) for a in state.axes}
    neurons.group.value = "most active for dog"
    assert "Groups computed over every sample of the cube (24)." in neurons.html()


# ------------------------------------------------------------------ chunks read without Zarr's machinery

def _selections(ds, variable):
    """A few selections of one position per cube axis, and some with axes left whole."""
    var = ds[variable]
    axes = [d for d in var.dims if d in ds.attrs["axes"]]
    rng = np.random.default_rng(2)
    for _ in range(6):
        chosen = [a for a in axes if rng.random() < 0.7]
        yield {a: int(rng.integers(0, ds.sizes[a])) for a in chosen}


@pytest.mark.slow
@pytest.mark.parametrize("store_of", ["format 2", "format 1"])
def test_chunks_read_directly_equal_zarrs(real_store, store_of, format1_store):
    from perturber.viewer import chunks
    from perturber.viewer import stores as viewer_stores

    path = real_store if store_of == "format 2" else str(format1_store)
    ds = viewer_stores.open_store(path, "views")
    for variable in ("logits", "top_class", "top_prob", "image", "act_efficientnet_lite0_head"):
        assert chunks.reader(path, "views", variable).sharded == (store_of == "format 2")
        for sel in _selections(ds, variable):
            expected = ds[variable].isel(**sel).values
            got = viewer_stores.read_values(path, "views", variable, sel)
            assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True), (variable, sel)
    assert chunks.reader(path, "views", "done").sharded is False  # not sharded, same codecs


@pytest.mark.slow
def test_a_damaged_or_missing_shard_reads_as_zarr_says(real_store, tmp_path):
    import shutil

    from perturber.viewer import chunks

    copy = tmp_path / "copy.zarr"
    shutil.copytree(real_store, copy)
    reader = chunks.reader(str(copy), "views", "logits")
    shard = reader._file((0,) * len(reader.shape))
    data = bytearray(Path(shard).read_bytes())
    data[10] ^= 0xFF  # inside the first inner chunk's bytes
    Path(shard).write_bytes(bytes(data))
    with pytest.raises(chunks.BadChunk, match="chunk checksum"):
        reader.select({0: 0, 1: 0, 2: 0, 3: 0})
    tolerant = reader.select({0: 0, 1: 0}, on_bad=np.nan)  # along pitch: the damaged chunk NaN, the other read
    assert np.isnan(tolerant[0]).all() and np.isfinite(tolerant[1]).all()
    Path(shard).unlink()
    assert np.isnan(reader.select({0: 0, 1: 0, 2: 0, 3: 0})).all()  # no file: the fill value, as Zarr reads it


@pytest.mark.slow
def test_a_large_landscape_read_runs_in_a_thread_and_draws_when_read(real_store):
    import queue

    from perturber.viewer.panels.landscape import LandscapePanel
    from perturber.viewer.state import CubeState, Settled

    state = CubeState(real_store, "views")
    panel = LandscapePanel(state, Settled(state))
    drawn = panel.heat_source.data["probability"].copy()
    panel.read_at_once = 0  # every read counts as large here
    panel.land._logit_blocks.clear()  # nothing read
    assert panel.land.unread() == 3  # the heatmap's: yaw x hue, a chunk per yaw
    inbox = queue.Queue()
    panel._redraw(deliver=inbox.put)
    assert panel.heat.title.text == "reading 3 stored chunks…"  # the caller did not wait for the read
    inbox.get(timeout=120)()  # the thread read the chunks and hands the drawing to this ("the event loop's") thread
    assert panel.land.unread() == 0 and panel.heat.title.text.endswith("click a cell to go there")
    assert np.array_equal(panel.heat_source.data["probability"], drawn, equal_nan=True)
