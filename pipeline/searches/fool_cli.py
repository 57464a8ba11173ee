"""``perturber fool``: fooling images (gradient ascent, direct or CPPN evolution in MAP-Elites).

    perturber fool --model efficientnet_lite0 --method cppn --generations 100 --population 100 --store s.zarr
    perturber fool --model efficientnet_lite0 --method direct --workers 2 --store s.zarr --transfer efficientnet_lite1
    perturber fool --model efficientnet_lite0 --method gradient --classes goldfish,207 --steps 64 --store s.zarr

The result goes to the store's ``fooling/<run>`` group (see
:mod:`perturber.pipeline.searches.fooling`). Evolution runs in this process
unless ``--workers`` (a LocalCluster), ``--scheduler`` or ``--cluster`` is
given; then batches of offspring are Dask tasks and the archive stays here.
It checkpoints every ``--checkpoint-every`` generations to
``<store>-checkpoints/fooling-<run>.pkl``: the same command again resumes
(or extends a finished run to more ``--generations``); ``--overwrite``
starts over.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from perturber.pipeline.options import add_dask_options, names_option, text_option, whole_option

EVOLUTION = ("generations", "population", "checkpoint_every")
GRADIENT = ("steps", "parameterisation", "objective")


def add_parser(sub, parents: Sequence[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fool", parents=list(parents), help="fooling images: gradient ascent or MAP-Elites evolution (direct, CPPN)",
                       description="Search pixel space for images a model reads as a class with high confidence "
                                   "(Nguyen et al. 2015); written to the store's fooling/<run> group.")
    p.add_argument("--model", required=True, type=text_option, help="the model to fool (see data/models.yaml)")
    p.add_argument("--method", default="cppn", choices=["cppn", "direct", "gradient"],
                   help="cppn or direct: MAP-Elites over all 1000 classes; gradient: ascent for --classes (default: cppn)")
    p.add_argument("--store", required=True, help="the Zarr store to write fooling/<run> into (a path)")
    p.add_argument("--run", dest="run_name", type=text_option, help="the run's name (default: <method>-<model>-<seed>)")
    p.add_argument("--seed", type=whole_option(0, 2**31 - 2), default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=whole_option(16, 1024), help="image side in pixels (default: the model's input size)")
    p.add_argument("--transfer", type=names_option, default=[], metavar="M1,M2",
                   help="other models to score the elites on (transfer), comma-separated")
    evolution = p.add_argument_group("evolution (cppn, direct)")
    evolution.add_argument("--generations", type=whole_option(0, 1_000_000), help="generations after the initial one (default: 100)")
    evolution.add_argument("--population", type=whole_option(1, 1_000_000), help="offspring per generation (default: 100)")
    evolution.add_argument("--checkpoint-every", type=whole_option(1, 1_000_000), help="generations between checkpoints (default: 10)")
    evolution.add_argument("--batch", type=whole_option(1, 65536), help="offspring per model call / Dask task (default: tuned)")
    evolution.add_argument("--overwrite", action="store_true", help="start over instead of resuming from a checkpoint")
    add_dask_options(evolution, default="none: everything in this process")
    gradient = p.add_argument_group("gradient ascent")
    p.add_argument("--classes", type=names_option, help="names or ImageNet indices, comma-separated: the classes to ascend "
                                                      "(gradient), or the only archive cells kept (evolution; default: all 1000)")
    gradient.add_argument("--steps", type=whole_option(1, 100_000), help="ascent steps (default: gradient.ascend's, 64)")
    gradient.add_argument("--no-regularise", dest="regularise", action="store_false",
                          help="no L2 decay, blur, jitter or small-norm clipping (Yosinski et al. 2015)")
    gradient.add_argument("--parameterisation", choices=["pixel", "fourier"], help="the image's parameterisation (default: pixel)")
    gradient.add_argument("--objective", choices=["logit", "logprob"], help="ascend the class logit or its log-probability (default: logprob)")
    gradient.add_argument("--start", metavar="IMAGE", type=text_option,
                          help="start from this image (e.g. a `perturber render` PNG, resized to --size) instead of uniform noise")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_fool)


def _check(args: argparse.Namespace) -> list[int]:
    """Every option checked before any model is loaded; the class indices of --classes (empty: none given)."""
    from perturber.pipeline import classes, models
    from perturber.pipeline.searches import SearchError, fooling

    models.spec(args.model)
    for name in args.transfer:
        models.spec(name)
    evolving = args.method != "gradient"
    wrong = [o for o in (GRADIENT if evolving else EVOLUTION) if getattr(args, o) is not None]
    if evolving and args.start:
        wrong.append("start")
    if not evolving and (args.overwrite or args.batch or args.scheduler or args.cluster or args.workers):
        wrong.append("overwrite/batch/scheduler/cluster/workers")
    if evolving and not args.regularise:
        wrong.append("no_regularise")
    if wrong:
        flag = "--" + wrong[0].replace("_", "-")
        raise SearchError(f"{flag} does not apply to --method {args.method}")
    fooling.group(args.run_name or f"{args.method}-{args.model}-{args.seed}")
    if not evolving and not args.classes:
        raise SearchError("--method gradient needs --classes (names or ImageNet indices)")
    out = []
    for c in args.classes or []:
        if c.isdigit():
            if not 0 <= int(c) < 1000:
                raise SearchError(f"--classes {c}: an ImageNet index is 0..999")
            out.append(int(c))
        else:
            out.extend(classes.indices([c]))
    return out


def _start_image(path: str, size: int):
    """(size, size, 3) uint8: the image at ``path``, RGB, resized (bilinear) to ``size``; one line if unreadable."""
    import numpy as np
    from PIL import Image

    from perturber.pipeline.searches import SearchError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SearchError(f"--start {path}: not a readable image ({type(exc).__name__})") from None


def cmd_fool(args: argparse.Namespace) -> int:
    import numpy as np

    from perturber.pipeline.searches import fooling, mapelites, scoring
    from perturber.pipeline.searches import dask_options

    wanted = _check(args)
    run = args.run_name or f"{args.method}-{args.model}-{args.seed}"
    if args.method == "gradient":
        from perturber.pipeline import models
        from perturber.pipeline.searches import gradient

        given = {k: getattr(args, k) for k in ("steps", "objective", "parameterisation") if getattr(args, k) is not None}
        size = args.size or models.spec(args.model).input_size
        start = _start_image(args.start, size) if args.start else "noise"
        elites = gradient.ascend(args.model, wanted, start=start, regularise=args.regularise, seed=args.seed,
                                 size=size, progress=not args.quiet, **given)
        transfer = scoring.transfer(elites.images, elites.classes, args.transfer) if args.transfer else None
        fooling.write(args.store, run, elites, transfer)
    else:
        dask_options.check(args)
        with dask_options.client(args) as (client, threads):
            elites = mapelites.evolve(args.model, args.method, generations=100 if args.generations is None else args.generations,
                                      population=args.population or 100, seed=args.seed, size=args.size, store=args.store,
                                      run=run, checkpoint_every=args.checkpoint_every or 10, overwrite=args.overwrite,
                                      client=client, batch=args.batch, transfer_to=args.transfer, progress=not args.quiet,
                                      threads=threads, classes=wanted or None)
    c = np.zeros(1000)
    c[elites.classes] = elites.confidence
    over = c if args.method != "gradient" and not wanted else elites.confidence  # all 1000, or the classes asked for
    print(f"{args.method} on {args.model}: {elites.evaluations} images scored in {elites.seconds:.1f} s; "
          f"{int((elites.confidence >= 0.99).sum())} classes ≥ 0.99, median confidence "
          f"{float(np.median(over)):.3f} over {len(over)} classes")
    print(f"written to {args.store} (group {fooling.group(run)})")
    return 0
