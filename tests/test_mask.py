"""The object mask of a cube (``mask: true``): the render's alpha, stored beside the image."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from perturber.pipeline import engine, factors, names, run, spec, store, verify
from perturber.pipeline.spec import SpecError

#: The hash of this spec before cubes could store a mask: a spec without ``mask`` must keep it
#: (the store records it, and a store written before keeps matching its spec).
OLD = {"cubes": {"c": {"axes": {"object": ["dog"], "yaw": [0, 90]}, "models": ["efficientnet_lite0"],
                       "images": True, "size": 64}}}
OLD_SHA256 = "1e6fb994280590c926f9d9769475055026b2bb057cc0d1380a98146d284559d2"


def _cube(**extra):
    raw = {k: dict(v) for k, v in OLD["cubes"].items()}
    raw["c"].update(extra)
    return spec.parse_spec({"cubes": raw}).cubes[0]


def test_a_spec_without_mask_keeps_its_hash():
    plain, off, on = _cube(), _cube(mask=False), _cube(mask=True)
    assert plain.sha256() == off.sha256() == OLD_SHA256
    assert "mask" not in plain.to_dict() and on.to_dict()["mask"] is True
    assert on.sha256() != OLD_SHA256
    again = spec.parse_spec({"cubes": {"c": on.to_dict()}}).cubes[0]  # the round trip the study runner makes
    assert again.mask and again.sha256() == on.sha256()


def test_a_bad_mask_value_is_one_line():
    with pytest.raises(SpecError, match=r"^cube 'c': mask: must be true or false, got 'yes'$"):
        _cube(mask="yes")


def test_template_has_the_mask_only_on_request():
    assert names.MASK not in store.template(_cube(), store.Layout({}))
    ds = store.template(_cube(mask=True, images=False), store.Layout({}))
    m = ds[names.MASK]
    assert m.dims == ("object", "yaw", names.Y, names.X) and m.dtype == np.uint8
    assert m.data.chunksize == (1, 1, 64, 64) and names.IMAGE not in ds


@pytest.mark.slow
def test_evaluate_returns_the_render_alpha_unaffected_by_image_factors(render):
    points = [{"object": "dog", "yaw": 30.0, "background": "white"},
              {"object": "dog", "yaw": 30.0, "background": "meadow", "hue": 120.0, "blur": 2.0},
              {"object": "dog", "yaw": 30.0, "background": "none", "fade": 0.5}]
    ev = engine.evaluate(points, ["efficientnet_lite0"], size=64)
    expected = render(size=64, object="dog", yaw=30.0).rgba[..., 3]
    assert ev.alpha.shape == (3, 64, 64) and ev.alpha.dtype == np.uint8
    for a in ev.alpha:
        np.testing.assert_array_equal(a, expected)
    assert (expected == 255).sum() > 200 and expected[0, 0] == 0 and expected[-1, -1] == 0  # object opaque, background 0
    assert (ev.images[0][expected == 0] == 255).all()  # the image is composited, the mask is not


@pytest.mark.slow
def test_precompute_stores_the_mask_and_verify_checks_it(tmp_path, render):
    cube = spec.parse_spec({"cubes": {"c": {
        "axes": {"object": ["dog", "cat"], "yaw": [0, 90], "background": ["white", "meadow"], "hue": [0, 90]},
        "models": ["efficientnet_lite0"], "images": True, "mask": True, "size": 48}}})
    out = tmp_path / "m.zarr"
    run.precompute(cube, str(out), scheduler="synchronous", progress=False)
    ds = xr.open_zarr(out, group="c")
    m = ds[names.MASK]
    assert m.dims == ("object", "yaw", "background", "hue", "y", "x")
    assert m.encoding["chunks"] == ds[names.IMAGE].encoding["chunks"][:-1]
    for o in ("dog", "cat"):
        for yaw in (0.0, 90.0):
            alpha = render(size=48, **factors.validate({"object": o, "yaw": yaw})).rgba[..., 3]
            stored = m.sel(object=o, yaw=yaw).values
            assert (stored == alpha).all()  # every background and hue: the same mask
    assert verify.find_damage(str(out), progress=False)[0] == []
    chunk = Path(out, "c", names.MASK, "c", "1", "0", "0", "0", "0", "0")
    assert chunk.is_file()
    chunk.unlink()
    damage, _ = verify.find_damage(str(out), progress=False)
    assert [d.problems for d in damage] == [{names.MASK: "chunk file missing"}]
