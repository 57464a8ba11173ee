"""The factor registry: every perturbation factor, declared once.

A factor has a name, a kind (``scene``: needs a render; ``image``: a batched
2D op on the render), a domain, a default, units and a one-line doc. The same
name is the sweep axis, the store dimension, the xarray coordinate, the CLI
option (``--name``) and the viewer widget.

Validation happens here, when values enter the system (CLI, spec, viewer),
never deep inside a render::

    >>> params = validate({"object": "dog", "yaw": 30})
    >>> params["pitch"]            # every factor present, defaults filled in
    10.0
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from perturber.pipeline import assets, expression, textures
from perturber.pipeline.assets import MESH_SUFFIXES
from perturber.pipeline.colours import normalise_colour
from perturber.pipeline.errors import PerturberError

__all__ = [
    "FactorError",
    "Interval",
    "Choice",
    "Colour",
    "AssetRef",
    "Factor",
    "FACTORS",
    "register",
    "declare",
    "get",
    "names",
    "validate",
    "validate_value",
    "scene_params",
    "parse_cli_value",
]


class FactorError(PerturberError):
    """A factor name or value is not acceptable; the message is one line."""


# --------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A closed numeric interval ``[lo, hi]``; ``integer`` restricts to ints."""

    lo: float
    hi: float
    integer: bool = False

    def validate(self, name: str, value: Any, units: str) -> float | int:
        if isinstance(value, bool):
            raise FactorError(f"{name}={value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise FactorError(f"{name}={value!r} is not a number") from None
        if not math.isfinite(number):
            raise FactorError(f"{name}={value!r} is not a finite number")
        if not self.lo <= number <= self.hi:
            raise FactorError(
                f"{name}={value!r} is outside its domain [{_fmt(self.lo)}, {_fmt(self.hi)}] {units}".rstrip()
            )
        if self.integer:
            if number != int(number):
                raise FactorError(f"{name}={value!r} must be a whole number")
            return int(number)
        return number

    def describe(self) -> str:
        return f"[{_fmt(self.lo)}, {_fmt(self.hi)}]" + (" (integer)" if self.integer else "")


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def validate(self, name: str, value: Any, units: str) -> str:
        text = str(value)
        if text not in self.values:
            raise FactorError(f"{name}={value!r} is not one of {', '.join(self.values)}")
        return text

    def describe(self) -> str:
        return "{" + ", ".join(self.values) + "}"


@dataclass(frozen=True)
class Colour:
    """An sRGB colour: a CSS/X11 name or ``#rrggbb``; stored as ``#rrggbb``."""

    def validate(self, name: str, value: Any, units: str) -> str:
        colour = normalise_colour(value)
        if colour is None:
            raise FactorError(f"{name}={value!r} is not a colour (use a name like 'red' or '#rrggbb')")
        return colour

    def describe(self) -> str:
        return "colour name or #rrggbb"


@dataclass(frozen=True)
class AssetRef:
    """A reference resolved against the asset catalogue.

    ``options`` returns the accepted ids (looked up lazily, so the catalogue is
    read only when a value is validated). ``extra`` are literal values also
    accepted (``'none'``, ``'on'``, ...). ``colour`` also accepts a colour;
    ``mesh_path`` also accepts the path of a user's mesh file.
    """

    options: Callable[[], Sequence[str]]
    extra: tuple[str, ...] = ()
    colour: bool = False
    mesh_path: bool = False
    what: str = "value"

    def validate(self, name: str, value: Any, units: str) -> str:
        text = str(value).strip()
        if text in self.extra or text in self.options():
            return text
        if self.mesh_path and (Path(text).suffix.lower() in MESH_SUFFIXES or (Path(text).suffix and Path(text).is_file())):
            if not Path(text).is_file():
                raise FactorError(f"{name}={text!r}: mesh file not found")
            if problem := assets.mesh_format_problem(text):  # a file, but not one we read: say which we do
                raise FactorError(f"{name}={text!r}: {problem}")
            return str(Path(text).resolve())
        if self.colour:
            colour = normalise_colour(text)
            if colour is not None:
                return colour
        choices = [*self.extra, *self.options()]
        hint = difflib.get_close_matches(text, choices, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise FactorError(f"{name}={text!r} is not a known {self.what}{extra}; known: {', '.join(choices)}")

    def describe(self) -> str:
        parts = [*self.extra, *self.options()]
        text = "{" + ", ".join(parts) + "}"
        if self.colour:
            text += " or a colour"
        if self.mesh_path:
            text += " or a mesh file path"
        return text


@dataclass(frozen=True)
class ExpressionText:
    """A sandboxed colour expression over r, g, b and p (see :mod:`perturber.pipeline.expression`)."""

    def validate(self, name: str, value: Any, units: str) -> str:
        text = str(value)
        try:
            expression.compile_expression(text)
        except expression.ExpressionError as exc:
            raise FactorError(f"{name}: {exc}") from None
        return text

    def describe(self) -> str:
        return "an expression over r, g, b, p: one value (grey) or three (r, g, b)"


def _fmt(x: float) -> str:
    return f"{x:g}"


# --------------------------------------------------------------------------
# Factors
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Factor:
    """One perturbation factor. ``group`` is the viewer's control group."""

    name: str
    kind: str
    domain: Interval | Choice | Colour | AssetRef | ExpressionText
    default: Any
    units: str
    doc: str
    group: str
    long_name: str = field(default="")

    def __post_init__(self) -> None:
        if self.kind not in ("scene", "image"):
            raise ValueError(f"factor {self.name}: kind must be 'scene' or 'image', not {self.kind!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"factor name {self.name!r} must be snake_case")

    def validate(self, value: Any) -> Any:
        """Return the canonical form of ``value`` or raise :class:`FactorError`."""
        return self.domain.validate(self.name, value, self.units)

    @property
    def numeric(self) -> bool:
        return isinstance(self.domain, Interval)


FACTORS: dict[str, Factor] = {}


def register(factor: Factor) -> Factor:
    """Add ``factor`` to the registry; names are unique."""
    if factor.name in FACTORS:
        raise ValueError(f"factor {factor.name!r} is already registered")
    FACTORS[factor.name] = factor
    return factor


def declare(factor: str | Factor, kind: str) -> Factor:
    """The factor an implementation names: a registered name, or a new
    :class:`Factor` that is registered here (how a plugin declares its factor
    and its implementation together). ``kind`` is what the implementation
    handles (``scene`` or ``image``)."""
    if isinstance(factor, Factor):
        if FACTORS.get(factor.name) != factor:  # the same declaration again (a module reloaded) is the same factor
            register(factor)
    else:
        factor = get(factor)
    if factor.kind != kind:
        raise ValueError(f"factor {factor.name!r} is of kind {factor.kind!r}, not {kind!r}")
    return factor


def get(name: str) -> Factor:
    """The factor called ``name``, or a :class:`FactorError` with a suggestion."""
    try:
        return FACTORS[name]
    except KeyError:
        hint = difflib.get_close_matches(name, FACTORS, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise FactorError(f"unknown factor {name!r}{extra}") from None


def names(kind: str | None = None) -> list[str]:
    """Registered factor names, in declaration order, optionally of one kind."""
    return [f.name for f in FACTORS.values() if kind is None or f.kind == kind]


def validate_value(name: str, value: Any) -> Any:
    """Canonical value of one factor, or a one-line :class:`FactorError`."""
    return get(name).validate(value)


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``values`` and fill in defaults: a dict of every factor."""
    unknown = [k for k in values if k not in FACTORS]
    if unknown:
        get(unknown[0])  # raises with a suggestion
    params = {name: f.default for name, f in FACTORS.items()}
    for name, value in values.items():
        params[name] = FACTORS[name].validate(value)
    if params["morph_target"] == "none" and params["morph_t"] != 0:
        raise FactorError("morph_t needs a morph_target (morph_target is 'none')")
    return params


def scene_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The scene-kind subset of validated ``params``: what a render depends on."""
    return {k: params[k] for k in names("scene")}


def parse_cli_value(name: str, text: str) -> Any:
    """Parse a command-line string for factor ``name`` (numbers for intervals)."""
    factor = get(name)
    if factor.numeric:
        try:
            return float(text)
        except ValueError:
            raise FactorError(f"{name}={text!r} is not a number") from None
    return text


# --------------------------------------------------------------------------
# Scene factors (set by the scene setters of perturber.pipeline.scene)
# --------------------------------------------------------------------------
# The default camera is the canonical view: a three-quarter view from slightly
# above (yaw 45, pitch 10), where the built-in objects read as their classes
# (a straight front view of a car does not, for EfficientNet-Lite0).


def _texture_ids() -> list[str]:
    return [*assets.object_ids(), *(f"pattern:{p}" for p in assets.pattern_ids()),
            *(f"{textures.PREFIX}{t}" for t in assets.texture_ids())]


@dataclass(frozen=True)
class _TextureRef(AssetRef):
    """The texture factor's domain: :class:`AssetRef`'s ids, and ``image:<ref>``
    for any catalogue texture or pattern or an image file (:func:`perturber.pipeline.textures.validate`)."""

    def validate(self, name: str, value: Any, units: str) -> str:
        text = str(value).strip()
        if not text.startswith(textures.PREFIX):
            return super().validate(name, value, units)
        try:
            return textures.validate(text)
        except assets.AssetError as exc:
            raise FactorError(f"{name}={text!r}: {exc}") from None

    def describe(self) -> str:
        return super().describe() + " or image:<texture, pattern or image file>"


_SCENE = [
    Factor("object", "scene", AssetRef(assets.object_ids, mesh_path=True, what="object"), "dog", "",
           "Which 3D object: a catalogue id or the path of your own mesh file.", "Object & shape"),
    Factor("morph_target", "scene", AssetRef(assets.object_ids, extra=("none",), what="object"), "none", "",
           "Second object of a shape morph ('none': no morph).", "Object & shape"),
    Factor("morph_t", "scene", Interval(0.0, 1.0), 0.0, "fraction",
           "Shape morph from object (0) to morph_target (1); texture is unaffected.", "Object & shape"),
    Factor("texture", "scene", _TextureRef(_texture_ids, extra=("on", "off"), what="texture"), "on", "",
           "Surface texture: 'on' (the object's own), 'off' (plain grey), another object's id (its texture moved over), "
           "pattern:<id>, or image:<catalogue texture or image file> (projected without UVs: any shape can wear it).",
           "Object & shape"),
    Factor("tint", "scene", Colour(), "#ffffff", "sRGB",
           "Colour multiplied into the object's surface colour (white: no tint).", "Object & shape"),
    Factor("yaw", "scene", Interval(-180.0, 180.0), 45.0, "degrees",
           "Camera azimuth around the object; 0 sees its front, 90 its left side, 180 its back.", "Camera"),
    Factor("pitch", "scene", Interval(-85.0, 85.0), 10.0, "degrees",
           "Camera elevation; positive looks down on the object from above.", "Camera"),
    Factor("roll", "scene", Interval(-180.0, 180.0), 0.0, "degrees",
           "Rotation of the image about the view axis, counter-clockwise.", "Camera"),
    Factor("distance", "scene", Interval(1.0, 10.0), 2.2, "object sizes",
           "Camera distance from the object's centre (zoom); the object's largest side is 1.", "Camera"),
    Factor("pan_x", "scene", Interval(-0.5, 0.5), 0.0, "image widths",
           "Moves the object right in the image (camera translation parallel to the image).", "Camera"),
    Factor("pan_y", "scene", Interval(-0.5, 0.5), 0.0, "image heights",
           "Moves the object up in the image (camera translation parallel to the image).", "Camera"),
    Factor("light_azimuth", "scene", Interval(-180.0, 180.0), 30.0, "degrees",
           "Direction the key light comes from, turning about the camera's vertical: 0 from the camera, 90 from its right.",
           "Lighting & shading"),
    Factor("light_elevation", "scene", Interval(-90.0, 90.0), 30.0, "degrees",
           "Key light elevation relative to the camera; positive comes from above.", "Lighting & shading"),
    Factor("light_intensity", "scene", Interval(0.0, 20.0), 4.0, "lux",
           "Key (directional) light illuminance, as pyrender defines it.", "Lighting & shading"),
    Factor("light_color", "scene", Colour(), "#ffffff", "sRGB",
           "Key light colour.", "Lighting & shading"),
    Factor("ambient", "scene", Interval(0.0, 2.0), 0.25, "fraction",
           "Uniform white ambient light: this fraction of the surface colour is added.", "Lighting & shading"),
    Factor("shading", "scene", Choice(("smooth", "flat", "unlit", "silhouette")), "smooth", "",
           "smooth: interpolated normals; flat: faceted; unlit: colour without lighting; "
           "silhouette: solid black shape.", "Lighting & shading"),
]

# --------------------------------------------------------------------------
# Image factors (applied to the RGBA render by the ops of perturber.pipeline.imageops)
# --------------------------------------------------------------------------

_IMAGE = [
    Factor("background", "image", AssetRef(assets.background_ids, extra=("none",), colour=True, what="background"),
           "white", "",
           "Behind the object: a photo id, a solid colour, or 'none' (transparent, alpha 0).", "Background"),
    Factor("fade", "image", Interval(0.0, 1.0), 0.0, "fraction",
           "Fade to black: 0 unchanged, 1 black.", "Colour"),
    Factor("brightness", "image", Interval(-1.0, 1.0), 0.0, "offset",
           "Added to every channel (channels run from 0 to 1).", "Colour"),
    Factor("contrast", "image", Interval(0.0, 5.0), 1.0, "factor",
           "Scales each channel about mid-grey: (x - 0.5) * contrast + 0.5.", "Colour"),
    Factor("saturation", "image", Interval(0.0, 5.0), 1.0, "factor",
           "Multiplies HSV saturation: 0 grey, 1 unchanged.", "Colour"),
    Factor("hue", "image", Interval(-180.0, 180.0), 0.0, "degrees",
           "Rotates HSV hue; 180 swaps each colour for its complement.", "Colour"),
    Factor("gamma", "image", Interval(0.1, 10.0), 1.0, "exponent",
           "Raises each channel to this power: above 1 darkens, below 1 brightens.", "Colour"),
    Factor("expression", "image", ExpressionText(), expression.DEFAULT_EXPRESSION, "",
           "Your own colour expression over r, g, b in [0, 1] and the slider p (sandboxed).", "Colour"),
    Factor("expression_p", "image", Interval(-10.0, 10.0), 1.0, "",
           "The slider parameter p of the colour expression.", "Colour"),
    Factor("band_low", "image", Interval(0.0, 4.0), 1.0, "gain",
           "Gain of the coarse band (periods of 16 px and more) of a Laplacian pyramid.", "Frequency"),
    Factor("band_mid", "image", Interval(0.0, 4.0), 1.0, "gain",
           "Gain of the middle band (periods of 4 to 16 px) of a Laplacian pyramid.", "Frequency"),
    Factor("band_high", "image", Interval(0.0, 4.0), 1.0, "gain",
           "Gain of the fine band (periods of 2 to 4 px) of a Laplacian pyramid.", "Frequency"),
    Factor("blur", "image", Interval(0.0, 20.0), 0.0, "pixels",
           "Gaussian blur, standard deviation in pixels of the model input.", "Frequency"),
    Factor("noise_uniform", "image", Interval(0.0, 1.0), 0.0, "amplitude",
           "Adds uniform noise in [-a, a] to every channel.", "Frequency"),
    Factor("noise_gaussian", "image", Interval(0.0, 1.0), 0.0, "std",
           "Adds Gaussian noise of this standard deviation to every channel.", "Frequency"),
    Factor("noise_salt_pepper", "image", Interval(0.0, 1.0), 0.0, "fraction",
           "Sets this fraction of pixels to black or white.", "Frequency"),
    Factor("noise_seed", "image", Interval(0, 2**31 - 1, integer=True), 0, "",
           "Seed of the noise factors (same seed, same noise).", "Frequency"),
    Factor("shuffle", "image", Interval(1, 32, integer=True), 1, "patches per side",
           "Cuts the image into k x k patches and permutes them (1: unchanged).", "Spatial"),
    Factor("shuffle_seed", "image", Interval(0, 2**31 - 1, integer=True), 0, "",
           "Seed of the patch permutation.", "Spatial"),
]

for _factor in (*_SCENE, *_IMAGE):
    register(_factor)
