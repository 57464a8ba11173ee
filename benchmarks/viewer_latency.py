"""The viewer's latency from a control change to updated views, 10k to 1M samples.

    python benchmarks/viewer_latency.py [--write docs/benchmarks.md] [--sizes 10000 100000 1000000]

The stores have the real layout: the precompute's own template (two
pip-shipped models, three layers of 16 neurons, 224 px images, default
chunking: one chunk per scene, the 25 hues of a render together). A million
samples cannot be computed here (hours), so :func:`make_store` computes a
few real chunks with the precompute's ``compute_chunk`` and hard-links their
Zarr chunk files into every other chunk position: every chunk then holds real
data of the same shape, dtype and compression as a computed store, at the
disk cost of a few chunks. (Hard links share the page cache, so reads come
from memory: the figures are decode and view time, not disk latency.)

Measured in one run, per store size:

- server side: a random control (one axis of the cube) moved to a random grid
  value, timed from the parameter change until Panel has re-rendered the
  views into their Bokeh models, (a) for the views the issue names (model
  input, top-5 of two models, four activation maps) and (b) for the whole app
  (landscape curves and heatmap, failure finder, datashader scatter too);
- session start: building the app for a new browser session;
- in the browser (Chromium, the largest store): slider-to-screen latency, from
  an arrow-key press on the yaw slider until the model input image changes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402

from perturber.pipeline import run, spec, store  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OBJECTS = ["dog", "cat", "sports_car", "fire_truck", "bulldog", "siamese_cat", "truck", "teddy_bear"]
#: samples → (objects, yaws, pitches, distances); 25 hues each.
SHAPES = {
    10_000: (4, 10, 5, 2),
    100_000: (8, 25, 10, 2),
    1_000_000: (8, 50, 10, 10),
}
VARIANTS = 12  # distinct real chunks computed per store


def cube_spec(samples: int) -> spec.CubeSpec:
    n_obj, n_yaw, n_pitch, n_dist = SHAPES[samples]
    raw = {
        "name": "bench",
        "cubes": {
            "views": {
                "axes": {
                    "object": OBJECTS[:n_obj],
                    "yaw": {"linspace": [-180, 180 - 360 / n_yaw, n_yaw]},
                    "pitch": {"linspace": [-10, 40, n_pitch]},
                    "distance": {"linspace": [1.8, 3.0, n_dist]},
                    "hue": {"linspace": [-180, 165.6, 25]},
                },
                "models": ["efficientnet_lite0", "efficientnet_lite2"],
                "layers": ["stage4", "stage6", "head"],
                "neurons": {"stage4": 16, "stage6": 16, "head": 16},
                "images": True,
            }
        },
    }
    return spec.parse_spec(raw, force=True).cubes[0]


def make_store(path: str, samples: int, variants: int = VARIANTS, seed: int = 0) -> spec.CubeSpec:
    """A store of ``samples`` samples with the real layout (see the module docstring)."""
    import zarr

    cube = cube_spec(samples)
    store.create_or_check(cube, path, overwrite=True)
    grid = cube.chunk_grid
    rng = random.Random(seed)
    every = list(np.ndindex(*grid))
    sources = rng.sample(every, variants)
    for index in sources:
        run.compute_chunk(cube, index, path)
    group = zarr.open_group(path, path=cube.name, mode="r")
    arrays = [name for name, arr in group.arrays() if name == "done" or arr.shape[:len(grid)] == cube.shape]
    for name in arrays:
        arr = group[name]
        extra = (0,) * (arr.ndim - len(grid))
        encode = arr.metadata.chunk_key_encoding.encode_chunk_key
        base = Path(path) / cube.name / name
        files = [base / encode(tuple(s) + extra) for s in sources]
        for k, index in enumerate(every):
            target = base / encode(tuple(index) + extra)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(files[k % variants], target)
    return cube


# --------------------------------------------------------------- server side

def _views(state, which: str):
    """The Panel objects to time: 'core' (what the issue names) or 'full' (the app)."""
    import panel as pn

    from perturber.viewer import app
    from perturber.viewer.panels.model_input import InputPanel
    from perturber.viewer.panels.neurons import NeuronPanel
    from perturber.viewer.panels.top5 import Top5Panel

    if which == "full":
        return app.build_app(state.path, state.cube, state=state)
    neurons = NeuronPanel(state, per_model=2)
    neurons.layer.value, neurons.group.value = "head", "stored 0-7"
    return pn.Column(InputPanel(state), Top5Panel(state, "model_a"), Top5Panel(state, "model_b"), neurons)


def _html_of(root) -> str:
    """Every HTML text in the Bokeh model tree (to check that the views changed)."""
    return "".join(str(getattr(m, "text", "")) for m in root.references() if type(m).__name__ == "HTML")


def time_changes(path: str, which: str, changes: int, seed: int = 1) -> tuple[list[float], float]:
    """(seconds per control change, session start seconds) for ``which`` views."""
    from bokeh.document import Document

    from perturber.viewer.state import CubeState

    start = time.perf_counter()
    state = CubeState(path, "views")
    root = _views(state, which).get_root(Document())
    session = time.perf_counter() - start
    rng = random.Random(seed)
    times, same = [], 0
    for _ in range(changes + 3):
        axis = rng.choice(state.axes)
        values = [v for v in state.param[axis].objects if v != getattr(state, axis)]
        before = _html_of(root)
        t0 = time.perf_counter()
        setattr(state, axis, rng.choice(values))
        times.append(time.perf_counter() - t0)
        same += _html_of(root) == before  # two chunks linked to the same real chunk look alike (1 in VARIANTS)
    if same > changes / 4:
        raise RuntimeError(f"{same} of {changes + 3} control changes did not change the views: the timing would be meaningless")
    return times[3:], session  # the first changes warm caches and imports


def _pct(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1000, q))


# ------------------------------------------------------------------- browser

SLIDER_JS = """
async () => {
  const find = (root) => {
    const hit = root.querySelector('img.pt-input');
    if (hit) return hit;
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) { const f = find(el.shadowRoot); if (f) return f; }
    }
    return null;
  };
  const img = find(document);
  const host = img.getRootNode();
  const before = img.src;
  window.__changed = new Promise((resolve) => {
    const obs = new MutationObserver(() => {
      const now = find(document);
      if (now && now.src !== before) { obs.disconnect(); resolve(performance.now()); }
    });
    obs.observe(host, {subtree: true, childList: true, attributes: true});
    setTimeout(() => { obs.disconnect(); resolve(null); }, 10000);
  });
  return performance.now();
}
"""


def browser_latency(path: str, presses: int, pause: float = 0.0) -> list[float] | None:
    """Seconds from an arrow key on the yaw slider to the new image on screen;
    ``pause`` seconds between presses (0: the next press as soon as the image
    is there, while the slower views of the last one may still be computing)."""
    chromium = "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not os.path.exists(chromium):
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "perturber", "view", path, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                       "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            for _ in range(120):
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    time.sleep(0.5)
            page.wait_for_selector("img.pt-input", timeout=120_000)
            handle = page.locator(".noUi-handle").nth(0)  # yaw, the first Camera control
            times = []
            for i in range(presses + 2):
                handle.focus()
                t0 = page.evaluate(SLIDER_JS)
                page.keyboard.press("ArrowRight" if (i // 4) % 2 == 0 else "ArrowLeft")  # stays inside any grid of 5+
                t1 = page.evaluate("window.__changed")
                if t1 is None:
                    raise RuntimeError("the image did not change within 10 s of a slider step")
                times.append((t1 - t0) / 1000)
                time.sleep(pause)
            browser.close()
        return times[2:]
    finally:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SHAPES))
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--presses", type=int, default=30)
    parser.add_argument("--folder", help="where the stores go (default: a temporary folder, removed)")
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="perturber-viewer-bench-")
    rows, browser = [], (None, None)
    try:
        for samples in args.sizes:
            path = os.path.join(folder, f"bench-{samples}.zarr")
            t = time.perf_counter()
            if not os.path.exists(os.path.join(path, "views", "zarr.json")):
                make_store(path, samples)
            print(f"store of {samples} samples ready ({time.perf_counter() - t:.0f} s)", flush=True)
            full, session = time_changes(path, "full", args.changes // 2)  # the process's first session
            _, later = time_changes(path, "full", 1)
            core, _ = time_changes(path, "core", args.changes)
            rows.append((samples, core, full, session, later))
            print(f"  core p50 {_pct(core, 50):.1f} ms p95 {_pct(core, 95):.1f} ms; full p50 {_pct(full, 50):.1f} "
                  f"p95 {_pct(full, 95):.1f} ms; session start {session * 1000:.0f} ms", flush=True)
        largest = os.path.join(folder, f"bench-{max(args.sizes)}.zarr")
        browser = browser_latency(largest, args.presses, pause=2.0), browser_latency(largest, args.presses)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    lines = [
        "## Viewer latency",
        "",
        f"{date.today()}, {report.cpu()}, `python benchmarks/viewer_latency.py` (stores with the real layout: "
        "Lite0 + Lite2, 3 layers × 16 neurons, 224 px images, a chunk per scene holding its 25 hues; real chunks "
        "hard-linked across the grid, so reads hit the page cache). Milliseconds from a control change (a random "
        "axis to a random grid value) until Panel has re-rendered the views.",
        "",
        "| samples | core views p50 | core p95 | whole app p50 | whole app p95 | first session | next session |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for samples, core, full, session, later in rows:
        lines.append(f"| {samples:,} | {_pct(core, 50):.1f} | {_pct(core, 95):.1f} | {_pct(full, 50):.1f} | "
                     f"{_pct(full, 95):.1f} | {session * 1000:.0f} | {later * 1000:.0f} |")
    lines += ["", "Core views: the model input, the top-5 of two models and four activation maps (the issue's set; "
              "goal p95 < 50 ms). Whole app: also the landscape curves and heatmap, the failure finder and the "
              "datashader scatter over every sample. First session: the process's first, which reads the whole-cube "
              "summaries (done marks, top-1, expected-class probability: one small file per chunk each); later "
              "sessions reuse them."]
    if browser and browser[0]:
        single, rapid = browser
        lines += ["", f"In Chromium on the {max(args.sizes):,}-sample store, slider to screen (an arrow key on the yaw "
                  f"slider until the new model input is in the page, whole app served by `perturber view`): "
                  f"p50 {_pct(single, 50):.0f} ms, p95 {_pct(single, 95):.0f} ms for steps 2 s apart; "
                  f"p50 {_pct(rapid, 50):.0f} ms, p95 {_pct(rapid, 95):.0f} ms for steps back to back, where a step "
                  f"waits for the slower views of the last one ({len(single)} steps each). The quick views are sent "
                  "first; the landscape, failure finder and scatter marker follow."]
    else:
        lines += ["", "Browser latency not measured (Playwright or /usr/bin/chromium missing)."]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
