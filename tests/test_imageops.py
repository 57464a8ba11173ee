import numpy as np
import torch

from pipeline import imageops


def test_composite_is_alpha_over():
    images = torch.zeros(2, 4, 2, 2)
    images[:, 0] = 1.0  # red
    images[:, 3] = torch.tensor([[1.0, 0.5], [0.0, 0.25]])
    backgrounds = torch.zeros(2, 3, 2, 2)
    backgrounds[:, 2] = 1.0  # blue
    out = imageops.composite(images, backgrounds, torch.tensor([True, False]))
    assert torch.allclose(out[0, 0], images[0, 3]) and torch.allclose(out[0, 2], 1 - images[0, 3])
    assert (out[0, 3] == 1).all()
    assert torch.equal(out[1], images[1])  # background 'none': untouched


def test_uint8_round_trip():
    rgba = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 4), dtype=np.uint8)
    assert np.array_equal(imageops.to_uint8(imageops.to_tensor(rgba)), rgba)
