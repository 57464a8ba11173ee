"""Render scene-factor values into an RGBA image and a depth map.

pyrender + trimesh through EGL (Mesa llvmpipe on a CPU, the NVIDIA driver on
a GPU); 4x multisampled, so edges are anti-aliased. One :class:`Renderer`
per process (per thread, in a threaded worker) is reused (:func:`default_renderer`); it keeps the OpenGL context,
the uploaded mesh and textures between renders, so a sweep that changes
only the camera or the light re-uploads nothing.

Conventions (all in the object's normalised frame: +y up, the object faces
+z, its largest side is 1):

- the camera orbits the object's centre: ``yaw`` about +y (0 sees the front,
  90 the object's left side), ``pitch`` above the horizon, at ``distance``;
  ``roll`` turns the image counter-clockwise; ``pan_x``/``pan_y`` move the
  object right/up by that fraction of the image;
- the key light is fixed to the camera's orbit (a studio light): ``light_azimuth``
  0 and ``light_elevation`` 0 light the object from the camera; ``roll``
  rotates the image with its lighting.

Each scene factor reaches the renderer through a *setter* registered with
:func:`~perturber.pipeline.implementations.scene_setter` below: before every
render the setters run in order (geometry 0, material 10, camera 20, key
light 30, ambient 40) and set the renderer's scene from the factor values.
A plugin adds a scene factor with a setter of its own (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

# EGL must be chosen before pyrender (and PyOpenGL) are first imported.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from perturber.pipeline import factors, imageops  # noqa: E402
from perturber.pipeline.colours import colour_to_rgb  # noqa: E402
from perturber.pipeline.implementations import registered_setters, scene_setter  # noqa: E402
from perturber.pipeline.meshes import Part  # noqa: E402
from perturber.pipeline.surface import surface  # noqa: E402

__all__ = ["RenderResult", "Renderer", "default_renderer", "render_scene", "render", "camera_pose", "YFOV_DEGREES"]

#: Vertical (and horizontal: images are square) field of view.
YFOV_DEGREES = 30.0


@dataclass
class RenderResult:
    """``rgba`` (H, W, 4) uint8, straight (not premultiplied) alpha, 0 outside
    the object; ``depth`` (H, W) float32 distance from the camera plane in
    object sizes, ``inf`` where there is no object."""

    rgba: np.ndarray
    depth: np.ndarray


def _rot(axis: str, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    m = np.eye(4)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _translate(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def camera_pose(yaw: float, pitch: float, roll: float, distance: float, pan_x: float, pan_y: float) -> np.ndarray:
    """Camera-to-world 4x4 pose (OpenGL camera: looks along its -z, +y up)."""
    frame_width = 2.0 * distance * np.tan(np.radians(YFOV_DEGREES) / 2.0)
    return (
        _rot("y", yaw)
        @ _rot("x", -pitch)
        @ _translate(0.0, 0.0, distance)
        @ _rot("z", -roll)
        @ _translate(-pan_x * frame_width, -pan_y * frame_width, 0.0)
    )


def _smooth_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted normals shared by all corners at the same position (N, 3)."""
    _, group = np.unique(np.round(vertices, 6), axis=0, return_inverse=True)
    group = group.reshape(-1)
    tri = vertices[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    acc = np.zeros((group.max() + 1, 3))
    for k in range(3):
        np.add.at(acc, group[faces[:, k]], face_normals)
    normals = acc[group]
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 0, normals / np.maximum(length, 1e-12), [0.0, 1.0, 0.0])


def _primitive(part: Part, smooth: bool):
    import pyrender

    v, f = part.vertices, part.faces
    if smooth:
        positions, indices, uv = v, f, part.uv
        normals = _smooth_normals(v, f)
    else:
        positions = v[f].reshape(-1, 3)
        indices = np.arange(len(positions)).reshape(-1, 3)
        uv = None if part.uv is None else part.uv[f].reshape(-1, 2)
        tri = positions.reshape(-1, 3, 3)
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        normals = np.repeat(n, 3, axis=0)
    texture = None
    if part.image is not None and uv is not None:
        # Upload RGBA: 4-byte pixels keep every row 4-byte aligned, which
        # OpenGL's default unpack alignment assumes (RGB rows of odd widths
        # would shear the texture into coloured stripes).
        image = part.image
        if image.shape[2] == 3:
            image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        texture = pyrender.Texture(source=image, source_channels="RGBA")
    material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=list(part.colour),
        baseColorTexture=texture,
        metallicFactor=0.0,
        roughnessFactor=0.8,
        doubleSided=True,
    )
    primitive = pyrender.Primitive(
        positions=positions.astype(np.float32),
        normals=normals.astype(np.float32),
        texcoord_0=None if texture is None else uv.astype(np.float32),
        indices=indices.astype(np.uint32),
        material=material,
    )
    return primitive, np.asarray(part.colour, dtype=np.float64)


def _load_triton_first() -> None:
    """Import Triton (if installed) before the first EGL context exists.

    Mesa's llvmpipe and Triton each carry an LLVM; when Mesa's is loaded first,
    a later ``import triton`` (which torch and torchvision do lazily) crashes
    the process with a segmentation fault. Loaded in this order, both work.
    """
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


class Renderer:
    """Renders scene factors; holds one OpenGL context for all image sizes.

    Not thread-safe: use one per thread (:func:`default_renderer` gives each
    thread its own). Scene setters work on its public attributes: ``scene``
    (the pyrender scene), ``mesh_node``, ``camera_node``, ``light_node`` and
    ``light`` (the key light), ``primitives`` (the object's pyrender
    primitives with their base colours, RGBA) and ``flags`` (pyrender render
    flags of this render).
    """

    def __init__(self, mesh_cache_size: int = 8):
        _load_triton_first()
        import pyrender

        self.pyrender = pyrender
        self._offscreen: Any = None
        self._meshes: OrderedDict[tuple, tuple[Any, list]] = OrderedDict()
        self._mesh_cache_size = mesh_cache_size
        self.scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0])
        self._camera = pyrender.PerspectiveCamera(yfov=np.radians(YFOV_DEGREES), aspectRatio=1.0, znear=0.05, zfar=50.0)
        self.camera_node = self.scene.add(self._camera)
        self.light = pyrender.DirectionalLight()
        self.light_node = self.scene.add(self.light)
        self.mesh_node = None
        self._mesh_key: tuple | None = None
        self.primitives: list[tuple[Any, np.ndarray]] = []
        self.flags = pyrender.RenderFlags.RGBA

    def _mesh(self, key: tuple, parts: tuple[Part, ...], smooth: bool):
        """The pyrender mesh for ``key``, least recently used evicted first."""
        if key in self._meshes:
            self._meshes.move_to_end(key)
        else:
            if len(self._meshes) >= self._mesh_cache_size:
                self._meshes.popitem(last=False)
            built = [_primitive(p, smooth) for p in parts]
            mesh = self.pyrender.Mesh(primitives=[prim for prim, _ in built])
            self._meshes[key] = (mesh, built)
        return self._meshes[key]

    def show_mesh(self, key: tuple, parts: tuple[Part, ...], smooth: bool) -> None:
        """Put the mesh of ``parts`` (identified by ``key``) in the scene, uploading it once."""
        mesh, built = self._mesh(key, parts, smooth)
        if self._mesh_key != key:
            if self.mesh_node is not None:
                self.scene.remove_node(self.mesh_node)
            self.mesh_node = self.scene.add(mesh)
            self._mesh_key = key
        self.primitives = built

    def _offscreen_renderer(self, size: int):
        # One context for every size: uploaded meshes belong to a context.
        if self._offscreen is None:
            self._offscreen = self.pyrender.OffscreenRenderer(size, size)
        elif self._offscreen.viewport_width != size:
            self._offscreen.viewport_width = self._offscreen.viewport_height = size
        return self._offscreen

    def render(self, params: Mapping[str, Any], size: int = 224) -> RenderResult:
        """Render validated factor values (see :func:`perturber.pipeline.factors.validate`).

        Only scene factors are read (by the registered scene setters, in
        order); ``size`` is the square image side in pixels.
        """
        self.flags = self.pyrender.RenderFlags.RGBA
        for setter in registered_setters():
            setter.fn(self, params)
        colour, depth = self._offscreen_renderer(size).render(self.scene, flags=self.flags)
        return RenderResult(rgba=_unpremultiply(colour), depth=np.where(depth > 0, depth, np.inf).astype(np.float32))

    def close(self) -> None:
        if self._offscreen is not None:
            self._offscreen.delete()
            self._offscreen = None


# --------------------------------------------------------------------------
# Scene setters: how each scene factor reaches the renderer
# --------------------------------------------------------------------------


@scene_setter("object", "morph_target", "morph_t", "texture", "shading", order=0)
def _geometry(r: Renderer, p: Mapping[str, Any]) -> None:
    """The object's surface: its shape (a catalogue object, a mesh file or a
    morph), its texture, and smooth or faceted normals."""
    parts = surface(p["object"], p["morph_target"], float(p["morph_t"]), p["texture"])
    smooth = p["shading"] != "flat"
    r.show_mesh((p["object"], p["morph_target"], float(p["morph_t"]), p["texture"], smooth), parts, smooth)


@scene_setter("tint", "shading", order=10)
def _material(r: Renderer, p: Mapping[str, Any]) -> None:
    """Surface colour (tinted, or black for a silhouette); no lighting when unlit."""
    tint = np.array([*colour_to_rgb(p["tint"]), 1.0])
    for primitive, base in r.primitives:
        factor = np.array([0.0, 0.0, 0.0, 1.0]) if p["shading"] == "silhouette" else base * tint
        primitive.material.baseColorFactor = factor
    if p["shading"] in ("unlit", "silhouette"):
        r.flags |= r.pyrender.RenderFlags.FLAT


@scene_setter("yaw", "pitch", "roll", "distance", "pan_x", "pan_y", order=20)
def _camera(r: Renderer, p: Mapping[str, Any]) -> None:
    r.scene.set_pose(r.camera_node, camera_pose(p["yaw"], p["pitch"], p["roll"], p["distance"], p["pan_x"], p["pan_y"]))


@scene_setter("light_azimuth", "light_elevation", "light_intensity", "light_color", order=30)
def _key_light(r: Renderer, p: Mapping[str, Any]) -> None:
    # The light turns with the camera's orbit but not with its roll: roll
    # is a rotation of the whole image, its lighting included.
    orbit = _rot("y", p["yaw"]) @ _rot("x", -p["pitch"])
    r.scene.set_pose(r.light_node, orbit @ _rot("y", p["light_azimuth"]) @ _rot("x", -p["light_elevation"]))
    r.light.color = np.array(colour_to_rgb(p["light_color"]))
    r.light.intensity = float(p["light_intensity"])


@scene_setter("ambient", order=40)
def _ambient(r: Renderer, p: Mapping[str, Any]) -> None:
    r.scene.ambient_light = np.full(3, float(p["ambient"]))


def _unpremultiply(colour: np.ndarray) -> np.ndarray:
    """Multisample resolve blends edges with the transparent-black clear colour,
    which premultiplies them by alpha; undo that so alpha is straight."""
    rgba = colour.astype(np.float32)
    alpha = rgba[..., 3:4]
    rgb = np.where(alpha > 0, rgba[..., :3] * 255.0 / np.maximum(alpha, 1.0), 0.0)
    out = np.concatenate([np.clip(np.round(rgb), 0, 255), alpha], axis=-1)
    return out.astype(np.uint8)


_local = threading.local()


def default_renderer() -> Renderer:
    """This thread's renderer, created on first use and then reused.

    An OpenGL context is current in one thread at a time, so each thread (a
    Dask worker thread, say) gets its own; a single-threaded process has one.
    """
    renderer = getattr(_local, "renderer", None)
    if renderer is None:
        renderer = _local.renderer = Renderer()
    return renderer


def render_scene(values: Mapping[str, Any], size: int = 224) -> RenderResult:
    """Validate ``values`` (factor name → value, defaults filled) and render the scene."""
    return default_renderer().render(factors.validate(values), size)


def render(values: Mapping[str, Any], size: int = 224) -> np.ndarray:
    """Validate, render the scene and apply every image factor (background
    included): (size, size, 4) uint8 RGBA, alpha 255 unless the background is 'none'."""
    params = factors.validate(values)
    result = default_renderer().render(params, size)
    out = imageops.apply_image_factors(imageops.to_tensor(result.rgba), [params])
    return imageops.to_uint8(out)[0]
