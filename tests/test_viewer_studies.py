"""The viewer's Studies view on a store built without rendering (synthetic cube,
study tables written directly): the list, the figure and the table, clicks
that move the explorer, and what a store without studies or a damaged study shows."""

import shutil

import numpy as np
import pytest
import xarray as xr
from conftest import FRAMES_JS, open_viewer

from perturber.pipeline import spec, studies
from perturber.pipeline.studies import synthetic, write_table
from perturber.viewer.app import SECTIONS, TABS, Section, build_app
from perturber.viewer.panels.controls import ControlsPanel
from perturber.viewer.panels.model_input import NO_IMAGES, InputPanel
from perturber.viewer.panels.studies import CHOOSE, StudiesPanel
from perturber.viewer.state import CubeState
from perturber.viewer import stores as viewer_stores
from perturber.viewer.state.studies import read_table, study_names

pytestmark = pytest.mark.slow  # the store takes a few seconds to write

MODELS = ["efficientnet_lite0", "efficientnet_lite1"]
CUBE = {"cubes": {"views": {"axes": {"object": ["dog", "cat"], "yaw": [-70.0, -23.3, 0.0, 70.0], "shuffle": [1, 2, 4]},
                            "models": MODELS, "images": False}}}


def _table(dims: dict, cube: str = "views", long_name: str = "share read as its class") -> xr.Dataset:
    """A tidy study table over ``dims`` (name → coordinates) and the models: v, v_lo, v_hi."""
    coords = {**dims, "model": np.array(MODELS, dtype=object)}
    shape = tuple(len(c) for c in coords.values())
    v = np.linspace(0.2, 0.8, int(np.prod(shape))).reshape(shape)
    ds = xr.Dataset({"v": (tuple(coords), v, {"long_name": long_name, "units": "1"}),
                     "v_lo": (tuple(coords), v - 0.1), "v_hi": (tuple(coords), v + 0.1)}, coords=coords)
    ds.attrs.update({"study": "t", "cube": cube, "definition": "Per point and model: a test quantity.", "unit": "view",
                     "control": "none", "published": "nobody", "finding": "a finding in one sentence.", "params": "{}"})
    return ds


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(a store without studies, the same with five studies, one of them damaged)."""
    folder = tmp_path_factory.mktemp("studies_view")
    cube = spec.parse_spec(CUBE).cubes[0]
    plain = folder / "plain.zarr"
    synthetic.write_store(cube, str(plain), lambda sl, rng: rng.normal(size=(*(s.stop - s.start for s in sl), 2, 1000)))
    full = folder / "studies.zarr"
    shutil.copytree(plain, full)
    write_table(_table({"yaw": np.array([-70.0, -35.0, -23.3, 0.0, 35.0, 70.0])}), str(full), "yaw-test")
    write_table(_table({"k": np.arange(1, 11)}), str(full), "k-test")
    write_table(_table({"object": np.array(["dog", "cat"], dtype=object)}), str(full), "bars-test")
    write_table(_table({"pitch": np.array([0.0, 30.0])}, cube="pitch_views"), str(full), "other-cube")
    write_table(_table({"yaw": np.array([-70.0, 0.0])}), str(full), "damaged")
    (full / "studies" / "damaged" / "zarr.json").write_text("{not json")
    return plain, full


def _panel(path, name=None):
    state = CubeState(str(path), "views")
    panel = StudiesPanel(str(path), state)
    if name is not None:
        panel.select.value = name
    return state, panel


def test_a_store_without_studies_says_how_to_get_one(stores):
    assert study_names(str(stores[0])) == []
    _, panel = _panel(stores[0])
    assert panel.view.object == "no studies in this store: run `perturber study --list`"


def test_the_list_then_the_chosen_study_with_its_figure_and_table(stores):
    import panel as pn

    assert study_names(str(stores[1])) == ["bars-test", "damaged", "k-test", "other-cube", "yaw-test"]
    _, panel = _panel(stores[1])
    assert panel.select.options == [CHOOSE, "bars-test", "damaged", "k-test", "other-cube", "yaw-test"]
    assert panel.body.objects == [] and panel.taps == []  # nothing read before a study is chosen
    panel.select.value = "yaw-test"
    about, note, figure, table = panel.body.objects
    assert "a test quantity" in about.object and "a finding in one sentence" in about.object
    assert note.object == "<div class='pt-study-note'></div>"  # the study's cube is the one explored
    assert isinstance(figure, pn.pane.HoloViews) and len(panel.taps) == 1
    frame = table.objects[0].object
    assert list(frame.columns) == ["yaw", "model", "v"] and len(frame) == 12
    row = read_table(str(stores[1]), "yaw-test").sel(yaw=-23.3, model="efficientnet_lite1")
    shown = frame[(frame.yaw == -23.3) & (frame.model == "efficientnet_lite1")].v.item()
    assert shown == f"{float(row.v):.3g} [{float(row.v_lo):.3g}, {float(row.v_hi):.3g}]"


def test_a_click_moves_the_explorer_to_the_nearest_grid_value(stores):
    state, panel = _panel(stores[1], "yaw-test")
    controls = ControlsPanel(state)
    changed = state.changed
    panel.taps[0].event(x=-31.0, y=0.5)  # nearest table point -35, nearest grid value -23.3
    assert state.yaw == -23.3 and controls.widget("yaw").value == 1 and state.changed == changed + 1
    assert panel.view_of.note == "explorer moved to yaw = -23.3"
    assert "explorer moved to yaw = -23.3" in panel.body.objects[1].object
    # k is the shuffle axis: k = 4 lies on the grid, k = 3 snaps to the nearer of 2 and 4 (the first).
    panel.select.value = "k-test"
    panel.taps[0].event(x=3.9, y=0.5)
    assert state.shuffle == 4 and controls.widget("shuffle").value == 2
    panel.taps[0].event(x=2.6, y=0.5)
    assert state.shuffle == 2
    # A bar names a scene object and a model: the object, and the left model.
    panel.select.value = "bars-test"
    panel.taps[0].event(x="cat, efficientnet_lite1", y=0.5)
    assert (state.object, state.model_a) == ("cat", "efficientnet_lite1")
    assert controls.widget("object").value == "cat"


def test_a_study_of_another_cube_says_which_cube_to_open(stores):
    state, panel = _panel(stores[1], "other-cube")
    hint = f"open it with `perturber view {stores[1]} --cube pitch_views`"
    assert hint in panel.body.objects[1].object  # said as soon as the study is shown
    before = state.index()
    panel.taps[0].event(x=30.0, y=0.5)  # pitch is not an axis of the explored cube
    assert state.index() == before and hint in panel.view_of.note
    assert "Traceback" not in panel.body.objects[1].object


def test_a_damaged_study_is_one_line_and_the_rest_keeps_working(stores):
    studies_section = next(s for s in SECTIONS if s.title.startswith("Studies"))  # the viewer's own section
    made = []
    page = build_app(str(stores[1]), "views", sections=[
        Section(studies_section.title, lambda v: made.append(studies_section.panel(v)) or made[-1], studies_section.tab)])
    (panel,) = made
    tab = page.objects[1].objects[-1].objects[TABS.index("Studies")]  # the main column's last row: the tabs
    assert isinstance(panel, StudiesPanel) and "Studies" in tab.objects[0].object
    panel.select.value = "damaged"
    (line,) = panel.body.objects
    assert line.object == ("<p class='pt-failed'>study &#x27;damaged&#x27; cannot be read (JSONDecodeError); "
                           f"`perturber study damaged --store {stores[1]}` writes it again</p>")
    panel.select.value = "yaw-test"
    panel.taps[0].event(x=70.0, y=0.5)
    assert panel.state.yaw == 70.0


def test_a_study_s_own_figure_is_used(stores, monkeypatch):
    import holoviews as hv
    import matplotlib.pyplot as plt

    def figure(ds, title=""):
        return plt.figure(), hv.Scatter((ds["yaw"].values, ds["v"].isel(model=0).values), "yaw", "v")

    monkeypatch.setitem(studies.STUDIES, "yaw-test", studies.Study("yaw-test", "views", "d", lambda cube: None, figure=figure))
    state, panel = _panel(stores[1], "yaw-test")
    assert isinstance(panel.body.objects[2].object, hv.Scatter)
    panel.taps[0].event(x=-1.0, y=0.5)
    assert state.yaw == 0.0


# ------------------------------------------------------------------ in a browser

@pytest.mark.browser
def test_the_studies_section_shows_the_figure_and_table_and_a_click_moves_the_explorer(stores, page):
    expect = pytest.importorskip("playwright.sync_api").expect
    # the Studies tab's section is built after the first paint
    with open_viewer(page, stores[1], ready=".bk-tab"):  # this cube stores no images: no img.pt-input
        page.locator(".bk-tab", has_text="Studies").click()
        page.wait_for_selector(".pt-study-select select", timeout=60_000)
        choose = page.locator(".pt-study-select select")
        choose.select_option("yaw-test")
        table = page.locator(".pt-study-table")
        expect(table).to_contain_text("efficientnet_lite1", timeout=60_000)
        expect(table).to_contain_text("[")  # values with their intervals
        page.locator(".pt-study-figure").scroll_into_view_if_needed()
        page.wait_for_timeout(1000)  # let Bokeh lay the plot out
        frame = next(f for f in page.evaluate(FRAMES_JS) if f["title"] == "share read as its class")
        x = frame["left"] + frame["width"] * (-23.3 - frame["x0"]) / (frame["x1"] - frame["x0"])
        page.mouse.click(x, frame["top"] + frame["height"] / 2)
        expect(page.get_by_text("yaw: -23.3", exact=True)).to_be_visible(timeout=30_000)
        expect(page.locator(".pt-study-note").last).to_contain_text("explorer moved to yaw = -23.3")


def test_the_viewer_opens_the_sweep_s_cube_not_a_study_s(tmp_path):
    """A study writes its own cube into the store (``patch_shuffle`` sorts before
    ``views``): the cube a viewer, a notebook or an export opens by default is
    the sweep's own; the studies' cubes come after it."""
    path = str(tmp_path / "s.zarr")
    sweep = spec.parse_spec({"cubes": {"views": CUBE["cubes"]["views"],
                                       "patch_shuffle": CUBE["cubes"]["views"]}})
    for cube in sweep.cubes:
        synthetic.write_store(cube, path, lambda sl, rng: rng.normal(size=(*(s.stop - s.start for s in sl), 2, 1000)))
    assert viewer_stores.cube_names(path) == ["patch_shuffle", "views"]  # no study yet: by name
    write_table(_table({"yaw": np.array([-70.0, 0.0])}, cube="patch_shuffle"), path, "patch-shuffle")
    assert viewer_stores.cube_names(path) == ["views", "patch_shuffle"]
    (tmp_path / "s.zarr" / "studies" / "patch-shuffle" / "zarr.json").write_text("{not json")
    assert sorted(viewer_stores.cube_names(path)) == ["patch_shuffle", "views"]  # a damaged table: listed by name, no error


def test_a_cube_without_images_says_so_where_the_input_would_be(stores):
    """Not "not computed": the point is computed, its spec stores no images."""
    state = CubeState(str(stores[0]), "views")
    shown = InputPanel(state).html()
    assert NO_IMAGES in shown and "not computed" not in shown
