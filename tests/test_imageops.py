"""Image ops against independent references, batching, seeds and gradients."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import color, data

from perturber.pipeline import factors, imageops


@pytest.fixture(scope="module")
def photos():
    """Two real photos, (2, 3, 64, 64) float64 in [0, 1]."""
    ims = [data.chelsea()[:256:4, 100:356:4], data.coffee()[:256:4, 200:456:4]]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).double() / 255.0


def np_images(t):
    return t.permute(0, 2, 3, 1).numpy()


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


@pytest.mark.parametrize("degrees", [0.0, 30.0, -90.0, 180.0])
def test_hue_shift_matches_skimage(photos, degrees):
    out = imageops.hue_shift(photos, torch.tensor([degrees, degrees]))
    hsv = color.rgb2hsv(np_images(photos))
    hsv[..., 0] = (hsv[..., 0] + degrees / 360.0) % 1.0
    assert np.abs(np_images(out) - color.hsv2rgb(hsv)).max() < 1e-6


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 2.0])
def test_saturation_matches_skimage(photos, factor):
    out = imageops.saturation(photos, torch.tensor([factor, factor]))
    hsv = color.rgb2hsv(np_images(photos))
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 1)
    assert np.abs(np_images(out) - color.hsv2rgb(hsv)).max() < 1e-6


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_blur_matches_scipy(photos, sigma):
    out = imageops.gaussian_blur(photos, torch.tensor([sigma, sigma]))
    radius = int(np.ceil(3 * sigma))
    ref = ndimage.gaussian_filter(np_images(photos), sigma=(0, sigma, sigma, 0), mode="mirror", radius=(0, radius, radius, 0))
    assert np.abs(np_images(out) - ref).max() < 1e-9


def test_blur_zero_is_identity(photos):
    assert torch.equal(imageops.gaussian_blur(photos, torch.zeros(2)), photos)


def test_pyramid_reconstructs_and_bands_separate_frequencies(photos):
    bands = imageops.laplacian_pyramid(photos, levels=4)
    assert [b.shape[-1] for b in bands] == [64, 32, 16, 8, 4]
    assert torch.allclose(imageops.collapse_pyramid(bands), photos, atol=1e-12)
    ones = torch.ones(2)
    assert torch.allclose(imageops.band_gains(photos, ones, ones, ones), photos, atol=1e-12)
    # Removing the high band removes fine detail: less high-frequency energy.
    def hf_energy(x):
        return (x - imageops.gaussian_blur(x, torch.full((2,), 1.0))).pow(2).mean()

    no_high = imageops.band_gains(photos, ones, ones, torch.zeros(2))
    boosted = imageops.band_gains(photos, ones, ones, torch.full((2,), 2.0))
    assert hf_energy(no_high) < 0.5 * hf_energy(photos) < hf_energy(boosted)
    # Removing the low band keeps edges but loses the mean colour.
    no_low = imageops.band_gains(photos, torch.zeros(2), ones, ones)
    assert (no_low.mean((2, 3)) - photos.mean((2, 3))).abs().max() > 0.1


def test_simple_colour_ops(photos):
    x = photos
    assert torch.allclose(imageops.fade(x, torch.tensor([1.0, 0.5])), torch.stack([torch.zeros_like(x[0]), x[1] / 2]))
    assert torch.allclose(imageops.brightness(x, torch.tensor([0.1, 0.0])), torch.stack([(x[0] + 0.1).clamp(0, 1), x[1]]))
    assert torch.allclose(imageops.contrast(x, torch.tensor([2.0, 1.0])), torch.stack([((x[0] - 0.5) * 2 + 0.5).clamp(0, 1), x[1]]))
    assert torch.allclose(imageops.gamma(x, torch.tensor([2.0, 1.0])), torch.stack([x[0] ** 2, x[1]]))


def test_patch_shuffle(photos):
    one = imageops.patch_shuffle(photos, torch.tensor([1, 1]), torch.tensor([0, 0]))
    assert torch.equal(one, photos)
    a = imageops.patch_shuffle(photos, torch.tensor([4, 4]), torch.tensor([7, 7]))
    b = imageops.patch_shuffle(photos, torch.tensor([4, 4]), torch.tensor([7, 7]))
    c = imageops.patch_shuffle(photos, torch.tensor([4, 4]), torch.tensor([8, 8]))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # A permutation of patches: the same 16 patches, in another order.
    def patches(x):
        return sorted(x[0, :, i * 16 : i * 16 + 16, j * 16 : j * 16 + 16].sum().item() for i in range(4) for j in range(4))

    assert patches(a) == pytest.approx(patches(photos)) and not torch.equal(a, photos)
    # k that does not divide the side: the remainder strip stays in place.
    odd = imageops.patch_shuffle(photos, torch.tensor([3, 3]), torch.tensor([1, 1]))
    assert torch.equal(odd[..., 63:, :], photos[..., 63:, :]) and torch.equal(odd[..., :, 63:], photos[..., :, 63:])


@pytest.mark.parametrize("op, amount", [(imageops.uniform_noise, 0.2), (imageops.gaussian_noise, 0.1), (imageops.salt_and_pepper, 0.1)])
def test_noise_is_seeded(photos, op, amount):
    a = op(photos, torch.tensor([amount, amount]), torch.tensor([3, 3]))
    b = op(photos, torch.tensor([amount, amount]), torch.tensor([3, 3]))
    c = op(photos, torch.tensor([amount, amount]), torch.tensor([4, 4]))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(op(photos, torch.zeros(2), torch.tensor([3, 3])), photos)


def test_salt_and_pepper_fraction(photos):
    out = imageops.salt_and_pepper(photos, torch.tensor([0.2, 0.2]), torch.tensor([0, 1]))
    changed = ((out == 0) | (out == 1)).all(1).float().mean()
    assert 0.17 < changed < 0.25


@pytest.mark.parametrize(
    "op, params",
    [
        (imageops.hue_shift, [torch.tensor([10.0, 170.0])]),
        (imageops.saturation, [torch.tensor([0.2, 1.7])]),
        (imageops.gaussian_blur, [torch.tensor([0.7, 2.0])]),
        (imageops.band_gains, [torch.tensor([1.0, 0.5]), torch.tensor([0.0, 2.0]), torch.tensor([3.0, 1.0])]),
        (imageops.patch_shuffle, [torch.tensor([2, 5]), torch.tensor([1, 2])]),
        (imageops.gaussian_noise, [torch.tensor([0.05, 0.2]), torch.tensor([1, 2])]),
        (imageops.uniform_noise, [torch.tensor([0.05, 0.2]), torch.tensor([1, 2])]),
        (imageops.salt_and_pepper, [torch.tensor([0.05, 0.2]), torch.tensor([1, 2])]),
        (imageops.contrast, [torch.tensor([0.5, 1.5])]),
    ],
)
def test_batch_equals_separate_calls(photos, op, params):
    batched = op(photos, *params)
    for i in range(2):
        single = op(photos[i : i + 1], *[p[i : i + 1] for p in params])
        assert torch.allclose(batched[i : i + 1], single, atol=1e-12)


@pytest.mark.parametrize(
    "op, params",
    [
        (imageops.hue_shift, [torch.tensor([25.0])]),
        (imageops.gaussian_blur, [torch.tensor([1.3])]),
        (imageops.band_gains, [torch.tensor([1.2]), torch.tensor([0.7]), torch.tensor([1.5])]),
        (imageops.gamma, [torch.tensor([1.7])]),
        (imageops.fade, [torch.tensor([0.3])]),
    ],
)
def test_gradcheck(op, params):
    # Inside (0, 1), away from clamps and hue sector boundaries.
    x = (torch.rand(1, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: op(t, *[p.double() for p in params]), (x,), eps=1e-6, atol=1e-4)


def test_apply_image_factors_order_and_identity():
    rgba = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    rgba[:, 3] = 1.0
    defaults = [factors.validate({}), factors.validate({})]
    assert torch.allclose(imageops.apply_image_factors(rgba, defaults), rgba)
    params = [factors.validate({"hue": 90, "blur": 1.0}), factors.validate({"shuffle": 4, "noise_gaussian": 0.1})]
    out = imageops.apply_image_factors(rgba, params)
    expected0 = imageops.gaussian_blur(imageops.hue_shift(rgba[:1, :3], torch.tensor([90.0])), torch.tensor([1.0]))
    assert torch.allclose(out[0, :3], expected0[0], atol=1e-6)
    expected1 = imageops.gaussian_noise(imageops.patch_shuffle(rgba[1:, :3], torch.tensor([4]), torch.tensor([0])), torch.tensor([0.1]), torch.tensor([0]))
    assert torch.allclose(out[1, :3], expected1[0], atol=1e-6)


def test_a_sample_does_not_depend_on_its_batch_mates():
    # A sample at an op's identity is left exactly as it is, whatever the other
    # samples of its batch ask for: a mixed batch once sent every row through
    # the HSV round trip, which moved a hue-0 pixel by up to 7e-7, so a point's
    # stored logits depended on which points shared its task.
    rgba = torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    rgba[:, 3] = 1.0
    params = [factors.validate({"hue": 0, "saturation": 1.0}), factors.validate({"hue": 90}),
              factors.validate({"saturation": 0.5, "hue": 0})]
    batched = imageops.apply_image_factors(rgba, params)
    for i, p in enumerate(params):
        assert torch.equal(batched[i : i + 1], imageops.apply_image_factors(rgba[i : i + 1], [p])), p
    assert torch.equal(batched[0], rgba[0])


def test_background_none_keeps_alpha_through_ops():
    rgba = torch.rand(1, 4, 16, 16)
    out = imageops.apply_image_factors(rgba, [factors.validate({"background": "none", "hue": 45})])
    assert torch.equal(out[:, 3], rgba[:, 3])


@pytest.mark.gpu
def test_ops_run_on_cuda(photos):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = photos.float().cuda()
    for op, params in [(imageops.hue_shift, [torch.tensor([30.0, 60.0])]), (imageops.gaussian_noise, [torch.tensor([0.1, 0.1]), torch.tensor([1, 2])])]:
        assert torch.allclose(op(x, *params).cpu(), op(photos.float(), *params), atol=1e-5)
