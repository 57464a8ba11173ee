"""The ``perturber`` command: its options, and how it reports errors.

    perturber render --object dog --yaw 30 --pitch 10 --background meadow -o out.png
    perturber sheet --objects all --sweep yaw=-90,0,90,180 -o sheet.png
    perturber predict --object dog --yaw 30 --hue 90 --models efficientnet_lite0,efficientnet_lite2
    perturber precompute workflows/demo.yaml --out data/generated/demo.zarr [--dry-run]
    perturber study yaw-fluctuation --store data/generated/studies.zarr [--models a,b]
    perturber export data/generated/demo.zarr -o site/ [--select object=dog] [--axes yaw,pitch]
    perturber assets [--fetch]
    perturber --version

Every factor of the registry (plugins' included) is an option ``--name value``
of ``render``, ``sheet``, ``predict`` and ``attack`` (``perturber render
--help`` lists them with domain, units and default). What each command does
is :mod:`perturber.pipeline.commands`, imported only once the options are
read, so ``--help`` and ``--version`` answer at once. Errors in input are
reported in one line, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import perturber
from perturber.pipeline import config, export_cli, factors, models_cli, plugins
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.options import MAX_WORKERS, add_dask_options, names_option, output_option, text_option, whole_option
from perturber.pipeline.searches import fool_cli, search_cli
from perturber.pipeline.training import finetune_cli

__all__ = ["main", "build_parser"]

class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line like every other error (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"perturber: error: {message}\n")


def _add_factor_options(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(factor_options=True)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in factors.FACTORS.values():
        group = groups.setdefault(f.group, parser.add_argument_group(f.group))
        units = f" [{f.units}]" if f.units else ""
        domain = f.domain.describe() if not isinstance(f.domain, factors.AssetRef) else "see `perturber assets`"
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            metavar="VALUE",
            default=None,
            help=f"{f.doc}{units} Domain: {domain}. Default: {f.default}.",
        )


def build_parser() -> argparse.ArgumentParser:
    """Every command and option; each factor of the registry is an option of
    ``render``, ``sheet``, ``predict`` and ``attack``."""
    parser = _Parser(prog="perturber", description="Explore how ImageNet CNNs respond to 3D scene perturbations.")
    parser.add_argument("--version", action="version", version=f"perturber {perturber.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    registries = _Parser(add_help=False)
    registries.add_argument("--models-file", metavar="YAML", action="append", default=[],
                            help="a model registry of your own (the shape of data/models.yaml), added to the built-in one "
                                 "for this command and its Dask workers; repeatable (also: PERTURBER_MODELS)")

    p = sub.add_parser("render", help="render one scene to a PNG", description="Render one scene (every factor is an option).")
    p.add_argument("-o", "--output", default="render.png", type=output_option(".png"), help="output PNG (default: render.png)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    p.add_argument("--depth", metavar="NPY", type=output_option(".npy"),
                   help="also save the depth map (H, W) float32, object sizes, inf = empty, to a .npy file")
    _add_factor_options(p)

    p = sub.add_parser("sheet", help="contact sheet: objects x values of one factor",
                       description="Render a grid: one row per object, one column per value of the swept factor.")
    p.add_argument("--objects", default="all", type=names_option,
                   help="comma-separated object ids ('a:b' morphs a into b), or 'all' (default)")
    p.add_argument("--sweep", default="yaw=-90,-45,0,45,90,180",
                   help="FACTOR=v1,v2,... or FACTOR=start:stop:count (default: yaw=-90,-45,0,45,90,180)")
    p.add_argument("-o", "--output", default="contact-sheet.png", type=output_option(".png", ".jpg", ".jpeg"),
                   help="output PNG or JPEG (default: contact-sheet.png)")
    p.add_argument("--size", type=int, default=160, help="tile side in pixels (default: 160)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_factor_options(p)

    p = sub.add_parser("predict", parents=[registries], help="top-5 predictions of models on one scene",
                       description="Render one scene, apply the image factors and print each model's top-k.")
    p.add_argument("--models", default="efficientnet_lite0", type=names_option,
                   help="comma-separated model names (see data/models.yaml)")
    p.add_argument("--size", type=int, default=224, help="render side in pixels (default: 224)")
    p.add_argument("--top-k", type=whole_option(1, 1000), default=5, help="how many classes to print, 1..1000 (default: 5)")
    p.add_argument("--save-input", metavar="PNG", type=output_option(".png"), help="save the model input image")
    p.add_argument("--layer", type=text_option, help="a layer to record (friendly name, e.g. stage4, or a module path)")
    p.add_argument("--activation-figure", metavar="PNG", type=output_option(".png", ".pdf", ".svg"),
                   help="save the layer's most active neurons over the input (.png, .pdf or .svg; needs --layer)")
    p.add_argument("--neurons", type=whole_option(1, 100), default=12,
                   help="how many neurons the figure shows, 1..100 (default: 12)")
    _add_factor_options(p)

    compute = _Parser(add_help=False)  # how precompute and study compute cubes
    add_dask_options(compute)
    compute.add_argument("--overwrite", action="store_true", help="replace cubes written from a different spec")
    compute.add_argument("--force", action="store_true", help="allow cubes above the spec's sample budget")
    compute.add_argument("--prune", type=whole_option(1, 1_000_000), metavar="N",
                         help="keep only the first N values of every axis (a smoke run)")
    compute.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("precompute", parents=[registries, compute], help="compute a sweep spec into a Zarr store (resumable)",
                       description="Compute every missing task (a shard of a cube) of a sweep spec into a Zarr store.")
    p.add_argument("spec", help="a sweep spec (workflows/*.yaml)")
    p.add_argument("--out", required=True, help="the Zarr store: a path or an fsspec URL")
    p.add_argument("--dry-run", action="store_true", help="print each cube's shape, samples, size and time, then stop")
    p.add_argument("--compile", action="store_true",
                   help="run the models through torch.compile (compiled once per worker and model: minutes; "
                        "needs a C++ compiler on a CPU, Triton on a GPU)")
    p.add_argument("--render-threads", type=whole_option(0, 64), default=None, metavar="N",
                   help="threads per worker rendering ahead of the models (default: 1 on a GPU, 0 on a CPU; "
                        "more when rendering is the bottleneck)")

    p = sub.add_parser("attack", parents=[registries], help="PGD on one scene: the perturbation and every model's predictions",
                       description="Run projected gradient descent (L2 or L-infinity) against one model on a scene's "
                                   "model input; write the perturbation and each model's logits on x + alpha*delta "
                                   "for alpha in 0, 0.25, 0.5, 0.75, 1 (the transfer view).")
    p.add_argument("--models", default="efficientnet_lite0,efficientnet_lite2", type=names_option,
                   help="models to evaluate (comma-separated)")
    p.add_argument("--attack-model", type=text_option, help="the attacked model (default: the first of --models)")
    p.add_argument("--eps", default="8/255", help="the bound, in [0, 1] pixel units, e.g. 8/255 (default) or 0.5 for L2")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--steps", type=whole_option(1, 10_000), default=10, help="PGD steps, 1..10000 (default: 10)")
    p.add_argument("--step", help="step size (default: eps/8, as the original)")
    p.add_argument("--target", type=whole_option(0, 999),
                   help="target ImageNet class, 0..999 (default: suppress the original prediction)")
    p.add_argument("--size", type=int, default=224, help="render side in pixels (default: 224)")
    p.add_argument("-o", "--output", default="attack.npz", type=output_option(".npz", ".zarr"),
                   help="an .npz file or a .zarr store (default: attack.npz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_factor_options(p)

    p = sub.add_parser("featureviz", parents=[registries], help="feature visualisations into a store (lucent, batched, resumable)",
                       description="Optimise images for a spec's channels, directions and class logits (lucent), "
                                   "many units per batch, as Dask tasks; written to the store's featureviz group.")
    p.add_argument("spec", help="a feature-visualisation spec (workflows/featureviz.yaml)")
    p.add_argument("--out", required=True, help="the Zarr store (usually the precompute's)")
    p.add_argument("--scheduler", type=text_option, help="address of a running Dask scheduler, or 'synchronous' (no Dask)")
    p.add_argument("--workers", type=whole_option(1, MAX_WORKERS),
                   help="LocalCluster worker processes (default: one per core; not with --scheduler)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("view", parents=[registries], help="browse a store in the Panel viewer")
    p.add_argument("store", help="a Zarr store written by perturber precompute")
    p.add_argument("--cube", type=text_option, help="which cube (default: the first)")
    p.add_argument("--port", type=whole_option(1, 65535), default=5006, help="port to serve on, 1..65535 (default: 5006)")
    p.add_argument("--address", default="127.0.0.1", type=text_option, help="interface to bind (default: 127.0.0.1 only)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding an address other machines can reach (the page then needs a token, printed at start, "
                                                                      "or PERTURBER_TOKEN)")
    p.add_argument("--show", action="store_true", help="open a browser")
    p.add_argument("--engine", metavar="local|ADDRESS", type=text_option,
                   help="live compute for points off the grid: 'local' starts a LocalCluster, or a Dask scheduler address")
    p.add_argument("--tab", type=text_option, help="the tab the page opens on: Explore (default), Neurons, Attack, Searches "
                                                  "or Studies (a link's tab= wins)")
    p.add_argument("--imagenet-val", metavar="DIR", type=text_option,
                   help="an ImageNet folder (class folders DIR/<wnid>/*.JPEG, or the flat validation folder with "
                        "LOC_val_solution.csv): the top-5 shows the first image of each class")

    p = sub.add_parser("verify", help="read every done chunk of a store; report damaged ones (--repair: recompute them)",
                       description="Read every chunk marked done in every cube of a store and check it (Zarr crc32c "
                                   "checksums, missing files); print one line per damaged chunk. With --repair, clear "
                                   "their done marks, so the next precompute recomputes exactly those chunks.")
    p.add_argument("store", help="a Zarr store written by perturber precompute")
    p.add_argument("--repair", action="store_true", help="clear the done marks of damaged chunks")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("migrate", help="rewrite a store written before sharding in the current store format",
                       description="Copy a store written by an older Perturber (store format 1: a file per chunk) into a "
                                   "new store in the current format (sharded, with per-sample summaries), without "
                                   "running a model. The old store is only read; an interrupted run resumes.")
    p.add_argument("store", help="the old store (a local folder)")
    p.add_argument("--out", "-o", required=True,
                   help="the new store (a folder that does not exist yet, or a migration to resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("study", parents=[registries, compute], help="run a study: its cubes, the metric with intervals, a table, figures, a report",
                       description="Run a study (workflows/studies/NAME.yaml): compute the cubes the store lacks "
                                   "(resumable, like precompute), then the metric with bootstrap intervals; write the "
                                   "table to the store's studies/NAME group and a CSV, a PNG, an HTML figure and a "
                                   "Markdown report to a folder beside the store.")
    p.add_argument("name", nargs="?", help="a study name (see --list) or a study YAML file")
    p.add_argument("--list", action="store_true", help="list every study and stop")
    p.add_argument("--store", help="the Zarr store (default: data/generated/studies.zarr)")
    p.add_argument("--models", type=names_option, help="comma-separated models, replacing the study's own")
    p.add_argument("--param", metavar="KEY=VALUE", action="append", default=[],
                   help="an analysis parameter (see --list), repeatable, e.g. --param in9=/data/bg_challenge")
    p.add_argument("--out", metavar="DIR", help="folder for the CSV, figures and report (default: <store>-studies/NAME)")
    p.add_argument("--no-compute", action="store_true", help="analyse only what the store holds; a missing cube is an error")

    fool_cli.add_parser(sub, [registries])
    finetune_cli.add_parser(sub, [registries])
    models_cli.add_parser(sub, [registries])
    export_cli.add_parser(sub, [registries])
    _add_factor_options(search_cli.add_parser(sub, [registries]))  # the start scene

    p = sub.add_parser("assets", help="list built-in assets with status and licence")
    p.add_argument("--fetch", action="store_true", help="install missing assets (apt) or say exactly what to install")
    return parser


def _error(message: str) -> int:
    print(f"perturber: error: {message}", file=sys.stderr)
    return 2


def _use_registries(files: Sequence[str]) -> None:
    """Add the ``--models-file`` registries for this process and the Dask workers it starts."""
    for path in files:
        if not os.path.isfile(path):
            raise PerturberError(f"--models-file {path}: no such file")
    config.add_model_registries(files)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="perturber: %(message)s")
    logging.getLogger("perturber").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # Dask sets its own loggers to INFO when imported
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or not record.name.startswith("distributed"))
    try:
        plugins.load()  # a plugin's factors become options too
    except PerturberError as exc:
        return _error(str(exc))
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        option = next((u for u in unknown if u.startswith("--")), None)
        if option is not None and getattr(args, "factor_options", False):
            try:
                factors.get(option[2:].split("=")[0].replace("-", "_"))
            except factors.FactorError as exc:
                return _error(str(exc))
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "size", 224) is not None and not 16 <= getattr(args, "size", 224) <= 4096:
        return _error("--size must be between 16 and 4096 pixels")
    try:
        _use_registries(getattr(args, "models_file", []))
        from perturber.pipeline import commands  # torch and the rest: only once the options are read

        if hasattr(args, "run"):  # a command that lives beside its own module (fool, search)
            return args.run(args)
        return getattr(commands, f"cmd_{args.command}")(args)
    except PerturberError as exc:
        return _error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
