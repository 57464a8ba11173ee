"""``perturber export``: a static site (HTML, JS, CSS, PNG and JSON files) that browses a slice of one cube.

    perturber export data/generated/demo.zarr -o site/
    perturber export data/generated/demo.zarr -o site/ --select object=cat,background=meadow --axes yaw,hue
    perturber export data/generated/demo.zarr -o site/ --models efficientnet_lite0,efficientnet_lite2 --layer stage6

The site works from any static file host (``python -m http.server -d site``,
GitHub Pages, an S3 bucket): no server-side code, relative URLs only, nothing
fetched from elsewhere. What it holds and how a slice is chosen:
:mod:`perturber.viewer.export`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from perturber.pipeline.options import names_option, text_option

__all__ = ["add_parser", "cmd_export"]


def add_parser(sub, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("export", parents=list(parents), help="write a static site browsing a slice of one cube",
                       description="Write a folder (HTML, JS, CSS, PNG images, JSON data) that browses a slice of one "
                                   "cube with sliders over the chosen axes: the model input, two models' top-5, the "
                                   "activation maps of one layer and curves along an axis. It works from any static "
                                   "file host, offline.")
    p.add_argument("store", help="a Zarr store written by perturber precompute")
    p.add_argument("-o", "--out", required=True, type=text_option, metavar="FOLDER",
                   help="the site's folder, written whole at the end (an earlier export there is replaced; "
                        "any other non-empty folder only with --force)")
    p.add_argument("--cube", type=text_option, help="which cube (default: the first)")
    p.add_argument("--select", type=text_option, metavar="AXIS=VALUE,...",
                   help="hold these axes at these grid values (object=dog,background=meadow); the other axes "
                        "that are not sliders are held at their canonical value (the grid value nearest the "
                        "factor's default: yaw 45, pitch 10, the dog, a white background, hue 0; else the first)")
    p.add_argument("--axes", type=names_option, metavar="A,B",
                   help="the sliders (default: the cube's numeric axes that --select does not hold)")
    p.add_argument("--models", type=names_option, metavar="M1,M2",
                   help="the one or two models compared (default: the cube's first two)")
    p.add_argument("--layer", type=text_option,
                   help="the layer whose activation maps are shown (default: the first stored, by name)")
    p.add_argument("--force", action="store_true", help="replace a non-empty folder that is not an earlier export")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from perturber.viewer import export

    report = export.export(args.store, args.out, cube=args.cube, select=args.select, axes=args.axes, models=args.models,
                           layer=args.layer, force=args.force, progress=not args.quiet)
    print(f"wrote {report.path}: {report.points:,} points ({report.computed:,} computed), "
          f"{report.files:,} files, {export.export_files.human(report.bytes)} ({report.bytes:,} bytes)")
    print(f"serve it from any static file host, e.g. python -m http.server -d {report.path}")
    return 0
