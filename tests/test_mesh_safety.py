"""A user's mesh file (pipeline.meshes, pipeline.meshfiles): the files it refers
to stay in its folder, and every bad file is refused in one line naming it.

Real files only: meshes exported by trimesh or written here, real PNGs, the
real command line (in-process) for the messages users see.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import trimesh
from PIL import Image

from perturber.pipeline import cli, meshes, meshfiles
from perturber.pipeline.assets import MESH_SUFFIXES, AssetError

TRI = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
TRI_UV = "usemtl a\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n"


def _png(path, size=(4, 4), colour="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _refused(path, *fragments) -> str:
    """load_mesh_file(path) fails with one line that names the file and holds ``fragments``."""
    with pytest.raises(AssetError) as e:
        meshes.load_mesh_file(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(path.name), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


@pytest.fixture
def folder(tmp_path):
    """The mesh's folder, with a real MTL, texture and binary buffer outside it (in tmp_path)."""
    _write(tmp_path / "outside.mtl", "newmtl a\nKd 1 0 0\n")
    _png(tmp_path / "outside.png")
    return tmp_path / "mesh"


# --------------------------------------------------------------------------
# 1. References stay in the mesh's folder
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mtllib, fragment",
    [
        ("../outside.mtl", "outside its folder"),
        ("../../../../../../../../etc/passwd", "outside its folder"),
        ("ok/../../outside.mtl", "outside its folder"),
        ("{outside}", "an absolute path"),
        ("/etc/passwd", "an absolute path"),
    ],
)
def test_obj_material_library_outside_the_folder_is_refused(folder, mtllib, fragment):
    mtllib = mtllib.format(outside=folder.parent / "outside.mtl")
    path = _write(folder / "m.obj", f"mtllib {mtllib}\n" + TRI)
    _refused(path, repr(mtllib), fragment)


def test_mtl_texture_outside_the_folder_is_refused(folder):
    _write(folder / "m.mtl", "newmtl a\nmap_Kd ../outside.png\n")
    _refused(_write(folder / "m.obj", "mtllib m.mtl\n" + TRI_UV), "'../outside.png'", "outside its folder")
    _write(folder / "m.mtl", f"newmtl a\nmap_Kd {folder.parent / 'outside.png'}\n")
    _refused(folder / "m.obj", "an absolute path")


def test_a_link_that_leads_outside_is_refused(folder):
    folder.mkdir()
    os.symlink(folder.parent / "outside.mtl", folder / "m.mtl")
    _refused(_write(folder / "m.obj", "mtllib m.mtl\n" + TRI), "'m.mtl'", "outside its folder")


@pytest.mark.parametrize("first_line", ["# written without an mtllib", "usemtl mtllib_red", "# mtllib ../outside.mtl"])
def test_a_word_mtllib_that_is_no_statement_reads_nothing(folder, first_line):
    # trimesh takes the first 'mtllib' anywhere as the library's name; such files loaded before and still do
    lo, hi = meshes.load_mesh_file(_write(folder / "m.obj", f"{first_line}\n" + TRI)).bounds
    assert np.allclose(hi - lo, [1, 1, 0])


def test_references_inside_the_folder_load(folder):
    _png(folder / "textures" / "skin.png", colour="blue")
    _write(folder / "m.mtl", "newmtl a\nmap_Kd textures/skin.png\n")
    obj = meshes.load_mesh_file(_write(folder / "m.obj", "mtllib m.mtl\n" + TRI_UV))
    (part,) = obj.parts
    assert part.image is not None and (part.image[0, 0, :3] == [0, 0, 255]).all()


def _gltf(folder, name="box.gltf", textured=False):
    """A real glTF (JSON + .bin buffers) exported by trimesh into ``folder``; returns (path, its JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    box = trimesh.creation.box(extents=(2.0, 4.0, 1.0))
    if textured:
        uv = np.random.default_rng(0).random((len(box.vertices), 2))
        box.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.new("RGB", (4, 4), "green"))
    path = folder / name
    box.export(path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("uri, fragment", [("../outside.bin", "outside its folder"), ("{abs}", "an absolute path")])
def test_gltf_buffer_outside_the_folder_is_refused(folder, uri, fragment):
    path, tree = _gltf(folder)
    outside = folder.parent / "outside.bin"
    os.replace(folder / tree["buffers"][0]["uri"], outside)  # the real buffer, moved out of the folder
    tree["buffers"][0]["uri"] = uri.format(abs=outside)
    path.write_text(json.dumps(tree))
    _refused(path, fragment)


def test_gltf_image_outside_the_folder_is_refused(folder):
    path, tree = _gltf(folder, textured=True)
    image = tree["images"][0]
    del image["bufferView"]
    image["uri"] = "../outside.png"
    path.write_text(json.dumps(tree))
    _refused(path, "'../outside.png'", "outside its folder")


def test_gltf_with_data_uris_loads(folder):
    path, tree = _gltf(folder)
    import base64

    for buffer in tree["buffers"]:
        data = (folder / buffer["uri"]).read_bytes()
        buffer["uri"] = "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    embedded = _write(folder / "embedded.gltf", json.dumps(tree))
    for buffer_file in folder.glob("*.bin"):
        buffer_file.unlink()
    lo, hi = meshes.load_mesh_file(embedded).bounds
    assert np.allclose(hi - lo, [0.5, 1.0, 0.25])


DAE_TEXTURED = """<?xml version="1.0" encoding="utf-8"?>
<COLLADA xmlns="http://www.collada.org/2005/11/COLLADASchema" version="1.4.1">
  <library_images><image id="img"><init_from>{image}</init_from></image></library_images>
  <library_effects><effect id="fx"><profile_COMMON>
    <newparam sid="surf"><surface type="2D"><init_from>img</init_from></surface></newparam>
    <newparam sid="samp"><sampler2D><source>surf</source></sampler2D></newparam>
    <technique sid="common"><lambert><diffuse><texture texture="samp" texcoord="uv"/></diffuse></lambert></technique>
  </profile_COMMON></effect></library_effects>
  <library_materials><material id="mat"><instance_effect url="#fx"/></material></library_materials>
  <library_geometries><geometry id="g"><mesh>
    <source id="p"><float_array id="pa" count="9">0 0 0 1 0 0 0 1 0</float_array><technique_common>
      <accessor source="#pa" count="3" stride="3"><param name="X" type="float"/><param name="Y" type="float"/><param name="Z" type="float"/></accessor>
    </technique_common></source>
    <source id="t"><float_array id="ta" count="6">0 0 1 0 0 1</float_array><technique_common>
      <accessor source="#ta" count="3" stride="2"><param name="S" type="float"/><param name="T" type="float"/></accessor>
    </technique_common></source>
    <vertices id="v"><input semantic="POSITION" source="#p"/></vertices>
    <triangles count="1" material="m"><input semantic="VERTEX" source="#v" offset="0"/>
      <input semantic="TEXCOORD" source="#t" offset="1" set="0"/><p>0 0 1 1 2 2</p></triangles>
  </mesh></geometry></library_geometries>
  <library_visual_scenes><visual_scene id="s"><node id="n"><instance_geometry url="#g"><bind_material><technique_common>
    <instance_material symbol="m" target="#mat"/></technique_common></bind_material></instance_geometry></node></visual_scene></library_visual_scenes>
  <scene><instance_visual_scene url="#s"/></scene>
</COLLADA>
"""


def test_collada_texture_outside_the_folder_is_refused(folder):
    _png(folder / "tex.png")  # trimesh's own resolver would quietly take this one instead
    _refused(_write(folder / "m.dae", DAE_TEXTURED.format(image="../outside.png")), "'../outside.png'", "outside its folder")
    (part,) = meshes.load_mesh_file(_write(folder / "ok.dae", DAE_TEXTURED.format(image="tex.png"))).parts
    assert part.image is not None and part.image.shape[:2] == (4, 4)


AC3D_TEXTURED = """AC3Db
MATERIAL "m" rgb 1 1 1  amb 1 1 1  emis 0 0 0  spec 0 0 0  shi 1  trans 0
OBJECT world
kids 1
OBJECT poly
texture "{texture}"
numvert 3
0 0 0
1 0 0
0 1 0
numsurf 1
SURF 0x20
mat 0
refs 3
0 0 0
1 1 0
2 0 1
kids 0
"""


def test_ac3d_texture_outside_the_folder_is_refused(folder):
    _refused(_write(folder / "m.ac", AC3D_TEXTURED.format(texture="../outside.png")), "'../outside.png'", "outside its folder")
    _png(folder / "skin.png")
    (part,) = meshes.load_mesh_file(_write(folder / "ok.ac", AC3D_TEXTURED.format(texture="skin.png"))).parts
    assert part.image is not None


PLY_TEXTURED = """ply
format ascii 1.0
comment TextureFile {texture}
element vertex 3
property float x
property float y
property float z
property float s
property float t
element face 1
property list uchar int vertex_indices
end_header
0 0 0 0 0
1 0 0 1 0
0 1 0 0 1
3 0 1 2
"""


def test_ply_texture_outside_the_folder_is_refused_without_trimesh_tracebacks(folder, caplog):
    with caplog.at_level("DEBUG"):
        _refused(_write(folder / "m.ply", PLY_TEXTURED.format(texture="../outside.png")), "'../outside.png'", "outside its folder")
        _refused(_write(folder / "n.ply", PLY_TEXTURED.format(texture="absent.png")), "'absent.png'", "not in its folder")
    # trimesh logs the lookups it caught, with tracebacks, at WARNING: the one-line error says it instead
    assert not [r for r in caplog.records if r.name.startswith("trimesh")]


def test_missing_and_unreadable_references(folder):
    path, tree = _gltf(folder)
    tree["buffers"][0]["uri"] = "gone.bin"
    path.write_text(json.dumps(tree))
    _refused(path, "'gone.bin'", "not in its folder")
    _write(folder / "m.mtl", "newmtl a\nmap_Kd skin.png\n")
    _write(folder / "skin.png", b"not a png")
    _refused(_write(folder / "m.obj", "mtllib m.mtl\n" + TRI_UV), "texture 'skin.png' cannot be read")


# --------------------------------------------------------------------------
# 2. Bad files: one line each
# --------------------------------------------------------------------------


def test_latin1_obj_loads(tmp_path):
    path = _write(tmp_path / "caf\u00e9.obj", "# mod\u00e8le fran\u00e7ais\ng t\u00eate\n".encode("latin-1") + TRI.encode())
    lo, hi = meshes.load_mesh_file(path).bounds
    assert np.allclose(hi - lo, [1, 1, 0])


@pytest.mark.parametrize(
    "body",
    [
        "v 0 0 0\nv 1e308 0 0\nv 0 1e308 0\nf 1 2 3\n",  # rendered a garbage full-frame image before
        "v -1e308 0 0\nv 1e308 0 0\nv 0 1 0\nf 1 2 3\n",  # its extent overflows to inf
        "v 0 0 0\nv 1 0 0\nv 0 1 1e15\nf 1 2 3\n",
    ],
)
def test_absurd_coordinates_are_refused(tmp_path, body):
    _refused(_write(tmp_path / "huge.obj", body), "coordinates", "beyond")


def test_collada_loads(tmp_path):
    path = tmp_path / "box.dae"
    trimesh.creation.box(extents=(2.0, 4.0, 1.0)).export(path)
    lo, hi = meshes.load_mesh_file(path).bounds
    assert ".dae" in MESH_SUFFIXES and np.allclose(hi - lo, [0.5, 1.0, 0.25])


@pytest.mark.parametrize("suffix", [".3ds", ".fbx", ".blend", ".xyz"])
def test_unsupported_formats_name_the_supported_ones(tmp_path, suffix):
    path = _write(tmp_path / f"box{suffix}", b"MM\x00\x00not read")
    _refused(path, "format not supported; supported: " + ", ".join(MESH_SUFFIXES))


def _broken_gltf(tmp_path, change):
    path, tree = _gltf(tmp_path / "g")
    change(tree)
    path.write_text(json.dumps(tree) if not isinstance(tree, str) else tree)
    return path


@pytest.mark.parametrize(
    "change, fragment",
    [
        # trimesh said "(AssertionError)" for this one
        (lambda t: t["bufferViews"][1].update(byteLength=10000), "bufferView 1 (bytes 0 to 10000) runs past the end of buffer 1 (96 bytes)"),
        (lambda t: t["accessors"][0].update(count=35), "accessor 0: 35 indices are not whole triangles"),
        (lambda t: t["accessors"][1].update(count=80), "accessor 1 (bytes 0 to 960) runs past the end of bufferView 1 (96 bytes)"),
        (lambda t: t["accessors"][0].update(componentType=9999), "accessor 0: componentType 9999 is not a glTF component type"),
        (lambda t: t["meshes"][0]["primitives"][0].update(indices=99), "mesh 0 primitive 0: indices 99 is not an accessor"),
        (lambda t: t["bufferViews"][0].update(buffer=-1), "bufferView 0: buffer -1 is not a buffer"),
        (lambda t: t["asset"].update(version="1.0"), "glTF version 1.0"),
        (lambda t: t["buffers"][0].update(byteLength=1000), "buffer 0 declares 1000 bytes"),
    ],
)
def test_broken_gltf_says_what_is_wrong(tmp_path, change, fragment):
    _refused(_broken_gltf(tmp_path, change), fragment)


def test_gltf_and_glb_that_are_not_gltf(tmp_path):
    _refused(_write(tmp_path / "a.gltf", '{"asset": '), "not valid glTF JSON")
    _refused(_write(tmp_path / "b.gltf", "[1, 2]"), "not a glTF file")
    glb = trimesh.creation.box().export(file_type="glb")
    _refused(_write(tmp_path / "c.glb", b"XXXX" + glb[4:]), "not a GLB file")
    _refused(_write(tmp_path / "d.glb", glb[:40]), "runs past the end of the file")


def test_a_bare_assert_inside_a_reader_is_explained(tmp_path):
    # a reader module of its own (pytest rewrites the asserts of test modules, not of trimesh)
    source = _write(tmp_path / "reader.py", 'def read(view, data):\n    assert len(data) == view["byteLength"]\n')
    spec = importlib.util.spec_from_file_location("reader", source)
    reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)
    with pytest.raises(AssertionError) as e:
        reader.read({"byteLength": 10}, b"")
    assert meshfiles._reason(e.value) == 'the reader\'s consistency check `len(data) == view["byteLength"]` failed'
    with pytest.raises(KeyError) as e:
        {}["POSITION"]
    assert meshfiles._reason(e.value) == "KeyError: 'POSITION'"


# --------------------------------------------------------------------------
# 3. What the command line prints
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("trav.obj", "mtllib ../../../../etc/passwd\n" + TRI,
         "trav.obj refers to '../../../../etc/passwd', outside its folder: a mesh may only use files in its own folder"),
        ("huge.obj", "v 0 0 0\nv 1e308 0 0\nv 0 1 0\nf 1 2 3\n", "huge.obj: vertex coordinates reach 1e+308, beyond"),
        ("box.3ds", "MM\x00\x00", "box.3ds': format not supported; supported: " + ", ".join(MESH_SUFFIXES)),
    ],
)
def test_render_prints_one_line_and_exits_2(tmp_path, capsys, name, body, message):
    path = _write(tmp_path / name, body)
    out = tmp_path / "out.png"
    assert cli.main(["render", "--object", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("perturber: error: ") and message in err, err
    assert not out.exists()
