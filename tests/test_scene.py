"""Each scene factor changes the rendered image the way its doc says."""

import numpy as np
import pytest

from conftest import centroid, iou, mask
from perturber.pipeline import factors, scene


def test_render_shapes_and_types(render):
    r = render(size=64)
    assert r.rgba.shape == (64, 64, 4) and r.rgba.dtype == np.uint8
    assert r.depth.shape == (64, 64) and r.depth.dtype == np.float32
    inside = r.rgba[..., 3] == 255  # depth is not multisampled: edges may be either
    assert np.isfinite(r.depth[inside]).all() and np.isinf(r.depth[r.rgba[..., 3] == 0]).all()
    # The object's centre is at the camera distance; its depth is within half a unit of it.
    assert abs(float(np.median(r.depth[inside])) - 2.2) < 0.5


def test_edges_are_anti_aliased(render):
    alpha = render(size=96).rgba[..., 3]
    assert ((alpha > 0) & (alpha < 255)).sum() > 20


def test_same_parameters_same_pixels(render):
    a = render(object="dog", yaw=33, background="meadow", size=96)
    render(object="cat", yaw=-10, size=96)  # something else in between
    b = render(object="dog", yaw=33, background="meadow", size=96)
    assert np.array_equal(a.rgba, b.rgba) and np.array_equal(a.depth, b.depth)


def test_yaw_front_and_back_differ(render):
    front, back = render(yaw=0), render(yaw=180)
    assert np.abs(front.rgba.astype(int) - back.rgba.astype(int)).mean() > 5
    # A full turn is the same view.
    assert np.array_equal(render(yaw=-180).rgba, back.rgba)


@pytest.mark.parametrize("texture", ["on", "off"])
def test_roll_rotates_the_image(render, texture):
    # The default light comes from the upper right; the rolled image's light too is rotated.
    upright = render(roll=0, texture=texture, size=128)
    rolled = render(roll=90, texture=texture, size=128)
    expected = np.rot90(upright.rgba, k=1)  # counter-clockwise
    assert iou(mask(rolled), expected[..., 3] > 127) > 0.97
    both = (rolled.rgba[..., 3] == 255) & (expected[..., 3] == 255)
    diff = np.abs(rolled.rgba.astype(int) - expected.astype(int))[both][:, :3]
    assert np.median(diff) <= 4 and diff.mean() <= 8  # texture filtering differs a little


def test_pitch_changes_the_view(render):
    assert iou(mask(render(pitch=0)), mask(render(pitch=60))) < 0.9


def test_distance_shrinks_the_object(render):
    areas = [mask(render(distance=d)).sum() for d in (1.5, 2.2, 4.0, 8.0)]
    assert areas == sorted(areas, reverse=True)
    # Apparent area falls roughly with the square of the distance.
    assert 2.5 < areas[1] / areas[2] < 4.5


def test_pan_moves_the_centroid(render):
    size = 128
    far = dict(distance=4.0, size=size)  # the whole object stays in the frame
    c0 = centroid(mask(render(**far)))
    right = centroid(mask(render(pan_x=0.2, **far)))
    up = centroid(mask(render(pan_y=0.2, **far)))
    assert right[0] - c0[0] == pytest.approx(0.2 * size, abs=4)
    assert c0[1] - up[1] == pytest.approx(0.2 * size, abs=4)


def test_silhouette_is_one_colour(render):
    r = render(shading="silhouette", size=96)
    solid = r.rgba[..., 3] == 255
    assert solid.sum() > 500
    assert np.unique(r.rgba[solid][:, :3], axis=0).shape[0] == 1


def test_unlit_ignores_the_light(render):
    a = render(shading="unlit", light_intensity=0.5, ambient=0.0)
    b = render(shading="unlit", light_intensity=10.0, ambient=1.0)
    assert np.array_equal(a.rgba, b.rgba)


def test_flat_shading_differs_from_smooth(render):
    smooth, flat = render(shading="smooth", size=128), render(shading="flat", size=128)
    assert np.array_equal(mask(smooth), mask(flat))
    assert np.abs(smooth.rgba.astype(int) - flat.rgba.astype(int))[mask(smooth)].mean() > 1


def _mean_rgb(r):
    return r.rgba[mask(r)][:, :3].astype(float).mean(0)


def test_light_intensity_and_ambient_brighten(render):
    assert _mean_rgb(render(light_intensity=6.0)).sum() > _mean_rgb(render(light_intensity=1.0)).sum() + 30
    assert _mean_rgb(render(ambient=1.0)).sum() > _mean_rgb(render(ambient=0.0)).sum() + 30


def test_light_colour_and_tint_colour_the_object(render):
    red_light = _mean_rgb(render(light_color="red", ambient=0.0, texture="off"))
    assert red_light[0] > 3 * max(red_light[1], red_light[2])
    green = _mean_rgb(render(tint="#00ff00", texture="off"))
    assert green[1] > 3 * max(green[0], green[2])


def test_light_direction_moves_the_highlight(render):
    def left_right(r):
        m = mask(r)
        lum = r.rgba[..., :3].astype(float).mean(2)
        half = m.shape[1] // 2
        return lum[:, :half][m[:, :half]].mean(), lum[:, half:][m[:, half:]].mean()

    kw = dict(object="teddy_bear", yaw=0, ambient=0.1, texture="off", size=96)
    l1, r1 = left_right(render(light_azimuth=-80, light_elevation=0, **kw))
    l2, r2 = left_right(render(light_azimuth=80, light_elevation=0, **kw))
    assert l1 > r1 and r2 > l2


def test_texture_off_pattern_and_swap(render):
    on = render(object="cat", size=96)
    off = render(object="cat", texture="off", size=96)
    leopard = render(object="cat", texture="pattern:leopard", size=96)
    dog_skin = render(object="cat", texture="dog", size=96)
    for other in (off, leopard, dog_skin):
        assert np.array_equal(mask(on), mask(other))  # the shape is untouched
        assert np.abs(on.rgba.astype(int) - other.rgba.astype(int))[mask(on)].mean() > 10
    # Cue conflict: the cat wearing the dog's fur takes its colours from the dog.
    assert np.linalg.norm(_mean_rgb(dog_skin) - _mean_rgb(render(object="dog", size=96))) < np.linalg.norm(
        _mean_rgb(on) - _mean_rgb(render(object="dog", size=96))
    )


def test_background_none_leaves_alpha_zero_outside():
    image = scene.render({"background": "none"}, 96)
    empty = scene.default_renderer().render(factors.validate({}), 96).rgba[..., 3] == 0
    assert (image[..., 3][empty] == 0).all()
    photo = scene.render({"background": "meadow"}, 96)
    assert (photo[..., 3] == 255).all() and photo[..., :3][empty].std() > 10
    solid = scene.render({"background": "#0000ff"}, 96)
    assert (solid[..., :3][empty] == [0, 0, 255]).all()


def test_camera_pose_is_orthonormal():
    pose = scene.camera_pose(30, 20, 10, 3.0, 0.1, -0.1)
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3))
    assert np.isclose(np.linalg.det(pose[:3, :3]), 1.0)


def test_user_mesh_renders(tmp_path):
    import trimesh

    path = tmp_path / "sphere.ply"
    trimesh.creation.icosphere().export(path)
    image = scene.render({"object": str(path), "background": "none"}, 64)
    m = image[..., 3] > 127
    assert 0.2 < m.mean() < 0.6


def test_models_import_after_rendering_does_not_crash():
    # Mesa's LLVM loaded before Triton's used to segfault `import torchvision.models`.
    import subprocess
    import sys

    code = "from pipeline import scene; scene.render({}, 32); import torchvision.models; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-500:]


def test_textures_of_odd_width_are_not_sheared(tmp_path):
    # A solid-colour texture 37 px wide: RGB rows of 111 bytes are not 4-byte
    # aligned; uploaded naively, each row shifts the channels (coloured stripes).
    from PIL import Image

    Image.new("RGB", (37, 29), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "quad.mtl").write_text("newmtl skin\nKd 1 1 1\nmap_Kd red.png\n")
    (tmp_path / "quad.obj").write_text(
        "mtllib quad.mtl\nusemtl skin\nv -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"
    )
    image = scene.render({"object": str(tmp_path / "quad.obj"), "yaw": 0, "pitch": 0,
                          "shading": "unlit", "background": "none"}, 64)
    solid = image[..., 3] == 255
    assert solid.sum() > 500
    assert np.abs(image[solid][:, :3].astype(int) - [200, 30, 30]).max() <= 3


def test_threads_render_concurrently_and_identically(render):
    # Each thread gets its own renderer (an OpenGL context is per thread).
    from concurrent.futures import ThreadPoolExecutor

    jobs = [{"object": o, "yaw": y} for o in ("dog", "cat") for y in (0, 90, 180)]
    expected = [render(size=64, **j).rgba for j in jobs]

    def work(j):
        return scene.default_renderer().render(factors.validate(j), 64).rgba

    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(work, jobs * 2))
    for i, image in enumerate(got):
        assert np.array_equal(image, expected[i % len(jobs)])
