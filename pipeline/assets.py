"""The asset catalogue: built-in objects, backgrounds and patterns.

``data/catalogue.yaml`` names every asset: where it comes from (a Debian or
pip package and the path inside, plus the upstream address), its licence and
attribution, and for objects the ImageNet classes it should read as and the
rotation that makes it upright and facing the camera at yaw 0.

Objects load as :class:`SceneObject` (parts with colour, texture and UVs),
normalised: upright (+y), facing +z, bounding box centred at the origin,
largest side 1. A user's own mesh goes through :func:`load_mesh_file`, which
validates it first.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml
from PIL import Image

__all__ = [
    "AssetError",
    "Part",
    "SceneObject",
    "catalogue",
    "object_ids",
    "background_ids",
    "pattern_ids",
    "load_object",
    "load_mesh_file",
    "load_background",
    "load_pattern",
    "asset_status",
    "fetch",
    "imagenet_class_indices",
    "attribution",
    "attributions",
    "pattern_of",
    "cache_dir",
]

CATALOGUE_PATH = Path(__file__).resolve().parents[1] / "data" / "catalogue.yaml"

#: Limits for a user's mesh file: bytes on disk, faces, texture pixels.
MAX_MESH_BYTES = 200 * 1024 * 1024
MAX_FACES = 2_000_000
MAX_TEXTURE_PIXELS = 64 * 1024 * 1024


class AssetError(ValueError):
    """An asset is missing, unreadable or invalid; the message is one line."""


# --------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def catalogue(path: str | None = None) -> dict[str, Any]:
    """The parsed catalogue (``PERTURBER_CATALOGUE`` overrides the path)."""
    path = path or os.environ.get("PERTURBER_CATALOGUE") or str(CATALOGUE_PATH)
    with open(path) as f:
        data = yaml.safe_load(f)
    for section in ("objects", "backgrounds", "patterns"):
        data.setdefault(section, {})
    return data


def object_ids() -> list[str]:
    return list(catalogue()["objects"])


def background_ids() -> list[str]:
    return list(catalogue()["backgrounds"])


def pattern_ids() -> list[str]:
    return list(catalogue()["patterns"])


def cache_dir() -> Path:
    """Where extracted models and morph fields are cached (``PERTURBER_CACHE``)."""
    root = os.environ.get("PERTURBER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "perturber"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _asset_dirs() -> list[Path]:
    """Extra folders searched for asset files by base name (``PERTURBER_ASSET_DIR``)."""
    return [Path(p) for p in os.environ.get("PERTURBER_ASSET_DIR", "").split(os.pathsep) if p]


def _locate(source: dict[str, Any]) -> Path | None:
    """The file behind ``source`` (archive or plain file), or None if absent."""
    if "skimage" in source:
        import skimage

        path = Path(skimage.__file__).parent / "data" / source["skimage"]
        return path if path.is_file() else None
    original = Path(source.get("archive") or source["file"])
    for candidate in (original, *(d / original.name for d in _asset_dirs())):
        if candidate.is_file():
            return candidate
    return None


def _entry(section: str, asset_id: str) -> dict[str, Any]:
    try:
        return catalogue()[section][asset_id]
    except KeyError:
        raise AssetError(f"unknown {section[:-1]} {asset_id!r}") from None


def _install_hint(source: dict[str, Any]) -> str:
    if "debian" in source:
        name = Path(source.get("archive") or source.get("file")).name
        return (
            f"apt-get install {source['debian']} (or download {name} from {source['upstream']} "
            f"into PERTURBER_ASSET_DIR)"
        )
    return f"pip install {source['pip']}"


def asset_status() -> list[dict[str, str]]:
    """One row per asset: section, id, status ('ok' or 'missing: how to get it'), licence."""
    rows = []
    for section in ("objects", "backgrounds", "patterns"):
        for asset_id, entry in catalogue()[section].items():
            source = entry.get("source")
            if source is None:
                status = "ok"
            elif _locate(source) is None:
                status = "missing: " + _install_hint(source)
            else:
                status = "ok"
            rows.append(
                {
                    "section": section[:-1],
                    "id": asset_id,
                    "status": status,
                    "licence": entry.get("licence", "-"),
                    "source": "-" if source is None else (source.get("debian") or source.get("pip")),
                }
            )
    return rows


def fetch(run: bool = True) -> tuple[list[str], str | None]:
    """Make missing assets available.

    Returns ``(missing Debian packages, command)``. When ``run`` is true, apt is
    available and we are root, the command is run; otherwise it is only
    returned so the caller can say exactly what to install.
    """
    packages = sorted(
        {
            entry["source"]["debian"]
            for section in ("objects", "backgrounds", "patterns")
            for entry in catalogue()[section].values()
            if "source" in entry and "debian" in entry["source"] and _locate(entry["source"]) is None
        }
    )
    if not packages:
        return [], None
    command = "apt-get install -y --no-install-recommends " + " ".join(packages)
    can_run = shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0
    if run and can_run:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(command.split(), check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return packages, command
    return packages, ("sudo " if not can_run and shutil.which("apt-get") else "") + command


def imagenet_class_indices(asset_id: str) -> list[int]:
    """ImageNet-1k indices of the classes ``asset_id`` should read as."""
    from perturber.pipeline.models import imagenet_categories

    names = imagenet_categories()
    groups = {"@dogs": range(151, 269), "@cats": range(281, 286)}
    out: list[int] = []
    for cls in _entry("objects", asset_id)["classes"]:
        if cls in groups:
            out.extend(groups[cls])
        elif cls in names:
            out.append(names.index(cls))
        else:
            raise AssetError(f"object {asset_id!r}: {cls!r} is not an ImageNet class name")
    return out


# --------------------------------------------------------------------------
# 3D objects
# --------------------------------------------------------------------------


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
    from trimesh.transformations import euler_matrix

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
    import trimesh

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
    from perturber.pipeline.ac3d import read_ac3d

    images: dict[Path, np.ndarray | None] = {}
    parts = []
    for ac in read_ac3d(path):
        image = None
        if ac.texture is not None:
            if ac.texture not in images:
                images[ac.texture] = _read_texture(ac.texture)
            image = images[ac.texture]
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


def _read_texture(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AssetError(f"texture {path.name!r} not found next to the mesh")
    try:
        with Image.open(path) as im:
            im.load()
            return _image_array(im)
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"texture {path.name!r} cannot be read ({exc})") from None


def _check_obj_textures(path: Path) -> None:
    """Every ``map_Kd`` of every ``mtllib`` of an OBJ must exist and decode."""
    mtllibs = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("mtllib"):
                mtllibs.append(line.split(None, 1)[1].strip())
    for lib in mtllibs:
        mtl = path.parent / lib
        if not mtl.is_file():
            raise AssetError(f"{path.name}: material library {lib!r} not found")
        for line in mtl.read_text(errors="replace").splitlines():
            if line.strip().lower().startswith("map_kd"):
                tex = line.split()[-1]
                _read_texture(mtl.parent / tex)


def _read_parts(path: Path) -> list[Part]:
    import trimesh

    suffix = path.suffix.lower()
    if suffix == ".ac":
        return _parts_from_ac3d(path)
    if suffix == ".obj":
        _check_obj_textures(path)
    loaded = trimesh.load(str(path), force="scene", process=False)
    return _parts_from_trimesh(loaded)


def _validate_parts(parts: list[Part], name: str) -> None:
    faces = sum(len(p.faces) for p in parts)
    if faces == 0:
        raise AssetError(f"{name}: mesh has no triangles")
    if faces > MAX_FACES:
        raise AssetError(f"{name}: mesh has {faces} triangles, more than the limit of {MAX_FACES}")
    for p in parts:
        if not np.isfinite(p.vertices).all():
            raise AssetError(f"{name}: mesh has non-finite vertex coordinates (NaN or inf)")
        if p.faces.min() < 0 or p.faces.max() >= len(p.vertices):
            raise AssetError(f"{name}: a face refers to a vertex that does not exist")
        if p.uv is not None and not np.isfinite(p.uv).all():
            raise AssetError(f"{name}: mesh has non-finite texture coordinates")


def load_mesh_file(path: str | Path, rotate: list[float] | None = None, object_id: str | None = None) -> SceneObject:
    """Load, validate and normalise a mesh file (OBJ, GLB/glTF, PLY, STL, OFF, AC3D).

    Raises :class:`AssetError` with a one-line reason for a missing, empty,
    oversized, non-finite or unreadable file or texture.
    """
    from perturber.pipeline.factors import MESH_SUFFIXES

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise AssetError(f"{name}: mesh file not found")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise AssetError(f"{name}: unsupported mesh format (use one of {', '.join(MESH_SUFFIXES)})")
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
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AssetError(f"{name}: cannot read mesh ({reason})") from None
    _validate_parts(parts, name)
    try:
        parts = _normalise(parts, rotate)
    except AssetError as exc:
        raise AssetError(f"{name}: {exc}") from None
    return SceneObject(id=object_id or str(path), parts=parts, attribution=f"user mesh {name}")


def _extract(archive: Path, member: str) -> Path:
    """Extract the folder holding ``member`` from a zip into the cache; return the member's path."""
    folder = member.rsplit("/", 1)[0] + "/"
    target = cache_dir() / "models" / archive.stem
    out = target / member
    if out.is_file():
        return out
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n.startswith(folder) and not n.endswith("/")]
        if member not in names:
            raise AssetError(f"{archive.name} does not contain {member}")
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        for n in names:
            if ".." in Path(n).parts or n.startswith("/"):
                raise AssetError(f"{archive.name}: unsafe path {n!r} in archive")
            zf.extract(n, tmp)
        for n in names:  # move into place file by file: concurrent workers may race
            dest = target / n
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / n, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@functools.lru_cache(maxsize=32)
def load_object(object_id: str) -> SceneObject:
    """A catalogue object (or a user's mesh path), loaded and normalised; cached.

    Callers must not modify the returned object.
    """
    from perturber.pipeline.factors import MESH_SUFFIXES

    if object_id not in catalogue()["objects"] and Path(object_id).suffix.lower() in MESH_SUFFIXES:
        return load_mesh_file(object_id)
    entry = _entry("objects", object_id)
    source = entry["source"]
    found = _locate(source)
    if found is None:
        raise AssetError(f"object {object_id!r} is not installed: {_install_hint(source)}")
    path = _extract(found, source["member"]) if "archive" in source else found
    obj = load_mesh_file(path, rotate=entry.get("transform", {}).get("rotate"), object_id=object_id)
    obj.attribution = entry["attribution"]
    obj.licence = entry["licence"]
    obj.classes = list(entry["classes"])
    return obj


# --------------------------------------------------------------------------
# Backgrounds and patterns
# --------------------------------------------------------------------------


def _read_gimp_pattern(path: Path) -> np.ndarray:
    """A GIMP ``.pat`` file: a big-endian header, a name, then raw pixels."""
    data = path.read_bytes()
    header_size, version, width, height, depth = np.frombuffer(data[:20], dtype=">u4")
    if data[20:24] != b"GPAT" or depth not in (1, 2, 3, 4):
        raise AssetError(f"{path.name}: not a GIMP pattern")
    pixels = np.frombuffer(data[header_size : header_size + width * height * depth], dtype=np.uint8)
    image = pixels.reshape(height, width, depth)
    if depth in (1, 2):
        image = np.repeat(image[..., :1], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


@functools.lru_cache(maxsize=16)
def load_pattern(pattern_id: str) -> np.ndarray:
    """Pattern ``pattern_id`` as an (h, w, 3) uint8 RGB tile."""
    entry = _entry("patterns", pattern_id)
    path = _locate(entry["source"])
    if path is None:
        raise AssetError(f"pattern {pattern_id!r} is not installed: {_install_hint(entry['source'])}")
    if path.suffix == ".pat":
        return _read_gimp_pattern(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@functools.lru_cache(maxsize=64)
def load_background(background: str, size: int) -> np.ndarray | None:
    """Background ``background`` as a (size, size, 3) uint8 RGB image; None for 'none'.

    ``background`` is a catalogue id or a colour (``'#rrggbb'`` or a name).
    Photos are centre-cropped to a square and resized with a Lanczos filter.
    """
    from perturber.pipeline.factors import colour_to_rgb, normalise_colour

    if background == "none":
        return None
    entry = catalogue()["backgrounds"].get(background)
    if entry is None or entry["kind"] == "colour":
        colour = normalise_colour(entry["colour"] if entry else background)
        if colour is None:
            raise AssetError(f"unknown background {background!r}")
        rgb = np.round(np.array(colour_to_rgb(colour)) * 255).astype(np.uint8)
        return np.broadcast_to(rgb, (size, size, 3)).copy()
    path = _locate(entry["source"])
    if path is None:
        raise AssetError(f"background {background!r} is not installed: {_install_hint(entry['source'])}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        return np.asarray(im)


def attribution(asset_id: str) -> str:
    """The attribution line of any catalogue asset ('' for plain colours)."""
    for section in ("objects", "backgrounds", "patterns"):
        entry = catalogue()[section].get(asset_id)
        if entry is not None:
            return entry.get("attribution", "")
    return ""


def attributions(values: Mapping[str, Any]) -> list[str]:
    """Attribution lines (CC-BY) of every asset that factor ``values`` show:
    object, morph target, texture or pattern, background; each once."""
    ids = [str(values.get(k, "")) for k in ("object", "morph_target", "texture", "background")]
    pattern = pattern_of(str(values.get("texture", "")))
    if pattern:
        ids.append(pattern)
    lines: list[str] = []
    for asset_id in ids:
        line = attribution(asset_id)
        if line and line not in lines:
            lines.append(line)
    return lines


_PATTERN_RE = re.compile(r"^pattern:(.+)$")


def pattern_of(texture: str) -> str | None:
    """``'pattern:leopard'`` → ``'leopard'``; anything else → None."""
    m = _PATTERN_RE.match(texture)
    return m.group(1) if m else None
