"""The object's surface: its shape (an object or a morph) and its texture.

Shape and texture are independent factors, so that the shape of one object
can wear the texture of another (Geirhos et al.'s cue conflict). An image
texture (``image:<ref>``, :mod:`perturber.pipeline.textures`) or a pattern
needs no texture coordinates: it is box-projected (:func:`box_uv`). Another
object's texture is moved onto a foreign shape by closest-point transfer: both shapes live in the
same normalised frame (upright, facing +z, unit size), so each triangle of the
target takes the texture coordinates of the nearest points on the texture's
own object. Triangles whose corners land on different parts or across a UV
seam take the coordinates of their centre's nearest point (one colour), which
avoids smearing the whole atlas across a seam.
"""

from __future__ import annotations

import functools

import igl
import numpy as np
from trimesh.triangles import points_to_barycentric

from perturber.pipeline import assets, meshes, morph, textures
from perturber.pipeline.meshes import Part, SceneObject

__all__ = ["surface", "transfer_texture", "box_uv", "pattern_parts", "image_parts", "PLAIN_GREY"]

#: Surface colour with texture 'off' (linear RGBA).
PLAIN_GREY = (0.7, 0.7, 0.7, 1.0)
#: Pattern tiles per object size.
PATTERN_TILES = textures.PATTERN_TILES
#: Box projection: the two coordinates (u, v) that the faces facing x, y and z are
#: projected onto. Upright: v runs along y on the sides, so that an image stands
#: upright there; the legacy order (pattern:<id>) keeps its renders as they were.
UPRIGHT_AXES = np.array([[2, 1], [0, 2], [0, 1]])
LEGACY_AXES = np.array([[1, 2], [0, 2], [0, 1]])
#: A triangle whose corners' transferred UVs spread more than this crosses a seam.
SEAM_UV_SPREAD = 0.1


def _shape(object_id: str, morph_target: str, morph_t: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(vertices, faces) of a morph, or None when the shape is the object itself."""
    if morph_target == "none":
        return None
    return morph.morph_mesh(object_id, morph_target, float(morph_t))


def _unmerged(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corners = vertices[faces].reshape(-1, 3)
    return corners, np.arange(len(corners), dtype=np.int64).reshape(-1, 3)


def transfer_texture(vertices: np.ndarray, faces: np.ndarray, source: SceneObject) -> list[Part]:
    """Dress the triangles (vertices (N, 3), faces (M, 3)) in ``source``'s texture.

    Returns one :class:`Part` per source part that received triangles, with
    unmerged vertices (3 per triangle) and transferred UVs.
    """
    sv, sf = source.merged()
    face_part = np.concatenate([np.full(len(p.faces), i) for i, p in enumerate(source.parts)])
    offsets = np.cumsum([0] + [len(p.vertices) for p in source.parts])

    corners, new_faces = _unmerged(vertices, faces)
    centres = corners.reshape(-1, 3, 3).mean(1)
    queries = np.concatenate([corners, centres])
    _, hit, closest = igl.point_mesh_squared_distance(
        np.ascontiguousarray(queries), np.ascontiguousarray(sv), np.ascontiguousarray(sf)
    )
    hit = hit.astype(np.int64)
    bary = np.nan_to_num(points_to_barycentric(sv[sf[hit]], closest), nan=1.0 / 3.0)
    uv_all = np.zeros((len(sv), 2))
    for p, o in zip(source.parts, offsets):
        if p.uv is not None:
            uv_all[o : o + len(p.vertices)] = p.uv
    uv = np.einsum("nk,nkj->nj", bary, uv_all[sf[hit]])
    parts_hit = face_part[hit]

    n = len(corners)
    corner_uv, centre_uv = uv[:n].reshape(-1, 3, 2), uv[n:]
    corner_part, centre_part = parts_hit[:n].reshape(-1, 3), parts_hit[n:]
    spread = np.ptp(corner_uv, axis=1).max(1)
    seam = (corner_part != centre_part[:, None]).any(1) | (spread > SEAM_UV_SPREAD)
    corner_uv[seam] = centre_uv[seam][:, None, :]

    out = []
    for i, p in enumerate(source.parts):
        mask = centre_part == i
        if not mask.any():
            continue
        tri = corners.reshape(-1, 3, 3)[mask].reshape(-1, 3)
        out.append(
            Part(
                vertices=tri,
                faces=np.arange(len(tri), dtype=np.int64).reshape(-1, 3),
                uv=corner_uv[mask].reshape(-1, 2) if p.image is not None else None,
                image=p.image,
                colour=p.colour,
            )
        )
    return out


def box_uv(triangles: np.ndarray, tiles: float, upright: bool = True) -> np.ndarray:
    """Box projection: UVs (M, 3, 2) of triangles (M, 3, 3) in the object's unit frame.

    Each triangle is projected along the axis its normal is closest to (onto
    the face of a box around the object that it faces), onto that face's two
    other coordinates, ``tiles`` image copies per object size. ``upright``:
    :data:`UPRIGHT_AXES` with the image's top up; otherwise :data:`LEGACY_AXES`.
    """
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    keep = (UPRIGHT_AXES if upright else LEGACY_AXES)[np.abs(normals).argmax(1)]
    uv = np.take_along_axis(triangles, np.repeat(keep[:, None, :], 3, axis=1), axis=2)
    if upright:
        uv = uv * np.array([1.0, -1.0])  # the image's rows run down, y runs up
    return uv * tiles


def pattern_parts(vertices: np.ndarray, faces: np.ndarray, pattern: np.ndarray) -> list[Part]:
    """Tile ``pattern`` (h, w, 3) over the triangles (``pattern:<id>``), :data:`PATTERN_TILES`
    tiles per object size, by box projection (:func:`box_uv`, legacy axes)."""
    corners, new_faces = _unmerged(vertices, faces)
    uv = box_uv(corners.reshape(-1, 3, 3), PATTERN_TILES, upright=False).reshape(-1, 2)
    return [Part(vertices=corners, faces=new_faces, uv=uv, image=pattern, colour=(1.0, 1.0, 1.0, 1.0))]


def mirrored(image: np.ndarray) -> np.ndarray:
    """(2h, 2w, c): the image beside its mirror images, a tile that repeats without seams."""
    top = np.concatenate([image, image[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def image_parts(vertices: np.ndarray, faces: np.ndarray, texture: textures.TextureImage) -> list[Part]:
    """Dress the triangles (vertices (N, 3), faces (M, 3)) in an image texture by
    box projection (:func:`box_uv`, image upright on the sides), ``texture.tiles``
    copies per object size, mirrored copies when ``texture.mirror``."""
    corners, new_faces = _unmerged(vertices, faces)
    image, tiles = (mirrored(texture.image), texture.tiles / 2) if texture.mirror else (texture.image, texture.tiles)
    uv = box_uv(corners.reshape(-1, 3, 3), tiles).reshape(-1, 2)
    return [Part(vertices=corners, faces=new_faces, uv=uv, image=image, colour=(1.0, 1.0, 1.0, 1.0))]


def surface(object_id: str, morph_target: str = "none", morph_t: float = 0.0, texture: str = "on") -> tuple[Part, ...]:
    """Parts to render for these four scene factors; cached, do not modify.

    ``texture``: 'on' (the texture of ``object_id``), 'off' (plain grey),
    another object's id (its texture transferred), 'pattern:<id>' or
    'image:<catalogue texture, pattern or image file>' (box-projected).
    """
    return _surface(object_id, morph_target, float(morph_t), texture, assets.source_key())


@functools.lru_cache(maxsize=32)
def _surface(object_id: str, morph_target: str, morph_t: float, texture: str, key: tuple) -> tuple[Part, ...]:
    if texture == object_id:
        texture = "on"  # its own texture
    shape = _shape(object_id, morph_target, morph_t)
    obj = meshes.load_object(object_id)
    if shape is None:
        if texture == "on":
            return tuple(obj.parts)
        vertices, faces = obj.merged()
    else:
        vertices, faces = shape
    if texture == "off":
        return (Part(vertices=vertices, faces=faces, colour=PLAIN_GREY),)
    pattern = assets.pattern_of(texture)
    if pattern is not None:
        return tuple(pattern_parts(vertices, faces, assets.load_pattern(pattern)))
    image = assets.image_of(texture)
    if image is not None:
        return tuple(image_parts(vertices, faces, textures.load(image)))
    source = obj if texture == "on" else meshes.load_object(texture)
    return tuple(transfer_texture(vertices, faces, source))
