"""The static site of the demo cube's default slice: its size and its load time in Chromium.

    python benchmarks/export_site.py [--write docs/benchmarks.md] [--store data/generated/demo.zarr] [--loads 5]

Without a demo store at ``--store`` it is built first with ``perturber
precompute workflows/demo.yaml`` (about a minute on 2 cores). Measured in
one run:

- the export (``perturber.viewer.export.export``, the default slice: the
  numeric axes as sliders, the other axes at their canonical value): its
  time, files and bytes, by kind (model inputs, activation strips, JSON
  data, the page);
- loads in Chromium from a local static file server (Python's
  ``http.server``), each in a fresh browser context (an empty cache): from
  the first paint (and from the navigation's start) until the model input
  has loaded and both models' top-5 are on screen (the page's ``on-screen``
  mark, the animation frame after the one that drew them);
- slider to screen: a step of the first slider until the new point's image
  and top-5 are on screen (the same mark).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import report

from perturber.viewer import export, export_files

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"

# (first paint, on screen) in ms since the navigation started, once the page has drawn its first point
# (its "on-screen" mark: the animation frame after the one that drew the image and the top-5).
LOAD_JS = """
() => new Promise((resolve) => {
  const done = () => {
    const paint = performance.getEntriesByType("paint").find((e) => e.name === "first-paint");
    const shown = performance.getEntriesByName("on-screen")[0];
    if (paint && shown) resolve([paint.startTime, shown.startTime]); else setTimeout(done, 10);
  };
  done();
})
"""

# ms from a step of the first slider until the new point is on screen (image loaded, top-5 drawn, a frame later).
STEP_JS = """
(step) => new Promise((resolve) => {
  const input = document.querySelector("#controls input[type=range]");
  const next = Number(input.value) + step;
  const t0 = performance.now();
  const obs = new MutationObserver(() => {
    if (!document.body.dataset.shown) return;
    obs.disconnect();
    requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now() - t0)));  // drawn
  });
  obs.observe(document.body, {attributes: true, attributeFilter: ["data-shown"]});
  input.value = String(next);
  input.dispatchEvent(new Event("input"));
})
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_):
        pass


@contextlib.contextmanager
def serve(folder: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


def by_kind(folder: Path) -> dict[str, tuple[int, int]]:
    """kind → (files, bytes)."""
    kinds = {"model inputs (img/)": "img", "activation strips (act/)": "act", "JSON data (data/)": "data"}
    out = {}
    for label, sub in kinds.items():
        files = [p for p in (folder / sub).rglob("*") if p.is_file()]
        out[label] = (len(files), sum(p.stat().st_size for p in files))
    page = [folder / n for n in export_files.PAGE_FILES]
    out["the page (HTML, JS, CSS)"] = (len(page), sum(p.stat().st_size for p in page))
    return out


def browse(url: str, loads: int, steps: int) -> tuple[list[float], list[float], list[float]]:
    """(first paint → shown, navigation → shown, slider step → shown), ms each."""
    from playwright.sync_api import sync_playwright

    from_paint, from_start, step = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                   "--disable-background-networking"])
        for i in range(loads + 1):  # the first load warms Chromium up, and is not counted
            context = browser.new_context(viewport={"width": 1300, "height": 900})
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-shown]", timeout=60_000)
            paint, shown = page.evaluate(LOAD_JS)
            if i:
                from_paint.append(shown - paint)
                from_start.append(shown)
            if i == loads:
                n = int(page.get_attribute("#controls input[type=range]", "max")) + 1
                at = int(page.get_attribute("#controls input[type=range]", "value"))
                direction = 1
                for _ in range(steps):  # back and forth along the slider
                    if not 0 <= at + direction < n:
                        direction = -direction
                    step.append(page.evaluate(STEP_JS, direction))
                    at += direction
            context.close()
        browser.close()
    return from_paint, from_start, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--store", default=str(ROOT / "data" / "generated" / "demo.zarr"))
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    built = ""
    if not Path(args.store).exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "perturber", "precompute", str(ROOT / "workflows" / "demo.yaml"),
                        "--out", args.store, "--quiet"], check=True, cwd=ROOT)
        built = f" (built for this run by `perturber precompute workflows/demo.yaml` in {time.perf_counter() - start:.0f} s)"
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        sl = export.plan(args.store)
        start = time.perf_counter()
        done = export.export(args.store, site, progress=False)
        seconds = time.perf_counter() - start
        kinds = by_kind(site)
        browsed = None
        if os.path.exists(CHROMIUM):
            with serve(site) as url:
                browsed = browse(url, args.loads, args.steps)
    shape = " x ".join(f"{a}[{n}]" for a, n in zip(sl.axes, sl.shape))
    held = ", ".join(f"{a}={sl.values[a][i]} ({sl.why[a]})" for a, i in sl.held.items())
    lines = ["## Static site export", "",
             f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/export_site.py`: `perturber export` of the "
             f"demo cube's default slice, the demo store (workflows/demo.yaml){built}, "
             f"cube {sl.cube}, sliders {shape} = {sl.points} points, held {held}; models {', '.join(sl.models)}, "
             f"layer {sl.layer} ({len(sl.neurons)} neurons). Machine: {report.cpu()}, "
             f"load average {load:.1f} at the start (other work was running), Chromium {CHROMIUM}, "
             "a local static server (Python's http.server) on 127.0.0.1.", "",
             f"Export: {seconds:.1f} s for {done.points} points ({done.computed} computed); "
             f"the site holds {done.files} files, {export_files.human(done.bytes)} ({done.bytes:,} bytes):", "",
             "| what | files | bytes |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {f} | {b:,} |" for k, (f, b) in kinds.items()]
    if browsed is None:
        lines += ["", "Load time not measured (no Chromium at /usr/bin/chromium)."]
    else:
        from_paint, from_start, step = browsed
        lines += ["", f"Load in Chromium, a fresh context (empty cache) each, p50 over {len(from_paint)} loads (after one "
                      f"uncounted): first paint to the model input and both top-5 on screen "
                      f"**{statistics.median(from_paint):.0f} ms** (range {min(from_paint):.0f}-{max(from_paint):.0f}); "
                      f"from the navigation's start {statistics.median(from_start):.0f} ms. "
                      f"Slider to screen (a step of the first slider until the new image and top-5 are on screen), "
                      f"p50 over {len(step)} steps: {statistics.median(step):.0f} ms (max {max(step):.0f})."]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
