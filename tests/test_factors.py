import pytest

from perturber.pipeline import factors
from perturber.pipeline.factors import FactorError


def test_every_factor_declares_its_space():
    for f in factors.FACTORS.values():
        assert f.kind in ("scene", "image")
        assert f.doc and f.group
        assert f.validate(f.default) == f.default, f.name


def test_scene_factors_cover_the_design():
    scene = set(factors.names("scene"))
    assert {"object", "morph_target", "morph_t", "yaw", "pitch", "roll", "distance", "pan_x", "pan_y",
            "light_azimuth", "light_elevation", "light_intensity", "light_color", "ambient", "shading",
            "texture", "tint"} <= scene
    assert "background" in factors.names("image")


def test_validate_fills_defaults_and_canonicalises():
    params = factors.validate({"object": "cat", "yaw": "30", "tint": "Red"})
    assert params["yaw"] == 30.0 and params["tint"] == "#ff0000"
    assert set(params) == set(factors.FACTORS)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"yaww": 3}, "unknown factor 'yaww' (did you mean 'yaw'?)"),
        ({"yaw": 400}, "yaw=400 is outside its domain [-180, 180] degrees"),
        ({"yaw": "north"}, "yaw='north' is not a number"),
        ({"yaw": float("nan")}, "not a finite number"),
        ({"object": "dgo"}, "object='dgo' is not a known object (did you mean 'dog'?)"),
        ({"object": "/no/such/mesh.obj"}, "mesh file not found"),
        ({"shading": "toon"}, "shading='toon' is not one of smooth, flat, unlit, silhouette"),
        ({"tint": "not-a-colour"}, "is not a colour"),
        ({"background": "moon"}, "background='moon' is not a known background"),
        ({"texture": "pattern:zebra"}, "texture='pattern:zebra' is not a known texture"),
        ({"morph_t": 0.5}, "morph_t needs a morph_target"),
        ({"morph_target": "cat", "morph_t": 1.5}, "morph_t=1.5 is outside"),
    ],
)
def test_bad_values_get_one_line_errors(values, message):
    with pytest.raises(FactorError) as err:
        factors.validate(values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_background_accepts_ids_colours_and_none():
    assert factors.validate_value("background", "meadow") == "meadow"
    assert factors.validate_value("background", "#00FF00") == "#00ff00"
    assert factors.validate_value("background", "none") == "none"


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        factors.register(factors.FACTORS["yaw"])
