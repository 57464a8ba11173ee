"""The asset catalogue: built-in objects, backgrounds, patterns and textures.

``data/catalogue.yaml`` (or ``PERTURBER_CATALOGUE``) names every asset:
where it comes from (a Debian or pip package and the path inside, plus the
upstream address), its licence and attribution, and for objects the ImageNet
classes it should read as and the rotation that makes it upright and facing
the camera at yaw 0; for textures, the crop of the file and the classes it
should read as (a texture cue). This module finds the files behind the
entries and reads backgrounds, patterns and textures;
:mod:`perturber.pipeline.meshes` turns an object's file into a mesh and
:mod:`perturber.pipeline.textures` an image into a texture.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import skimage
from PIL import Image

from perturber.pipeline import classes, config, yamlsafe
from perturber.pipeline.colours import colour_to_rgb, normalise_colour
from perturber.pipeline.errors import PerturberError

__all__ = [
    "AssetError",
    "MESH_SUFFIXES",
    "mesh_format_problem",
    "catalogue",
    "source_key",
    "object_ids",
    "background_ids",
    "pattern_ids",
    "texture_ids",
    "SECTIONS",
    "MAX_TEXTURE_PIXELS",
    "object_file",
    "load_background",
    "load_pattern",
    "load_texture",
    "read_gimp_pattern",
    "asset_status",
    "fetch",
    "imagenet_class_indices",
    "attribution",
    "attributions",
    "pattern_of",
    "image_of",
]

#: File types a mesh can come in (AC3D through perturber.pipeline.ac3d, the rest
#: through trimesh; Collada with pycollada): the one list every check uses.
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off", ".dae", ".ac")
#: Largest texture image, in pixels (width × height): a mesh's own or an image texture.
MAX_TEXTURE_PIXELS = 64 * 1024 * 1024
#: The catalogue's sections.
SECTIONS = ("objects", "backgrounds", "patterns", "textures")


class AssetError(PerturberError):
    """An asset is missing, unreadable or invalid; the message is one line."""


def mesh_format_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a mesh, judged by its suffix
    ('format not supported; supported: .obj, …'), or None when it can."""
    if Path(path).suffix.lower() in MESH_SUFFIXES:
        return None
    return f"format not supported; supported: {', '.join(MESH_SUFFIXES)}"


# --------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------


def catalogue() -> dict[str, Any]:
    """The parsed catalogue in use (re-read when its file changes)."""
    return _read_catalogue(config.file_key(config.catalogue_path()))


@functools.lru_cache(maxsize=8)
def _read_catalogue(key: tuple[str, int, int]) -> dict[str, Any]:
    try:
        data = yamlsafe.load_file(key[0], AssetError) or {}  # UTF-8, at most 1 MiB, aliases bounded
    except AssetError as exc:
        raise AssetError(f"asset catalogue {exc}") from None
    if not isinstance(data, dict):
        raise AssetError(f"asset catalogue {key[0]}: must map objects, backgrounds and patterns to their entries")
    for section in SECTIONS:
        data.setdefault(section, {})
        if not isinstance(data[section], dict) or not all(isinstance(e, dict) for e in data[section].values()):
            raise AssetError(f"asset catalogue {key[0]}: {section} must map ids to entries")
    return data


def source_key() -> tuple:
    """What finding an asset depends on (the catalogue file and the asset folders):
    part of the key of every in-memory cache of loaded assets."""
    return (config.file_key(config.catalogue_path()), config.asset_dirs())


def object_ids() -> list[str]:
    return list(catalogue()["objects"])


def background_ids() -> list[str]:
    return list(catalogue()["backgrounds"])


def pattern_ids() -> list[str]:
    return list(catalogue()["patterns"])


def texture_ids() -> list[str]:
    """The catalogue's image textures (``texture: image:<id>``)."""
    return list(catalogue()["textures"])


def _locate(source: dict[str, Any]) -> Path | None:
    """The file behind ``source`` (archive or plain file), or None if absent."""
    if "skimage" in source:
        path = Path(skimage.__file__).parent / "data" / source["skimage"]
        return path if path.is_file() else None
    original = Path(source.get("archive") or source["file"])
    for candidate in (original, *(d / original.name for d in config.asset_dirs())):
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
    for section in SECTIONS:
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
            for section in SECTIONS
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
    """ImageNet-1k indices of the classes ``asset_id`` should read as, in catalogue order."""
    try:
        return classes.indices(_entry("objects", asset_id)["classes"])
    except classes.UnknownClass as exc:
        raise AssetError(f"object {asset_id!r}: {exc}") from None

def object_file(object_id: str) -> tuple[Path, list[float] | None]:
    """(the mesh file of catalogue object ``object_id``, the rotation that makes it
    upright and facing +z in degrees); extracted from its archive into the cache."""
    entry = _entry("objects", object_id)
    source = entry["source"]
    found = _locate(source)
    if found is None:
        raise AssetError(f"object {object_id!r} is not installed: {_install_hint(source)}")
    path = _extract(found, source["member"]) if "archive" in source else found
    return path, entry.get("transform", {}).get("rotate")


def _extract(archive: Path, member: str) -> Path:
    """Extract the folder holding ``member`` from a zip into the cache; return the member's path."""
    folder = member.rsplit("/", 1)[0] + "/"
    target = config.cache_dir() / "models" / archive.stem
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


# --------------------------------------------------------------------------
# Backgrounds and patterns
# --------------------------------------------------------------------------


def read_gimp_pattern(path: Path) -> np.ndarray:
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


def load_pattern(pattern_id: str) -> np.ndarray:
    """Pattern ``pattern_id`` as an (h, w, 3) uint8 RGB tile; cached, do not modify."""
    return _load_pattern(pattern_id, source_key())


@functools.lru_cache(maxsize=16)
def _load_pattern(pattern_id: str, key: tuple) -> np.ndarray:
    entry = _entry("patterns", pattern_id)
    path = _locate(entry["source"])
    if path is None:
        raise AssetError(f"pattern {pattern_id!r} is not installed: {_install_hint(entry['source'])}")
    if path.suffix == ".pat":
        return read_gimp_pattern(path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_texture(texture_id: str) -> np.ndarray:
    """Catalogue texture ``texture_id`` as an (h, w, 3) uint8 RGB image, cropped
    as its entry says (``crop: [left, top, right, bottom]`` in pixels); cached, do not modify."""
    return _load_texture(texture_id, source_key())


@functools.lru_cache(maxsize=16)
def _load_texture(texture_id: str, key: tuple) -> np.ndarray:
    entry = _entry("textures", texture_id)
    source = entry["source"]
    path = _locate(source)
    if path is None:
        raise AssetError(f"texture {texture_id!r} is not installed: {_install_hint(source)}")
    if "member" in source:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(source["member"])
        with Image.open(io.BytesIO(data)) as im:
            image = np.asarray(im.convert("RGB"))
    elif path.suffix == ".pat":
        image = read_gimp_pattern(path)
    else:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    if "crop" in entry:
        left, top, right, bottom = (int(v) for v in entry["crop"])
        if not (0 <= left < right <= image.shape[1] and 0 <= top < bottom <= image.shape[0]):
            raise AssetError(f"texture {texture_id!r}: crop {entry['crop']} is outside its "
                             f"{image.shape[1]}x{image.shape[0]} image")
        image = image[top:bottom, left:right]
    return np.ascontiguousarray(image)


def load_background(background: str, size: int) -> np.ndarray | None:
    """Background ``background`` as a (size, size, 3) uint8 RGB image; None for 'none'.

    ``background`` is a catalogue id or a colour (``'#rrggbb'`` or a name).
    Photos are centre-cropped to a square and resized with a Lanczos filter.
    Cached; do not modify.
    """
    return _load_background(background, size, source_key())


@functools.lru_cache(maxsize=64)
def _load_background(background: str, size: int, key: tuple) -> np.ndarray | None:
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
    """The attribution line of any catalogue asset ('' for plain colours and
    files); a texture value ``pattern:<id>`` or ``image:<id>`` gives its asset's."""
    asset_id = pattern_of(asset_id) or image_of(asset_id) or asset_id
    for section in SECTIONS:
        entry = catalogue()[section].get(asset_id)
        if entry is not None:
            return entry.get("attribution", "")
    return ""


def attributions(values: Mapping[str, Any]) -> list[str]:
    """Attribution lines (CC-BY) of every asset that factor ``values`` show:
    object, morph target, texture (an object's, a pattern or an image), background; each once."""
    ids = [str(values.get(k, "")) for k in ("object", "morph_target", "texture", "background")]
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


def image_of(texture: str) -> str | None:
    """``'image:tabby_fur'`` → ``'tabby_fur'``, ``'image:/a/fur.png'`` → ``'/a/fur.png'``; anything else → None."""
    return texture[len("image:"):] if texture.startswith("image:") else None
