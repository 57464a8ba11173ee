"""Upload a mesh in the browser and see it computed live, as the original allowed.

The files come through a ``FileInput``: one mesh file (a format of
:data:`~perturber.pipeline.assets.MESH_SUFFIXES`) and, optionally, the files
it refers to (an OBJ's material library and textures, a glTF's buffers). They
are checked with the command line's own limits and one-line errors: the
upload's size before anything is written (:data:`~perturber.pipeline.meshes.MAX_MESH_BYTES`),
then :func:`~perturber.pipeline.meshes.load_mesh_file` on the written file
(triangles, coordinates, textures, references kept inside its folder).

Files are written only to the session's own temporary folder
(``perturber-upload-*``), removed when the session ends
(``on_session_destroyed``), when the panel is garbage-collected or at the
latest when the process exits (``weakref.finalize``).

Served, an upload travels to the server in one websocket message (base64):
the server must accept :data:`MAX_MESSAGE_BYTES` (Bokeh's default is 20 MiB,
which drops a mesh above about 15 MiB without a word).

A valid mesh is computed by the on-demand engine at every point the user
visits: the session's engine becomes a :class:`~perturber.viewer.live.Overlay`
that sets the object to the mesh's path, and live compute is turned on. While
it is shown, ``state.uploaded`` holds its file name and the page's notice says
that the grid views do not apply. Without an engine, or with workers on other
machines (they cannot read this server's files), the panel says in one line
why it cannot be computed.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from html import escape
from pathlib import Path
from typing import Any, Callable, Mapping

import panel as pn

from perturber.pipeline import assets, meshes
from perturber.pipeline.assets import AssetError
from perturber.pipeline.errors import one_line
from perturber.viewer import html, sessions
from perturber.viewer.live import LOCAL, EngineError, Overlay
from perturber.viewer.state import CubeState

__all__ = ["UploadPanel", "check_upload", "write_upload", "UPLOAD_PREFIX", "ACCEPT", "MAX_MESSAGE_BYTES"]

#: The session folders' name prefix (in the system's temporary folder).
UPLOAD_PREFIX = "perturber-upload-"
#: The websocket message an upload of MAX_MESH_BYTES needs (base64, plus room for the message around it).
MAX_MESSAGE_BYTES = meshes.MAX_MESH_BYTES * 4 // 3 + 2**20
#: What the file dialog offers: the mesh formats and the files a mesh may refer to.
ACCEPT = ",".join([*assets.MESH_SUFFIXES, ".mtl", ".bin", ".png", ".jpg", ".jpeg", ".bmp", ".tga", ".gif", ".webp"])


def check_upload(files: Mapping[str, bytes]) -> str:
    """The name of the one mesh file among uploaded ``files`` (file name → bytes),
    checked before anything is written: plain file names, exactly one mesh file of
    a supported format, and the command line's size limit over the whole upload.
    Raises :class:`AssetError` (one line, naming the file) otherwise."""
    if not files:
        raise AssetError("no file uploaded")
    for name in files:
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise AssetError(f"{name!r}: not a plain file name")
    found = [name for name in files if assets.mesh_format_problem(name) is None]
    if not found:
        name = next(iter(files))
        raise AssetError(f"{name}: {assets.mesh_format_problem(name)}")
    if len(found) > 1:
        raise AssetError(f"{', '.join(found)}: upload one mesh file at a time (with the files it refers to)")
    mesh = found[0]
    size = sum(len(data) for data in files.values())
    if size > meshes.MAX_MESH_BYTES:  # the limit of `perturber render --object FILE`, checked before writing
        what = "file is" if len(files) == 1 else "upload is"
        raise AssetError(f"{mesh}: {what} {size / 2**20:.0f} MiB, more than the limit of {meshes.MAX_MESH_BYTES // 2**20} MiB")
    return mesh


def write_upload(files: Mapping[str, bytes], folder: Path) -> tuple[Path, meshes.SceneObject]:
    """Check ``files`` (:func:`check_upload`), write them to a subfolder of ``folder``
    named by their contents (a new upload of other bytes under the same name is a
    new path, so no cache mistakes it for the old one) and load the mesh as the
    command line does. Returns (the mesh's path, the loaded object); one-line
    :class:`AssetError` otherwise (the subfolder is then removed)."""
    mesh = check_upload(files)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    where = Path(folder) / digest.hexdigest()[:16]
    where.mkdir(parents=True, exist_ok=True)
    try:
        for name, data in files.items():
            (where / name).write_bytes(data)
        return where / mesh, meshes.load_mesh_file(where / mesh)
    except BaseException:
        shutil.rmtree(where, ignore_errors=True)
        raise


def _cannot_compute(engine: Any) -> str:
    """Why ``engine`` cannot compute an uploaded mesh ('' when it can)."""
    if engine is None:
        return "live compute is off: start the viewer with --engine local (or the address of a Dask scheduler)"
    if not engine.on_this_machine():
        return (f"the engine's workers ({engine.where}) are not all on this machine and cannot read the file; "
                "start the viewer with --engine local")
    return ""


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class UploadPanel:
    """A file input for a mesh, its status line, and a button back to the cube's object.

    ``state`` is the session's :class:`~perturber.viewer.state.CubeState`;
    ``folder`` (for tests) replaces the session's temporary folder.
    """

    def __init__(self, state: CubeState, folder: str | Path | None = None):
        self.state = state
        self.input = pn.widgets.FileInput(accept=ACCEPT, multiple=True, css_classes=["pt-upload-input"],
                                          sizing_mode="stretch_width")
        self.back = pn.widgets.Button(label="back to the cube's object", visible=False, css_classes=["pt-upload-back"])
        self.status = html.pane(self._line(""), sizing_mode="stretch_width")
        self.mesh = ""  # the file name of the mesh shown ("" none)
        self.path: Path | None = None
        self._engine: Any = None  # the session's engine before the overlay
        self._live_before = False
        self._folder = Path(folder) if folder is not None else None
        self._own_folder: weakref.finalize | None = None
        self.input.param.watch(self._received, "value")
        self.back.on_click(lambda _: self.clear())
        state.param.watch(self._changed, ["changed"])
        state.param.watch(self._live_switched, ["live_on"])
        if sessions.served() is not None:
            pn.state.on_session_destroyed(lambda _context: self.close())

    def __panel__(self) -> pn.Column:
        title = html.pane("<div class='pt-group'>Your mesh</div><div class='pt-small'>One mesh file ("
                          + escape(", ".join(assets.MESH_SUFFIXES)) + ") and the files it refers to; computed live "
                          "by the engine.</div>", sizing_mode="stretch_width")
        return pn.Column(title, self.input, self.status, self.back, sizing_mode="stretch_width", css_classes=["pt-upload"])

    # ------------------------------------------------------------------ the folder

    @property
    def folder(self) -> Path:
        """The session's temporary folder, made at the first upload."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))
            self._own_folder = weakref.finalize(self, shutil.rmtree, str(self._folder), ignore_errors=True)
        return self._folder

    def close(self) -> None:
        """The session ended: its folder (and every file uploaded in it) is removed."""
        if self._own_folder is not None:
            self._own_folder()

    # ------------------------------------------------------------------ an upload

    def _received(self, event: Any) -> None:
        if not event.new:
            return
        values = event.new if isinstance(event.new, list) else [event.new]
        names = self.input.filename if isinstance(self.input.filename, list) else [self.input.filename]
        files = {str(name): _bytes(value) for name, value in zip(names, values)}
        self.upload(files)

    def upload(self, files: Mapping[str, bytes]) -> None:
        """Check, write and load ``files`` (file name → bytes), then show the mesh.
        Served, the reading runs in a thread of the viewer's own bounded work and
        the result comes back on the session's event loop; otherwise at once."""
        self._say(f"reading {', '.join(files)}…")
        engine = self._engine if self.mesh else self.state.engine  # the session's own, not an earlier upload's overlay
        deliver = sessions.on_loop()
        if deliver is None:
            self._shown(*self._read(dict(files), engine))
            return
        try:
            LOCAL.start(f"{self.state.session}/upload", self._read_then, dict(files), engine, deliver)
        except EngineError as exc:
            self._say(f"upload refused: {exc}", error=True)

    def _read_then(self, files: dict[str, bytes], engine: Any, deliver: Callable[[Callable[[], Any]], Any]) -> None:
        result = self._read(files, engine)
        deliver(lambda: self._shown(*result))

    def _read(self, files: dict[str, bytes], engine: Any) -> tuple[Path | None, str, str]:
        """(the mesh's path or None, what is wrong or what it is, why the engine
        cannot compute it ('' when it can)): one line each."""
        try:
            path, obj = write_upload(files, self.folder)
        except AssetError as exc:
            return None, one_line(exc), ""
        except Exception as exc:  # anything else reading a user's file: one line, the details in the log
            return None, sessions.failure("reading the upload", exc), ""
        why = _cannot_compute(engine)
        if why:
            shutil.rmtree(path.parent, ignore_errors=True)  # nothing will read it
        return path, f"{path.name}: {sum(len(p.faces) for p in obj.parts)} triangles", why

    def _shown(self, path: Path | None, line: str, why: str) -> None:
        """Show a read upload (on the session's loop): live, or one line saying why not."""
        if path is None:
            self._say(line, error=True)
            return
        if why:
            self._say(f"{line}, a valid mesh, but it cannot be computed: {why}", error=True)
            return
        self.clear(quiet=True)
        state = self.state
        self.mesh, self.path = path.name, path
        self._engine, self._live_before = state.engine, state.live_on
        state.engine = self._engine.with_values({"object": str(path)})
        state.uploaded = path.name
        self.back.visible = True
        self._say(f"{line}, computed live at every point; the grid views do not apply to it")
        if state.live_on:
            state.param.trigger("live_on")  # a new request at the same point, now with the mesh
        else:
            state.live_on = True

    def clear(self, quiet: bool = False) -> None:
        """Back to the cube's own object: the engine as it was, live compute as it
        was before the upload (``quiet``: the state's live compute left as it is)."""
        if not self.mesh:
            return
        state, path = self.state, self.path
        self.mesh, self.path = "", None
        state.engine = self._engine
        state.uploaded = ""
        self.back.visible = False
        if state.notice == self.notice(path.name):
            state.notice = ""
        if not quiet:
            self._say("")
            if state.live_on and not self._live_before:
                state.live_on = False
            elif state.live_on:
                state.param.trigger("live_on")  # recompute the point with the cube's object
        shutil.rmtree(path.parent, ignore_errors=True)

    # ------------------------------------------------------------------ what the page says

    @staticmethod
    def notice(name: str) -> str:
        """The page's one line while ``name`` is shown."""
        return (f"Showing your mesh {name}, computed live: the grid views (landscape, failures, sensitivity, scatter) "
                "read the cube's grid and do not apply to it.")

    def _changed(self, *_: Any) -> None:
        """Every change clears the state's notice; while a mesh is shown, it says so again."""
        if self.mesh and isinstance(self.state.engine, Overlay) and self.state.notice != self.notice(self.mesh):
            self.state.notice = self.notice(self.mesh)

    def _live_switched(self, event: Any) -> None:
        if self.mesh and not event.new:  # live compute turned off: the grid again, without the mesh
            self._live_before = False
            self.clear()

    def _line(self, text: str, error: bool = False) -> str:
        css = "pt-upload-status pt-failed" if error else "pt-upload-status"
        return f"<div class='{css}'>{escape(text)}</div>"

    def _say(self, text: str, error: bool = False) -> None:
        self.status.object = self._line(text, error)
