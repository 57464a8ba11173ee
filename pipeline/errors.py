"""The one-line errors Perturber reports to its users, and how an exception becomes one line."""

from __future__ import annotations

__all__ = ["PerturberError", "ModelError", "one_line"]


class PerturberError(ValueError):
    """Input or state Perturber cannot use; the message is one line for the user.

    Every module's own error (FactorError, SpecError, StoreError, ...) derives
    from it, so a command reports any of them the same way.
    """


class ModelError(PerturberError):
    """A model entry, its weights or a layer name is wrong; the message is one line."""


def one_line(exc: BaseException, typed: bool = False, limit: int = 200) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its
    type's name when it has none; ``typed`` puts the type's name in front."""
    text = str(exc).strip()
    first = text.splitlines()[0][:limit] if text else ""
    name = type(exc).__name__
    if not first:
        return name
    return f"{name}: {first}" if typed else first
