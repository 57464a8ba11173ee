"""On an NVIDIA machine: EGL renders on the GPU, with the same behaviour.

Deselected in CI (``-m "not gpu"``); run with ``pytest -m gpu`` where a GPU is.
"""

import numpy as np
import pytest

from conftest import mask

pytestmark = pytest.mark.gpu


def test_egl_uses_the_nvidia_driver(renderer, render):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    render(size=32)  # creates the context
    from OpenGL import GL

    assert "NVIDIA" in GL.glGetString(GL.GL_VENDOR).decode()


def test_gpu_renders_are_deterministic(render):
    a = render(yaw=30, size=128)
    render(object="cat", size=128)
    b = render(yaw=30, size=128)
    assert np.array_equal(a.rgba, b.rgba) and mask(a).sum() > 1000
