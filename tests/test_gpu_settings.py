"""The GPU half of the precompute, tested on the CPU: render threads working
ahead of the models (same results, same errors, no hang), the precision check
on real renders with the pip-shipped EfficientNet-Lite0, torch.compile behind
a flag, and the GPU's batch-size range.

Real renders, real models, real torch.compile (inductor, with the machine's C
compiler). GPU-only checks are in tests/test_gpu.py.
"""

import json
import threading

import numpy as np
import pytest
import torch

from perturber.pipeline import devices, engine, inference, models
from perturber.pipeline.assets import AssetError
from perturber.pipeline.models import ModelError

LITE0 = "efficientnet_lite0"
POINTS = [{"object": obj, "yaw": yaw, "hue": hue, "blur": 1.0 if hue else 0.0}
          for obj in ("dog", "cat") for yaw in (0, 90, 180) for hue in (0, 90)]  # 12 points, 6 scenes


def _same(a: engine.Evaluation, b: engine.Evaluation) -> None:
    """Two evaluations are equal bit for bit."""
    assert a.renders == b.renders
    assert np.array_equal(a.images, b.images) and np.array_equal(a.alpha, b.alpha)
    for name in a.logits:
        assert torch.equal(a.logits[name], b.logits[name])
        assert torch.equal(a.top_class[name], b.top_class[name]) and torch.equal(a.top_prob[name], b.top_prob[name])
        for layer in a.activations[name]:
            assert torch.equal(a.activations[name][layer], b.activations[name][layer])


def _render_threads_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("perturber-render")]


def test_group_size_is_a_multiple_of_every_batch_size():
    assert engine.group_size([4], "cuda") == 64
    assert engine.group_size([2, 8], "cuda") == 64
    assert engine.group_size([256, 128], "cuda") == 256
    assert engine.group_size([3, 5], "cuda") == 75  # 15 x 5
    assert engine.group_size([1000, 999], "cuda") == 1000  # lcm over 4096: the largest
    # a CPU's groups are small, so their images stay in its caches
    assert engine.group_size([4], "cpu") == 16
    assert engine.group_size([3, 5], "cpu") == 30
    assert engine.group_size([2, 32], "cpu") == 32


def test_the_gpu_batch_size_range_goes_to_256():
    assert inference.CANDIDATES["cuda"][-1] == 256 and inference.CANDIDATES["cpu"] == (1, 2, 4, 8, 16)


@pytest.mark.slow
def test_render_threads_leave_every_result_unchanged():
    # batch 2, groups of 4: three groups, so the threads render groups ahead of the models
    kwargs = dict(layers=["stage4"], neurons={"stage4": [0, 5, 7]}, device="cpu", batch_size=2, group=4)
    serial = engine.evaluate(POINTS, [LITE0], render_threads=0, **kwargs)
    assert serial.renders == 6 and serial.images.shape == (12, 224, 224, 3)
    for threads in (1, 2):
        _same(serial, engine.evaluate(POINTS, [LITE0], render_threads=threads, **kwargs))
    # the default group (64: every point in one) and batch are another computation, with the same predictions
    whole = engine.evaluate(POINTS, [LITE0], layers=["stage4"], neurons={"stage4": [0, 5, 7]}, device="cpu")
    assert np.array_equal(whole.images, serial.images)
    assert torch.equal(whole.top_class[LITE0][:, 0], serial.top_class[LITE0][:, 0])


@pytest.mark.slow
def test_evaluate_batches_equals_evaluate_per_batch_and_renders_a_shared_scene_once():
    first, second = POINTS[:5], POINTS[4:9]  # point 4 and 5 share a scene with the first batch
    kwargs = dict(device="cpu", batch_size=2, group=2, render_threads=1)
    together = list(engine.evaluate_batches([first, second], [LITE0], **kwargs))
    alone = [engine.evaluate(first, [LITE0], **kwargs), engine.evaluate(second, [LITE0], **kwargs)]
    assert [ev.renders for ev in alone] == [3, 3]
    assert [ev.renders for ev in together] == [3, 2]  # (dog, 180) was rendered for the first batch
    for a, b in zip(together, alone):
        b.renders = a.renders
        _same(a, b)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_broken_mesh_in_a_render_thread_is_the_same_one_line_error(tmp_path):
    broken = tmp_path / "broken.gltf"
    broken.write_text('{"asset": ')  # not JSON: the mesh loader refuses it when the scene is rendered
    points = POINTS[:6] + [{"object": str(broken)}] + POINTS[6:]  # the seventh scene, in the fourth group
    errors = []
    for threads in (0, 2):
        with pytest.raises(AssetError) as e:
            engine.evaluate(points, [LITE0], device="cpu", batch_size=2, group=2, render_threads=threads)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "\n" not in errors[0] and errors[0].startswith("broken.gltf")
    # an error on the model side, with renders under way: raised, and no render is left running
    with pytest.raises(ModelError, match="no layer 'nope'"):
        engine.evaluate(POINTS, [LITE0], layers=["nope"], device="cpu", batch_size=2, group=2, render_threads=2)
    # the render threads still work
    again = engine.evaluate(POINTS[:4], [LITE0], device="cpu", batch_size=2, group=2, render_threads=2)
    assert again.renders == 2
    assert len(_render_threads_alive()) <= 1 + 2  # the process's pools of 1 and 2 threads, kept, none added per call


def _independent_top5(images: torch.Tensor, autocast: torch.dtype | None) -> torch.Tensor:
    """Lite0's top-5 (N, 5) on the CPU, from a freshly built network (not the
    engine's cached one): float32 in NCHW, or the autocast dtype in channels_last."""
    s = models.spec(LITE0)
    net = models.build_trained(s).eval()
    x = inference.preprocess(images, s)
    with torch.no_grad():
        if autocast is None:
            return net(x.contiguous()).topk(5, dim=1).indices
        net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=autocast):
            return net(x.contiguous(memory_format=torch.channels_last)).float().topk(5, dim=1).indices


@pytest.mark.slow
def test_the_precision_check_on_real_renders():
    images = engine.reference_images()
    assert images.shape == (len(devices.REFERENCE_POINTS), 3, 224, 224)
    check = devices.check(LITE0, images, "cpu")
    reference = _independent_top5(images, None)
    assert torch.equal(check.reference, reference)
    expected = {"bf16": torch.equal(_independent_top5(images, torch.bfloat16), reference),
                "fp16": torch.equal(_independent_top5(images, torch.float16), reference)}
    assert {k: check.unchanged[k] for k in expected} == expected
    # What it decides for Lite0: bfloat16 reorders the top-5 of some reference
    # images (7 of 12 when written), float16 of none, so Lite0 gets fp16.
    assert check.unchanged == {"channels_last": True, "bf16": False, "fp16": True}
    assert check.chosen == "fp16"
    changed = (check.top5["bf16"] != reference).any(dim=1)
    assert 0 < int(changed.sum()) < len(images)


def test_on_the_cpu_no_check_runs_and_models_keep_channels_last():
    def no_renders():
        raise AssertionError("the CPU needs no reference renders")

    assert devices.choose(LITE0, "cpu", no_renders) == "channels_last"
    settings = devices.settings([LITE0], "cpu", no_renders)
    assert settings.precision == {LITE0: "channels_last"}
    assert settings.batch_sizes == {LITE0: inference.tuned_batch_size(LITE0, "cpu")}
    assert settings.device.startswith("cpu-")


def test_batch_sizes_are_tuned_at_the_threads_the_tasks_run_on(tmp_path, monkeypatch):
    # A Dask worker on a 2-core machine runs on one torch thread: its batch
    # sizes are measured on one thread, in interleaved rounds, whatever this
    # process runs on. A bare number in the cache was measured in one pass
    # (load could skew it: EfficientNet-Lite2 got 16, twice as slow as 2) and
    # is measured again.
    monkeypatch.setenv("PERTURBER_CACHE", str(tmp_path))
    key = f"{LITE0}|cpu-1threads|1,2"
    (tmp_path / "batch-sizes.json").write_text(json.dumps({key: 2}))
    before = torch.get_num_threads()
    best = inference.tuned_batch_size(LITE0, "cpu", candidates=(1, 2), threads=1)
    assert torch.get_num_threads() == before
    entry = json.loads((tmp_path / "batch-sizes.json").read_text())[key]
    assert entry["rounds"] == inference.TUNING_ROUNDS and set(entry["images_per_s"]) == {"1", "2"}
    assert entry["batch"] == best and entry["images_per_s"][str(best)] == max(entry["images_per_s"].values())
    assert inference.device_label("cpu", 1) == "cpu-1threads"


@pytest.mark.slow
def test_a_precision_reaches_the_model():
    rgb = engine.reference_images()[:2]
    logits = inference.run_models(rgb, [LITE0], device="cpu", batch_size=2, precision="bf16")[LITE0].logits
    net = models.load_model(LITE0, "cpu")
    x = inference.preprocess(rgb, models.spec(LITE0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(logits, net(x).float())
    half = engine.evaluate(POINTS[:2], [LITE0], device="cpu", batch_size=2, precision="bf16")
    exact = engine.evaluate(POINTS[:2], [LITE0], device="cpu", batch_size=2)
    assert not torch.equal(half.logits[LITE0], exact.logits[LITE0])
    assert torch.equal(half.top_class[LITE0][:, 0], exact.top_class[LITE0][:, 0])
    with pytest.raises(ModelError, match="unknown precision 'fp8'"):
        engine.evaluate(POINTS[:1], [LITE0], device="cpu", batch_size=1, precision="fp8")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compile_flag_reaches_the_model_and_agrees_with_eager(user_registry):
    user_registry({})  # a fresh registry key: a fresh model, compiled in this test
    net = models.load_model(LITE0, "cpu")
    assert net not in inference.compiled_models()
    kwargs = dict(layers=["stage4"], device="cpu", batch_size=2, group=2)
    compiled = engine.evaluate(POINTS[:2], [LITE0], compile=True, **kwargs)
    assert net in inference.compiled_models()
    eager = engine.evaluate(POINTS[:2], [LITE0], **kwargs)
    assert np.array_equal(compiled.images, eager.images)
    assert torch.allclose(compiled.logits[LITE0], eager.logits[LITE0], atol=1e-3)
    assert torch.equal(compiled.top_class[LITE0], eager.top_class[LITE0])
    assert torch.allclose(compiled.activations[LITE0]["stage4"], eager.activations[LITE0]["stage4"], atol=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compile_without_a_compiler_is_one_line(user_registry):
    inductor = pytest.importorskip("torch._inductor.config")
    user_registry({})
    with inductor.patch({"cpp.cxx": (None, "/nonexistent/g++"), "fx_graph_cache": False}), \
            pytest.raises(ModelError) as e:
        engine.evaluate(POINTS[:2], [LITE0], device="cpu", batch_size=2, compile=True)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{LITE0}: torch.compile failed (") and "without --compile" in message
