"""Reading a user's mesh file safely: the files it refers to, and what is wrong with it.

A mesh may refer to other files: an OBJ to its material library and the
textures that library names, a glTF to its buffers and images, a Collada file
to its images, an AC3D file to its textures. Every such file is read through
:class:`FolderResolver`, which serves files from the mesh's own folder only: a
reference that is absolute, climbs out with ``..`` or leads out through a link
is refused, as is one that is missing or an unreadable texture. trimesh asks
the resolver for every file any of its readers needs, and the AC3D reader
uses it too, so this holds for every format, not for one that was grepped.
(``data:`` URIs carry their bytes inline and read nothing.)

A glTF's structure (buffers, views, accessors, the indices between them) is
checked before trimesh reads it, so a broken one is named precisely ("bufferView
1 runs past the end of buffer 1") instead of failing deep inside trimesh.

Every problem is an :class:`~perturber.pipeline.assets.AssetError` of one line
that starts with the mesh file's name.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import mmap
import os
import threading
import traceback
import urllib.parse
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator

import trimesh
from PIL import Image

from perturber.pipeline.assets import MAX_TEXTURE_PIXELS, AssetError  # the limit of every texture image
from perturber.pipeline.errors import one_line

__all__ = ["MAX_TEXTURE_PIXELS", "FolderResolver", "read_trimesh", "check_gltf"]

_IMAGE_SUFFIXES = frozenset(Image.registered_extensions())


class FolderResolver(trimesh.resolvers.Resolver):
    """trimesh's resolver for the files a mesh refers to, confined to the mesh's folder.

    Some of trimesh's readers catch a failed lookup (a missing texture leaves a
    mesh untextured), so the first problem is also kept in ``problem`` and
    :func:`read_trimesh` raises it after loading.
    """

    def __init__(self, mesh: Path):
        self.mesh = Path(mesh)
        self.folder = self.mesh.parent.resolve()
        self.file_name = self.mesh.name  # trimesh's OBJ reader names materials after it
        self.problem: str | None = None

    def _refuse(self, reason: str) -> AssetError:
        message = f"{self.mesh.name} {reason}"
        self.problem = self.problem or message
        return AssetError(message)

    def path(self, name: str) -> Path:
        """The file that ``name``, as written in the mesh, refers to: inside the folder and present."""
        text = str(name).strip()
        candidates = dict.fromkeys([text.replace("\\", "/"), urllib.parse.unquote(text).replace("\\", "/")])
        for candidate in candidates:  # as written, then %-decoded (glTF URIs are URI-encoded)
            if not candidate:
                raise self._refuse("refers to a file with an empty name")
            if os.path.isabs(candidate) or PureWindowsPath(candidate).drive:
                raise self._refuse(f"refers to {name!r}, an absolute path: a mesh may only use files in its own folder")
            path = (self.folder / candidate).resolve()  # resolves '..' and links
            if not path.is_relative_to(self.folder):
                raise self._refuse(f"refers to {name!r}, outside its folder: a mesh may only use files in its own folder")
            if path.is_file():
                return path
        raise self._refuse(f"refers to {name!r}, which is not in its folder")

    def get(self, name: str) -> bytes:
        """The bytes of ``name`` (a file in the folder, or a ``data:`` URI); textures are checked."""
        text = str(name).strip()
        if text.startswith("data:"):
            header, _, payload = text.partition(",")
            return base64.b64decode(payload) if header.endswith(";base64") else urllib.parse.unquote_to_bytes(payload)
        path = self.path(text)
        data = path.read_bytes()
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            self._check_texture(data, text)
        return data

    def _check_texture(self, data: bytes, name: str) -> None:
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_TEXTURE_PIXELS:
                    raise self._refuse(f"texture {name!r} is too large ({image.width}x{image.height} pixels)")
                image.load()
        except AssetError:
            raise
        except Exception as exc:  # PIL: unknown format, truncated data, decompression bomb
            raise self._refuse(f"texture {name!r} cannot be read ({one_line(exc)})") from None

    # trimesh's Resolver interface: reading is all a mesh may do
    def keys(self) -> Iterator[str]:
        return iter(())

    def write(self, name: str, data: Any) -> None:
        raise self._refuse(f"tried to write {name!r}")

    def namespaced(self, namespace: str) -> "FolderResolver":
        return self


class _QuietTrimesh(logging.Filter):
    """Drops trimesh's log records in a thread that is reading a mesh: its readers
    log a caught failure with a traceback, and the failure is reported here instead."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "active", False)


_QUIET = _QuietTrimesh()
trimesh.util.log.addFilter(_QUIET)  # the logger every trimesh module logs to (a filter sees its own records only)


@contextlib.contextmanager
def _quiet_trimesh() -> Iterator[None]:
    _QUIET.local.active = True
    try:
        yield
    finally:
        _QUIET.local.active = False


def read_trimesh(path: Path) -> trimesh.Scene:
    """Read a mesh file that trimesh understands into a scene; every referenced file
    comes through a :class:`FolderResolver`. One-line :class:`AssetError` otherwise."""
    resolver = FolderResolver(path)
    suffix = path.suffix.lower()
    if suffix in (".gltf", ".glb"):
        check_gltf(path, resolver)
    options = {"skip_materials": True} if suffix == ".obj" and _stray_mtllib(path) else {}
    try:
        with _quiet_trimesh(), open(path, "rb") as f:  # a file object: trimesh never interprets the path
            loaded = trimesh.load(f, file_type=suffix[1:], force="scene", process=False, resolver=resolver, **options)
    except AssetError:
        raise
    except Exception as exc:
        if resolver.problem:
            raise AssetError(resolver.problem) from None
        raise AssetError(f"{path.name}: cannot read mesh ({_reason(exc)})") from None
    if resolver.problem:
        raise AssetError(resolver.problem)
    return loaded


def _stray_mtllib(path: Path) -> bool:
    """Whether the first 'mtllib' in an OBJ file is not an ``mtllib`` statement (a
    comment, a material named 'mtllib_red'). trimesh's OBJ reader takes the first
    'mtllib' anywhere as the library's name; it found no materials in such a file
    before, and skipping them keeps it so, instead of asking for a file named '_red'."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as text:
        at = text.find(b"mtllib")
        return at >= 0 and text[text.rfind(b"\n", 0, at) + 1 : at].strip() != b""


def _reason(exc: BaseException) -> str:
    """One line for an exception from a reader: its message, with its type where the
    message alone says little, or the failed check's source line for a bare assert."""
    if isinstance(exc, AssertionError) and not str(exc).strip():
        frames = traceback.extract_tb(exc.__traceback__)
        line = frames[-1].line if frames else ""
        return f"the reader's consistency check `{line.removeprefix('assert ')}` failed" if line else "AssertionError"
    return one_line(exc, typed=isinstance(exc, (KeyError, IndexError, TypeError, AttributeError)))


# --------------------------------------------------------------------------
# glTF structure
# --------------------------------------------------------------------------

_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


def check_gltf(path: Path, resolver: FolderResolver) -> None:
    """Check a .gltf/.glb file's structure: its JSON, buffers (each present and as
    long as declared), buffer views inside their buffers, accessors inside their
    views, and every index between them. One-line :class:`AssetError` naming the
    first problem."""
    try:
        tree, binary = _read_gltf(path)
        _check_structure(tree, binary, resolver)
    except _GltfProblem as problem:
        raise AssetError(f"{path.name}: {problem}") from None


class _GltfProblem(Exception):
    pass


def _read_gltf(path: Path) -> tuple[dict, int | None]:
    """(the glTF JSON, the length of a GLB's binary chunk or None)."""
    size = path.stat().st_size
    binary = None
    with open(path, "rb") as f:
        if path.suffix.lower() == ".glb":
            head = f.read(20)
            if head[:4] != b"glTF":
                raise _GltfProblem("not a GLB file (no glTF header)")
            if len(head) < 20:
                raise _GltfProblem("the GLB header runs past the end of the file")
            version, _, length = (int.from_bytes(head[i : i + 4], "little") for i in (4, 8, 12))
            if version != 2:
                raise _GltfProblem(f"glTF version {version}: only glTF 2 is supported")
            if head[16:20] != b"JSON":
                raise _GltfProblem("the GLB's first chunk is not JSON")
            if 20 + length > size:
                raise _GltfProblem(f"the GLB's JSON chunk ({length} bytes) runs past the end of the file ({size} bytes)")
            text = f.read(length)
            chunk = f.read(8)
            if len(chunk) == 8 and chunk[4:] == b"BIN\x00":
                binary = int.from_bytes(chunk[:4], "little")
                if 28 + length + binary > size:
                    raise _GltfProblem(f"the GLB's binary chunk ({binary} bytes) runs past the end of the file ({size} bytes)")
        else:
            text = f.read()
    try:
        tree = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _GltfProblem(f"not valid glTF JSON ({one_line(exc)})") from None
    if not isinstance(tree, dict):
        raise _GltfProblem(f"not a glTF file (its JSON is a {type(tree).__name__}, not an object)")
    return tree, binary


def _objects(parent: dict, key: str) -> list[dict]:
    value = parent.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _GltfProblem(f"{key} must be a list of objects")
    return value


def _whole(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _GltfProblem(f"{where} must be a whole number, not {value!r}")
    return value


def _index(value: Any, count: int, where: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
        raise _GltfProblem(f"{where} {value!r} is not {what} (the file has {count})")
    return value


def _check_structure(tree: dict, binary: int | None, resolver: FolderResolver) -> None:
    asset = tree.get("asset", {})
    version = str(asset.get("version", "2.0")) if isinstance(asset, dict) else "?"
    if not version.startswith("2"):
        raise _GltfProblem(f"glTF version {version}: only glTF 2 is supported")
    sizes = []
    for i, buffer in enumerate(_objects(tree, "buffers")):
        declared = _whole(buffer.get("byteLength"), f"buffer {i}: byteLength")
        uri = buffer.get("uri")
        if uri is None:
            if i != 0 or binary is None:
                raise _GltfProblem(f"buffer {i} has no uri and the file has no binary chunk")
            actual = binary
        elif not isinstance(uri, str):
            raise _GltfProblem(f"buffer {i}: uri must be text")
        elif uri.startswith("data:"):
            actual = len(resolver.get(uri))
        else:
            actual = resolver.path(uri).stat().st_size
        if actual < declared:
            raise _GltfProblem(f"buffer {i} declares {declared} bytes, its data has {actual}")
        sizes.append(declared)
    views = _objects(tree, "bufferViews")
    for i, view in enumerate(views):
        b = _index(view.get("buffer"), len(sizes), f"bufferView {i}: buffer", "a buffer")
        start = _whole(view.get("byteOffset", 0), f"bufferView {i}: byteOffset")
        end = start + _whole(view.get("byteLength"), f"bufferView {i}: byteLength")
        if end > sizes[b]:
            raise _GltfProblem(f"bufferView {i} (bytes {start} to {end}) runs past the end of buffer {b} ({sizes[b]} bytes)")
        stride = view.get("byteStride")
        if stride is not None and not (isinstance(stride, int) and 4 <= stride <= 252):
            raise _GltfProblem(f"bufferView {i}: byteStride {stride!r} is not between 4 and 252")
    accessors = _objects(tree, "accessors")
    for i, accessor in enumerate(accessors):
        component, kind = accessor.get("componentType"), accessor.get("type")
        if component not in _COMPONENT_BYTES:
            raise _GltfProblem(f"accessor {i}: componentType {component!r} is not a glTF component type")
        if kind not in _TYPE_SIZES:
            raise _GltfProblem(f"accessor {i}: type {kind!r} is not a glTF accessor type")
        count = _whole(accessor.get("count"), f"accessor {i}: count")
        if "bufferView" in accessor:
            v = _index(accessor["bufferView"], len(views), f"accessor {i}: bufferView", "a bufferView")
            element = _COMPONENT_BYTES[component] * _TYPE_SIZES[kind]
            start = _whole(accessor.get("byteOffset", 0), f"accessor {i}: byteOffset")
            end = start + (count - 1) * (views[v].get("byteStride") or element) + element if count else start
            if end > views[v]["byteLength"]:
                raise _GltfProblem(
                    f"accessor {i} (bytes {start} to {end}) runs past the end of bufferView {v} ({views[v]['byteLength']} bytes)")
    for m, mesh in enumerate(_objects(tree, "meshes")):
        for p, primitive in enumerate(_objects(mesh, "primitives")):
            _check_primitive(primitive, f"mesh {m} primitive {p}", accessors)
    images, textures = _objects(tree, "images"), _objects(tree, "textures")
    for i, image in enumerate(images):
        if "bufferView" in image:
            _index(image["bufferView"], len(views), f"image {i}: bufferView", "a bufferView")
    for i, texture in enumerate(textures):
        if "source" in texture:
            _index(texture["source"], len(images), f"texture {i}: source", "an image")
    nodes = _objects(tree, "nodes")
    for i, node in enumerate(nodes):
        if "mesh" in node:
            _index(node["mesh"], len(tree.get("meshes", [])), f"node {i}: mesh", "a mesh")
        for child in node.get("children", []):
            _index(child, len(nodes), f"node {i}: child", "a node")
    for s, scene in enumerate(_objects(tree, "scenes")):
        for node in scene.get("nodes", []):
            _index(node, len(nodes), f"scene {s}: node", "a node")


def _check_primitive(primitive: dict, where: str, accessors: list[dict]) -> None:
    attributes = primitive.get("attributes", {})
    if not isinstance(attributes, dict):
        raise _GltfProblem(f"{where}: attributes must be an object")
    for name, value in attributes.items():
        _index(value, len(accessors), f"{where}: attribute {name}", "an accessor")
    if primitive.get("mode", 4) != 4:  # points, lines, strips and fans: trimesh reads what it can
        return
    if "indices" in primitive:
        i = _index(primitive["indices"], len(accessors), f"{where}: indices", "an accessor")
        if accessors[i]["count"] % 3:
            raise _GltfProblem(f"accessor {i}: {accessors[i]['count']} indices are not whole triangles (not a multiple of 3)")
    elif "POSITION" in attributes and accessors[attributes["POSITION"]]["count"] % 3:
        raise _GltfProblem(f"{where}: {accessors[attributes['POSITION']]['count']} vertices without indices are not whole triangles")
