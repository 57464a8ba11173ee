"""3D meshes: reading, validating and normalising a mesh file into parts.

A mesh loads as a :class:`SceneObject` (parts with colour, texture and UVs),
normalised: rotated as asked, bounding box centred at the origin, largest
side 1. Files are checked before use (format, size, triangles, finite and
sane coordinates); the files a mesh refers to (materials, textures, buffers)
come from its own folder only (:mod:`perturber.pipeline.meshfiles`). A broken
file is a one-line :class:`~perturber.pipeline.assets.AssetError` that names
it. :func:`load_object` loads a catalogue object (or a user's mesh path) and
keeps it.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image
from trimesh.transformations import euler_matrix

from perturber.pipeline import assets, config
from perturber.pipeline.ac3d import read_ac3d
from perturber.pipeline.assets import AssetError
from perturber.pipeline.errors import one_line
from perturber.pipeline.meshfiles import MAX_TEXTURE_PIXELS, FolderResolver, read_trimesh

__all__ = [
    "Part", "SceneObject", "MAX_MESH_BYTES", "MAX_FACES", "MAX_TEXTURE_PIXELS", "MAX_COORDINATE",
    "load_mesh_file", "load_object",
]

#: Limits for a user's mesh file: bytes on disk, faces (texture pixels: meshfiles).
MAX_MESH_BYTES = 200 * 1024 * 1024
MAX_FACES = 2_000_000
#: Largest vertex coordinate, in the file's own units. Real models stay far
#: below it in any unit (a 1000 km terrain in millimetres is 1e9); beyond it the
#: numbers are corrupt, and near 1e308 the bounding box overflows to inf.
MAX_COORDINATE = 1e12


@dataclass
class Part:
    """Triangles sharing one material.

    ``vertices`` (N, 3) float64, ``faces`` (M, 3) int64, ``uv`` (N, 2) texture
    coordinates or None, ``image`` (h, w, 3|4) uint8 texture or None,
    ``colour`` RGBA in [0, 1] (multiplies the texture).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray | None = None
    image: np.ndarray | None = None
    colour: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 1.0)


@dataclass
class SceneObject:
    """A normalised 3D object: parts, plus where it came from."""

    id: str
    parts: list[Part]
    attribution: str = ""
    licence: str = ""
    classes: list[str] = field(default_factory=list)

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        """All parts' triangles as one soup: vertices (N, 3), faces (M, 3)."""
        offsets = np.cumsum([0] + [len(p.vertices) for p in self.parts])
        vertices = np.concatenate([p.vertices for p in self.parts])
        faces = np.concatenate([p.faces + o for p, o in zip(self.parts, offsets)])
        return vertices, faces

    @property
    def bounds(self) -> np.ndarray:
        vertices, _ = self.merged()
        return np.stack([vertices.min(0), vertices.max(0)])


def _rotation(degrees: list[float]) -> np.ndarray:
    return euler_matrix(*np.radians(degrees), axes="sxyz")[:3, :3]


def _normalise(parts: list[Part], rotate: list[float] | None = None) -> list[Part]:
    """Rotate, centre the bounding box at the origin and scale the largest side to 1."""
    rot = _rotation(rotate or [0, 0, 0])
    for p in parts:
        p.vertices = p.vertices @ rot.T
    allv = np.concatenate([p.vertices for p in parts])
    lo, hi = allv.min(0), allv.max(0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise AssetError("mesh has zero size (all vertices coincide)")
    centre = (lo + hi) / 2
    for p in parts:
        p.vertices = (p.vertices - centre) / extent
        if not (np.isfinite(p.vertices).all() and np.abs(p.vertices).max() <= 0.5 + 1e-6):
            raise AssetError("mesh coordinates do not normalise to a finite unit box")
    return parts


def _image_array(image: Any) -> np.ndarray | None:
    if image is None:
        return None
    if not isinstance(image, Image.Image):
        return None
    if image.width * image.height > MAX_TEXTURE_PIXELS:
        raise AssetError(f"texture is too large ({image.width}x{image.height} pixels)")
    mode = "RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"
    return np.asarray(image.convert(mode))


def _parts_from_trimesh(loaded: Any) -> list[Part]:
    if isinstance(loaded, trimesh.Trimesh):
        meshes = [loaded]
    elif isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
    else:
        meshes = []
    parts = []
    for mesh in meshes:
        if len(mesh.faces) == 0:
            continue
        uv = image = None
        colour = (0.8, 0.8, 0.8, 1.0)
        visual = mesh.visual
        if isinstance(visual, trimesh.visual.TextureVisuals):
            material = visual.material
            if hasattr(material, "baseColorTexture"):  # PBR (glTF)
                image = _image_array(material.baseColorTexture)
                if material.baseColorFactor is not None:
                    colour = tuple(np.asarray(material.baseColorFactor, dtype=float) / 255.0)
            else:
                image = _image_array(getattr(material, "image", None))
                diffuse = getattr(material, "diffuse", None)
                if diffuse is not None:
                    colour = tuple(np.asarray(diffuse, dtype=float) / 255.0)
            if image is not None and visual.uv is not None and len(visual.uv) == len(mesh.vertices):
                uv = np.asarray(visual.uv, dtype=np.float64)
                colour = (1.0, 1.0, 1.0, colour[3]) if colour[:3] == (0.8, 0.8, 0.8) else colour
            else:
                image = None
        elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind is not None:
            colour = tuple(np.asarray(visual.main_color, dtype=float) / 255.0)
        parts.append(
            Part(
                vertices=np.asarray(mesh.vertices, dtype=np.float64),
                faces=np.asarray(mesh.faces, dtype=np.int64),
                uv=uv,
                image=image,
                colour=tuple(float(c) for c in colour),
            )
        )
    return parts


def _parts_from_ac3d(path: Path) -> list[Part]:
    resolver = FolderResolver(path)
    images: dict[str, np.ndarray | None] = {}
    parts = []
    for ac in read_ac3d(path):
        image = None
        if ac.texture_name is not None:
            if ac.texture_name not in images:
                with Image.open(io.BytesIO(resolver.get(ac.texture_name))) as im:  # checked by the resolver
                    images[ac.texture_name] = _image_array(im)
            image = images[ac.texture_name]
        parts.append(
            Part(
                vertices=ac.vertices,
                faces=ac.faces,
                uv=ac.uv if image is not None else None,
                image=image,
                colour=(*ac.rgb, 1.0) if image is None else (1.0, 1.0, 1.0, 1.0),
            )
        )
    return parts


def _read_parts(path: Path) -> list[Part]:
    if path.suffix.lower() == ".ac":
        return _parts_from_ac3d(path)
    return _parts_from_trimesh(read_trimesh(path))


def _validate_parts(parts: list[Part], name: str) -> None:
    faces = sum(len(p.faces) for p in parts)
    if faces == 0:
        raise AssetError(f"{name}: mesh has no triangles")
    if faces > MAX_FACES:
        raise AssetError(f"{name}: mesh has {faces} triangles, more than the limit of {MAX_FACES}")
    for p in parts:
        if not np.isfinite(p.vertices).all():
            raise AssetError(f"{name}: mesh has non-finite vertex coordinates (NaN or inf)")
        largest = float(np.abs(p.vertices).max()) if len(p.vertices) else 0.0
        if largest > MAX_COORDINATE:
            raise AssetError(f"{name}: vertex coordinates reach {largest:.3g}, beyond the limit of {MAX_COORDINATE:g} (a corrupt file?)")
        if p.faces.min() < 0 or p.faces.max() >= len(p.vertices):
            raise AssetError(f"{name}: a face refers to a vertex that does not exist")
        if p.uv is not None and not np.isfinite(p.uv).all():
            raise AssetError(f"{name}: mesh has non-finite texture coordinates")


def load_mesh_file(path: str | Path, rotate: list[float] | None = None, object_id: str | None = None) -> SceneObject:
    """Load, validate and normalise a mesh file (a format of :data:`~perturber.pipeline.assets.MESH_SUFFIXES`).

    Raises :class:`AssetError` with a one-line reason naming the file for a
    missing, empty, oversized, unsupported, broken, non-finite or absurd file,
    a reference outside its folder, or a missing or unreadable texture.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise AssetError(f"{name}: mesh file not found")
    problem = assets.mesh_format_problem(path)
    if problem:
        raise AssetError(f"{name}: {problem}")
    size = path.stat().st_size
    if size == 0:
        raise AssetError(f"{name}: file is empty")
    if size > MAX_MESH_BYTES:
        raise AssetError(f"{name}: file is {size / 2**20:.0f} MiB, more than the limit of {MAX_MESH_BYTES // 2**20} MiB")
    try:
        parts = _read_parts(path)
    except AssetError as exc:
        raise AssetError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
    except Exception as exc:
        raise AssetError(f"{name}: cannot read mesh ({one_line(exc)})") from None
    _validate_parts(parts, name)
    try:
        parts = _normalise(parts, rotate)
    except AssetError as exc:
        raise AssetError(f"{name}: {exc}") from None
    return SceneObject(id=object_id or str(path), parts=parts, attribution=f"user mesh {name}")


def load_object(object_id: str) -> SceneObject:
    """A catalogue object (or a user's mesh path), loaded and normalised; cached.

    Callers must not modify the returned object.
    """
    return _load_object(object_id, assets.source_key(), str(config.cache_dir()))


@functools.lru_cache(maxsize=32)
def _load_object(object_id: str, key: tuple, cache: str) -> SceneObject:
    if object_id not in assets.object_ids() and Path(object_id).suffix:
        return load_mesh_file(object_id)  # a user's file (unsupported suffixes: a one-line error there)
    path, rotate = assets.object_file(object_id)
    obj = load_mesh_file(path, rotate=rotate, object_id=object_id)
    entry = assets.catalogue()["objects"][object_id]
    obj.attribution = entry["attribution"]
    obj.licence = entry["licence"]
    obj.classes = list(entry["classes"])
    return obj
