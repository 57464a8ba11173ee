"""Image textures (texture: image:<catalogue texture, pattern or image file>) on the real renderer."""

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from conftest import mask
from perturber.pipeline import assets, factors, spec, surface, textures
from perturber.pipeline.assets import AssetError
from perturber.pipeline.factors import FactorError


def _png(path, colour, size=(32, 24)):
    Image.new("RGB", size, colour).save(path)
    return path


def _object_rgb(result):
    return result.rgba[mask(result)][:, :3].astype(float).mean(0)


@pytest.mark.slow
def test_every_catalogue_texture_loads_with_classes_and_attribution():
    cat = assets.catalogue()
    assert {"tabby_fur", "dog_fur", "burlap"} <= set(assets.texture_ids())
    for t, entry in cat["textures"].items():
        assert {"source", "licence", "attribution", "classes"} <= set(entry), t
        assert "upstream" in entry["source"], t
        image = assets.load_texture(t)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and image.std() > 5, t
        assert textures.class_indices(f"image:{t}"), t
        assert assets.attribution(f"image:{t}") == entry["attribution"]
    assert textures.class_indices("image:tabby_fur") == [281, 282, 285]  # tabby, tiger cat, Egyptian cat
    assert textures.class_indices("pattern:leopard") == textures.class_indices("image:leopard")
    assert textures.class_indices("dog") == list(range(151, 269))  # another object's texture: its classes
    assert textures.class_indices("on") is None and textures.class_indices("image:brick") is None


def test_attributions_name_the_texture_shown():
    lines = assets.attributions({"object": "dog", "texture": "image:tabby_fur", "background": "white"})
    assert any("Chelsea" in line for line in lines) and any(line.startswith("Dog by") for line in lines)
    assert any("Leopard pattern" in line for line in assets.attributions({"object": "cat", "texture": "pattern:leopard"}))
    assert any("Leopard pattern" in line for line in assets.attributions({"object": "cat", "texture": "image:leopard"}))


def test_texture_values_validate_to_canonical_ones(tmp_path, monkeypatch):
    assert factors.validate({"texture": "image:tabby_fur"})["texture"] == "image:tabby_fur"
    assert factors.validate({"texture": "image:leopard"})["texture"] == "image:leopard"  # a pattern
    assert factors.validate({"texture": "pattern:leopard"})["texture"] == "pattern:leopard"  # as before
    _png(tmp_path / "fur.png", "red")
    monkeypatch.chdir(tmp_path)
    assert factors.validate({"texture": "image:fur.png"})["texture"] == f"image:{tmp_path / 'fur.png'}"
    assert "image:tabby_fur" in factors.get("texture").domain.options()
    assert "image:" in factors.get("texture").domain.describe()


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "absent.png", "absent.png: image file not found"),
    (lambda d: d, "not a file"),
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "notes.txt: format not supported; supported: .png"),
    (lambda d: (d / "fake.png").write_text("not a png") and d / "fake.png", "fake.png: cannot be read as an image"),
    (lambda d: _png(d / "dot.png", "red", (1, 1)), "dot.png: image too small (1x1 pixels"),
    (lambda d: (d / "broken.pat").write_bytes(b"\0" * 30) and d / "broken.pat", "broken.pat: not a GIMP pattern"),
])
def test_bad_image_files_are_one_line_errors(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(FactorError) as info:
        factors.validate({"texture": f"image:{path}"})
    message = str(info.value)
    assert message.startswith("texture='image:") and expected in message and "\n" not in message


def test_size_limits_and_unknown_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(textures, "MAX_TEXTURE_PIXELS", 100)
    with pytest.raises(AssetError, match=r"big.png: image too large \(20x20 pixels"):
        textures.validate(f"image:{_png(tmp_path / 'big.png', 'red', (20, 20))}")
    monkeypatch.setattr(textures, "MAX_TEXTURE_BYTES", 10)
    with pytest.raises(AssetError, match="other.png: image file too large"):
        textures.validate(f"image:{_png(tmp_path / 'other.png', 'red')}")
    with pytest.raises(FactorError, match=r"no catalogue texture 'tabby_fir' .*\(did you mean 'tabby_fur'\?\)"):
        factors.validate({"texture": "image:tabby_fir"})
    with pytest.raises(FactorError, match="image: needs a catalogue texture id or the path of an image file"):
        factors.validate({"texture": "image:"})


def test_box_projection_and_mirrored_tiles():
    # A triangle facing +z is projected onto x and y (image upright: v runs down as y runs up).
    tri = np.array([[[0.0, 0.0, 0.5], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]])
    assert np.allclose(surface.box_uv(tri, 2.0)[0], [[0, 0], [1, 0], [0, -1]])
    # Facing +x: z and y.
    side = tri[:, :, [2, 1, 0]]
    assert np.allclose(surface.box_uv(side, 1.0)[0], [[0, 0], [0.5, 0], [0, -0.5]])
    image = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    tile = surface.mirrored(image)
    assert tile.shape == (2, 4, 3) and (tile[0, :2] == image[0]).all() and (tile[0, 2:] == image[0, ::-1]).all()
    assert (tile[1] == tile[0]).all()


def test_an_image_texture_dresses_any_shape(render, tmp_path):
    on = render(object="cat", size=96)
    fur = render(object="cat", texture="image:tabby_fur", size=96)
    teddy_in_fur = render(object="teddy_bear", texture="image:tabby_fur", size=96)
    assert np.array_equal(mask(on), mask(fur))  # the shape is untouched
    assert np.abs(on.rgba.astype(int) - fur.rgba.astype(int))[mask(on)].mean() > 10
    # The tabby fur is brown: red above green above blue, on the cat and on the teddy bear alike.
    for result in (fur, teddy_in_fur):
        r, g, b = _object_rgb(result)
        assert r > g > b
    # A file: a pure blue image makes the object blue (lit, so not exactly).
    blue = render(object="cat", texture=f"image:{_png(tmp_path / 'blue.png', (0, 0, 255))}", size=96)
    r, g, b = _object_rgb(blue)
    assert b > 60 and b > 3 * max(r, g)


@pytest.mark.slow
def test_a_pruned_cube_with_image_textures_runs(tmp_path):
    from perturber.pipeline import run

    path = _png(tmp_path / "blue.png", (0, 0, 255))
    sweep = spec.parse_spec({"cubes": {"tex": {
        "axes": {"texture": ["image:tabby_fur", f"image:{path}", "pattern:leopard"], "yaw": [0, 45]},
        "fixed": {"object": "teddy_bear"}, "models": ["efficientnet_lite0"], "size": 64}}}).prune(2)
    store = str(tmp_path / "s.zarr")
    run.precompute(sweep, store, scheduler="synchronous", progress=False, echo=lambda *_: None)
    ds = xr.open_zarr(store, group="tex")
    assert int(ds["done"].min()) == 1 and np.isfinite(ds["logits"].values.astype(float)).all()
    images = ds["image"].values.astype(int)
    assert np.abs(images[0] - images[1]).mean() > 5  # the two textures render differently
    assert any("Chelsea" in a for a in ds.attrs["attributions"])
