"""The viewer's page (issue 17): it opens on the canonical view, the template
with the controls in its sidebar and the tabs, the large pixelated model input
and the render before the image factors, links that reopen a view, and the
live slider following its factor at once."""

import base64
import contextlib
import io
import re
from urllib.parse import parse_qs, urlparse

import numpy as np
import panel as pn
import pytest
from conftest import serve_viewer
from PIL import Image

from perturber.pipeline import factors, run, spec
from perturber.viewer import stores as viewer_stores
from perturber.viewer.app import SECTIONS, TABS, build_app
from perturber.viewer.state import CubeState
from perturber.viewer.state.cube import canonical


expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.slow

# yaw 60 and pitch 15 are the grid values nearest the canonical view (yaw 45, pitch 10); hue is an image factor.
SPEC = {
    "name": "layout",
    "cubes": {"views": {"axes": {"object": ["dog"], "yaw": [0.0, 60.0], "pitch": [0.0, 15.0], "hue": [0, 120]},
                        "models": ["efficientnet_lite0", "efficientnet_lite1"], "images": True}},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("layout") / "layout.zarr")
    run.precompute(spec.parse_spec(SPEC), path, scheduler="synchronous", progress=False)
    return path


def _stored(path, **values) -> np.ndarray:
    """The stored model input at a grid point given by its values."""
    ds = viewer_stores.open_store(path, "views")
    return ds["image"].sel(**values).values


@contextlib.contextmanager
def open_viewer(page, path, *extra: str, query: str = ""):
    """Serve ``path``, open the page at ``query`` and wait for the model input;
    afterwards, no JavaScript error may have happened."""
    proc, url = serve_viewer(path, *extra)
    try:
        page.goto(url + query)
        page.wait_for_selector("img.pt-input", timeout=60_000)
        yield
        assert not page.errors, page.errors
    finally:
        proc.kill()


def _decoded(src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def test_canonical_is_the_default_or_the_nearest_grid_value():
    assert canonical("yaw", [-180.0, -90.0, 0.0, 90.0]) == 0.0  # 45: as near 0 as 90, the first
    assert canonical("yaw", [-180.0, 45.0, 135.0]) == 45.0
    assert canonical("pitch", [0.0, 25.0]) == 0.0 and canonical("pitch", [0.0, 15.0]) == 15.0
    assert canonical("background", ["meadow", "white"]) == "white"
    assert canonical("background", ["meadow", "road"]) == "meadow"  # its default is no grid value: the first
    assert factors.get("yaw").default == 45.0 and factors.get("pitch").default == 10.0  # the README's canonical view


def test_a_new_state_opens_on_the_canonical_view_and_the_render_before_the_image_factors(store):
    s = CubeState(store, "views")
    assert {a: getattr(s, a) for a in s.axes} == {"object": "dog", "yaw": 60.0, "pitch": 15.0, "hue": 0}
    s.hue = 120
    src, why = s.render_png()
    assert why == "" and np.array_equal(_decoded(src), _stored(store, object="dog", yaw=60.0, pitch=15.0, hue=0))
    assert not np.array_equal(_decoded(src), s.image())  # the hue shift is not in the render


@pytest.mark.browser
def test_the_page_opens_on_the_canonical_view_with_a_large_pixelated_input_and_tabs(store, page):
    with open_viewer(page, store):
        sidebar = page.locator("#sidebar")
        for label in ("yaw: 60", "pitch: 15", "hue: 0"):
            expect(sidebar.get_by_text(label, exact=True)).to_be_visible()
        image = page.locator("img.pt-input")
        box = image.bounding_box()
        assert box["width"] >= 320 and box["height"] >= 320
        assert image.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"
        assert np.array_equal(_decoded(image.get_attribute("src")), _stored(store, object="dog", yaw=60.0, pitch=15.0, hue=0))
        # The two models' top-5 beside the input, not below it.
        left = page.locator(".pt-model_a").bounding_box()
        assert left["x"] >= box["x"] + box["width"] and left["y"] < box["y"] + box["height"]
        expect(page.locator(".bk-tab")).to_have_text(TABS)
        # The render before the image factors: at hue 120, the image at hue 0.
        first = image.get_attribute("src")
        _step(page, "hue")
        expect(sidebar.get_by_text("hue: 120", exact=True)).to_be_visible(timeout=30_000)
        expect(image).not_to_have_attribute("src", first, timeout=30_000)
        shifted = image.get_attribute("src")
        page.locator(".pt-render-toggle input[type=checkbox]").check()
        expect(page.locator("img.pt-render")).to_be_visible(timeout=30_000)
        src = page.get_attribute("img.pt-render", "src")
        assert src != shifted and np.array_equal(_decoded(src), _stored(store, object="dog", yaw=60.0, pitch=15.0, hue=0))


def _tab(page, name):
    """The header of tab ``name``."""
    return page.locator(".bk-tab", has_text=name)


def _step(page, axis, key="ArrowRight"):
    """One arrow key on the grid slider of ``axis`` (the sidebar's sliders: yaw, pitch, hue, then live compute's)."""
    page.locator("#sidebar .noUi-handle").nth(["yaw", "pitch", "hue"].index(axis)).focus()
    page.keyboard.press(key)


@pytest.mark.browser
def test_a_link_reopens_the_same_view(store, page, browser):
    query = "?yaw=0&pitch=15&hue=120&model_b=efficientnet_lite0&score=logit&tab=Neurons"
    with open_viewer(page, store, query=query):
        sidebar = page.locator("#sidebar")
        for label in ("yaw: 0", "pitch: 15", "hue: 120"):
            expect(sidebar.get_by_text(label, exact=True)).to_be_visible()
        expect(page.locator(".pt-model_b")).to_contain_text("efficientnet_lite0")
        expect(page.locator(".pt-model_a th").nth(2)).to_have_text("logit")
        expect(_tab(page, "Neurons")).to_have_class(re.compile("bk-active"))
        src = page.get_attribute("img.pt-input", "src")
        assert np.array_equal(_decoded(src), _stored(store, object="dog", yaw=0.0, pitch=15.0, hue=120))
        # A change goes into the URL at once; that URL, opened elsewhere, shows the same view.
        _step(page, "yaw")
        expect(sidebar.get_by_text("yaw: 60", exact=True)).to_be_visible(timeout=30_000)
        _tab(page, "Attack").click()
        page.wait_for_function("() => location.search.includes('tab=Attack') && location.search.includes('yaw=60')",
                               timeout=30_000)
        link = page.url
        assert parse_qs(urlparse(link).query)["model_b"] == ["efficientnet_lite0"]
        other = browser.new_page(viewport={"width": 1300, "height": 900})
        try:
            other.goto(link)
            other.wait_for_selector("img.pt-input", timeout=60_000)
            expect(other.locator("#sidebar").get_by_text("yaw: 60", exact=True)).to_be_visible()
            expect(_tab(other, "Attack")).to_have_class(re.compile("bk-active"))
            shown = _decoded(other.get_attribute("img.pt-input", "src"))
            assert np.array_equal(shown, _stored(store, object="dog", yaw=60.0, pitch=15.0, hue=120))
            expect(other.locator(".pt-model_a th").nth(2)).to_have_text("logit")
        finally:
            other.close()


@pytest.mark.browser
def test_a_link_with_a_value_off_the_grid_says_so_in_one_line(store, page):
    with open_viewer(page, store, query="?yaw=37&hue=120"):
        expect(page.locator(".pt-notice")).to_have_text(
            "this link's yaw=37 cannot be shown here (not a value of this cube); left as it was")
        expect(page.locator("#sidebar").get_by_text("hue: 120", exact=True)).to_be_visible()
        expect(page.locator("#sidebar").get_by_text("yaw: 60", exact=True)).to_be_visible()


def _shown(name: str, value: float, steps: int = 0) -> str:
    """The live slider's value text for ``value`` of factor ``name`` after ``steps`` arrow keys (its step is a
    thousandth of the domain, counted from the domain's low end)."""
    domain = factors.get(name).domain
    lo, step = float(domain.lo), (float(domain.hi) - float(domain.lo)) / 1000
    return f"{lo + (round((value - lo) / step) + steps) * step:.2f}"


@pytest.mark.browser
def test_the_live_slider_follows_its_factor_at_once(store, page):
    """Range, value and step of the live slider change in the browser with the
    factor, without another interaction (issue 17 saw them lag one interaction behind)."""
    with open_viewer(page, store):
        handle = page.locator(".pt-live-slider .noUi-handle")
        factor = page.locator("#sidebar select").filter(has=page.locator("option", has_text="light_intensity"))
        expect(handle).to_have_attribute("aria-valuetext", _shown("yaw", 60.0), timeout=30_000)  # yaw at the grid point
        for name, value in [("distance", 2.2), ("yaw", 60.0), ("pitch", 15.0), ("hue", 0.0)]:  # value: at the grid point
            domain = factors.get(name).domain
            factor.select_option(name)
            page.wait_for_function(LIVE_JS, arg=[f"{float(domain.lo):.1f}", f"{float(domain.hi):.1f}", _shown(name, value)],
                                   timeout=10_000)
            handle.focus()
            page.keyboard.press("ArrowRight")
            expect(handle).to_have_attribute("aria-valuetext", _shown(name, value, 1), timeout=10_000)


#: Whether the live slider shows [min, max, value text] (Playwright's own query: the slider is in a shadow root).
LIVE_JS = """([lo, hi, text]) => {
  const find = (root, selector) => {
    const hit = root.querySelector(selector);
    if (hit) return hit;
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) { const f = find(el.shadowRoot, selector); if (f) return f; }
    }
    return null;
  };
  const slider = find(document, '.pt-live-slider');
  const h = slider && find(slider.shadowRoot || slider, '.noUi-handle');
  return h !== null && h.getAttribute('aria-valuemin') === lo && h.getAttribute('aria-valuemax') === hi
    && h.getAttribute('aria-valuetext') === text;
}"""


@pytest.mark.browser
def test_a_link_holds_the_landscape_class_and_the_pgd_target(store, page):
    """The panels' own controls are in the link too: the landscape's class (a
    set here) and PGD's target."""
    with open_viewer(page, store, query="?class=%40cats&pgd_target=281&curve=pitch"):
        expect(page.locator(".pt-landscape-class input")).to_have_value("any cat (@cats)", timeout=60_000)
        _tab(page, "Attack").click()
        expect(page.locator(".pt-pgd-target input")).to_have_value(re.compile(r"tabby.*\(281\)"), timeout=60_000)
        _tab(page, "Explore").click()
        page.locator(".pt-landscape-class input").fill("golden retriever (207)")
        page.keyboard.press("Enter")
        page.wait_for_function("() => location.search.includes('class=207')", timeout=30_000)


@pytest.mark.browser
def test_a_link_with_a_class_that_names_nothing_says_so_in_one_line(store, page):
    with open_viewer(page, store, query="?class=1234"):
        expect(page.locator(".pt-notice")).to_have_text("this link's class=1234 cannot be shown here; left as it was",
                                                        timeout=60_000)


def test_grid_views_say_they_do_not_apply_to_an_uploaded_mesh(store):
    """Built without a server (every section at once): the landscape, failure
    finder, sensitivity and scatter carry a line that is empty until a mesh
    from the browser is shown, and then names it."""
    state = CubeState(store, "views")
    assert {s.tab for s in SECTIONS if s.grid} == {"Explore"}
    state.uploaded = "teapot.ply"
    app = build_app(store, "views", state=state)
    notes = [p.object for p in app.select(pn.pane.HTML) if "Not for your mesh" in str(p.object)]
    assert len(notes) == sum(s.grid for s in SECTIONS) == 4
    assert all("teapot.ply" in n for n in notes)
    assert state.attributions() == ["your mesh teapot.ply"]


@pytest.mark.browser
def test_view_tab_opens_that_tab_unless_the_link_names_another(store, page):
    with open_viewer(page, store, "--tab", "Studies"):
        expect(_tab(page, "Studies")).to_have_class(re.compile("bk-active"), timeout=60_000)
        expect(page.locator(".pt-notice")).to_have_count(0)


@pytest.mark.browser
def test_a_link_s_tab_wins_over_view_tab(store, page):
    with open_viewer(page, store, "--tab", "Studies", query="?tab=Neurons"):
        expect(_tab(page, "Neurons")).to_have_class(re.compile("bk-active"), timeout=60_000)
