"""``perturber verify STORE``: find damaged chunks of a store (filled in below)."""

from __future__ import annotations

__all__ = ["main"]


def main(store: str, repair: bool = False, progress: bool = True) -> int:
    raise NotImplementedError("verify: being written (issue 12)")
