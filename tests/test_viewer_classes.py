"""Classes by name in the viewer (the landscape's class, PGD's target) and the
top-5 as the original showed it (bars, the object's classes marked, an example
image per class), on a small real store; the served viewer in Debian's Chromium."""

import base64
import contextlib
import io
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
from conftest import FRAMES_JS, ROOT, free_port
from PIL import Image

from perturber.featureviz import precompute as fv
from perturber.pipeline import classes as imagenet
from perturber.pipeline import run, scene, spec
from perturber.pipeline.analysis import softmax
from perturber.viewer import classes
from perturber.viewer.panels.attack import AttackPanel
from perturber.viewer.panels.landscape import LandscapePanel
from perturber.viewer.panels.top5 import Top5Panel, fv_thumbnail
from perturber.viewer.state import CubeState, Settled

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.slow

SPEC = {"name": "classes", "cubes": {"views": {
    "axes": {"object": ["dog", "cat"], "yaw": [0.0, 90.0, 180.0]},
    "models": ["efficientnet_lite0", "efficientnet_lite1"], "images": True}}}
DOGS = range(151, 269)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("classes") / "store.zarr"
    run.precompute(spec.parse_spec(SPEC), str(path), scheduler="synchronous", progress=False)
    return path


def _top(store, model=0):
    """The stored top-5 class indices of ``model`` at the first point (the dog at yaw 0)."""
    return [int(c) for c in xr.open_zarr(store, group="views")["top_class"].values[0, 0, model]]


@pytest.fixture(scope="module")
def renders():
    """Real renders (96 px RGB): the dog and the cat on a meadow."""
    return {o: scene.render({"object": o, "background": "meadow"}, size=96)[..., :3] for o in ("dog", "cat")}


@pytest.fixture(scope="module")
def val_folder(store, renders, tmp_path_factory):
    """An ImageNet class-folder layout (DIR/<wnid>/*.JPEG) for the dog's top-3 classes
    (Lite0 at yaw 0): the first class holds two real renders (the dog's file sorts
    first), the second one broken JPEG, the third nothing."""
    folder = tmp_path_factory.mktemp("val")
    wnids = imagenet.imagenet_wnids()
    first, second, third = _top(store)[:3]
    (folder / wnids[first]).mkdir()
    Image.fromarray(renders["cat"]).save(folder / wnids[first] / "ILSVRC2012_val_00000009.JPEG")
    Image.fromarray(renders["dog"]).save(folder / wnids[first] / "ILSVRC2012_val_00000002.JPEG")
    (folder / wnids[second]).mkdir()
    good = io.BytesIO()
    Image.fromarray(renders["dog"]).save(good, format="JPEG")
    (folder / wnids[second] / "a.JPEG").write_bytes(good.getvalue()[:200])  # truncated
    (folder / wnids[third]).mkdir()
    return folder


@pytest.fixture
def examples(val_folder):
    classes.set_example_folder(val_folder)
    yield val_folder
    classes.set_example_folder(None)


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=float)


# ------------------------------------------------------------------ names, values, fields (no browser)

def test_text_names_a_class_a_set_or_the_special_choice():
    special = (classes.TOP,)
    assert classes.label(207) == "golden retriever (207)" and classes.label("@dogs") == "any dog breed (@dogs)"
    for text, value in [("golden retriever (207)", 207), ("Golden Retriever", 207), ("207", 207), ("  tabby ", 281),
                        ("any cat", "@cats"), ("@DOGS", "@dogs"), ("top class here", "top")]:
        assert classes.parse(text, special, sets=True) == value, text
    with pytest.raises(classes.UnknownClassText, match="part of 5 names"):
        classes.parse("retriever", special, sets=True)
    for bad, sets in [("zebrafish", True), ("1000", True), ("any dog breed", False), ("top", False)]:
        with pytest.raises(classes.UnknownClassText) as err:
            classes.parse(bad, special if sets else (), sets=sets)
        assert "\n" not in str(err.value)
    assert len(classes.options(special, True)) == 1 + 2 + 1000


def test_the_fields_set_plain_values_and_bad_text_is_one_line(store):
    state = CubeState(str(store), "views")
    land = LandscapePanel(state, Settled(state))
    field = land.target_field
    field.input.value = "any dog"
    assert land.land.target == "@dogs" and field.input.value == "any dog breed (@dogs)"
    assert land.curves.title.text == "p(any dog breed) along yaw"
    logits = state.ds["logits"].isel(object=0, model=0).values.astype(np.float32)  # along yaw
    assert np.allclose(land.curve_source.data["left"], softmax(logits)[:, DOGS].sum(-1), rtol=1e-4)
    field.input.value = "no such thing"
    assert field.message.visible and "is not an ImageNet class" in field.message.object and land.land.target == "@dogs"
    land.land.target = 281  # as a URL would set it: the field follows
    assert field.input.value == "tabby (281)" and not field.message.visible
    with pytest.raises(ValueError):
        land.land.target = 1000
    attack = AttackPanel(state)
    assert attack.attack.target == classes.UNTARGETED and attack.attack._job(1)["target"] is None
    attack.target_field.input.value = "any cat"  # PGD pushes towards one class: no sets
    assert attack.attack.target == classes.UNTARGETED and attack.target_field.message.visible
    attack.target_field.input.value = "tabby"
    assert attack.attack.target == 281 and attack.attack._job(1)["target"] == 281


# ------------------------------------------------------------------ example images (no browser)

def test_example_folder_is_checked_in_one_line(tmp_path):
    with pytest.raises(classes.ExampleFolderError, match="no such folder"):
        classes.set_example_folder(tmp_path / "missing")
    (tmp_path / "cats").mkdir()
    with pytest.raises(classes.ExampleFolderError, match="neither class folders"):
        classes.set_example_folder(tmp_path)
    assert classes.example_folder() is None and classes.example(207) is None


def test_the_first_image_of_a_class_folder_and_a_broken_one(store, renders, examples):
    first, second, third = _top(store)[:3]
    shown = classes.example(first)
    assert shown.src.startswith("data:image/jpeg") and shown.title.endswith("ILSVRC2012_val_00000002.JPEG")
    image = _decode(shown.src)
    assert image.shape == (64, 64, 3)
    dog = np.asarray(Image.fromarray(renders["dog"]).resize((64, 64)), dtype=float)
    cat = np.asarray(Image.fromarray(renders["cat"]).resize((64, 64)), dtype=float)
    assert np.abs(image - dog).mean() < 8 < np.abs(image - cat).mean()  # the file that sorts first: the dog
    broken = classes.example(second)
    assert broken.src is None and broken.title == "a.JPEG cannot be read as an image"
    assert classes.example(third).src is None and "no image of" in classes.example(third).title


def test_the_flat_validation_layout_with_its_solution_file(tmp_path, renders):
    wnids = imagenet.imagenet_wnids()
    Image.fromarray(renders["dog"]).save(tmp_path / "ILSVRC2012_val_00000005.JPEG")
    Image.fromarray(renders["cat"]).save(tmp_path / "ILSVRC2012_val_00000007.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000007,{wnids[207]} 1 2 30 40\n"
        f"ILSVRC2012_val_00000005,{wnids[207]} 1 2 30 40 {wnids[207]} 5 5 9 9\n")
    classes.set_example_folder(tmp_path)
    try:
        assert classes.example(207).title == "golden retriever: ILSVRC2012_val_00000005.JPEG"
        assert "no image of tabby" in classes.example(281).title
    finally:
        classes.set_example_folder(None)


def test_top5_bars_marks_and_examples(store, examples):
    state = CubeState(str(store), "views")
    panel = Top5Panel(state, "model_a")
    text = panel.html()
    rows = state.top5("efficientnet_lite0")
    assert text.count("<progress class='pt-bar'") == 5 and f"value='{rows[0][1]:.4f}'" in text
    top = _top(store)
    marked = [c for c in top if c in DOGS]
    assert marked and text.count("<span class='pt-mark'") == len(marked)  # one mark per dog breed
    # the first class's image; blanks: a broken file, an empty class folder, two classes without one
    assert text.count("class='pt-example'") == 1 and text.count("class='pt-example-blank'") == 4
    state.object = "cat"  # a cat at yaw 0: the dog breeds are no longer correct
    cat = Top5Panel(state, "model_a").html()
    cat_top = [int(c) for c in xr.open_zarr(store, group="views")["top_class"].values[1, 0, 0]]
    assert cat.count("<span class='pt-mark'") == sum(c in range(281, 286) for c in cat_top)
    state.score = "logit"
    logits = Top5Panel(state, "model_a").html()
    assert "<th>logit</th>" in logits and "value='1.0000'" in logits  # the largest logit's bar is full


def test_without_a_folder_the_class_logits_feature_visualisation(store, tmp_path):
    import shutil

    copy = tmp_path / "fv.zarr"
    shutil.copytree(store, copy)
    top = _top(store)
    fv.precompute(fv.parse_spec({"size": 32, "steps": 1, "batch": 8, "parameterisations": ["pixel"],
                                 "models": {"efficientnet_lite0": {"logits": top[:2]}}}),
                  str(copy), scheduler="synchronous", progress=False, echo=lambda _: None)
    state = CubeState(str(copy), "views")
    text = Top5Panel(state, "model_a").html()
    assert text.count("class='pt-example'") == 2 and "feature visualisation of the" in text
    uri, parameterisation = fv_thumbnail(str(copy), "efficientnet_lite0", top[0])
    stored = xr.open_zarr(copy, group="featureviz")["fv_efficientnet_lite0_logits"].values[0, 0]
    assert parameterisation == "pixel" and np.abs(_decode(uri) - stored).mean() < 12  # a JPEG of the stored image
    right = Top5Panel(state, "model_b").html()  # Lite1 has none: Lite0's, where its top-5 shares a class
    shared = set(top[:2]) & set(_top(store, model=1))
    assert right.count("class='pt-example'") == len(shared)
    assert "class='pt-example" not in Top5Panel(CubeState(str(store), "views"), "model_a").html()  # neither: nothing


# ------------------------------------------------------------------ the served viewer

@contextlib.contextmanager
def _served(page, path, folder=None):
    """Serve ``path`` (with ``folder`` as the example folder) and open it; afterwards,
    no JavaScript error may have happened. (``perturber view --imagenet-val`` does the same.)"""
    port = free_port()
    code = ("import sys; from perturber.viewer import app, classes; "
            "classes.set_example_folder(sys.argv[3] if len(sys.argv) > 3 else None); "
            "app.serve(sys.argv[1], port=int(sys.argv[2]))")
    args = [sys.executable, "-c", code, str(path), str(port)] + ([str(folder)] if folder else [])
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "the viewer did not start"
                time.sleep(0.3)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("img.pt-input", timeout=60_000)
        yield
        assert not page.errors, page.errors
    finally:
        proc.kill()


def _wait_for_title(page, title, timeout=30):
    """The plot titles once one of them is ``title`` (or after ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while True:
        titles = [f["title"] for f in page.evaluate(FRAMES_JS)]
        if title in titles or time.time() > deadline:
            return titles
        page.wait_for_timeout(200)


def _open_tab(page, name):
    """Open the page's tab ``name`` (a layout without tabs shows every section)."""
    tab = page.locator(".bk-tab", has_text=name)
    if tab.count():
        tab.first.click()


def _choose(page, field, text, pick=None):
    """Type ``text`` in a class field and take the list's entry ``pick`` (else press Enter)."""
    box = page.locator(f"{field} input")
    box.fill("")
    box.type(text, delay=20)
    if pick is None:
        box.press("Enter")
    else:
        page.get_by_text(pick, exact=True).click()


@pytest.mark.browser
def test_the_landscape_class_by_name(store, page):
    with _served(page, store):
        page.wait_for_selector(".pt-landscape-class input", timeout=60_000)  # built after the first paint
        expect(page.locator(".pt-curves")).to_be_visible(timeout=30_000)
        assert "p(Labrador retriever) along yaw" in _wait_for_title(page, "p(Labrador retriever) along yaw")  # top class here
        _choose(page, ".pt-landscape-class", "golden ret", pick="golden retriever (207)")
        titles = _wait_for_title(page, "p(golden retriever) along yaw")
        assert "p(golden retriever) along yaw" in titles
        assert "p(golden retriever), efficientnet_lite0: click a cell to go there" in titles
        _choose(page, ".pt-landscape-class", "any cat")  # a class set, typed and entered
        assert "p(any cat) along yaw" in _wait_for_title(page, "p(any cat) along yaw")
        expect(page.locator(".pt-landscape-class input")).to_have_value("any cat (@cats)")
        _choose(page, ".pt-landscape-class", "zebrafish")
        expect(page.locator(".pt-landscape-class-error")).to_contain_text("'zebrafish' is not an ImageNet class", timeout=30_000)
        assert "p(any cat) along yaw" in _wait_for_title(page, "p(any cat) along yaw", timeout=0)


@pytest.mark.browser
def test_the_pgd_target_by_name(store, page):
    with _served(page, store):
        _open_tab(page, "Attack")
        page.wait_for_selector(".pt-pgd-target input", timeout=60_000)
        _choose(page, ".pt-pgd-target", "tabby", pick="tabby (281)")
        expect(page.locator(".pt-pgd-target input")).to_have_value("tabby (281)")
        page.locator(".pt-pgd-run button").click()  # 10 steps towards 'tabby' on Lite0, in the viewer
        expect(page.locator(".pt-attack-status")).to_contain_text("10 step(s) in the viewer", timeout=240_000)
        attacked = page.locator(".pt-transfer-efficientnet_lite0 td").nth(2)
        expect(attacked).to_contain_text("tabby (", timeout=30_000)


@pytest.mark.browser
def test_the_top5_shows_bars_the_correct_mark_and_an_example(store, val_folder, page):
    with _served(page, store, val_folder):
        left = page.locator(".pt-model_a")
        expect(left.locator("progress.pt-bar")).to_have_count(5)
        expect(left.locator(".pt-mark").first).to_be_visible()  # the dog's breed, marked correct
        image = left.locator("img.pt-example")
        expect(image).to_have_count(1)
        assert image.get_attribute("src").startswith("data:image/jpeg;base64,")
        assert image.evaluate("e => e.naturalWidth") == 64
        expect(left.locator(".pt-example-blank")).to_have_count(4)  # a broken file, an empty class folder, no folder
        assert left.locator(".pt-example-blank").first.get_attribute("title") == "a.JPEG cannot be read as an image"
