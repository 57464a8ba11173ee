"""The ``perturber`` command.

    perturber render --object dog --yaw 30 --pitch 10 --background meadow -o out.png
    perturber sheet --objects all --sweep yaw=-90,0,90,180 -o sheet.png
    perturber predict --object dog --yaw 30 --hue 90 --models efficientnet_lite0,efficientnet_lite2
    perturber precompute workflows/demo.yaml --out data/generated/demo.zarr [--dry-run]
    perturber assets [--fetch]

Every factor of the registry is an option ``--name value`` of ``render``,
``sheet`` and ``predict`` (``perturber render --help`` lists them with domain, units and
default). Errors in input are reported in one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perturber.pipeline import factors

__all__ = ["main", "parse_sweep"]


class CLIError(Exception):
    """A one-line error for the user."""


def _add_factor_options(parser: argparse.ArgumentParser) -> None:
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


def _factor_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: factors.parse_cli_value(name, getattr(args, name))
        for name in factors.FACTORS
        if getattr(args, name, None) is not None
    }


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``'yaw=0,45,90'`` or ``'yaw=-180:180:9'`` (start:stop:count) → ('yaw', values)."""
    if "=" not in text:
        raise CLIError(f"--sweep {text!r}: expected FACTOR=v1,v2,... or FACTOR=start:stop:count")
    name, spec = text.split("=", 1)
    factor = factors.get(name.strip().replace("-", "_"))
    if factor.numeric and spec.count(":") == 2:
        start, stop, count = spec.split(":")
        try:
            values = list(np.linspace(float(start), float(stop), int(count)))
        except ValueError:
            raise CLIError(f"--sweep {text!r}: start:stop:count must be numbers") from None
    else:
        values = [factors.parse_cli_value(factor.name, v.strip()) for v in spec.split(",") if v.strip()]
    if not values:
        raise CLIError(f"--sweep {text!r}: no values")
    return factor.name, [factor.validate(v) for v in values]


def _save_png(image: np.ndarray, out: str) -> None:
    from PIL import Image

    path = Path(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def cmd_render(args: argparse.Namespace) -> int:
    from perturber.pipeline import scene

    values = _factor_values(args)
    params = factors.validate(values)
    image = scene.render(params, args.size)
    _save_png(image, args.output)
    if args.depth:
        result = scene.render_scene(params, args.size)
        np.save(args.depth, result.depth)
    print(f"wrote {args.output} ({args.size}x{args.size} RGBA)")
    for line in _attributions(params):
        print(f"  {line}")
    return 0


def _attributions(params: dict[str, Any]) -> list[str]:
    from perturber.pipeline import assets

    return assets.attributions(params)


def contact_sheet(rows: Sequence[dict[str, Any]], sweep: tuple[str, list[Any]], size: int, progress: bool = True) -> np.ndarray:
    """Render every row (factor values) at every sweep value: an (H, W, 3) uint8 sheet.

    Labels name the row's object and the swept value; the footer lists the
    attribution of every asset shown (CC-BY).
    """
    from PIL import Image, ImageDraw
    from tqdm import tqdm

    from perturber.pipeline import scene

    name, values = sweep
    label_h, pad = 18, 4
    jobs = [(r, v) for r in rows for v in values]
    tiles = []
    credits: list[str] = []
    for row, value in tqdm(jobs, desc="rendering", unit="image", disable=not progress):
        params = factors.validate({**row, name: value})
        tiles.append(scene.render(params, size))
        credits.extend(c for c in _attributions(params) if c not in credits)
    footer_h = 14 * len(credits) + 2 * pad
    width = len(values) * (size + pad) + pad
    height = len(rows) * (size + label_h + pad) + pad + label_h + footer_h
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, value in enumerate(values):
        text = f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
        draw.text((pad + j * (size + pad), pad), text, fill="black")
    for i, row in enumerate(rows):
        y0 = pad + label_h + i * (size + label_h + pad)
        for j in range(len(values)):
            tile = Image.fromarray(tiles[i * len(values) + j]).convert("RGBA")
            checker = Image.new("RGBA", tile.size, (255, 255, 255, 255))
            sheet.paste(Image.alpha_composite(checker, tile).convert("RGB"), (pad + j * (size + pad), y0 + label_h))
        label = ", ".join(f"{k}={v}" for k, v in row.items())
        draw.text((pad, y0 + 2), label, fill="black")
    y = height - footer_h + pad
    for line in credits:
        draw.text((pad, y), line, fill=(60, 60, 60))
        y += 14
    return np.asarray(sheet)


def cmd_sheet(args: argparse.Namespace) -> int:
    from perturber.pipeline import assets

    base = _factor_values(args)
    objects = assets.object_ids() if args.objects == "all" else [o.strip() for o in args.objects.split(",") if o.strip()]
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
    image = contact_sheet(rows, sweep, args.size, progress=not args.quiet)
    _save_png(image, args.output)
    print(f"wrote {args.output}: {len(rows)} objects x {len(sweep[1])} values of {sweep[0]}")
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    from perturber.pipeline import assets

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

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        models.spec(name)
    layer = args.layer
    result = engine.evaluate([_factor_values(args)], names, layers=[layer] if layer else None, size=args.size, k=args.top_k)
    categories = models.imagenet_categories()
    for name in names:
        print(f"{name}:")
        logits = result.logits[name][0]
        for rank, (c, p) in enumerate(zip(result.top_class[name][0].tolist(), result.top_prob[name][0].tolist()), 1):
            print(f"  {rank}. {categories[c]:<28} p={p:.3f}  logit={float(logits[c]):.2f}")
    if args.save_input:
        _save_png(result.images[0], args.save_input)
        print(f"wrote {args.save_input} (model input, {args.size}x{args.size})")
    if args.activation_figure:
        if not layer:
            raise CLIError("--activation-figure needs --layer")
        for name in names:
            act = result.activations[name][layer][0].numpy()
            order = np.argsort(-act.max((1, 2)))[: args.neurons]  # strongest positive responses
            path = args.activation_figure if len(names) == 1 else _suffixed(args.activation_figure, name)
            figures.activation_figure(result.images[0], act[order], [int(i) for i in order],
                                      f"{name} {layer}: the {len(order)} neurons with the highest activation", path)
            print(f"wrote {path}")
    for line in _attributions(result.params[0]):
        print(f"  {line}")
    return 0


def _fraction(text: str) -> float:
    """'8/255' or '0.03' → float."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise CLIError(f"{text!r} is not a number (write 0.03 or 8/255)") from None


ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def cmd_attack(args: argparse.Namespace) -> int:
    """PGD on one scene's model input; δ and every model's predictions on
    x + αδ for a grid of α, to an .npz file or a Zarr store."""
    import torch
    from tqdm import tqdm

    from perturber.pipeline import attack as pgd_attack
    from perturber.pipeline import engine, imageops, models

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    attacker = args.attack_model or names[0]
    for name in dict.fromkeys([*names, attacker]):
        models.spec(name)
    if not args.output.endswith((".npz", ".zarr")):
        raise CLIError(f"--output {args.output}: write an .npz file or a .zarr store")
    if args.steps < 1:
        raise CLIError("--steps must be at least 1")
    device = models.best_device()
    spec = pgd_attack.Attack(attacker, eps=_fraction(args.eps), norm=args.norm, target=args.target,
                             step=_fraction(args.step) if args.step else None)
    result = engine.evaluate([_factor_values(args)], [attacker], size=args.size, device=device)
    x = imageops.to_tensor(result.images, device).contiguous()
    bar = tqdm(total=args.steps, desc=f"PGD {args.norm} on {attacker}", unit="step", file=sys.stderr, disable=args.quiet)
    delta = pgd_attack.pgd(x, spec, args.steps, progress=lambda _: bar.update(1))
    bar.close()
    batch = pgd_attack.blend(x, delta, ALPHAS)
    categories = models.imagenet_categories()
    logits = {}
    with torch.no_grad():
        for name in names:
            logits[name] = models.load_model(name, device)(models.preprocess(batch, models.spec(name))).float().cpu().numpy()
    goal = f"towards {categories[args.target]}" if args.target is not None else "away from the original prediction"
    print(f"PGD {args.norm}, eps {spec.eps:.4g}, step {spec.alpha:.4g}, {args.steps} steps on {attacker}, {goal}; "
          f"|delta| = {float(pgd_attack.norm_of(delta, args.norm)[0]):.4g}")
    for name in names:
        p = torch.tensor(logits[name]).softmax(1)
        before, after = int(p[0].argmax()), int(p[-1].argmax())
        print(f"  {name:<22} {categories[before]} ({float(p[0, before]):.2f}) -> {categories[after]} ({float(p[-1, after]):.2f})")
    delta_np = delta[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    images = (batch.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    attrs = {"attack_model": attacker, "norm": args.norm, "eps": spec.eps, "step": spec.alpha, "steps": args.steps,
             "target": -1 if args.target is None else int(args.target), "point": json.dumps(result.params[0], default=str)}
    if args.output.endswith(".npz"):
        np.savez_compressed(args.output, delta=delta_np, images=images, alphas=np.array(ALPHAS),
                            models=np.array(names), logits=np.stack([logits[n] for n in names], 1), attrs=json.dumps(attrs))
    else:
        import xarray as xr

        ds = xr.Dataset(
            {"delta": (("y", "x", "channel"), delta_np, {"long_name": "perturbation added to the model input", "units": "1"}),
             "image": (("alpha", "y", "x", "channel"), images, {"long_name": "clamp(x + alpha delta), uint8"}),
             "logits": (("alpha", "model", "class"), np.stack([logits[n] for n in names], 1), {"long_name": "logits"})},
            coords={"alpha": list(ALPHAS), "model": np.array(names, dtype=object), "class": np.arange(1000),
                    "channel": np.array(["r", "g", "b"], dtype=object)},
            attrs=attrs)
        ds.to_zarr(args.output, mode="w", zarr_format=3, consolidated=False)
    print(f"wrote {args.output}")
    return 0


def _suffixed(path: str, suffix: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{suffix}{p.suffix}"))


def cmd_precompute(args: argparse.Namespace) -> int:
    from perturber.pipeline import run, spec

    sweep = spec.load_spec(args.spec, force=args.force)
    if args.prune:
        sweep = sweep.prune(args.prune)
    run.dry_run(sweep)
    if args.dry_run:
        return 0
    scheduler, cluster = args.scheduler, None
    if args.cluster:
        from perturber.pipeline import clusters

        cluster = clusters.build(args.cluster)
        scheduler = cluster.scheduler_address
    try:
        report = run.precompute(sweep, args.out, scheduler=scheduler, workers=args.workers,
                                overwrite=args.overwrite, progress=not args.quiet)
    finally:
        if cluster is not None:
            cluster.close()
    written = sum(report.written.values())
    print(f"wrote {written} chunks ({report.samples} samples) in {report.seconds:.1f} s; "
          f"{sum(report.skipped.values())} chunks were already done")
    print(run.summary(sweep, args.out))
    return 0


def cmd_featureviz(args: argparse.Namespace) -> int:
    from perturber.featureviz import precompute as fv

    spec = fv.load_spec(args.spec)
    fv.precompute(spec, args.out, scheduler=args.scheduler, workers=args.workers, progress=not args.quiet)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from perturber.viewer import app

    if args.address not in ("127.0.0.1", "localhost") and not args.allow_remote:
        raise CLIError(f"--address {args.address}: serving beyond this machine needs --allow-remote")
    print(f"serving {args.store} on http://{args.address}:{args.port}/ (Ctrl-C stops)")
    app.serve(args.store, args.cube, port=args.port, address=args.address, show=args.show, engine=args.engine)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perturber", description="Explore how ImageNet CNNs respond to 3D scene perturbations.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render one scene to a PNG", description="Render one scene (every factor is an option).")
    p.add_argument("-o", "--output", default="render.png", help="output PNG (default: render.png)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    p.add_argument("--depth", metavar="NPY", help="also save the depth map (H, W) float32, object sizes, inf = empty")
    _add_factor_options(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("sheet", help="contact sheet: objects x values of one factor",
                       description="Render a grid: one row per object, one column per value of the swept factor.")
    p.add_argument("--objects", default="all",
                   help="comma-separated object ids ('a:b' morphs a into b), or 'all' (default)")
    p.add_argument("--sweep", default="yaw=-90,-45,0,45,90,180",
                   help="FACTOR=v1,v2,... or FACTOR=start:stop:count (default: yaw=-90,-45,0,45,90,180)")
    p.add_argument("-o", "--output", default="contact-sheet.png", help="output PNG")
    p.add_argument("--size", type=int, default=160, help="tile side in pixels (default: 160)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_factor_options(p)
    p.set_defaults(func=cmd_sheet)

    p = sub.add_parser("predict", help="top-5 predictions of models on one scene",
                       description="Render one scene, apply the image factors and print each model's top-k.")
    p.add_argument("--models", default="efficientnet_lite0", help="comma-separated model names (see data/models.yaml)")
    p.add_argument("--size", type=int, default=224, help="render side in pixels (default: 224)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to print (default: 5)")
    p.add_argument("--save-input", metavar="PNG", help="save the model input image")
    p.add_argument("--layer", help="a layer to record (friendly name, e.g. stage4, or a module path)")
    p.add_argument("--activation-figure", metavar="PNG", help="save the layer's most active neurons over the input")
    p.add_argument("--neurons", type=int, default=12, help="how many neurons the figure shows (default: 12)")
    _add_factor_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("precompute", help="compute a sweep spec into a Zarr store (resumable)",
                       description="Compute every missing chunk of every cube of a sweep spec into a Zarr store.")
    p.add_argument("spec", help="a sweep spec (workflows/*.yaml)")
    p.add_argument("--out", required=True, help="the Zarr store: a path or an fsspec URL")
    p.add_argument("--dry-run", action="store_true", help="print each cube's shape, samples, size and time, then stop")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, or 'synchronous' (no Dask)")
    p.add_argument("--cluster", metavar="YAML", help="a cluster recipe (workflows/clusters/*.yaml) to start and use")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace cubes written from a different spec")
    p.add_argument("--force", action="store_true", help="allow cubes above the spec's sample budget")
    p.add_argument("--prune", type=int, metavar="N", help="keep only the first N values of every axis (a smoke run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_precompute)

    p = sub.add_parser("attack", help="PGD on one scene: the perturbation and every model's predictions",
                       description="Run projected gradient descent (L2 or L-infinity) against one model on a scene's "
                                   "model input; write the perturbation and each model's logits on x + alpha*delta "
                                   f"for alpha in {', '.join(map(str, ALPHAS))} (the transfer view).")
    p.add_argument("--models", default="efficientnet_lite0,efficientnet_lite2", help="models to evaluate (comma-separated)")
    p.add_argument("--attack-model", help="the attacked model (default: the first of --models)")
    p.add_argument("--eps", default="8/255", help="the bound, in [0, 1] pixel units, e.g. 8/255 (default) or 0.5 for L2")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    p.add_argument("--step", help="step size (default: eps/8, as the original)")
    p.add_argument("--target", type=int, help="target ImageNet class (default: suppress the original prediction)")
    p.add_argument("--size", type=int, default=224, help="render side in pixels (default: 224)")
    p.add_argument("-o", "--output", default="attack.npz", help="an .npz file or a .zarr store (default: attack.npz)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_factor_options(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("featureviz", help="feature visualisations into a store (lucent, batched, resumable)",
                       description="Optimise images for a spec's channels, directions and class logits (lucent), "
                                   "many units per batch, as Dask tasks; written to the store's featureviz group.")
    p.add_argument("spec", help="a feature-visualisation spec (workflows/featureviz.yaml)")
    p.add_argument("--out", required=True, help="the Zarr store (usually the precompute's)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, or 'synchronous' (no Dask)")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_featureviz)

    p = sub.add_parser("view", help="browse a store in the Panel viewer")
    p.add_argument("store", help="a Zarr store written by perturber precompute")
    p.add_argument("--cube", help="which cube (default: the first)")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--address", default="127.0.0.1", help="interface to bind (default: 127.0.0.1 only)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding an address other machines can reach")
    p.add_argument("--show", action="store_true", help="open a browser")
    p.add_argument("--engine", metavar="local|ADDRESS",
                   help="live compute for points off the grid: 'local' starts a LocalCluster, or a Dask scheduler address")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("assets", help="list built-in assets with status and licence")
    p.add_argument("--fetch", action="store_true", help="install missing assets (apt) or say exactly what to install")
    p.set_defaults(func=cmd_assets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from perturber.pipeline.assets import AssetError
    from perturber.pipeline.models import ModelError
    from perturber.pipeline.spec import SpecError
    from perturber.pipeline.clusters import ClusterError
    from perturber.pipeline.store import StoreError
    from perturber.featureviz import FeatureVizError
    from perturber.pipeline.attack import AttackError

    import logging

    logging.basicConfig(level=logging.WARNING, format="perturber: %(message)s")
    logging.getLogger("perturber").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # Dask sets its own loggers to INFO when imported
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or not record.name.startswith("distributed"))
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        option = next((u for u in unknown if u.startswith("--")), None)
        if option is not None and args.command in ("render", "sheet", "predict", "attack"):
            try:
                factors.get(option[2:].split("=")[0].replace("-", "_"))
            except factors.FactorError as exc:
                print(f"perturber: error: {exc}", file=sys.stderr)
                return 2
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "size", 224) is not None and not 16 <= getattr(args, "size", 224) <= 4096:
        print("perturber: error: --size must be between 16 and 4096 pixels", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (factors.FactorError, AssetError, ModelError, SpecError, StoreError, ClusterError, CLIError, FeatureVizError, AttackError) as exc:
        print(f"perturber: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
