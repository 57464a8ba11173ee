"""evaluate(): real renders, real image ops, real pretrained models."""

import numpy as np
import pytest
import torch

from perturber.pipeline import assets, engine, models
from perturber.pipeline.models import ModelError

pytestmark = pytest.mark.slow

DOG_BREEDS = set(assets.imagenet_class_indices("dog"))


def test_rendered_dog_reads_as_a_dog_breed():
    ev = engine.evaluate([{"object": "dog"}], ["efficientnet_lite0"], device="cpu")
    assert DOG_BREEDS & set(ev.top_class["efficientnet_lite0"][0].tolist())
    assert ev.images.shape == (1, 224, 224, 3) and ev.images.dtype == np.uint8
    assert ev.logits["efficientnet_lite0"].shape == (1, 1000)
    probs = ev.top_prob["efficientnet_lite0"][0]
    assert torch.all(probs[:-1] >= probs[1:]) and 0 < probs.sum() <= 1


def _tv_from_clean(obj, perturbation):
    """Total-variation distance between Lite0's class distributions, clean vs perturbed."""
    ev = engine.evaluate([{"object": obj}, {"object": obj, **perturbation}], ["efficientnet_lite0"], device="cpu")
    probs = ev.logits["efficientnet_lite0"].softmax(1)
    return float(0.5 * (probs[0] - probs[1]).abs().sum())


def test_hue_180_moves_the_prediction():
    # The red sports car turned cyan; a 3-degree hue shift is the control.
    assert _tv_from_clean("sports_car", {"hue": 180}) > max(0.4, 10 * _tv_from_clean("sports_car", {"hue": 3}))


def test_heavy_patch_shuffle_moves_the_prediction():
    assert _tv_from_clean("dog", {"shuffle": 8}) > max(0.6, 5 * _tv_from_clean("dog", {"shuffle": 1, "hue": 3}))


def test_each_distinct_scene_is_rendered_once():
    points = [{"object": o, "yaw": 30, "hue": h} for o in ("dog", "cat") for h in (0, 45, 90)]
    ev = engine.evaluate(points, ["efficientnet_lite0"], device="cpu")
    assert ev.renders == 2
    # Same scene, different image factors: the images differ.
    assert not np.array_equal(ev.images[0], ev.images[1])


def test_batch_equals_one_at_a_time():
    points = [{"object": "dog", "yaw": 0}, {"object": "cat", "blur": 2.0}, {"object": "dog", "noise_gaussian": 0.1, "noise_seed": 3}]
    names = ["efficientnet_lite0", "efficientnet_lite1"]
    batched = engine.evaluate(points, names, layers=["stage4"], device="cpu")
    for i, point in enumerate(points):
        single = engine.evaluate([point], names, layers=["stage4"], device="cpu")
        assert np.array_equal(single.images[0], batched.images[i])
        for name in names:
            assert torch.allclose(single.logits[name][0], batched.logits[name][i], atol=1e-3)
            assert torch.allclose(single.activations[name]["stage4"][0], batched.activations[name]["stage4"][i], atol=1e-3)


def test_activations_and_neuron_selection():
    ev = engine.evaluate([{"object": "dog"}] * 2, ["efficientnet_lite0", "efficientnet_lite2"],
                         layers=["stage4", "head"], neurons={"head": [5, 0, 9]}, device="cpu")
    assert ev.activations["efficientnet_lite0"]["stage4"].shape == (2, 80, 14, 14)
    assert ev.activations["efficientnet_lite2"]["stage4"].shape == (2, 88, 17, 17)
    assert ev.activations["efficientnet_lite0"]["head"].shape == (2, 3, 7, 7)
    assert ev.neurons["efficientnet_lite0"]["head"] == [5, 0, 9]
    full = engine.evaluate([{"object": "dog"}], ["efficientnet_lite0"], layers=["head"], device="cpu")
    assert torch.allclose(full.activations["efficientnet_lite0"]["head"][0, [5, 0, 9]], ev.activations["efficientnet_lite0"]["head"][0], atol=1e-4)


def test_bad_requests_get_clear_errors():
    with pytest.raises(ModelError, match="unknown model 'alexnet9'"):
        engine.evaluate([{}], ["alexnet9"], device="cpu")
    with pytest.raises(ModelError, match="no layer 'nope'"):
        engine.evaluate([{}], ["efficientnet_lite0"], layers=["nope"], device="cpu")
    with pytest.raises(ModelError, match="neuron out of range"):
        engine.evaluate([{}], ["efficientnet_lite0"], layers=["head"], neurons={"head": [5000]}, device="cpu")


def test_transparent_background_is_black_for_the_model():
    ev = engine.evaluate([{"object": "dog", "background": "none"}], ["efficientnet_lite0"], device="cpu")
    corner = ev.images[0, :10, :10]
    assert (corner == 0).all()


def test_predict_command(tmp_path):
    from perturber.pipeline import cli

    code = cli.main(["predict", "--object", "dog", "--yaw", "30", "--hue", "90",
                     "--models", "efficientnet_lite0,efficientnet_lite2", "--layer", "stage4",
                     "--activation-figure", str(tmp_path / "act.png"), "--save-input", str(tmp_path / "in.png")])
    assert code == 0
    assert (tmp_path / "in.png").is_file()
    for name in ("efficientnet_lite0", "efficientnet_lite2"):
        assert (tmp_path / f"act-{name}.png").stat().st_size > 10_000
    assert cli.main(["predict", "--models", "nosuchnet"]) == 2


def test_threads_sharing_a_model_each_capture_their_own_activations():
    # Two threads run the same cached model at once (a precompute's task
    # threads, two viewer sessions): each capture records only the forward
    # passes of its own thread. Hooks once fired for every thread's pass, so
    # one thread's activations could be another's.
    import threading

    from perturber.pipeline import inference

    name = "efficientnet_lite0"
    inputs = [torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    alone = [inference.run_models(x, [name], layers=["stage4"], device="cpu", batch_size=1)[name].activations["stage4"]
             for x in inputs]
    start, wrong = threading.Barrier(2), []

    def run(i: int) -> None:
        start.wait()
        for _ in range(4):
            try:
                got = inference.run_models(inputs[i], [name], layers=["stage4"], device="cpu", batch_size=1)[name]
            except ModelError as exc:  # another thread's pass counted as a second call of the layer
                wrong.append((i, str(exc)))
                continue
            if not torch.allclose(got.activations["stage4"], alone[i], atol=1e-4):  # threads may round differently
                wrong.append((i, "another thread's activations"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, wrong[:2]
