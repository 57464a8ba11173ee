"""A reader for AC3D (``.ac``) models, the format of FlightGear's vehicles.

trimesh does not read AC3D, and the format is small: materials, then a tree of
objects, each with a local ``loc``/``rot`` transform, vertices and polygons
whose vertex references carry texture coordinates. Polygons are fan-
triangulated; line surfaces are skipped.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["AC3DPart", "read_ac3d"]


@dataclass
class AC3DPart:
    """Triangles of one object that share a material and a texture.

    ``vertices`` (N, 3) in model units, ``faces`` (M, 3) indices, ``uv`` (N, 2)
    in [0, 1] image coordinates (v up), ``texture`` a path or None (the file's
    folder joined with ``texture_name``, the name as the file writes it: read
    it through :class:`perturber.pipeline.meshfiles.FolderResolver`, which keeps
    it inside the folder), ``rgb`` the material's diffuse colour in [0, 1].
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: Path | None
    rgb: tuple[float, float, float]
    texture_name: str | None = None


class _Lines:
    def __init__(self, text: str, path: Path):
        self.lines = text.splitlines()
        self.i = 0
        self.path = path

    def next(self) -> list[str]:
        while self.i < len(self.lines):
            line = self.lines[self.i].strip()
            self.i += 1
            if line:
                return shlex.split(line, posix=True)
        raise ValueError("unexpected end of AC3D file")


def read_ac3d(path: str | Path) -> list[AC3DPart]:
    """Read an AC3D file into parts grouped by (object, material, texture).

    A malformed file raises ValueError with one line: what is wrong and where."""
    path = Path(path)
    text = path.read_text(errors="replace")
    if not text.startswith("AC3D"):
        raise ValueError("not an AC3D file (no AC3D header)")
    lines = _Lines(text, path)
    try:
        parts = _read(lines, path)
    except RecursionError:
        raise ValueError("objects nested too deeply") from None
    except (ValueError, IndexError) as exc:  # a short line, a word where a number belongs, unbalanced quotes
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"line {lines.i}: {first}") from None
    if not parts:
        raise ValueError("the AC3D file has no polygons")
    return parts


def _read(lines: _Lines, path: Path) -> list[AC3DPart]:
    lines.next()  # header
    materials: list[tuple[float, float, float]] = []
    parts: list[AC3DPart] = []

    def read_object(parent: np.ndarray) -> None:
        local = np.eye(4)
        rotation = np.eye(3)
        texture_name: str | None = None
        verts = np.zeros((0, 3))
        groups: dict[int, tuple[list, list]] = {}
        while True:
            tok = lines.next()
            key = tok[0]
            if key == "loc":
                local[:3, 3] = [float(v) for v in tok[1:4]]
            elif key == "rot":
                rotation = np.array([float(v) for v in tok[1:10]]).reshape(3, 3)
            elif key == "texture":
                texture_name = tok[1]
            elif key == "numvert":
                n = int(tok[1])
                verts = np.array([[float(v) for v in lines.next()[:3]] for _ in range(n)], dtype=np.float64)
            elif key == "numsurf":
                for _ in range(int(tok[1])):
                    flags = int(lines.next()[1], 0)
                    mat = 0
                    tok2 = lines.next()
                    if tok2[0] == "mat":
                        mat = int(tok2[1])
                        tok2 = lines.next()
                    refs = [lines.next() for _ in range(int(tok2[1]))]
                    if flags & 0xF != 0 or len(refs) < 3:
                        continue  # a line, not a polygon
                    idx = [int(r[0]) for r in refs]
                    uv = [(float(r[1]), float(r[2])) if len(r) >= 3 else (0.0, 0.0) for r in refs]
                    corners, uvs = groups.setdefault(mat, ([], []))
                    for k in range(1, len(idx) - 1):  # fan triangulation
                        for j in (0, k, k + 1):
                            corners.append(idx[j])
                            uvs.append(uv[j])
            elif key == "kids":
                local[:3, :3] = rotation
                world = parent @ local
                for mat, (corners, uvs) in groups.items():
                    corner_idx = np.asarray(corners, dtype=np.int64)
                    if corner_idx.size == 0:
                        continue
                    if corner_idx.max() >= len(verts):
                        raise ValueError("a surface refers to a vertex that does not exist")
                    v = verts[corner_idx] @ world[:3, :3].T + world[:3, 3]
                    rgb = materials[mat] if mat < len(materials) else (1.0, 1.0, 1.0)
                    parts.append(
                        AC3DPart(
                            vertices=v,
                            faces=np.arange(len(v), dtype=np.int64).reshape(-1, 3),
                            uv=np.asarray(uvs, dtype=np.float64),
                            texture=None if texture_name is None else path.parent / texture_name,
                            rgb=rgb,
                            texture_name=texture_name,
                        )
                    )
                for _ in range(int(tok[1])):
                    header = lines.next()
                    if header[0] != "OBJECT":
                        raise ValueError(f"expected OBJECT, found {header[0]!r}")
                    read_object(world)
                return
            # name, data, texrep, crease, url, subdiv: not needed for rendering
            elif key == "data":
                lines.i += 1  # the data payload line

    while True:
        try:
            tok = lines.next()
        except ValueError:
            break
        if tok[0] == "MATERIAL":
            rgb_at = tok.index("rgb")
            materials.append(tuple(float(v) for v in tok[rgb_at + 1 : rgb_at + 4]))
        elif tok[0] == "OBJECT":
            read_object(np.eye(4))
    return parts
