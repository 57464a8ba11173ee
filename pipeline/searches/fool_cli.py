"""``perturber fool``: fooling images (gradient ascent, direct or CPPN evolution in MAP-Elites)."""

from __future__ import annotations

import argparse
from typing import Sequence


def add_parser(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fool", parents=list(parents), help="fooling images: gradient ascent or MAP-Elites evolution (direct, CPPN)",
                       description="Search pixel space for images a model reads as a class with high confidence.")
    p.set_defaults(run=cmd_fool)


def cmd_fool(args: argparse.Namespace) -> int:
    raise NotImplementedError("perturber fool: being written (issue 14)")
