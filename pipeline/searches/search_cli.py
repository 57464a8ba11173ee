"""``perturber search``: failures in factor space, off the grid (CMA-ES, and MAP-Elites failure maps).

    perturber search --object dog --yaw 120 --factors yaw,pitch,distance --budget 120 --store s.zarr
    perturber search --object dog --factors yaw,pitch,distance --map yaw,distance --cells 8x8 --budget 400 --store s.zarr

The start scene is given with the factor options (like ``predict``); the
result goes to the store's ``search/<run>`` group (see
:mod:`perturber.pipeline.searches.factor_search`).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from perturber.pipeline.options import add_dask_options, names_option, text_option, whole_option

def add_parser(sub, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The ``search`` parser (the caller adds the factor options of the start scene)."""
    p = sub.add_parser("search", parents=list(parents), help="the smallest change of a scene's factors that flips a model; failure maps",
                       description="Search the continuous factors around a scene (the factor options) for the nearest "
                                   "change that flips a model away from the object's class set (CMA-ES), or map the "
                                   "failures over two factors (--map, MAP-Elites); written to the store's search/<run> group.")
    p.add_argument("--store", required=True, help="the Zarr store to write search/<run> into (a path)")
    p.add_argument("--run", dest="run_name", type=text_option, help="the run's name (default: <object>-<model>-<method>)")
    p.add_argument("--model", default="efficientnet_lite0", type=text_option, help="the model (default: efficientnet_lite0)")
    p.add_argument("--factors", default="yaw,pitch,distance", type=names_option,
                   help="continuous factors to move, comma-separated (default: yaw,pitch,distance)")
    p.add_argument("--map", type=names_option, metavar="A,B",
                   help="map the failures over two of --factors with MAP-Elites (default: CMA-ES for the nearest failure)")
    p.add_argument("--cells", default="8x8", help="the failure map's cells, AxB (default: 8x8)")
    p.add_argument("--budget", type=whole_option(1, 1_000_000), default=200,
                   help="most scenes evaluated, the start included (default: 200)")
    p.add_argument("--population", type=whole_option(2, 4096),
                   help="candidates per generation (default: CMA-ES's own, 4 + 3 ln P; MAP-Elites: 16)")
    p.add_argument("--sigma", type=float, default=0.1, help="initial step (CMA-ES) or mutation (MAP-Elites) size, "
                                                            "in domain widths (default: 0.1)")
    p.add_argument("--margin", type=float, default=0.1,
                   help="a failure's margin kappa: log p(best other class) - log p(best class-set class) > kappa (default: 0.1)")
    p.add_argument("--keep", type=whole_option(1, 100_000), default=32, help="CMA-ES: failures kept, nearest first (default: 32)")
    p.add_argument("--seed", type=whole_option(0, 2**31 - 2), default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=int, default=224, help="render side in pixels (default: 224, as precompute and the viewer's live compute)")
    add_dask_options(p, default="none: everything in this process")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_search)
    return p


def _prepare(args: argparse.Namespace):
    """Everything checked before any render: the problem, the map, the run name."""
    import math

    from perturber.pipeline.commands import factor_values
    from perturber.pipeline.searches import SearchError, factor_search, failure_map

    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise SearchError(f"--sigma {args.sigma}: use a number > 0")
    problem = factor_search.problem(factor_values(args), args.factors, args.model, size=args.size, margin=args.margin)
    cells = None
    if args.map:
        failure_map.check_descriptors(problem, args.map)
        cells = failure_map.parse_cells(args.cells)
    method = "map-elites" if args.map else "cmaes"
    run = args.run_name or f"{problem.start['object']}-{args.model}-{method}"
    factor_search.group(run)
    return problem, cells, run


def cmd_search(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from perturber.pipeline import classes
    from perturber.pipeline.searches import dask_options, factor_search, failure_map

    problem, cells, run = _prepare(args)
    dask_options.check(args)
    with dask_options.client(args) as (client, threads), tqdm(total=args.budget, unit="scene", disable=args.quiet) as bar:
        evaluate = factor_search.Evaluator(problem.model, problem.size, client, threads)
        if cells:
            result = failure_map.map_elites(problem, evaluate, args.map, cells, args.budget, seed=args.seed,
                                            batch=args.population or 16, sigma=args.sigma, progress=bar.update)
        else:
            result = factor_search.cmaes(problem, evaluate, args.budget, seed=args.seed, popsize=args.population,
                                         sigma0=args.sigma, keep=args.keep, progress=bar.update)
    factor_search.write(args.store, run, result)
    names = classes.imagenet_categories()
    print(f"{result.method}: {result.evaluations} scenes in {result.seconds:.1f} s; start: top-1 "
          f"{names[result.start_top1]}, class-set probability {result.start_set_prob:.3f}")
    f = result.failures
    if len(f.distance):
        values = ", ".join(f"{n}={v:.4g}" for n, v in zip(problem.factors, f.values[0]))
        print(f"nearest failure: {values}; distance {f.distance[0]:.4f}; top-1 {names[int(f.top1[0])]}; "
              f"class-set probability {f.set_prob[0]:.3f}; found at evaluation {int(f.found_at[0])}")
    else:
        print("no failure found within the budget")
    if result.failure_map is not None:
        filled = int((result.failure_map == result.failure_map).sum())
        print(f"failure map {args.map[0]} x {args.map[1]}: {filled} of {result.failure_map.size} cells hold a failure")
    print(f"written to {args.store} (group {factor_search.group(run)})")
    return 0
