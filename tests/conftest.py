"""Shared fixtures: the real renderer, on real catalogue meshes."""

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np
import pytest

from perturber.pipeline import factors
from perturber.pipeline.scene import default_renderer


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
