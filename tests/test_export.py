"""``perturber export``: a static site of a cube slice, checked against the store
and browsed in a real Chromium from a plain static file server."""

import argparse
import contextlib
import functools
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from perturber.pipeline import cli, export_cli, names, run, spec, store
from perturber.pipeline.errors import PerturberError
from perturber.viewer import export, export_files

pytestmark = pytest.mark.slow  # a real precompute

SPEC = {
    "name": "export",
    "cubes": {
        "views": {
            "axes": {"object": ["dog", "cat"], "yaw": [0.0, 60.0, 180.0], "hue": [0, 120]},
            "models": ["efficientnet_lite0", "efficientnet_lite1"],
            "layers": ["head"],
            "neurons": {"head": 4},
            "images": True,
        }
    },
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(a whole store, the same cube with only its first task computed)."""
    folder = tmp_path_factory.mktemp("export")
    sweep = spec.parse_spec(SPEC)
    full = folder / "full.zarr"
    run.precompute(sweep, str(full), scheduler="synchronous", progress=False)
    partial = folder / "partial.zarr"
    store.create_or_check(sweep.cubes[0], str(partial))
    run.run_task(sweep.cubes[0], (0, 0, 0), str(partial))
    return full, partial


def _cli(argv):
    """Run ``perturber export`` through its own parser (as pipeline.cli would); its one-line error, or None."""
    parser = argparse.ArgumentParser(prog="perturber")
    export_cli.add_parser(parser.add_subparsers(dest="command"), [])
    args = parser.parse_args(["export", *map(str, argv)])
    try:
        args.run(args)
    except PerturberError as exc:
        assert "\n" not in str(exc)
        return str(exc)
    return None


def _stored(path, sel, model):
    """(image (S, S, 3) uint8, [(class name, probability)] top-5 of ``model``) at grid positions ``sel``."""
    ds = store.open_cube(str(path), "views", chunks=None)
    point = ds.isel(sel)
    m = [str(x) for x in ds[names.MODEL].values].index(model)
    class_names = [str(n) for n in ds[names.CLASS_NAME].values]
    top = [(class_names[int(c)], float(p)) for c, p in zip(point[names.TOP_CLASS].values[m], point[names.TOP_PROB].values[m])]
    return np.asarray(point[names.IMAGE].values), top


# ------------------------------------------------------------------ the selection (no browser)


def test_default_slice_holds_the_other_axes_at_their_canonical_value(stores):
    sl = export.plan(str(stores[0]))
    assert sl.axes == ["yaw", "hue"]  # the numeric axes
    assert sl.held == {"object": 0} and sl.why == {"object": "canonical"}  # the dog, the factor's default
    assert sl.models == ["efficientnet_lite0", "efficientnet_lite1"] and sl.layer == "head" and sl.neurons == [0, 1, 2, 3]
    assert export.canonical("yaw", [0.0, 60.0, 180.0]) == 1  # nearest the canonical view's yaw 45
    sl = export.plan(str(stores[0]), select="object=cat,hue=120", axes=["yaw"], models=["efficientnet_lite1"])
    assert sl.axes == ["yaw"] and sl.held == {"object": 1, "hue": 1} and sl.why["hue"] == "--select"
    assert sl.points == 3 and sl.models == ["efficientnet_lite1"]


def test_bad_selections_are_one_line_naming_the_choices(stores, tmp_path):
    out = tmp_path / "site"
    full = stores[0]
    assert _cli([full, "-o", out, "--select", "colour=red"]) == \
        "--select colour: not an axis of cube views (axes: object, yaw, hue)"
    assert _cli([full, "-o", out, "--select", "yaw=33"]) == \
        "--select yaw=33: not a value of yaw in this cube (values: 0, 60, 180)"
    assert "write axis=value pairs" in _cli([full, "-o", out, "--select", "object"])
    assert _cli([full, "-o", out, "--axes", "pitch"]) == "--axes pitch: not an axis of cube views (axes: object, yaw, hue)"
    assert "also held by --select yaw=0" in _cli([full, "-o", out, "--axes", "yaw", "--select", "yaw=0"])
    assert _cli([full, "-o", out, "--models", "resnet50"]) == \
        "--models resnet50: not a model of cube views (models: efficientnet_lite0, efficientnet_lite1)"
    assert _cli([full, "-o", out, "--layer", "stage4"]) == \
        "--layer stage4: no activations of efficientnet_lite0 or efficientnet_lite1 stored for it (layers: head)"
    assert _cli([full, "-o", out, "--cube", "other"]) == f"--cube other: no such cube in {full} (it has: views)"
    assert not out.exists()  # nothing written by a refused selection
    with pytest.raises(export.ExportError, match=r"object\[2\] x yaw\[3\] x hue\[2\] = 12 points writes up to 36 images "
                                                 r"\(about .* MB\), over the limit of 20 images"):
        export.export(str(full), out, axes=["object", "yaw", "hue"], max_images=20, progress=False)


def test_export_writes_the_stored_values_and_replaces_only_an_earlier_export(stores, tmp_path, capsys):
    out = tmp_path / "site"
    assert _cli([stores[0], "-o", out, "--quiet"]) is None
    said = capsys.readouterr().out
    files = [p for p in out.rglob("*") if p.is_file()]
    assert f"6 points (6 computed), {len(files)} files" in said and f"({sum(p.stat().st_size for p in files):,} bytes)" in said
    meta = json.loads((out / "data" / "slice.json").read_text())
    assert [a["name"] for a in meta["axes"]] == ["yaw", "hue"] and meta["start"] == [1, 0]
    assert meta["attributions"] == ["Dog by Emmanuel Puybaret / eTeks and Scopia Visual Interfaces Systems (scopia.es), CC BY 3.0"]
    image, top = _stored(stores[0], {"object": 0, "yaw": 2, "hue": 1}, "efficientnet_lite1")
    assert np.array_equal(np.asarray(Image.open(out / "img" / "2_1.png")), image)  # lossless: the stored pixels
    point = json.loads((out / "data" / "p" / "2_1.json").read_text())
    assert [(name, round(p, 4)) for _, name, p, _, _ in point["top5"]["efficientnet_lite1"]] == [(n, round(p, 4)) for n, p in top]
    assert Image.open(out / "act" / "2_1-0.webp").size == (4 * export.TILE, export.TILE)  # the 4 stored head neurons
    # The curves' top-1 probability at a point is the top-5's first.
    flat = 2 * 2 + 1
    assert meta["curves"]["efficientnet_lite1"]["top1"][flat] == pytest.approx(top[0][1], abs=1e-4)
    # Again over the earlier export: replaced (another slice), nothing left beside it.
    assert _cli([stores[0], "-o", out, "--quiet", "--axes", "yaw"]) is None
    assert len(list((out / "img").iterdir())) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    # Any other folder that is not empty: refused, unless --force.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert "not empty and not an earlier export" in _cli([stores[0], "-o", other, "--quiet"])
    assert (other / "keep.txt").exists()
    assert _cli([stores[0], "-o", other, "--quiet", "--force"]) is None
    assert export_files.is_export(other) and not (other / "keep.txt").exists()


# ------------------------------------------------------------------ in Chromium, from a static file server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_):
        pass


@contextlib.contextmanager
def _static(folder: Path):
    """A plain static file server on 127.0.0.1 over ``folder``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _shown_top5(page, i):
    rows = page.locator(f"#model-{i} table.top5 tr").all()[1:]
    return [(r.locator("td.name").inner_text().replace("✓", "").strip(), r.locator("td.score span").inner_text()) for r in rows]


# Every pixel of the shown <img> as the browser decoded it (same origin: a canvas may read it back).
PIXELS_JS = """
() => {
  const img = document.getElementById("image"), c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(img, 0, 0);
  return Array.from(g.getImageData(0, 0, c.width, c.height).data);
}
"""


@pytest.mark.browser
def test_site_in_chromium_moves_to_the_stored_values_without_leaving_its_folder(stores, tmp_path, page):
    site = tmp_path / "site"
    export.export(str(stores[0]), site, select="object=cat", progress=False)
    with _static(site) as base:
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(base + "index.html")
        page.wait_for_selector("body[data-shown='1_0']", timeout=30_000)  # yaw 60 (canonical), hue 0
        assert page.inner_text("#value-yaw") == "60 degrees"
        assert "object=cat (selected)" in page.inner_text("#held")
        assert "Cat by" in page.inner_text("footer")
        before = page.get_attribute("#image", "src")
        page.focus("#axis-yaw")
        page.keyboard.press("ArrowRight")  # yaw 60 → 180
        page.wait_for_selector("body[data-shown='2_0']", timeout=30_000)
        assert page.inner_text("#value-yaw") == "180 degrees" and page.get_attribute("#image", "src") != before
        image, _ = _stored(stores[0], {"object": 1, "yaw": 2, "hue": 0}, "efficientnet_lite0")
        pixels = np.array(page.evaluate(PIXELS_JS), dtype=np.uint8).reshape(*image.shape[:2], 4)
        assert np.array_equal(pixels[..., :3], image)
        for i, model in enumerate(["efficientnet_lite0", "efficientnet_lite1"]):
            _, top = _stored(stores[0], {"object": 1, "yaw": 2, "hue": 0}, model)
            assert _shown_top5(page, i) == [(n, f"{p:.3f}") for n, p in top]
        maps = page.locator("#maps figure.maps img")
        assert maps.count() == 2
        for i in range(2):  # decoded by Chromium: a tile per stored neuron
            maps.nth(i).evaluate("img => img.complete || new Promise(r => { img.onload = r; })")
            assert maps.nth(i).evaluate("img => img.naturalWidth") == 4 * export.TILE
        neurons = store.open_cube(str(stores[0]), "views", chunks=None)["neuron_efficientnet_lite1_head"].values
        assert page.locator("#maps figure.maps").nth(1).locator(".labels span").all_inner_texts() == [f"#{n}" for n in neurons]
        # The curves along yaw: one solid and one dashed line per model; a click moves the point.
        assert page.locator("#curve-plot path.curve").count() == 4
        box = page.locator("#curve-plot svg").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.08, box["y"] + box["height"] / 2)  # near yaw 0
        page.wait_for_selector("body[data-shown='0_0']", timeout=30_000)
        assert "yaw=0" in page.url  # the point is in the link
        assert not page.errors, page.errors
    assert requests
    for url in requests:  # every request went to the site's own server, for a file of its folder
        if url.startswith("data:"):
            continue  # the page's empty favicon, inline: no request leaves the page
        assert url.startswith(base), url
        assert (site / urlparse(url).path.lstrip("/")).is_file(), url


@pytest.mark.browser
def test_site_says_not_computed_where_the_store_has_nothing(stores, tmp_path, page):
    site = tmp_path / "site"
    export.export(str(stores[1]), site, progress=False)
    meta = json.loads((site / "data" / "slice.json").read_text())
    missing = next(k for k, s in enumerate(meta["status"]) if s != "ok")
    key = f"{missing // 2}_{missing % 2}"
    assert not (site / "img" / f"{key}.png").exists()
    with _static(site) as base:
        page.goto(base + f"index.html#yaw={[0, 60, 180][missing // 2]}&hue={[0, 120][missing % 2]}")
        page.wait_for_selector(f"body[data-shown='{key}']", timeout=30_000)
        assert page.inner_text("#image-missing") == "not computed"
        assert "not computed" in page.inner_text("#model-0")
        assert not page.errors, page.errors


@pytest.mark.browser
def test_a_store_without_images_or_activations_says_so(tmp_path, page):
    bare = {"name": "bare", "cubes": {"views": {"axes": {"yaw": [0.0, 90.0]}, "models": ["efficientnet_lite0"], "images": False}}}
    path = tmp_path / "bare.zarr"
    run.precompute(spec.parse_spec(bare), str(path), scheduler="synchronous", progress=False)
    site = tmp_path / "site"
    report = export.export(str(path), site, progress=False)
    assert (report.points, report.computed) == (2, 2)
    assert not (site / "img").exists() or not any((site / "img").iterdir())
    with _static(site) as base:
        page.goto(base + "index.html")
        page.wait_for_selector("body[data-shown='0']", timeout=30_000)  # yaw 0 and 90 are as near the canonical 45: the first
        assert page.inner_text("#image-missing") == "images not stored"
        assert page.inner_text("#maps") == "This store has no activations of efficientnet_lite0."
        assert page.locator("#model-0 table.top5 tr").count() == 6  # the one model's top-5
        assert page.locator("#model-1").count() == 0
        assert not page.errors, page.errors


def test_the_perturber_command_exports_and_reports_the_size(stores, tmp_path, capsys):
    """Through ``perturber``'s own parser (the registration in pipeline/cli.py):
    the site's files and bytes are reported; a bad selection is one line, exit 2."""
    out = tmp_path / "site"
    assert cli.main(["export", str(stores[0]), "-o", str(out), "--axes", "yaw", "--quiet"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    said = capsys.readouterr().out
    assert f"{len(files)} files" in said and (out / "index.html").is_file()
    assert cli.main(["export", str(stores[0]), "-o", str(tmp_path / "other"), "--select", "yaw=33"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "perturber: error: --select yaw=33: not a value of yaw in this cube (values: 0, 60, 180)"
