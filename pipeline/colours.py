"""Colours: what a colour factor accepts, and its RGB value."""

from __future__ import annotations

from typing import Any

from PIL import ImageColor

__all__ = ["normalise_colour", "colour_to_rgb"]


def normalise_colour(value: Any) -> str | None:
    """``'red'``, ``'#F00'``, ``'#ff0000'`` → ``'#ff0000'``; None if not a colour."""
    text = str(value).strip().lower()
    if len(text) > 32:
        return None
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        return None
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def colour_to_rgb(value: str) -> tuple[float, float, float]:
    """``'#ff8000'`` → ``(1.0, 0.502, 0.0)`` (each channel in [0, 1], no gamma)."""
    r, g, b = ImageColor.getrgb(value)[:3]
    return (r / 255.0, g / 255.0, b / 255.0)
