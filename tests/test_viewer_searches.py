"""The viewer's Searches section on a small real store: one precomputed cube (the dog
at two yaws, Lite0, images stored), a fooling run written with
``fooling.write`` (the cube's renders and noise as elites, their real Lite0
confidence, Lite1's real verdicts), and a ``search/<run>`` group written with
plain xarray per its layout (failures around the cube's own grid point with yaw
off the grid, their top-1 and class-set probability evaluated by the real engine)."""

import base64
import io
import json
import shutil
from pathlib import Path

import holoviews as hv
import numpy as np
import param
import pytest
import xarray as xr
from PIL import Image

from conftest import open_viewer

from perturber.pipeline import assets, classes, engine, factors, run, spec
from perturber.pipeline.searches import fooling, scoring
from perturber.pipeline.store import consolidated_ok
from perturber.viewer.app import SECTIONS, Section, build_app
from perturber.viewer.panels.controls import ControlsPanel
from perturber.viewer.panels.searches import NONE, FailuresPanel, FoolingPanel, SearchesPanel
from perturber.viewer.state import CubeState
from perturber.viewer.state.searches import FoolingView, SearchView, runs

pytestmark = pytest.mark.slow  # the store takes ~15 s to write

LITE0, LITE1 = "efficientnet_lite0", "efficientnet_lite1"
CUBE = {"name": "searches", "cubes": {"views": {"axes": {"object": ["dog"], "yaw": [0.0, 90.0]},
                                                "models": [LITE0], "images": True}}}
#: The elites: golden retriever and Labrador on the two renders, tabby and goldfish on noise.
ELITE_CLASSES = [207, 208, 281, 1]
START_YAW = 12.5  # off the cube's yaw grid (0, 90)
SEARCHED = ["yaw", "pitch"]
#: Failing values of (yaw, pitch), written nearest first as the layout asks.
FAILING = np.array([[40.0, 10.0], [12.5, 60.0], [170.0, -20.0]])


def _elites(full: Path) -> tuple[fooling.Elites, dict]:
    images = np.asarray(xr.open_zarr(full, group="views")["image"].isel(object=0).values, dtype=np.uint8)  # (2, S, S, 3)
    noise = np.random.default_rng(0).integers(0, 256, size=(2, *images.shape[1:]), dtype=np.uint8)
    batch = np.concatenate([images, noise])
    p = scoring.Scorer(LITE0, batch_size=4).probabilities(batch)
    confidence = p[np.arange(4), ELITE_CLASSES]
    per_class = np.zeros(1000)
    history = []
    for shown in (1, 3, 4):  # the archive as it filled up over three generations
        per_class[ELITE_CLASSES[:shown]] = confidence[:shown]
        history.append(fooling.history_row(per_class))
    elites = fooling.Elites("gradient", LITE0, 7, np.array(ELITE_CLASSES), batch, confidence, np.array([0, 1, 1, 2]),
                            history={k: np.array([h[k] for h in history]) for k in history[0]}, evaluations=40, seconds=1.5)
    return elites, scoring.transfer(batch, ELITE_CLASSES, [LITE1])


def _search(start: dict) -> xr.Dataset:
    """A ``search/<run>`` group per the layout; top-1 and class-set probability from the real engine."""
    scale = np.array([factors.get(f).domain.hi - factors.get(f).domain.lo for f in SEARCHED], dtype=np.float64)
    begin = np.array([start[f] for f in SEARCHED], dtype=np.float64)
    distance = np.sqrt((((FAILING - begin) / scale) ** 2).sum(1))
    ev = engine.evaluate([{**start, **dict(zip(SEARCHED, row))} for row in FAILING], [LITE0], size=224, batch_size=3)
    p = ev.logits[LITE0].float().softmax(-1).numpy()
    breeds = assets.imagenet_class_indices("dog")
    top1 = p.argmax(1)
    # The failure map over yaw × pitch: each failure's cell holds its distance; one cell stays empty.
    map_yaw, map_pitch = np.array([45.0, 135.0]), np.array([-30.0, 30.0])
    fmap = np.full((2, 2), np.nan)
    for (yaw, pitch), d in zip(FAILING, distance):
        a, b = int(np.argmin(abs(map_yaw - yaw))), int(np.argmin(abs(map_pitch - pitch)))
        fmap[a, b] = min(d, np.nan_to_num(fmap[a, b], nan=np.inf))
    return xr.Dataset(
        {"start": ("factor", begin), "scale": ("factor", scale), "value": (("failure", "factor"), FAILING),
         "distance_from_start": ("failure", distance), "top1": ("failure", top1.astype(np.int32)),
         "top1_name": ("failure", np.array([classes.imagenet_categories()[c] for c in top1], dtype=object)),
         "set_prob": ("failure", p[:, breeds].sum(1).astype(np.float32)),
         "found_at": ("failure", np.array([12, 30, 44], dtype=np.int32)),
         "failure_map": (("map_yaw", "map_pitch"), fmap)},
        coords={"factor": np.array(SEARCHED, dtype=object), "map_yaw": map_yaw, "map_pitch": map_pitch},
        attrs={"method": "map-elites", "model": LITE0, "object": "dog", "class_set": json.dumps(breeds),
               "start_point": json.dumps(start), "descriptors": json.dumps(SEARCHED), "seed": 3, "evaluations": 60,
               "seconds": 2.0, "budget": 64, "definition": "a failure: the class set's probability mass below the top-1's."})


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(a cube without searches, the same with a fooling run and a search, a copy with a damaged and a foreign group)."""
    folder = tmp_path_factory.mktemp("searches_view")
    plain = folder / "plain.zarr"
    run.precompute(spec.parse_spec(CUBE), str(plain), scheduler="synchronous", progress=False)
    full = folder / "searches.zarr"
    shutil.copytree(plain, full)
    elites, transfer = _elites(full)
    fooling.write(str(full), "lite0-gradient", elites, transfer)
    start = {**CubeState(str(plain), "views").point(), "yaw": START_YAW}
    with consolidated_ok():  # as the search command writes it: plain xarray opens it
        _search(start).to_zarr(full, group="search/dog-lite0", mode="w", zarr_format=3, consolidated=True)
    broken = folder / "broken.zarr"
    shutil.copytree(full, broken)
    (broken / "search" / "dog-lite0" / "zarr.json").write_text("{not json")
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(broken, group="fooling/foreign", zarr_format=3, consolidated=False)
    return plain, full, broken, start, elites, transfer


# ------------------------------------------------------------------ the fooling gallery

def test_the_elites_filter_by_name_and_confidence_highest_first(stores):
    _, full, _, _, elites, _ = stores
    view = FoolingView(str(full), "lite0-gradient")
    c = elites.confidence
    assert list(view.matches()) == list(np.argsort(-c, kind="stable"))  # all four, highest confidence first
    view.text = "RETRIEVER"  # golden retriever and Labrador retriever, any case
    assert list(view.matches()) == sorted([0, 1], key=lambda i: -c[i])
    view.min_confidence = float(c[:2].mean())  # between the two retrievers' confidences
    assert list(view.matches()) == [int(np.argmax(c[:2]))]
    view.param.update(text="tabby", min_confidence=0.0)
    assert list(view.matches()) == [2]
    view.text = "no such class"
    assert list(view.matches()) == []
    assert view.caption(3) == f"goldfish #1 · {c[3]:.3f}" and view.found(3) == "gradient, generation 2"


def test_verdicts_are_the_other_model_s_probability_and_top1(stores):
    _, full, _, _, _, transfer = stores
    view = FoolingView(str(full), "lite0-gradient")
    p, top1 = transfer[LITE1]
    names = classes.imagenet_categories()
    for i in range(4):
        assert view.verdicts(i) == [f"{LITE1}: {p[i]:.3f} · top-1 {names[top1[i]]}"]
    frame = view.history_frame()
    assert list(frame["classes_above_099"]) == [int((elites_c >= 0.99).sum()) for elites_c in
                                                 (view.confidence[:1], view.confidence[:3], view.confidence)]
    assert np.allclose(frame["mean_confidence"], [view.confidence[:n].sum() / 1000 for n in (1, 3, 4)])


def test_the_gallery_shows_a_bounded_number_read_lazily(stores):
    _, full, _, _, _, _ = stores
    panel = FoolingPanel(str(full), runs(str(full), "fooling"), limit=2)
    assert panel.runs.view.objects[0] is not panel.runs.select  # one run: no select
    assert "2 of 4 shown" in panel.gallery.object and panel.gallery.object.count("<figure") == 2
    assert len(panel.fooling._png) == 2  # only the shown elites' images were read
    # A 224 px elite is sent as its every other pixel (what the 112 px tile shows of it, pixelated).
    first = int(panel.fooling.matches()[0])
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(panel.fooling.image_png(first).split(",")[1]))))
    assert np.array_equal(sent, np.asarray(panel.fooling.elites[first].values)[::2, ::2])
    panel.filter.value = "retriever"
    assert panel.gallery.object.count("<figure") == 2 and "2 shown of 4 elites" in panel.gallery.object
    with param.edit_constant(panel.least):  # what the browser sets when the slider is let go
        panel.least.value_throttled = 1.0
    assert "0 shown of 4 elites" in panel.gallery.object
    assert isinstance(panel.runs.body.objects[1].object, hv.Layout)  # the history: confidence, classes ≥ 0.99


# ------------------------------------------------------------------ failures off the grid

def test_failures_are_listed_nearest_first_with_their_readings(stores):
    _, full, _, start, _, _ = stores
    state = CubeState(str(full), "views")
    view = SearchView(str(full), "dog-lite0", state)
    ds = xr.open_zarr(full, group="search/dog-lite0")
    assert view.order() == [0, 1, 2] and list(ds["distance_from_start"].values) == sorted(ds["distance_from_start"].values)
    # yaw 12.5 → 40 over a 360° domain, pitch unchanged: 27.5 / 360
    assert np.isclose(view.distance[0], 27.5 / (factors.get("yaw").domain.hi - factors.get("yaw").domain.lo))
    top1, p = str(ds["top1_name"].values[1]), float(ds["set_prob"].values[1])
    assert view.label(1) == f"yaw = 12.5, pitch = 60 · distance {view.distance[1]:.3g} → {top1} (class set {p:.3f})"
    a, b, xs, ys, grid = view.failure_map()
    assert (a, b, list(xs), list(ys)) == ("yaw", "pitch", [45.0, 135.0], [-30.0, 30.0])
    assert np.isnan(grid[1, 1]) and np.isclose(grid[0, 1], view.distance[0])
    assert view.scene(2) == {**start, "yaw": 170.0, "pitch": -20.0}


def test_a_click_without_an_engine_says_why_and_load_point_sets_the_full_scene(stores):
    _, full, _, start, _, _ = stores
    state = CubeState(str(full), "views")
    controls = ControlsPanel(state)
    view = SearchView(str(full), "dog-lite0", state)
    before = state.point()
    assert not view.load(2)
    assert view.note == ("live compute is off: start the viewer with --engine local (or a Dask scheduler's address) "
                         "to compute this failing scene (yaw = 170, pitch = -20)")
    assert state.point() == before and not state.live_on
    # What a click does with an engine, on the state: the full failing scene, off the grid, in one change.
    changed = state.changed
    state.load_point(view.scene(2))
    assert state.point() == {**start, "yaw": 170.0, "pitch": -20.0} and state.changed == changed + 1
    assert state.live_where() == "pitch = -20, yaw = 170"  # in the factors' order
    assert state.live_status == "live compute is off: start the viewer with --engine"
    # Moving a grid control clears it: back to the grid point, live compute as it was.
    controls.widget("yaw").value = 1
    assert state.live_point is None and not state.live_on and state.point() == {**before, "yaw": 90.0}
    # Moving a live control clears it too, live compute stays on.
    state.load_point(view.scene(0))
    state.live_value = 33.0
    assert state.live_point is None and state.live_on and state.point()[state.live_factor] == 33.0


# ------------------------------------------------------------------ the section

def test_a_run_still_being_written_is_not_listed(stores, tmp_path):
    full = stores[1]
    copy = tmp_path / "copy.zarr"
    shutil.copytree(full, copy)
    shutil.copytree(copy / "fooling" / "lite0-gradient", copy / "fooling" / ".lite0-gradient.staged")  # as pipeline.groups stages it
    assert runs(str(copy), "fooling") == runs(str(full), "fooling") == ["lite0-gradient"]


def test_no_searches_is_one_line_and_damaged_groups_are_one_line_each(stores):
    plain, full, broken, _, _, _ = stores
    assert runs(str(plain), "fooling") == [] and runs(str(plain), "search") == []
    assert SearchesPanel(str(plain), CubeState(str(plain), "views")).view.object == NONE
    panel = SearchesPanel(str(full), CubeState(str(full), "views"))
    gallery, failures = (p for p in panel.parts if isinstance(p, (FoolingPanel, FailuresPanel)))
    assert gallery.gallery.object.count("<figure") == 4 and "4 shown of 4 elites" in gallery.gallery.object
    assert len([o for o in failures.runs.body.objects if "Button" in type(o).__name__]) == 3
    section = next(s for s in SECTIONS if s.title.startswith("Searches"))  # the viewer's own section
    made = []
    build_app(str(broken), "views", sections=[Section(section.title, lambda v: made.append(section.panel(v)) or made[-1])])
    gallery, failures = (p for p in made[0].parts if isinstance(p, (FoolingPanel, FailuresPanel)))
    assert gallery.runs.select.options == ["foreign", "lite0-gradient"]  # several runs: a select, the first shown
    (line,) = gallery.runs.body.objects
    assert line.object == "<p class='pt-failed'>fooling run &#x27;foreign&#x27; is not a fooling group: no elite, confidence, found_at, class_name</p>"
    (line,) = failures.runs.body.objects
    assert line.object.startswith("<p class='pt-failed'>search run &#x27;dog-lite0&#x27; cannot be read (")
    gallery.runs.select.value = "lite0-gradient"  # the other run still shows
    assert gallery.gallery.object.count("<figure") == 4


# ------------------------------------------------------------------ in a browser

@pytest.mark.browser
def test_the_gallery_and_a_failure_computed_live_in_a_browser(stores, page):
    expect = pytest.importorskip("playwright.sync_api").expect
    with open_viewer(page, stores[1], "--engine", "local"):
        page.locator(".bk-tab", has_text="Searches").click()
        page.wait_for_selector(".pt-fool-gallery", timeout=60_000)  # built after the first paint
        expect(page.locator(".pt-fool-gallery figure")).to_have_count(4, timeout=120_000)
        expect(page.locator(".pt-fool-gallery")).to_contain_text(f"{LITE1}: ")  # the other model's verdicts
        failure = page.locator(".pt-search-failure button").nth(1)  # yaw 12.5 (the start's), pitch 60
        expect(failure).to_contain_text("yaw = 12.5, pitch = 60 · distance")
        failure.click()
        expect(page.locator(".pt-search-note")).to_contain_text("loaded into live compute", timeout=30_000)
        expect(page.locator(".pt-live-status")).to_contain_text("live: pitch = 60, yaw = 12.5, computed in", timeout=60_000)
        expect(page.locator(".pt-live")).to_contain_text("LIVE · pitch = 60, yaw = 12.5")
        expect(page.locator("img.pt-input")).to_be_visible()
