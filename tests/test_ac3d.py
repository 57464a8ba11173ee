import numpy as np
import pytest

from perturber.pipeline.ac3d import read_ac3d
from perturber.pipeline.assets import catalogue

SQUARE = """AC3Db
MATERIAL "red" rgb 1 0 0  amb 1 1 1  emis 0 0 0  spec 0 0 0  shi 1  trans 0
OBJECT world
kids 1
OBJECT poly
name "square"
loc 10 0 0
numvert 4
0 0 0
1 0 0
1 1 0
0 1 0
numsurf 2
SURF 0x20
mat 0
refs 4
0 0 0
1 1 0
2 1 1
3 0 1
SURF 0x22
mat 0
refs 2
0 0 0
1 1 0
kids 0
"""


def test_reads_polygons_transforms_and_uvs(tmp_path):
    path = tmp_path / "square.ac"
    path.write_text(SQUARE)
    (part,) = read_ac3d(path)
    assert part.faces.shape == (2, 3)  # the quad, fan-triangulated; the line is skipped
    assert np.allclose(part.vertices[:, 0].min(), 10) and np.allclose(part.vertices[:, 0].max(), 11)
    assert part.rgb == (1.0, 0.0, 0.0)
    assert part.uv.shape == (6, 2) and part.uv.max() == 1


def test_rejects_non_ac3d(tmp_path):
    path = tmp_path / "x.ac"
    path.write_text("solid cube\n")
    with pytest.raises(ValueError, match="not an AC3D file"):
        read_ac3d(path)


def test_reads_flightgear_fire_truck():
    parts = read_ac3d(catalogue()["objects"]["fire_truck"]["source"]["file"])
    assert sum(len(p.faces) for p in parts) > 400
    assert any(p.texture is not None and p.texture.is_file() for p in parts)
