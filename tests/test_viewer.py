"""The served viewer: its server over plain HTTP and websockets (who may reach it),
and the viewer in a real browser, Debian's Chromium driven by Playwright."""

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import FRAMES_JS, ROOT, free_port, open_viewer, serve_viewer

from perturber.featureviz import precompute as fv
from perturber.pipeline import run, spec, store

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = pytest.mark.slow  # a server each; browser tests are marked browser too

SPEC = {
    "name": "viewer",
    "cubes": {
        "views": {
            "axes": {"object": ["dog", "cat"], "yaw": [0.0, 90.0, 180.0], "hue": [0, 120]},
            "models": ["efficientnet_lite0", "efficientnet_lite1"],
            "layers": ["head"],
            "neurons": {"head": 4},
            "images": True,
        }
    },
}


# Feature visualisations of two of the four stored head neurons of the left model (a tiny real run).
FEATUREVIZ = {"size": 48, "steps": 4, "batch": 2, "parameterisations": ["fourier"],
              "models": {"efficientnet_lite0": {"layers": {"head": [0, 2]}}}}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("viewer")
    sweep = spec.parse_spec(SPEC)
    full = folder / "full.zarr"
    run.precompute(sweep, str(full), scheduler="synchronous", progress=False)
    fv.precompute(fv.parse_spec(FEATUREVIZ), str(full), scheduler="synchronous", progress=False, echo=lambda _: None)
    partial = folder / "partial.zarr"
    cube = sweep.cubes[0]
    store.create_or_check(cube, str(partial))
    run.run_task(cube, (0, 0, 0), str(partial))  # dog at yaw 0 only (small cubes: a task per chunk)
    return full, partial


def _top5(page, which):
    return page.inner_text(f".pt-{which}")


def _tab(page, name):
    """Open the tab ``name`` (Explore, Neurons, Attack, Searches, Studies)."""
    page.locator(".bk-tab", has_text=name).click()


def _step_slider(page, index=0):
    """Press the right arrow on the ``index``-th slider of the controls (0: yaw,
    the first control of the Camera group)."""
    page.locator(".noUi-handle").nth(index).focus()
    page.keyboard.press("ArrowRight")


@pytest.mark.browser
def test_page_loads_and_yaw_changes_image_and_predictions(stores, page):
    with open_viewer(page, stores[0]):
        image = page.get_attribute("img.pt-input", "src")
        left = _top5(page, "model_a")
        assert "efficientnet_lite0" in left and "1" in left
        assert "Dog by" in page.inner_text(".pt-credits")
        _step_slider(page)
        expect(page.locator("img.pt-input")).not_to_have_attribute("src", image, timeout=30_000)
        expect(page.locator(".pt-model_a")).not_to_have_text(left, timeout=30_000)
        # Switching the right model changes its column.
        right = _top5(page, "model_b")
        model_selects = page.locator("select").filter(has=page.locator("option", has_text="efficientnet_lite1"))
        model_selects.nth(1).select_option("efficientnet_lite0")  # the right model
        expect(page.locator(".pt-model_b")).to_contain_text("efficientnet_lite0", timeout=30_000)
        assert _top5(page, "model_b") != right




@pytest.mark.browser
def test_clicking_a_landscape_cell_moves_the_sliders(stores, page):
    with open_viewer(page, stores[0]):
        expect(page.get_by_text("yaw: 0", exact=True)).to_be_visible()
        page.wait_for_selector(".pt-heatmap", timeout=60_000)  # built after the first paint
        page.wait_for_timeout(1000)  # let Bokeh lay the plots out
        frame = next(f for f in page.evaluate(FRAMES_JS) if "click a cell" in f["title"])
        # Heatmap: x = yaw (3 columns: 0, 90, 180), y = hue (2 rows: 0 below, 120 above).
        page.mouse.click(frame["left"] + frame["width"] * 5 / 6, frame["top"] + frame["height"] * 1 / 4)
        expect(page.get_by_text("yaw: 180", exact=True)).to_be_visible(timeout=30_000)
        expect(page.get_by_text("hue: 120", exact=True)).to_be_visible(timeout=30_000)


@pytest.mark.browser
def test_failure_finder_and_neuron_view(stores, page):
    with open_viewer(page, stores[0]):
        _tab(page, "Neurons")
        expect(page.locator(".pt-neurons").first).to_be_visible(timeout=30_000)
        # Neurons 0 and 2 of Lite0 have feature visualisations beside their maps; Lite1's have none.
        left = page.locator(".pt-neurons").first
        expect(left.locator("img.pt-fv")).to_have_count(2, timeout=30_000)
        expect(page.locator(".pt-neurons").nth(1).locator("img.pt-fv")).to_have_count(0)
        expect(page.locator(".pt-gallery figure")).to_have_count(2, timeout=60_000)
        assert "→" in page.inner_text(".pt-gallery")  # the objective, start → end
        # A data-driven group: the neurons most active for the dog (computed from the store).
        groups = page.locator("select").filter(has=page.locator("option", has_text="most active for dog"))
        from perturber.pipeline.analysis import Cube

        order = Cube(store.open_cube(str(stores[0]), "views")).neuron_groups("act_efficientnet_lite0_head")["most active for dog"]
        groups.select_option("most active for dog")
        expect(left.locator("figcaption")).to_have_text([f"#{n}" for n in order], timeout=30_000)
        assert order != sorted(order)  # not the stored order: the selection did change the view
        _tab(page, "Explore")
        expect(page.locator(".pt-sensitivity")).to_be_visible(timeout=60_000)
        failure = page.locator(".pt-failure button").first
        label = failure.inner_text()  # e.g. "yaw=180 → rotisserie (0.08)"
        change = label.split(" → ")[0].split(", ")[0]
        failure.click()
        axis, value = change.split("=")
        expect(page.get_by_text(f"{axis}: {value}", exact=True)).to_be_visible(timeout=30_000)


@pytest.mark.browser
def test_missing_chunks_show_not_computed(stores, page):
    with open_viewer(page, stores[1]):  # dog, yaw 0: computed
        expect(page.get_by_text("1 of 6 chunks computed")).to_be_visible()
        _step_slider(page)
        page.wait_for_selector(".pt-missing", timeout=30_000)
        assert "not computed" in _top5(page, "model_a")


@pytest.mark.browser
def test_foreign_store_gets_a_message(tmp_path, page):
    import numpy as np
    import xarray as xr

    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(foreign, group="views", zarr_format=3, consolidated=False)
    proc, url = serve_viewer(foreign)
    try:
        page.goto(url)
        page.wait_for_selector("text=Cannot show this store", timeout=60_000)
    finally:
        proc.kill()


STATUS_SAYS_JS = """
(text) => {
  const find = (root) => {
    const hit = root.querySelector('.pt-live-status');
    if (hit) return hit;
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) { const f = find(el.shadowRoot); if (f) return f; }
    }
    return null;
  };
  const status = find(document);
  return status !== null && status.textContent.includes(text);
}
"""


@pytest.fixture
def busy_engine():
    """A real Dask scheduler for ``--engine ADDRESS`` (one worker, one thread),
    and a function that occupies its worker for ``seconds``: a request sent
    meanwhile is certainly still pending when the next one arrives."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield cluster.scheduler_address, lambda seconds: client.submit(time.sleep, seconds, pure=False)


@pytest.mark.browser
def test_live_compute_off_the_grid(stores, page, busy_engine):
    address, occupy = busy_engine
    with open_viewer(page, stores[0], "--engine", address):
        grid_image = page.get_attribute("img.pt-input", "src")
        page.locator(".pt-live-toggle input[type=checkbox]").check()
        expect(page.locator(".pt-live")).to_contain_text("yaw = 0", timeout=60_000)
        expect(page.locator(".pt-live-status")).to_contain_text("computed in", timeout=60_000)
        # yaw between its grid values 0 and 90
        page.locator(".pt-live-slider .noUi-handle").focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        expect(page.locator(".pt-live")).to_contain_text("yaw = 1.08", timeout=60_000)
        expect(page.locator(".pt-live-status")).to_contain_text("yaw = 1.08, computed in", timeout=60_000)
        # a second step while the first is still pending (the worker is busy): the first is stale, and is cancelled
        busy = occupy(5)
        page.keyboard.press("ArrowRight")
        page.wait_for_function(STATUS_SAYS_JS, arg="computing yaw = 1.44", polling="raf", timeout=30_000)
        page.keyboard.press("ArrowRight")
        expect(page.locator(".pt-live-status")).to_contain_text("yaw = 1.8, computed in", timeout=60_000)
        assert busy.done()  # the answer came after the worker was free again
        expect(page.locator(".pt-live-status")).to_contain_text("1 stale request cancelled")
        expect(page.locator(".pt-live")).to_contain_text("yaw = 1.8")
        expect(page.locator("img.pt-input")).not_to_have_attribute("src", grid_image, timeout=30_000)
        assert "LIVE" in page.inner_text(".pt-live")
        assert "efficientnet_lite0" in _top5(page, "model_a") and "not computed" not in _top5(page, "model_a")


@pytest.mark.browser
def test_without_an_engine_live_compute_says_why(stores, page):
    with open_viewer(page, stores[0]):
        expect(page.locator(".pt-live-off")).to_contain_text("Live compute is off", timeout=30_000)  # built after the first paint


@pytest.mark.browser
def test_pgd_in_the_viewer_fools_the_attacked_model_and_alpha_fades_it(stores, page):
    with open_viewer(page, stores[0], "--engine", "local"):
        _tab(page, "Attack")
        page.locator(".pt-pgd-run button").click()  # 10 steps of eps/8 at eps = 8/255, L-infinity, on Lite0
        expect(page.locator(".pt-attack-status")).to_contain_text("10 step(s) on the engine", timeout=120_000)
        row = page.locator(".pt-transfer-efficientnet_lite0 td")
        before, after = row.nth(1).inner_text(), row.nth(2).inner_text()
        assert before.split(" (")[0] != after.split(" (")[0], (before, after)  # top-1 changed at alpha = 1
        assert "|δ| = 0.03137" in page.inner_text(".pt-attack-status")
        attacked = page.get_attribute("img.pt-attacked", "src")
        handle = page.locator(".pt-alpha .noUi-handle")
        handle.focus()
        for _ in range(10):
            page.keyboard.press("ArrowLeft")
        expect(page.locator(".pt-transfer")).to_contain_text("α = 0", timeout=30_000)
        expect(row.nth(2)).to_have_text(before, timeout=30_000)  # faded out: the original prediction again
        assert page.get_attribute("img.pt-attacked", "src") != attacked
        page.locator(".pt-delta-only input[type=checkbox]").check()
        expect(page.locator(".pt-attack figcaption")).to_contain_text("δ alone", timeout=30_000)
        page.locator(".pt-saliency-toggle input[type=checkbox]").check()  # one map per compared model
        expect(page.locator("img.pt-saliency")).to_have_count(2, timeout=60_000)


# ------------------------------------------------------------------ who may reach it (no browser)

def _foreign_store(tmp_path: Path) -> Path:
    """A Zarr store that is no cube: the server starts at once and serves a one-line message."""
    import numpy as np
    import xarray as xr

    path = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(path, group="views", zarr_format=3, consolidated=False)
    return path


def _upgrade(url: str, origin: str, cookie: str = "") -> str:
    """The status line the server answers a websocket upgrade of its ``/ws`` with."""
    host, port = url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: bokeh, token\r\nOrigin: {origin}\r\n"
                   + (f"Cookie: {cookie}\r\n" if cookie else "") + "\r\n").encode())
        return s.recv(4096).decode(errors="replace").splitlines()[0]


TOKEN = "a-token-for-the-tests-0123456789"


def test_an_exposed_viewer_needs_its_token_and_its_own_origin(tmp_path):
    log = tmp_path / "server.log"
    proc, url = serve_viewer(_foreign_store(tmp_path), address="127.0.0.2", env={"PERTURBER_TOKEN": TOKEN}, log=log)
    try:
        origin = url.rstrip("/")
        assert requests.get(url, timeout=60).status_code == 403
        assert requests.get(url + "?token=not-the-token", timeout=60).status_code == 403
        assert " 101 " not in _upgrade(url, origin)  # the websocket needs the token too
        page = requests.get(url + "?token=" + TOKEN, timeout=60)
        assert page.status_code == 200 and "<title>Perturber</title>" in page.text
        cookie = "; ".join(f"{k}={v}" for k, v in page.cookies.items())
        assert " 101 " in _upgrade(url, origin, cookie)
        assert " 403 " in _upgrade(url, "http://evil.example.com", cookie)
        printed = log.read_text()
        assert f"exposed on 127.0.0.2:{origin.rsplit(':', 1)[1]}: token required, open {url}?token={TOKEN}" in printed
        assert f"websocket origins limited to {origin.split('//')[1]}" in printed
    finally:
        proc.kill()


def test_a_local_viewer_refuses_other_origins_and_imports_no_module_a_url_names(tmp_path):
    log = tmp_path / "server.log"
    proc, url = serve_viewer(_foreign_store(tmp_path), log=log)
    try:
        origin = url.rstrip("/")
        assert requests.get(url, timeout=60).status_code == 200  # local: no token
        assert " 403 " in _upgrade(url, "http://evil.example.com")
        assert " 101 " in _upgrade(url, origin)
        assert " 101 " in _upgrade(url, origin.replace("127.0.0.1", "localhost"))
        # Panel's /components/<module>/... route would import `this` (which prints the Zen of Python).
        assert requests.get(url + "components/this/x/_css/y.css", timeout=60).status_code == 404
        assert requests.get(url + "components/panel.nonexistent/x/_css/y.css", timeout=60).status_code == 404
        time.sleep(0.5)
        assert "Beautiful is better than ugly" not in log.read_text()
        assert "local only (no token needed): websocket origins limited to" in log.read_text()
    finally:
        proc.kill()


@pytest.mark.parametrize("address, env, message", [
    ("127.0.0.2", {"PERTURBER_TOKEN": "short"}, "PERTURBER_TOKEN: 5 characters; use at least 16 printable ones without "
                                                 "spaces (or unset it for a random token per start)"),
    ("::1", {}, "--address ::1: the viewer serves IPv4 addresses and host names only"),
])
def test_what_the_viewer_cannot_serve_is_refused_in_one_line(tmp_path, address, env, message):
    done = subprocess.run([sys.executable, "-m", "perturber", "view", str(_foreign_store(tmp_path)), "--address", address,
                           "--allow-remote", "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == f"perturber: error: {message}"


# ------------------------------------------------------------------ damaged chunks, long calls

def _damaged_copy(full: Path, tmp_path: Path) -> Path:
    """A copy of the store whose first point (dog, yaw 0) has its image chunk truncated
    and its top_class chunk deleted (the chunk stays marked done)."""
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(full, copy)
    image = copy / "views" / "image" / "c" / "0" / "0" / "0" / "0" / "0" / "0"
    image.write_bytes(image.read_bytes()[:40])
    (copy / "views" / "top_class" / "c" / "0" / "0" / "0" / "0" / "0").unlink()
    return copy


@pytest.mark.browser
def test_a_damaged_chunk_at_the_first_point_is_one_line_not_a_traceback(stores, page, tmp_path):
    damaged = _damaged_copy(stores[0], tmp_path)
    proc, url = serve_viewer(damaged)
    try:
        page.goto(url)
        notice = page.locator(".pt-notice")
        expect(notice).to_contain_text("damaged chunk at object=dog, yaw=0, hue=0", timeout=60_000)
        expect(notice).to_contain_text(f"perturber verify {damaged} --repair`, then `perturber precompute`")
        expect(page.locator(".pt-missing-input")).to_have_text("damaged chunk")
        expect(page.locator(".pt-model_a")).to_contain_text("damaged chunk")
        text = page.inner_text("body")
        assert "Traceback" not in text and ".py" not in text
        # Elsewhere the store reads as before.
        _step_slider(page)
        page.wait_for_selector("img.pt-input", timeout=30_000)
        expect(notice).to_have_count(0)
        assert not page.errors, page.errors
    finally:
        proc.kill()


@pytest.mark.browser
def test_a_long_pgd_run_does_not_hold_up_other_sessions(stores, page):
    """500 PGD steps in the viewer's process (seconds); meanwhile another
    client's page load is served, and the attacked session keeps running."""
    with open_viewer(page, stores[0]):
        _tab(page, "Attack")
        steps = page.locator(".pt-pgd-n input")
        steps.fill("500")
        steps.press("Enter")
        page.wait_for_timeout(300)
        page.locator(".pt-pgd-run button").click()
        status = page.locator(".pt-attack-status")
        expect(status).to_contain_text("running 500 step(s)", timeout=30_000)
        other = requests.get(page.url, timeout=120)
        assert other.status_code == 200 and "bokeh" in other.text
        assert "running 500 step(s)" in status.inner_text()  # the other page came while the attack still ran
        page.get_by_role("button", name="reset δ").click()  # stops the run at its next step
        expect(status).to_contain_text("No perturbation yet", timeout=30_000)
