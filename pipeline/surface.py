"""The object's surface: its shape (an object or a morph) and its texture.

Shape and texture are independent factors, so that the shape of one object
can wear the texture of another (Geirhos et al.'s cue conflict). A texture is
moved onto a foreign shape by closest-point transfer: both shapes live in the
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

from perturber.pipeline import assets, meshes, morph
from perturber.pipeline.meshes import Part, SceneObject

__all__ = ["surface", "transfer_texture", "pattern_parts", "PLAIN_GREY"]

#: Surface colour with texture 'off' (linear RGBA).
PLAIN_GREY = (0.7, 0.7, 0.7, 1.0)
#: Pattern tiles per object size.
PATTERN_TILES = 3.0
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


def pattern_parts(vertices: np.ndarray, faces: np.ndarray, pattern: np.ndarray) -> list[Part]:
    """Tile ``pattern`` (h, w, 3) over the triangles by box projection.

    Each triangle is projected along the axis its normal is closest to, at
    :data:`PATTERN_TILES` tiles per object size.
    """
    corners, new_faces = _unmerged(vertices, faces)
    tri = corners.reshape(-1, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    axis = np.abs(normals).argmax(1)
    keep = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # the two other coordinates
    uv = np.take_along_axis(tri, np.repeat(keep[:, None, :], 3, axis=1), axis=2)
    uv = uv.reshape(-1, 2) * PATTERN_TILES
    return [Part(vertices=corners, faces=new_faces, uv=uv, image=pattern, colour=(1.0, 1.0, 1.0, 1.0))]


def surface(object_id: str, morph_target: str = "none", morph_t: float = 0.0, texture: str = "on") -> tuple[Part, ...]:
    """Parts to render for these four scene factors; cached, do not modify.

    ``texture``: 'on' (the texture of ``object_id``), 'off' (plain grey),
    another object's id (its texture transferred), or 'pattern:<id>'.
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
    source = obj if texture == "on" else meshes.load_object(texture)
    return tuple(transfer_texture(vertices, faces, source))
