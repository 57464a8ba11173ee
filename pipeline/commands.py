"""What each ``perturber`` command does (the options are in :mod:`perturber.pipeline.cli`).

Each command imports the heavy parts it needs when it runs (torch, pyrender,
xarray, Dask, panel): a command line that loaded them all would spend seconds
before a render, or before saying that a value is out of range.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from perturber.pipeline import assets, classes, factors, options
from perturber.pipeline.errors import PerturberError
from perturber.pipeline.fields import Fields

__all__ = ["CLIError", "ALPHAS", "parse_sweep", "factor_values"]


class CLIError(PerturberError):
    """A one-line error for the user."""


ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Most values ``--sweep`` gives, and most tiles in a contact sheet.
MAX_SWEEP_VALUES = 1000
MAX_SHEET_TILES = 2000


def factor_values(args: argparse.Namespace) -> dict[str, Any]:
    """The factor options given on the command line, parsed (numbers for numeric factors)."""
    return {
        name: factors.parse_cli_value(name, getattr(args, name))
        for name in factors.FACTORS
        if getattr(args, name, None) is not None
    }


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``'yaw=0,45,90'`` or ``'yaw=-180:180:9'`` (start:stop:count, both ends
    included) → ('yaw', values); at most :data:`MAX_SWEEP_VALUES` values,
    counted before any is made."""
    if "=" not in text:
        raise CLIError(f"--sweep {text!r}: expected FACTOR=v1,v2,... or FACTOR=start:stop:count")
    f = Fields(f"--sweep {text}", CLIError)
    name, values_text = text.split("=", 1)
    factor = factors.get(name.strip().replace("-", "_"))
    if not values_text.strip():
        raise f.fail("", "no values")
    if factor.numeric and values_text.count(":") == 2:
        start, stop, count = (_cli_number(v.strip()) for v in values_text.split(":"))
        start, stop = f.number(start, "", "start"), f.number(stop, "", "stop")
        count = f.whole(count, "", 1, MAX_SWEEP_VALUES, name="count")
        values = [float(v) for v in np.linspace(start, stop, count)]
    else:
        parts = [v.strip() for v in values_text.split(",")]
        if not all(parts):
            raise f.fail("", "an empty value between commas")
        if len(parts) > MAX_SWEEP_VALUES:
            raise f.fail("", f"{len(parts)} values; a sweep has at most {MAX_SWEEP_VALUES}")
        values = [factors.parse_cli_value(factor.name, v) for v in parts]
    return factor.name, [factor.validate(v) for v in values]


def _cli_number(text: str) -> Any:
    """A number written on the command line as int or float; the text itself when it is neither."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _save_png(image: np.ndarray, out: str) -> None:
    path = Path(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def cmd_render(args: argparse.Namespace) -> int:
    params = factors.validate(factor_values(args))  # a bad value is reported before the renderer loads
    from perturber.pipeline import scene

    image = scene.render(params, args.size)
    _save_png(image, args.output)
    if args.depth:
        result = scene.render_scene(params, args.size)
        np.save(args.depth, result.depth)
    print(f"wrote {args.output} ({args.size}x{args.size} RGBA)")
    for line in assets.attributions(params):
        print(f"  {line}")
    return 0


def cmd_sheet(args: argparse.Namespace) -> int:
    from perturber.pipeline import figures, scene

    base = factor_values(args)
    objects = assets.object_ids() if args.objects == ["all"] else args.objects
    rows = []
    for entry in objects:  # 'dog' or 'dog:cat' (a shape morph from dog to cat)
        obj, _, target = entry.partition(":")
        row = {**base, "object": factors.validate_value("object", obj)}
        if target:
            row["morph_target"] = factors.validate_value("morph_target", target)
        rows.append(row)
    sweep = parse_sweep(args.sweep)
    if sweep[0] == "object":
        raise CLIError("--sweep object=...: use --objects for rows of objects")
    if len(rows) * len(sweep[1]) > MAX_SHEET_TILES:
        raise CLIError(f"{len(rows)} objects x {len(sweep[1])} values: a sheet holds at most {MAX_SHEET_TILES} tiles")
    image = figures.contact_sheet(rows, sweep, args.size, scene.render, progress=not args.quiet)
    _save_png(image, args.output)
    print(f"wrote {args.output}: {len(rows)} objects x {len(sweep[1])} values of {sweep[0]}")
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    if args.fetch:
        packages, command = assets.fetch(run=True)
        if not packages:
            print("all assets are installed")
        elif command and command.startswith("apt-get"):
            print(f"installed: {' '.join(packages)}")
        else:
            print(f"missing Debian packages: {' '.join(packages)}\nrun: {command}")
            print("without apt: download each file from its upstream address into a folder named by PERTURBER_ASSET_DIR")
    rows = assets.asset_status()
    widths = [max(len(r[k]) for r in rows + [dict(section="kind", id="id", status="status", licence="licence", source="package")]) for k in ("section", "id", "licence", "source")]
    print(f"{'kind':<{widths[0]}}  {'id':<{widths[1]}}  {'licence':<{widths[2]}}  {'package':<{widths[3]}}  status")
    for r in rows:
        print(f"{r['section']:<{widths[0]}}  {r['id']:<{widths[1]}}  {r['licence']:<{widths[2]}}  {r['source']:<{widths[3]}}  {r['status']}")
    missing = sum(r["status"] != "ok" for r in rows)
    return 1 if missing and args.fetch else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from perturber.pipeline import engine, figures, models

    names = args.models
    for name in names:
        models.spec(name)
    layer = args.layer
    if args.activation_figure and not layer:
        raise CLIError("--activation-figure needs --layer")
    result = engine.evaluate([factor_values(args)], names, layers=[layer] if layer else None, size=args.size, k=args.top_k)
    categories = classes.imagenet_categories()
    for name in names:
        print(f"{name}:")
        logits = result.logits[name][0]
        for rank, (c, p) in enumerate(zip(result.top_class[name][0].tolist(), result.top_prob[name][0].tolist()), 1):
            print(f"  {rank}. {categories[c]:<28} p={p:.3f}  logit={float(logits[c]):.2f}")
    if args.save_input:
        _save_png(result.images[0], args.save_input)
        print(f"wrote {args.save_input} (model input, {args.size}x{args.size})")
    if args.activation_figure:
        for name in names:
            act = result.activations[name][layer][0].numpy()
            order = np.argsort(-act.max((1, 2)))[: args.neurons]  # strongest positive responses
            path = args.activation_figure if len(names) == 1 else _suffixed(args.activation_figure, name)
            figures.activation_figure(result.images[0], act[order], [int(i) for i in order],
                                      f"{name} {layer}: the {len(order)} neurons with the highest activation", path)
            print(f"wrote {path}")
    for line in assets.attributions(result.params[0]):
        print(f"  {line}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    """PGD on one scene's model input; δ and every model's predictions on
    x + αδ for a grid of α, to an .npz file or a Zarr store."""
    import torch
    import xarray as xr
    from tqdm import tqdm

    from perturber.pipeline import attack as pgd_attack
    from perturber.pipeline import engine, imageops, inference, models, store

    _check_attack_store(args.output)
    names = args.models
    attacker = args.attack_model or names[0]
    for name in dict.fromkeys([*names, attacker]):
        models.spec(name)
    device = models.best_device()
    attack = pgd_attack.Attack(attacker, eps=options.number(args.eps, "--eps"), norm=args.norm, target=args.target,
                               step=options.number(args.step, "--step") if args.step is not None else None)
    result = engine.evaluate([factor_values(args)], [attacker], size=args.size, device=device)
    x = imageops.to_tensor(result.images, device).contiguous()
    bar = tqdm(total=args.steps, desc=f"PGD {args.norm} on {attacker}", unit="step", file=sys.stderr, disable=args.quiet)
    delta = pgd_attack.pgd(x, attack, args.steps, progress=lambda _: bar.update(1))
    bar.close()
    batch = pgd_attack.blend(x, delta, ALPHAS)
    categories = classes.imagenet_categories()
    outputs = inference.run_models(batch, names, device=device, batch_size=len(batch))
    logits = {name: outputs[name].logits.numpy() for name in names}
    goal = f"towards {categories[args.target]}" if args.target is not None else "away from the original prediction"
    print(f"PGD {args.norm}, eps {attack.eps:.4g}, step {attack.alpha:.4g}, {args.steps} steps on {attacker}, {goal}; "
          f"|delta| = {float(pgd_attack.norm_of(delta, args.norm)[0]):.4g}")
    for name in names:
        p = torch.tensor(logits[name]).softmax(1)
        before, after = int(p[0].argmax()), int(p[-1].argmax())
        print(f"  {name:<22} {categories[before]} ({float(p[0, before]):.2f}) -> {categories[after]} ({float(p[-1, after]):.2f})")
    delta_np = delta[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    images = (batch.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    attrs = {"attack_model": attacker, "norm": args.norm, "eps": attack.eps, "step": attack.alpha, "steps": args.steps,
             "target": -1 if args.target is None else int(args.target), "point": json.dumps(result.params[0], default=str)}
    if args.output.endswith(".npz"):
        np.savez_compressed(args.output, delta=delta_np, images=images, alphas=np.array(ALPHAS),
                            models=np.array(names), logits=np.stack([logits[n] for n in names], 1), attrs=json.dumps(attrs))
    else:
        ds = xr.Dataset(
            {"delta": (("y", "x", "channel"), delta_np, {"long_name": "perturbation added to the model input", "units": "1"}),
             "image": (("alpha", "y", "x", "channel"), images, {"long_name": "clamp(x + alpha delta), uint8"}),
             "logits": (("alpha", "model", "class"), np.stack([logits[n] for n in names], 1), {"long_name": "logits"})},
            coords={"alpha": list(ALPHAS), "model": np.array(names, dtype=object), "class": np.arange(1000),
                    "channel": np.array(["r", "g", "b"], dtype=object)},
            attrs=attrs)
        with store.consolidated_ok():
            ds.to_zarr(args.output, mode="w", zarr_format=3, consolidated=True)
    print(f"wrote {args.output}")
    return 0


def _check_attack_store(output: str) -> None:
    """``attack`` replaces its own earlier store at ``output``, and nothing else
    (a precompute store there would be wiped by ``mode='w'``)."""
    path = Path(output)
    if path.suffix != ".zarr" or not path.is_dir() or not any(path.iterdir()):
        return
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        attrs = {}
    if "attack_model" not in attrs:
        raise CLIError(f"-o {output}: holds data that attack did not write; attack replaces its output, so give another path")


def _suffixed(path: str, suffix: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{suffix}{p.suffix}"))


def _check_workers(args: argparse.Namespace) -> None:
    """``--workers`` sizes the LocalCluster a command starts; with a scheduler it would be ignored."""
    other = "--scheduler" if args.scheduler else "--cluster" if getattr(args, "cluster", None) else None
    if args.workers is not None and other:
        raise CLIError(f"--workers sizes the local cluster; with {other} the cluster has its own workers")


def cmd_precompute(args: argparse.Namespace) -> int:
    from perturber.pipeline import clusters, run, spec, tasks

    _check_workers(args)
    if args.scheduler and args.cluster:
        raise CLIError("give --scheduler or --cluster, not both")
    sweep = spec.load_spec(args.spec, force=args.force)
    if args.prune:
        sweep = sweep.prune(args.prune)
    if args.cluster:
        clusters.load_recipe(args.cluster)  # a bad recipe is reported before the dry run
    run.dry_run(sweep)
    if args.dry_run:
        return 0
    scheduler, cluster = args.scheduler, None
    if scheduler not in (None, "synchronous"):
        tasks.check_scheduler(scheduler)  # before the store is created and the batch sizes are tuned
    if args.cluster:
        cluster = clusters.build(args.cluster)
        scheduler = cluster.scheduler_address
    try:
        report = run.precompute(sweep, args.out, scheduler=scheduler, workers=args.workers,
                                overwrite=args.overwrite, progress=not args.quiet, compile=args.compile,
                                render_threads=args.render_threads)
    finally:
        if cluster is not None:
            cluster.close()
    written = sum(report.written.values())
    print(f"wrote {written} tasks ({report.samples} samples) in {report.seconds:.1f} s; "
          f"{sum(report.skipped.values())} tasks were already done")
    print(run.summary(sweep, args.out))
    return 0


def cmd_featureviz(args: argparse.Namespace) -> int:
    from perturber.featureviz import precompute as fv
    from perturber.pipeline import tasks

    _check_workers(args)
    fv_spec = fv.load_spec(args.spec)
    if args.scheduler not in (None, "synchronous"):
        tasks.check_scheduler(args.scheduler)
    fv.precompute(fv_spec, args.out, scheduler=args.scheduler, workers=args.workers, progress=not args.quiet)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from perturber.viewer import stores

    if args.address not in ("127.0.0.1", "localhost") and not args.allow_remote:
        raise CLIError(f"--address {args.address}: serving beyond this machine needs --allow-remote")
    options.check_port(args.address, args.port)
    cubes = stores.cube_names(args.store)  # not a store, or no cube in it: one line, before the server starts
    cube = args.cube or cubes[0]
    if cube not in cubes:
        raise CLIError(f"--cube {cube}: no such cube in {args.store} (it has: {', '.join(cubes)})")
    if args.imagenet_val:
        from perturber.viewer import classes

        classes.set_example_folder(args.imagenet_val)  # a missing or foreign folder: one line, before serving
    from perturber.viewer import app

    if args.tab is not None and args.tab not in app.TABS:
        raise CLIError(f"--tab {args.tab}: no such tab (tabs: {', '.join(app.TABS)})")
    print(f"serving {args.store} on http://{args.address}:{args.port}/ (Ctrl-C stops)")
    app.serve(args.store, cube, port=args.port, address=args.address, show=args.show, engine=args.engine, tab=args.tab)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from perturber.pipeline import verify

    return verify.main(args.store, repair=args.repair, progress=not args.quiet)


def cmd_migrate(args: argparse.Namespace) -> int:
    from perturber.pipeline import migrate

    return migrate.main(args.store, args.out, progress=not args.quiet)


def cmd_study(args: argparse.Namespace) -> int:
    from perturber.pipeline import clusters, tasks
    from perturber.pipeline.studies import runner

    if args.list:
        for name, path, text in runner.listing():
            print(f"{name:<20} {text}")
        return 0
    if not args.name:
        raise CLIError("name a study (perturber study --list shows them)")
    _check_workers(args)
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--param {item!r}: expected KEY=VALUE")
        params[key.strip()] = _cli_number(value.strip())
    if args.scheduler and args.cluster:
        raise CLIError("give --scheduler or --cluster, not both")
    store = args.store or runner.DEFAULT_STORE
    runner.load(args.name, args.models, args.prune, args.force)  # a bad study file or model: before any cluster starts
    if args.scheduler not in (None, "synchronous"):
        tasks.check_scheduler(args.scheduler)
    scheduler, cluster = args.scheduler, None
    if args.cluster and not args.no_compute:
        cluster = clusters.build(args.cluster)
        scheduler = cluster.scheduler_address
    try:
        table, files = runner.run(args.name, store, models=args.models, prune=args.prune, params=params,
                                  scheduler=scheduler, workers=args.workers, overwrite=args.overwrite,
                                  compute=not args.no_compute, out_dir=args.out, progress=not args.quiet, force=args.force)
    finally:
        if cluster is not None:
            cluster.close()
    print(f"study {table.attrs['study']}: table in {store} (group studies/{table.attrs['study']})")
    for kind, path in files.items():
        print(f"  {kind:<7} {path}")
    return 0
