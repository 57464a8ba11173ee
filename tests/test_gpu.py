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


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


def test_render_threads_on_the_gpu_leave_the_results_unchanged():
    torch = _cuda()
    from perturber.pipeline import engine

    points = [{"object": o, "yaw": y, "hue": h} for o in ("dog", "cat") for y in (0, 90, 180) for h in (0, 90)]
    kwargs = dict(device="cuda", batch_size=4, group=4, layers=["stage4"])
    serial = engine.evaluate(points, ["efficientnet_lite0"], render_threads=0, **kwargs)
    ahead = engine.evaluate(points, ["efficientnet_lite0"], render_threads=2, **kwargs)
    assert np.array_equal(serial.images, ahead.images) and serial.renders == ahead.renders == 6
    assert torch.equal(serial.top_class["efficientnet_lite0"], ahead.top_class["efficientnet_lite0"])
    assert torch.allclose(serial.logits["efficientnet_lite0"], ahead.logits["efficientnet_lite0"], atol=1e-4)


def test_the_precision_check_on_the_gpu_matches_an_independent_comparison():
    torch = _cuda()
    from perturber.pipeline import devices, engine, inference, models

    images = engine.reference_images()
    check = devices.check("efficientnet_lite0", images, "cuda")
    s = models.spec("efficientnet_lite0")
    net = models.build_trained(s).eval().cuda()
    x = inference.preprocess(images.cuda(), s)
    with torch.no_grad():
        reference = net(x.contiguous()).topk(5, dim=1).indices.cpu()
        net = net.to(memory_format=torch.channels_last)
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            with torch.autocast("cuda", dtype=dtype):
                top5 = net(x.contiguous(memory_format=torch.channels_last)).float().topk(5, dim=1).indices.cpu()
            assert check.unchanged[name] == torch.equal(top5, reference), name
    assert check.chosen == max((p for p, ok in check.unchanged.items() if ok), key=inference.PRECISIONS.index, default="float32")
    settings = engine.device_settings(["efficientnet_lite0"], "cuda")
    assert settings.precision == {"efficientnet_lite0": check.chosen}
    assert settings.batch_sizes["efficientnet_lite0"] in inference.CANDIDATES["cuda"]
