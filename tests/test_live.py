"""The on-demand engine on a real LocalCluster: live points, cache, cancellation, bounds, errors."""

import threading
import time

import numpy as np
import pytest

from perturber.pipeline import engine
from perturber.viewer.live import EngineError, LiveEngine

pytestmark = pytest.mark.slow

MODELS = ["efficientnet_lite0"]
OFF_GRID = {"object": "dog", "yaw": 33.3, "pitch": 7.5, "hue": 12.0}


@pytest.fixture(scope="module")
def live():
    e = LiveEngine(max_pending=2, timeout=120)
    yield e
    e.close()


def test_an_off_grid_point_is_computed_like_the_precompute(live):
    result, hit = live.evaluate("a", OFF_GRID, MODELS, ["head"], {"head": [0, 3]})
    assert not hit and result.image.shape == (224, 224, 3)
    here = engine.evaluate([OFF_GRID], MODELS, layers=["head"], neurons={"head": [0, 3]}, device="cpu", batch_size=1)
    assert np.abs(result.image.astype(int) - here.images[0].astype(int)).max() <= 1
    assert np.allclose(result.logits[MODELS[0]], here.logits[MODELS[0]][0].numpy(), atol=1e-3)
    assert result.activations[MODELS[0]]["head"].shape == (2, 7, 7)
    start = time.perf_counter()
    again, hit = live.evaluate("a", OFF_GRID, MODELS, ["head"], {"head": [0, 3]})
    assert hit and again is result and time.perf_counter() - start < 0.05  # revisiting is instant


def test_a_newer_request_cancels_the_stale_one(live):
    key_a, stale = live.submit("b", {**OFF_GRID, "yaw": 50.0}, MODELS, [], {}, 224)
    key_b, fresh = live.submit("b", {**OFF_GRID, "yaw": 51.0}, MODELS, [], {}, 224)
    with pytest.raises(EngineError, match="cancelled"):
        live.result(key_a, stale)
    assert live.result(key_b, fresh).logits[MODELS[0]].shape == (1000,)


def test_pending_work_is_bounded(live):
    live.submit("c", {**OFF_GRID, "yaw": 60.0}, MODELS, [], {}, 224)
    live.submit("d", {**OFF_GRID, "yaw": 61.0}, MODELS, [], {}, 224)
    with pytest.raises(EngineError, match="busy"):
        live.submit("e", {**OFF_GRID, "yaw": 62.0}, MODELS, [], {}, 224)
    for session in ("c", "d"):  # let them finish for the next tests
        live._pending[session].result(timeout=120)


def test_long_calls_count_against_the_same_bound(live):
    """PGD runs (threads of Work.start) and live points share max_pending (2 here)."""
    gate = threading.Event()
    first, second = live.start("h/attack", gate.wait, 120), live.start("i/attack", gate.wait, 120)
    with pytest.raises(EngineError, match=r"^the engine is busy \(2 requests running\); try again in a moment$"):
        live.submit("j", {**OFF_GRID, "yaw": 63.0}, MODELS, [], {}, 224)
    with pytest.raises(EngineError, match="busy"):
        live.start("k/attack", gate.wait, 120)
    with pytest.raises(EngineError, match="^already running here: wait for it to finish, or reset$"):
        live.start("h/attack", gate.wait, 120)
    gate.set()
    assert first.result(timeout=30) and second.result(timeout=30)
    key, future = live.submit("j", {**OFF_GRID, "yaw": 63.0}, MODELS, [], {}, 224)  # room again
    assert live.result(key, future).logits[MODELS[0]].shape == (1000,)


def test_errors_and_timeouts_are_one_line(live):
    with pytest.raises(EngineError, match="unicorn") as err:
        live.evaluate("f", {**OFF_GRID, "object": "unicorn"}, MODELS)
    assert "\n" not in str(err.value)
    impatient = LiveEngine.__new__(LiveEngine)
    impatient.__dict__.update(live.__dict__, timeout=0.001)
    with pytest.raises(EngineError, match="no result within"):
        impatient.evaluate("g", {**OFF_GRID, "yaw": 70.0}, MODELS)


def test_an_unreachable_scheduler_is_reported():
    with pytest.raises(EngineError, match="cannot start or reach the engine"):
        LiveEngine(scheduler="tcp://127.0.0.1:9")


def test_the_viewer_state_computes_a_fixed_factor_live(live, tmp_path):
    """A factor the cube holds fixed, first at its stored value (the live result
    must equal the store's), then moved off it."""
    from perturber.pipeline import run, spec
    from perturber.viewer.state import CubeState

    sweep = spec.parse_spec({"name": "l", "cubes": {"views": {
        "axes": {"object": ["dog"], "yaw": [0.0, 90.0]}, "models": MODELS, "layers": ["head"], "neurons": {"head": 2},
        "images": True}}})
    out = str(tmp_path / "l.zarr")
    run.precompute(sweep, out, scheduler="synchronous", progress=False)
    state = CubeState(out, "views", engine=live)
    stored_image, stored_top = state.image(), state.top5(MODELS[0])
    stored_acts = state.activations(MODELS[0], "head", [0, 1])
    state.live_factor = "pitch"  # fixed at its default
    assert state.live_value == 10.0
    state.live_on = True
    assert "computed in" in state.live_status, state.live_status
    assert np.abs(state.image().astype(int) - stored_image.astype(int)).max() <= 1
    assert [c for c, _, _ in state.top5(MODELS[0])] == [c for c, _, _ in stored_top]
    assert np.allclose(state.activations(MODELS[0], "head", [0, 1]), stored_acts, atol=0.02)
    state.live_value = 35.0
    assert "pitch = 35, computed in" in state.live_status
    assert np.abs(state.image().astype(int) - stored_image.astype(int)).mean() > 3
    state.live_value = 500.0  # outside pitch's domain: the factor's own message, nothing shown as if valid
    assert "outside its domain" in state.live_status and state.image() is None
    state.live_on = False
    assert np.array_equal(state.image(), stored_image)


def test_an_overlay_sets_values_in_every_point_and_shares_the_engine(live):
    """with_values: the point with the values set, the engine's own cache and bound."""
    cat = live.with_values({"object": "cat"})
    result, hit = cat.evaluate("m", OFF_GRID, MODELS)
    assert cat.key(OFF_GRID, MODELS, [], {}, 224) == live.key({**OFF_GRID, "object": "cat"}, MODELS, [], {}, 224)
    again, hit = live.evaluate("m", {**OFF_GRID, "object": "cat"}, MODELS)
    assert hit and again is result  # one cache: the overlay's result is the engine's for the cat
    dog, _ = live.evaluate("m", OFF_GRID, MODELS)
    assert np.abs(dog.image.astype(int) - result.image.astype(int)).mean() > 3
    key, future = cat.submit("n", {**OFF_GRID, "yaw": 80.0}, MODELS, [], {}, 224)
    assert cat.result(key, future) is live.cached(live.key({**OFF_GRID, "yaw": 80.0, "object": "cat"}, MODELS, [], {}, 224))
    assert cat.timeout == live.timeout and cat.running() == live.running() and cat.on_this_machine()


def test_workers_of_a_scheduler_on_this_machine_can_read_its_files():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        engine = LiveEngine(scheduler=cluster.scheduler_address)
        try:
            engine.client.wait_for_workers(1, timeout=30)
            assert engine.on_this_machine()
        finally:
            engine.close()
