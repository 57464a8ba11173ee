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
