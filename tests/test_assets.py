import shutil

import numpy as np
import pytest
import trimesh
import yaml

from perturber.pipeline import assets, config, meshes
from perturber.pipeline.assets import AssetError

REQUIRED = {"dog", "cat", "sports_car", "fire_truck", "bulldog", "siamese_cat", "truck", "teddy_bear", "teapot"}


def test_catalogue_entries_are_complete():
    cat = assets.catalogue()
    assert REQUIRED <= set(cat["objects"])
    for asset_id, entry in cat["objects"].items():
        assert {"classes", "source", "licence", "attribution", "transform"} <= set(entry), asset_id
        assert "upstream" in entry["source"], asset_id
        assert assets.imagenet_class_indices(asset_id), asset_id
    photos = [b for b, e in cat["backgrounds"].items() if e["kind"] == "photo"]
    assert {"meadow", "road", "forest", "indoor"} <= set(photos)
    for b in photos:
        assert cat["backgrounds"][b]["attribution"]


@pytest.mark.parametrize("object_id", sorted(REQUIRED))
def test_objects_load_normalised(object_id):
    obj = meshes.load_object(object_id)
    lo, hi = obj.bounds
    assert np.isclose((hi - lo).max(), 1.0)
    assert np.allclose((hi + lo) / 2, 0.0, atol=1e-9)
    assert obj.attribution and obj.licence


def test_objects_are_upright_and_face_the_camera():
    # The dog sits taller than it is wide; the vehicles are longer (z) than wide (x).
    for object_id in ("dog", "cat"):
        lo, hi = meshes.load_object(object_id).bounds
        assert (hi - lo)[1] > (hi - lo)[0]
    for object_id in ("sports_car", "fire_truck", "truck", "bulldog"):
        lo, hi = meshes.load_object(object_id).bounds
        assert (hi - lo)[2] > (hi - lo)[0], object_id


def test_backgrounds_and_patterns_load():
    for b in assets.background_ids():
        image = assets.load_background(b, 32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert assets.load_background("none", 32) is None
    assert (assets.load_background("#ff0000", 8) == [255, 0, 0]).all()
    for p in assets.pattern_ids():
        tile = assets.load_pattern(p)
        assert tile.ndim == 3 and tile.shape[2] == 3 and tile.std() > 5  # a real, non-flat image


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".stl", ".off", ".glb", ".gltf", ".dae"])
def test_user_meshes_load_in_every_format(tmp_path, suffix):
    box = trimesh.creation.box(extents=(2.0, 4.0, 1.0))
    path = tmp_path / f"box{suffix}"
    box.export(path)
    obj = meshes.load_mesh_file(path)
    lo, hi = obj.bounds
    assert np.allclose(hi - lo, [0.5, 1.0, 0.25])


def _obj(tmp_path, body, name="m.obj"):
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    "body, message",
    [
        ("", "file is empty"),
        ("this is not a mesh\n", "no triangles"),
        ("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n", "non-finite vertex coordinates"),
        ("v 0 0 0\nv 0 0 0\nv 0 0 0\nf 1 2 3\n", "zero size"),
        ("mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "m.obj refers to 'm.mtl', which is not in its folder"),
    ],
)
def test_broken_meshes_get_one_line_errors(tmp_path, body, message):
    with pytest.raises(AssetError) as err:
        meshes.load_mesh_file(_obj(tmp_path, body))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_texture_is_reported(tmp_path):
    (tmp_path / "m.mtl").write_text("newmtl a\nmap_Kd skin.png\n")
    (tmp_path / "skin.png").write_bytes(b"not a png")
    path = _obj(tmp_path, "mtllib m.mtl\nusemtl a\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n")
    with pytest.raises(AssetError, match="texture 'skin.png' cannot be read"):
        meshes.load_mesh_file(path)
    (tmp_path / "skin.png").unlink()
    with pytest.raises(AssetError, match="refers to 'skin.png', which is not in its folder"):
        meshes.load_mesh_file(path)


def test_mesh_limits(tmp_path, monkeypatch):
    path = tmp_path / "box.ply"
    trimesh.creation.box().export(path)
    monkeypatch.setattr(meshes, "MAX_FACES", 4)
    with pytest.raises(AssetError, match="12 triangles, more than the limit of 4"):
        meshes.load_mesh_file(path)
    with pytest.raises(AssetError, match="format not supported; supported: .obj"):
        meshes.load_mesh_file(shutil.copy(path, tmp_path / "box.xyz"))


def _catalogue_with_archive_elsewhere(tmp_path, monkeypatch):
    """A catalogue whose dog lives at a path that does not exist."""
    cat = yaml.safe_load(open(config.catalogue_path()))
    cat["objects"] = {"dog": cat["objects"]["dog"]}
    cat["objects"]["dog"]["source"]["archive"] = "/nonexistent/Scopia.sh3f"
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(cat))
    monkeypatch.setenv("PERTURBER_CATALOGUE", str(path))
    monkeypatch.setenv("PERTURBER_CACHE", str(tmp_path / "cache"))


def test_missing_asset_says_what_to_install_and_asset_dir_supplies_it(tmp_path, monkeypatch):
    _catalogue_with_archive_elsewhere(tmp_path, monkeypatch)
    try:
        status = {r["id"]: r["status"] for r in assets.asset_status()}
        assert status["dog"].startswith("missing: apt-get install sweethome3d-furniture")
        packages, command = assets.fetch(run=False)
        assert packages == ["sweethome3d-furniture"] and "apt-get install" in command
        with pytest.raises(AssetError, match="not installed: apt-get install sweethome3d-furniture"):
            meshes.load_object("dog")
        # A user without apt downloads the archive into PERTURBER_ASSET_DIR.
        shutil.copy("/usr/share/sweethome3d/furniture/Scopia.sh3f", tmp_path)
        monkeypatch.setenv("PERTURBER_ASSET_DIR", str(tmp_path))
        assert {r["id"]: r["status"] for r in assets.asset_status()}["dog"] == "ok"
        assert len(meshes.load_object("dog").parts) == 1
        assert (tmp_path / "cache" / "models" / "Scopia" / "scopia" / "dog" / "dog.obj").is_file()
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize(
    "text, fragment",
    [
        (None, "cannot read (No such file or directory)"),
        ("objects: [1, 2\n", "not valid YAML"),
        ("- a\n", "must map objects, backgrounds and patterns"),
        ("objects: [dog]\n", "objects must map ids to entries"),
        ("objects: {}\nobjects: {}\n", "key 'objects' appears twice"),
    ],
)
def test_bad_catalogue_is_one_line(tmp_path, monkeypatch, text, fragment):
    path = tmp_path / "catalogue.yaml"
    if text is not None:
        path.write_text(text)
    monkeypatch.setenv("PERTURBER_CATALOGUE", str(path))
    with pytest.raises(AssetError, match=f"asset catalogue {path}: ") as e:
        assets.object_ids()
    assert fragment in str(e.value) and "\n" not in str(e.value)
