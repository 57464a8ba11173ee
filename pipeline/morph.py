"""Shape morphing between any two objects, whatever their topology.

The catalogue meshes are triangle soups (not watertight, many pieces), so a
vertex correspondence does not exist. Instead each object becomes a signed
distance field on a common grid over the normalised unit box: the sign from
the generalized winding number (robust to holes and loose pieces), the
magnitude from the distance to the nearest triangle. Two repairs make the fields
faithful to real assets: cells under an open-bottomed part (a vehicle body
without a floor) that are reachable from outside are outside, and thin rods
and open sheets (roof rails, ears) get a thin shell so they do not vanish
between grid points. The morph at ``t`` is the zero level set of
``(1 - t) * sdf_a + t * sdf_b``, extracted by marching cubes: a closed (watertight) mesh at every ``t``, ``t = 0`` and ``t = 1``
reproducing the two shapes up to the grid resolution.

Fields take seconds to compute and are cached on disk per object and
resolution (``PERTURBER_CACHE``, :func:`perturber.pipeline.config.cache_dir`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from pathlib import Path

import igl
import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes

from perturber.pipeline import assets, config, meshes

log = logging.getLogger(__name__)

__all__ = ["RESOLUTION", "grid_axis", "shape_field", "morph_mesh"]

#: Grid cells per axis of the morph fields; the voxel is 1.2 / RESOLUTION object sizes.
RESOLUTION = 128
#: Half-width of the grid: the unit box plus a margin so the shape closes inside.
HALF_WIDTH = 0.6
#: Thickness, in voxels, of the shell that keeps open sheets and thin rods.
SHELL_VOXELS = 0.25
#: Half-thickness, in voxels, of the shell around thin rods and open sheets.
THIN_SHELL_VOXELS = 0.35
#: Below this winding number, a cell connected to the outside is outside.
AMBIGUOUS_WINDING = 0.95


def grid_axis(resolution: int = RESOLUTION) -> np.ndarray:
    """Grid coordinates along one axis, (resolution,) in object sizes."""
    return np.linspace(-HALF_WIDTH, HALF_WIDTH, resolution)


def _thin_faces(v: np.ndarray, f: np.ndarray, depth: float) -> np.ndarray:
    """Faces with no inside within ``depth`` behind them on either side:
    thin rods, open sheets. (M,) bool."""
    tri = v[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    centres = tri.mean(1)
    behind = np.abs(igl.fast_winding_number(v, f, centres - depth * normals))
    front = np.abs(igl.fast_winding_number(v, f, centres + depth * normals))
    return (behind < 0.5) & (front < 0.5)


def _compute_field(vertices: np.ndarray, faces: np.ndarray, resolution: int) -> np.ndarray:
    g = grid_axis(resolution)
    step = g[1] - g[0]
    shape = (resolution,) * 3
    points = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    winding = np.abs(igl.fast_winding_number(v, f, points)).reshape(shape)
    sq_dist, _, _ = igl.point_mesh_squared_distance(points, v, f)
    dist = np.sqrt(sq_dist).reshape(shape)
    # An open-bottomed part (a vehicle body without a floor) has a winding
    # number a little over 0.5 beneath it. Where the winding number is that
    # ambiguous and the cell is reachable from outside without touching the
    # surface, it is outside.
    free = dist > step
    labels, _ = ndimage.label(free)
    border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]))
    exterior = np.isin(labels, border[border > 0])
    inside = (winding > 0.5) & ~(exterior & (winding < AMBIGUOUS_WINDING))
    # Offset the surface outward by a fraction of a voxel, so that surfaces
    # between grid points still cross the zero level.
    sdf = np.where(inside, -dist, dist - SHELL_VOXELS * step)
    # Thin rods and open sheets (roof rails, ears) have no inside at this
    # resolution and would vanish: give them a shell of THIN_SHELL_VOXELS.
    thin = _thin_faces(v, f, 0.5 * step)
    if thin.any():
        near = dist.ravel() < 2 * step  # only cells near the surface can change
        sq_thin, _, _ = igl.point_mesh_squared_distance(points[near], v, np.ascontiguousarray(f[thin]))
        shell = np.full(dist.size, np.inf)
        shell[near] = np.sqrt(sq_thin) - THIN_SHELL_VOXELS * step
        sdf = np.minimum(sdf, shell.reshape(shape))
    return sdf.astype(np.float32)


def _field_key(object_id: str, resolution: int) -> str:
    vertices, faces = meshes.load_object(object_id).merged()
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(vertices, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(faces, dtype=np.int64).tobytes())
    h.update(f"v5-{resolution}-{SHELL_VOXELS}-{THIN_SHELL_VOXELS}-{AMBIGUOUS_WINDING}".encode())
    return h.hexdigest()[:16]


def shape_field(object_id: str, resolution: int = RESOLUTION) -> np.ndarray:
    """Signed distance field of an object, (R, R, R) float32, negative inside.

    Indexed ``[x, y, z]`` over :func:`grid_axis`; units are object sizes.
    Cached in memory and on disk (:func:`cached_field`). Do not modify it.
    """
    return _shape_field(object_id, resolution, assets.source_key(), config.cache_dir())


@functools.lru_cache(maxsize=16)
def _shape_field(object_id: str, resolution: int, key: tuple, cache: Path) -> np.ndarray:
    return cached_field(object_id, resolution, cache)


def cached_field(object_id: str, resolution: int, cache: Path) -> np.ndarray:
    """The shape field from the disk cache under ``cache`` (keyed by the mesh's
    content), computed and saved there when missing or damaged."""
    path = cache / "fields" / f"{_field_key(object_id, resolution)}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a corrupt cache file: recompute it
    vertices, faces = meshes.load_object(object_id).merged()
    log.info("computing the %d^3 shape field of %s (once; cached in %s)", resolution, object_id, path.parent)
    start = time.perf_counter()
    field = _compute_field(vertices, faces, resolution)
    log.info("shape field of %s done in %.1f s", object_id, time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, field)
    os.replace(tmp, path)
    return field


def morph_mesh(object_a: str, object_b: str, t: float, resolution: int = RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """The closed mesh ``t`` of the way from ``object_a``'s shape to ``object_b``'s.

    Returns vertices (N, 3) float64 in object sizes and faces (M, 3) int64,
    outward-oriented. ``t`` in [0, 1]. Cached; do not modify.
    """
    return _morph_mesh(object_a, object_b, float(t), resolution, assets.source_key())


@functools.lru_cache(maxsize=16)
def _morph_mesh(object_a: str, object_b: str, t: float, resolution: int, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"morph t={t} is outside [0, 1]")
    field = (1.0 - t) * shape_field(object_a, resolution) + t * shape_field(object_b, resolution)
    field[[0, -1], :, :] = field[:, [0, -1], :] = field[:, :, [0, -1]] = 1.0  # close at the border
    g = grid_axis(resolution)
    step = g[1] - g[0]
    vertices, faces, _, _ = marching_cubes(
        field, level=0.0, spacing=(step, step, step), gradient_direction="descent"
    )
    return vertices + g[0], faces.astype(np.int64)
