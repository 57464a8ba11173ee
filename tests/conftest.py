"""Shared fixtures: the real renderer, on real catalogue meshes."""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# The user's own settings (their model registry, pinned digests, fine-tuned
# checkpoints) never leak into a test run: a fresh settings folder per session.
os.environ["PERTURBER_CONFIG"] = tempfile.mkdtemp(prefix="perturber-config-")

import numpy as np
import pytest

from perturber.pipeline import factors
from perturber.pipeline.scene import default_renderer


@pytest.fixture(scope="session")
def format1_store(tmp_path_factory) -> Path:
    """A store written before sharding (store format 1; tests/data/README.md),
    unpacked from tests/data/format1.zarr.zip into a temporary folder: a test
    may copy or read it, never change the repository's copy."""
    folder = tmp_path_factory.mktemp("format1")
    with zipfile.ZipFile(Path(__file__).parent / "data" / "format1.zarr.zip") as z:
        z.extractall(folder)
    return folder / "format1.zarr"


@pytest.fixture(scope="session")
def renderer():
    return default_renderer()


@pytest.fixture(scope="session")
def render(renderer):
    """render(size=96, **factor values) -> RenderResult, through the real EGL renderer."""

    def _render(size=96, **values):
        return renderer.render(factors.validate(values), size)

    return _render


def mask(result, threshold=127):
    """Object pixels of a render: (H, W) bool."""
    return result.rgba[..., 3] > threshold


def iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


def centroid(m):
    ys, xs = np.nonzero(m)
    return np.array([xs.mean(), ys.mean()])


#: Playwright: every Bokeh plot frame on the page with its title, page position (left, top, width, height)
#: and x range (x0, x1), for clicking a plot at a data coordinate.
FRAMES_JS = """
() => {
  const out = [], seen = new Set();
  function walk(v) {
    if (!v || seen.has(v)) return;
    seen.add(v);
    if (v.frame && v.model && v.model.title) {
      const r = (v.canvas_view ? v.canvas_view.el : v.el).getBoundingClientRect(), b = v.frame.bbox;
      out.push({title: v.model.title.text || "", left: r.left + b.left, top: r.top + b.top, width: b.width,
                height: b.height, x0: v.frame.x_range.start, x1: v.frame.x_range.end});
    }
    for (const k of v.child_views || []) walk(k);
  }
  for (const v of Object.values(Bokeh.index)) walk(v);
  return out;
}
"""


def refuse(argv, capsys, within: float = 5.0) -> str:
    """Run the command line in this process; it must exit 2 with one line on
    stderr within ``within`` seconds (before any render, model load or batch
    tuning). Returns the message."""
    from perturber.pipeline import cli

    start = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("perturber: error: ") and "\n" not in err, (code, err)
    assert seconds < within, seconds
    return err.removeprefix("perturber: error: ")


# ------------------------------------------------------------------ the served viewer, in a real browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_viewer(path, *extra: str, address: str = "127.0.0.1", env: dict | None = None, log: Path | None = None):
    """Start ``perturber view`` (its output to ``log``); (process, page URL) once it listens."""
    port = free_port()
    out = open(log, "w") if log else subprocess.DEVNULL
    args = ["--address", address, "--allow-remote"] if address != "127.0.0.1" else []
    proc = subprocess.Popen([sys.executable, "-m", "perturber", "view", str(path), "--port", str(port), *args, *extra], cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return proc, f"http://{address}:{port}/"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the viewer did not start" + (f": {log.read_text()}" if log else ""))


@contextlib.contextmanager
def open_viewer(page, path, *extra: str, ready: str = "img.pt-input"):
    """Serve ``path`` (extra ``perturber view`` options), open it, wait for
    ``ready``; afterwards, no JavaScript error may have happened."""
    proc, url = serve_viewer(path, *extra)
    try:
        page.goto(url)
        page.wait_for_selector(ready, timeout=60_000)
        yield
        assert not page.errors, page.errors
    finally:
        proc.kill()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright, one for the whole session."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (the README's set-up installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                             "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page (1300 x 900); ``page.errors`` collects JavaScript errors and console errors."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    yield pg
    context.close()


@pytest.fixture
def user_registry(tmp_path, monkeypatch):
    """write(entries, defaults=True) -> path: a fresh YAML model registry (its own
    cache key) named by PERTURBER_MODELS, each entry given ImageNet's 224 px,
    mean and std unless ``defaults`` is False; downloads go to tmp_path/cache."""
    import itertools

    import yaml

    monkeypatch.setenv("PERTURBER_CACHE", str(tmp_path / "cache"))
    counter = itertools.count()
    imagenet = {"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

    def write(entries: dict, defaults: bool = True):
        path = tmp_path / f"models_{next(counter)}.yaml"
        path.write_text(yaml.safe_dump({name: ({**imagenet, **e} if defaults else e) for name, e in entries.items()}))
        monkeypatch.setenv("PERTURBER_MODELS", str(path))
        return path

    return write
