"""A real-world check: real meshes, real renderer, a real pretrained ImageNet model."""

import pytest

from perturber.pipeline import assets, classes, inference, models, scene

pytestmark = pytest.mark.slow

CAR_CLASSES = {"sports car", "racer", "convertible", "car wheel"}


@pytest.fixture(scope="module")
def lite0():
    return models.load_efficientnet_lite("efficientnet_lite0")


def _top5(model, object_id):
    # The default camera is the canonical view; a plain white background.
    image = scene.render({"object": object_id, "background": "white"}, 224)
    probs = inference.classify(model, image[None], 224)[0]
    names = classes.imagenet_categories()
    return [names[i] for i in probs.topk(5).indices.tolist()]


def test_dog_reads_as_a_dog_breed(lite0):
    names = classes.imagenet_categories()
    breeds = {names[i] for i in assets.imagenet_class_indices("dog")}
    top5 = _top5(lite0, "dog")
    assert breeds & set(top5), top5


def test_sports_car_reads_as_a_car(lite0):
    top5 = _top5(lite0, "sports_car")
    assert CAR_CLASSES & set(top5), top5


def test_view_from_behind_is_a_known_weakness(lite0):
    # Not an assertion about the model's quality: the images differ, so do the predictions.
    front = scene.render({"object": "dog", "background": "white", "yaw": 0}, 224)
    back = scene.render({"object": "dog", "background": "white", "yaw": 180}, 224)
    p = inference.classify(lite0, __import__("numpy").stack([front, back]), 224)
    assert p.argmax(1)[0] != p.argmax(1)[1] or (p[0] - p[1]).abs().max() > 0.05


def test_weights_load_strictly_without_code():
    with pytest.raises(ValueError, match="unknown model"):
        models.load_efficientnet_lite("resnet9000")
