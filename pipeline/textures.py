"""Image textures: any image on any mesh, without texture coordinates.

``texture: image:<ref>`` dresses the object in an image, projected onto its
surface without UVs (box projection, :func:`perturber.pipeline.surface.image_parts`),
so that any shape can wear fur, skin or a pattern. ``ref`` is

- a catalogue texture (``textures:`` in data/catalogue.yaml: a photograph's
  crop with its source, licence, attribution and the ImageNet classes it
  should read as, the texture cue of a cue-conflict study);
- a catalogue pattern (``patterns:``; ``image:leopard`` is ``pattern:leopard``
  as a texture: the same tile at the same scale);
- the path of an image file (PNG, JPEG, ... or a GIMP ``.pat``), checked as a
  mesh file is: present, a supported format, within the size limits and
  decodable; otherwise a one-line :class:`~perturber.pipeline.assets.AssetError`
  that names the file. The value keeps the file's absolute path.

A texture is shown ``tiles`` times per object size (the object's largest side
is 1): catalogue entries say how many (``tiles:``, default 1 for textures and
:data:`PATTERN_TILES` for patterns), a file gets :data:`FILE_TILES`.
Photographs are not seamless tiles, so textures and files are mirrored
(each copy is the mirror image of its neighbour): no seam shows where copies meet.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from perturber.pipeline import assets, classes, config
from perturber.pipeline.assets import MAX_TEXTURE_PIXELS, AssetError
from perturber.pipeline.errors import one_line

__all__ = ["PREFIX", "SUFFIXES", "MAX_TEXTURE_BYTES", "PATTERN_TILES", "FILE_TILES", "TextureImage",
           "validate", "check_file", "load", "class_indices"]

PREFIX = "image:"
#: Image files a texture can come from (a GIMP pattern too).
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".tga", ".pat")
#: Largest texture file, in bytes (pixels: :data:`~perturber.pipeline.assets.MAX_TEXTURE_PIXELS`).
MAX_TEXTURE_BYTES = 64 * 1024 * 1024
#: Smallest side of a texture image, in pixels.
MIN_SIDE = 2
#: Longest side kept: larger images are scaled down (a 1024-pixel render shows no more).
MAX_SIDE = 1024
#: Copies per object size of a pattern (``pattern:<id>``, ``image:<pattern id>``) and of an image file.
PATTERN_TILES = 3.0
FILE_TILES = 2.0


@dataclass(frozen=True)
class TextureImage:
    """A texture ready to project: ``image`` (h, w, 3) uint8 RGB, shown ``tiles``
    times per object size, each copy mirrored against its neighbours when ``mirror``."""

    image: np.ndarray
    tiles: float
    mirror: bool


def _is_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or bool(Path(ref).suffix) or Path(ref).is_file()


def validate(value: str) -> str:
    """The canonical ``image:<ref>`` for a value ``image:<ref>``: a catalogue id as
    it is, a file as its absolute path (checked by :func:`check_file`). One-line
    :class:`AssetError` otherwise."""
    ref = value[len(PREFIX):].strip() if value.startswith(PREFIX) else value.strip()
    if not ref:
        raise AssetError("image: needs a catalogue texture id or the path of an image file")
    known = [*assets.texture_ids(), *assets.pattern_ids()]
    if ref in known:
        return PREFIX + ref
    if _is_path(ref):
        return PREFIX + str(check_file(ref))
    hint = difflib.get_close_matches(ref, known, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise AssetError(f"no catalogue texture {ref!r} and no image file of that name{extra}; known: {', '.join(known)}")


def check_file(path: str | Path) -> Path:
    """``path`` resolved, once it is a readable image file within the limits; one-line
    :class:`AssetError` naming the file otherwise. The decoded image is kept for rendering."""
    path = Path(path)
    if not path.exists():
        raise AssetError(f"{path.name}: image file not found")
    if not path.is_file():
        raise AssetError(f"{path.name}: not a file")
    if path.suffix.lower() not in SUFFIXES:
        raise AssetError(f"{path.name}: format not supported; supported: {', '.join(SUFFIXES)}")
    size = path.stat().st_size
    if size > MAX_TEXTURE_BYTES:
        raise AssetError(f"{path.name}: image file too large ({size / 2**20:.0f} MiB, at most {MAX_TEXTURE_BYTES // 2**20} MiB)")
    path = path.resolve()
    _read_file(config.file_key(path))
    return path


@functools.lru_cache(maxsize=16)
def _read_file(key: tuple[str, int, int]) -> np.ndarray:
    """The image file of ``key`` (path, mtime, size) as (h, w, 3) uint8, at most :data:`MAX_SIDE` a side."""
    path = Path(key[0])
    try:
        if path.suffix.lower() == ".pat":
            return _fit(Image.fromarray(assets.read_gimp_pattern(path)), path)
        with Image.open(path) as image:
            if image.width * image.height > MAX_TEXTURE_PIXELS:
                raise AssetError(f"{path.name}: image too large ({image.width}x{image.height} pixels, "
                                 f"at most {MAX_TEXTURE_PIXELS // 2**20} Mpx)")
            image.load()
            return _fit(image.convert("RGB"), path)
    except AssetError:
        raise
    except Exception as exc:  # PIL: unknown format, truncated data, decompression bomb; a broken .pat
        raise AssetError(f"{path.name}: cannot be read as an image ({one_line(exc)})") from None


def _fit(image: Image.Image, path: Path) -> np.ndarray:
    if min(image.size) < MIN_SIDE:
        raise AssetError(f"{path.name}: image too small ({image.width}x{image.height} pixels, at least {MIN_SIDE} a side)")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(MIN_SIDE, round(image.width * scale)), max(MIN_SIDE, round(image.height * scale))),
                             Image.LANCZOS)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def load(ref: str) -> TextureImage:
    """The texture ``ref`` (a catalogue texture or pattern id, or a checked file path)."""
    catalogue = assets.catalogue()
    if ref in catalogue["textures"]:
        entry = catalogue["textures"][ref]
        return TextureImage(assets.load_texture(ref), float(entry.get("tiles", 1.0)), bool(entry.get("mirror", True)))
    if ref in catalogue["patterns"]:
        entry = catalogue["patterns"][ref]
        return TextureImage(assets.load_pattern(ref), float(entry.get("tiles", PATTERN_TILES)), False)
    path = check_file(ref)
    return TextureImage(_read_file(config.file_key(path)), FILE_TILES, True)


def class_indices(texture: str) -> list[int] | None:
    """ImageNet-1k indices of the classes a texture value should read as (its
    texture cue): a catalogue texture's or pattern's ``classes``, another object's
    classes for an object id; None for 'on', 'off', a file or an entry without classes."""
    catalogue = assets.catalogue()
    ref = assets.image_of(texture) or assets.pattern_of(texture)
    if ref is None:
        return assets.imagenet_class_indices(texture) if texture in catalogue["objects"] else None
    entry = catalogue["textures"].get(ref) or catalogue["patterns"].get(ref)
    if not entry or not entry.get("classes"):
        return None
    try:
        return classes.indices(entry["classes"])
    except classes.UnknownClass as exc:
        raise AssetError(f"texture {ref!r}: {exc}") from None
