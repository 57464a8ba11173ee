"""A mesh uploaded in the viewer (viewer.panels.upload): checked with the command
line's limits and one-line errors, written only to the session's temporary
folder, computed live by the on-demand engine at every point, and the folder
gone when the session ends. Real meshes (the catalogue's, exported by
trimesh), the real command line, a real LocalCluster and Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import ROOT, free_port

from perturber.pipeline import cli, meshes, run, spec
from perturber.pipeline.assets import AssetError
from perturber.viewer.live import LiveEngine
from perturber.viewer.panels.upload import UPLOAD_PREFIX, UploadPanel, check_upload, write_upload
from perturber.viewer.state import CubeState

expect = pytest.importorskip("playwright.sync_api").expect

MODELS = ["efficientnet_lite0"]
SPEC = {"name": "upload", "cubes": {"views": {
    "axes": {"object": ["dog"], "yaw": [0.0, 90.0]}, "models": MODELS, "layers": ["head"], "neurons": {"head": 2},
    "images": True}}}


def _exported(object_id: str, file_type: str) -> bytes:
    """A catalogue object as trimesh writes it (``file_type``: ply, stl, glb, obj ...)."""
    vertices, faces = meshes.load_object(object_id).merged()
    return trimesh.Trimesh(vertices, faces, process=False).export(file_type=file_type)


def _cli_error(path: Path, capsys) -> str:
    """What `perturber render --object PATH` prints for a bad mesh file (its one line, without the prefix)."""
    assert cli.main(["render", "--object", str(path), "-o", str(path.parent / "out.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("perturber: error: "), err
    return err.removeprefix("perturber: error: ").strip()


# ------------------------------------------------------------------ what is checked, and how it is said


def test_a_real_mesh_is_written_to_its_folder_and_loads(tmp_path):
    files = {"cat.ply": _exported("cat", "ply")}
    assert check_upload(files) == "cat.ply"
    path, obj = write_upload(files, tmp_path)
    assert path.parent.parent == tmp_path and path.read_bytes() == files["cat.ply"]
    assert sum(len(p.faces) for p in obj.parts) == len(meshes.load_object("cat").merged()[1])
    again, _ = write_upload({"cat.ply": _exported("dog", "ply")}, tmp_path)  # other bytes, same name: another path
    assert again.name == "cat.ply" and again != path


def test_a_broken_file_is_refused_with_the_command_lines_line(tmp_path, capsys):
    broken = {"broken.glb": b"glTF" + (2).to_bytes(4, "little") + (999).to_bytes(4, "little") + b"\x10\x00\x00\x00JSON{}"}
    with pytest.raises(AssetError) as upload:
        write_upload(broken, tmp_path / "session")
    line = str(upload.value)
    assert line.startswith("broken.glb: ") and "\n" not in line
    on_disk = tmp_path / "broken.glb"
    on_disk.write_bytes(broken["broken.glb"])
    assert _cli_error(on_disk, capsys) == line
    assert list((tmp_path / "session").iterdir()) == []  # nothing left behind
    huge = {"huge.obj": b"v 0 0 0\nv 1e308 0 0\nv 0 1 0\nf 1 2 3\n"}
    with pytest.raises(AssetError, match="^huge.obj: vertex coordinates reach 1e\\+308, beyond") as upload:
        write_upload(huge, tmp_path / "session")
    (tmp_path / "huge.obj").write_bytes(huge["huge.obj"])
    assert _cli_error(tmp_path / "huge.obj", capsys) == str(upload.value)


def test_an_over_limit_upload_is_refused_before_anything_is_written(tmp_path, capsys):
    mesh = _exported("cat", "ply")
    big = mesh + b"\0" * (meshes.MAX_MESH_BYTES + 1 - len(mesh))  # a real file one byte over the limit
    with pytest.raises(AssetError) as upload:
        write_upload({"cat.ply": big}, tmp_path / "session")
    assert not (tmp_path / "session").exists()
    on_disk = tmp_path / "cat.ply"
    with open(on_disk, "wb") as f:  # the same size on disk (sparse), for the command line
        f.truncate(len(big))
    assert _cli_error(on_disk, capsys) == str(upload.value) == "cat.ply: file is 200 MiB, more than the limit of 200 MiB"
    with pytest.raises(AssetError, match=r"^cat.ply: upload is 200 MiB, more than the limit of 200 MiB$"):
        check_upload({"cat.ply": mesh, "cat.png": big[len(mesh):]})  # the whole upload counts


@pytest.mark.parametrize("files, message", [
    ({"box.3ds": b"MM"}, "box.3ds: format not supported; supported: .obj, .glb, .gltf, .ply, .stl, .off, .dae, .ac"),
    ({"a.obj": b"v", "b.ply": b"p"}, "a.obj, b.ply: upload one mesh file at a time (with the files it refers to)"),
    ({"../a.obj": b"v"}, "'../a.obj': not a plain file name"),
    ({}, "no file uploaded"),
])
def test_what_an_upload_may_hold(files, message):
    with pytest.raises(AssetError) as e:
        check_upload(files)
    assert str(e.value) == message


def test_a_reference_outside_the_upload_is_refused(tmp_path):
    (tmp_path / "secret.mtl").write_text("newmtl a\nKd 1 0 0\n")
    files = {"tri.obj": b"mtllib ../../secret.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"}
    with pytest.raises(AssetError, match="^tri.obj refers to '../../secret.mtl', outside its folder"):
        write_upload(files, tmp_path / "session")
    textured = {"tri.obj": b"mtllib tri.mtl\nusemtl a\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
                "tri.mtl": b"newmtl a\nKd 1 0 0\n"}
    path, obj = write_upload(textured, tmp_path / "session")  # the files it refers to come with it
    assert obj.parts[0].colour[:3] == (1.0, 0.0, 0.0)


# ------------------------------------------------------------------ the panel, without a server


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("upload") / "u.zarr")
    run.precompute(spec.parse_spec(SPEC), out, scheduler="synchronous", progress=False)
    return out


@pytest.fixture(scope="module")
def live():
    engine = LiveEngine(max_pending=2, timeout=120)
    yield engine
    engine.close()


@pytest.mark.slow
def test_an_uploaded_mesh_is_computed_live_at_every_point(cube, live):
    state = CubeState(cube, "views", engine=live)
    grid = [state.image()]
    state.yaw = 90.0
    grid.append(state.image())
    state.yaw = 0.0
    panel = UploadPanel(state)
    panel.upload({"teapot.ply": _exported("teapot", "ply")})
    folder = panel.folder
    assert folder.name.startswith(UPLOAD_PREFIX) and panel.path.parent.parent == folder
    assert state.live_on and state.uploaded == "teapot.ply" and "computed in" in state.live_status, state.live_status
    assert state.notice == UploadPanel.notice("teapot.ply")
    here = state.live_result
    assert np.abs(state.image().astype(int) - grid[0].astype(int)).mean() > 3  # a teapot, not the dog
    state.live_value = 45.0  # the live control (the live factor is yaw): the teapot, turned, computed live
    assert state.uploaded == "teapot.ply" and "yaw = 45, computed in" in state.live_status, state.live_status
    assert not np.array_equal(state.image(), here.image) and state.notice == UploadPanel.notice("teapot.ply")
    turned = state.image()
    state.yaw = 90.0  # a grid control clears nothing: still the teapot
    assert state.uploaded == "teapot.ply" and np.array_equal(state.image(), turned)
    assert state.notice == UploadPanel.notice("teapot.ply")
    panel.clear()  # back to the dog, on the grid (live compute was off before the upload)
    assert not state.live_on and state.uploaded == "" and state.notice == ""
    assert np.array_equal(state.image(), grid[1])
    assert list(folder.iterdir()) == []  # the cleared mesh's files are gone
    panel.close()
    assert not folder.exists()


@pytest.mark.slow
def test_without_an_engine_the_upload_says_why(cube, tmp_path):
    state = CubeState(cube, "views")
    panel = UploadPanel(state, folder=tmp_path)
    panel.upload({"teapot.ply": _exported("teapot", "ply")})
    status = panel.status.object
    assert "teapot.ply: " in status and "a valid mesh, but it cannot be computed: live compute is off" in status
    assert not state.live_on and not getattr(state, "uploaded", "") and list(tmp_path.iterdir()) == []
    panel.upload({"box.3ds": b"MM"})
    assert "box.3ds: format not supported" in panel.status.object and "pt-failed" in panel.status.object


# ------------------------------------------------------------------ in the browser

APP = """
import sys
import panel as pn
from perturber.viewer import html
from perturber.viewer.live import LiveEngine
from perturber.viewer.panels.model_input import InputPanel
from perturber.viewer.panels.upload import MAX_MESSAGE_BYTES, UploadPanel
from perturber.viewer.state import CubeState

engine = LiveEngine(timeout=120)

def page():
    state = CubeState(sys.argv[1], "views", engine=engine)
    notice = html.pane(pn.bind(lambda line: f"<div class='pt-notice'>{line}</div>", state.param.notice))
    return pn.Column(UploadPanel(state), notice, InputPanel(state))

pn.serve({"/": page}, port=int(sys.argv[2]), address="127.0.0.1", show=False,
         check_unused_sessions_milliseconds=300, unused_session_lifetime_milliseconds=300,
         websocket_max_message_size=MAX_MESSAGE_BYTES)
"""


@pytest.mark.slow
@pytest.mark.browser
def test_upload_in_the_browser_and_the_folder_goes_with_the_session(cube, browser, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    mesh = tmp_path / "teapot.ply"
    mesh.write_bytes(_exported("teapot", "ply"))
    broken = tmp_path / "broken.obj"
    broken.write_bytes(b"v 0 0 0\nv 1e308 0 0\nv 0 1 0\nf 1 2 3\n")
    large = tmp_path / "large.ply"  # above Bokeh's default websocket message (20 MiB): it must arrive all the same
    large.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n" + b"\0" * (24 * 2**20))
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-c", APP, cube, str(port)], cwd=ROOT, env=env, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT)
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    try:
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for _ in range(300):
            try:
                page.goto(f"http://127.0.0.1:{port}/")
                break
            except Exception:
                assert server.poll() is None, log.read_text()
                time.sleep(0.3)
        page.wait_for_selector("img.pt-input", timeout=60_000)
        grid = page.get_attribute("img.pt-input", "src")
        chooser = page.locator(".pt-upload-input input[type=file]")
        chooser.set_input_files(str(broken))
        status = page.locator(".pt-upload-status")
        expect(status).to_contain_text("broken.obj: vertex coordinates reach 1e+308", timeout=60_000)
        chooser.set_input_files(str(large))
        expect(status).to_contain_text("large.ply: cannot read mesh", timeout=60_000)  # the reader's one line
        chooser.set_input_files(str(mesh))
        expect(page.locator(".pt-notice")).to_contain_text("Showing your mesh teapot.ply", timeout=120_000)
        expect(page.locator("img.pt-input")).not_to_have_attribute("src", grid, timeout=120_000)
        expect(page.locator(".pt-live")).to_contain_text("LIVE", timeout=30_000)
        folders = list(temp.glob(UPLOAD_PREFIX + "*"))
        assert len(folders) == 1 and [p.name for p in folders[0].glob("*/*")] == ["teapot.ply"]
        assert not errors, errors
        page.close()
        deadline = time.time() + 30
        while folders[0].exists() and time.time() < deadline:
            time.sleep(0.2)
        assert not folders[0].exists(), log.read_text()
        assert server.poll() is None  # the server lives on; only the session ended
    finally:
        context.close()
        server.kill()
