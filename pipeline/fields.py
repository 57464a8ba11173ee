"""Typed fields of the YAML users write, checked with one-line errors that name the field.

A :class:`Fields` carries where the fields are (``cube 'views'``) and which
error to raise; each check takes the field's path below that place and
returns the value in its canonical type::

    f = Fields("cube 'views'", SpecError)
    f.whole(raw.get("top_k", 5), "top_k", 1, 1000)
    # SpecError: cube 'views': top_k: must be a whole number in 1..1000, got 5000

Booleans are never numbers here (YAML reads ``yes`` as True), and a float
that is a whole number (``1.0e6``: PyYAML reads ``1e6`` as a string) counts as one.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from perturber.pipeline.errors import PerturberError

__all__ = ["Fields", "is_whole", "show"]


def is_whole(value: Any) -> bool:
    """An int, or a finite float without a fraction; never a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a message stays one line)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Fields:
    """Checks of the fields under ``place``; failures raise ``error`` (one line)."""

    def __init__(self, place: str, error: type[PerturberError] = PerturberError):
        self.place, self.error = place, error

    def fail(self, path: str, message: str) -> PerturberError:
        """The error for field ``path`` (raise it)."""
        where = f"{self.place}: {path}" if path else self.place
        return self.error(f"{where}: {message}")

    def whole(self, value: Any, path: str, low: int = 1, high: int | None = None, name: str = "") -> int:
        """An integer in ``low..high`` (``high`` None: no upper bound); ``name``
        words the value in the message (``count must be ...``)."""
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        if not is_whole(value) or value < low or (high is not None and value > high):
            raise self.fail(path, f"{name + ' ' if name else ''}must be a whole number {span}, got {show(value)}")
        return int(value)

    def number(self, value: Any, path: str, name: str = "") -> float:
        """A finite real number."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(path, f"{name + ' ' if name else ''}must be a finite number, got {show(value)}")
        return float(value)

    def flag(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {show(value)}")
        return value

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be a non-empty string, got {show(value)}")
        return value

    def mapping(self, value: Any, path: str, what: str = "names to values", empty: bool = True) -> Mapping[str, Any]:
        """A mapping with string keys (None: empty, when ``empty``)."""
        if value is None and empty:
            return {}
        if not isinstance(value, Mapping) or (not value and not empty):
            raise self.fail(path, f"must map {what}, got {show(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be names, got {show(key)}")
        return value

    def names(self, value: Any, path: str, noun: str = "name", empty: bool = False) -> tuple[str, ...]:
        """A list of distinct non-empty names (of ``noun``s); one name alone is a list of one."""
        if value is None:
            value = []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of {noun} names, got {show(value)}")
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise self.fail(path, f"must be a list of {noun} names; {show(item)} is not a name")
        if not value and not empty:
            raise self.fail(path, f"needs at least one {noun}")
        twice = next((v for i, v in enumerate(value) if v in value[:i]), None)
        if twice is not None:
            raise self.fail(path, f"{twice!r} is listed twice")
        return tuple(value)
