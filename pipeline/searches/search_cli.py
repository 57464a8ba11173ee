"""``perturber search``: failures in factor space, off the grid (CMA-ES, and MAP-Elites failure maps)."""

from __future__ import annotations

import argparse
from typing import Sequence


def add_parser(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("search", parents=list(parents), help="the smallest change of a scene's factors that flips a model; failure maps",
                       description="Search the continuous factors around a scene for changes that flip a model.")
    p.set_defaults(run=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    raise NotImplementedError("perturber search: being written (issue 14)")
