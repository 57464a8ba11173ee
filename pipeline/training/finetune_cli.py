"""``perturber finetune``: fine-tune a registry model (standard, adversarial, stylized).

    perturber finetune --model resnet50 --data /data/imagenet/train --val /data/imagenet/val --mode adversarial --eps 3
    perturber finetune --model resnet50 --data /data/sin/train --mix-original /data/imagenet/train --mode stylized
    perturber finetune ... --nproc-per-node 8          # torchrun with 8 processes (GPUs), DDP
    torchrun --nnodes 4 --nproc-per-node 8 ... -m perturber finetune ...   # see workflows/clusters/finetune-slurm.sh

Checkpoints go to ``--out`` (default: ``<cache>/finetune/<run>``) every
``--checkpoint-every`` steps and are registered at once as models
``<run>-step<N>`` in the user's registry. The same command again resumes
from the last checkpoint; ``--overwrite`` starts over. The loop, its
defaults and what is deterministic: :mod:`perturber.pipeline.training.loop`;
batch norm across processes: :mod:`perturber.pipeline.training.distributed`.

Run on its own (before ``perturber`` lists the command, and for torchrun's
processes): ``python -m perturber.pipeline.training.finetune_cli --model ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from perturber.pipeline.options import text_option, whole_option
from perturber.pipeline.training import MODES, TrainingError

__all__ = ["add_parser", "cmd_finetune", "main"]


def _number(low: float, high: float, low_open: bool = False, high_open: bool = False):
    """argparse type of a finite number in the given range ('8/255' allowed)."""
    def convert(text: str) -> float:
        try:
            num, _, den = text.partition("/")
            value = float(num) / float(den) if den else float(num)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number (write 0.03 or 8/255)") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
            raise argparse.ArgumentTypeError(f"must be a number in {lo}, {hi}, got {text!r}")
        return value
    return convert


def _run_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: letters, digits, '.', '_' and '-' only (it names a folder and models)")
    return text


def add_parser(sub, parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("finetune", parents=list(parents), help="fine-tune a model (standard, adversarial, stylized) into registry checkpoints",
                       description="Fine-tune a registry model on an ImageFolder (class folders named by WordNet ID, "
                                   "ImageNet index or class name); each checkpoint becomes a registry model.")
    p.add_argument("--model", required=True, type=text_option, help="the registry model to start from")
    p.add_argument("--data", required=True, metavar="DIR", type=text_option,
                   help="training ImageFolder (stylized mode: the stylized images)")
    p.add_argument("--mode", required=True, choices=MODES,
                   help="standard; adversarial: PGD in the loop (Madry et al.); stylized: --data stylized, "
                        "optionally with --mix-original (Geirhos et al.'s SIN+IN)")
    p.add_argument("--mix-original", metavar="DIR", type=text_option, help="stylized mode: also train on this original ImageFolder")
    held = p.add_argument_group("held-out accuracy (at each checkpoint)")
    held.add_argument("--val", metavar="DIR", type=text_option, help="held-out ImageFolder (default: --val-fraction of --data)")
    held.add_argument("--val-fraction", type=_number(0, 1, high_open=True),
                      help="fraction of each class of the training images held out, chosen by --seed (default: 0.1; 0: none)")
    held.add_argument("--val-max", type=whole_option(0, 10**9), default=1000,
                      help="at most this many held-out images (default: 1000; 0: all)")
    opt = p.add_argument_group("optimisation (defaults: the paper's)")
    opt.add_argument("--lr", type=_number(0, 10, low_open=True), default=0.003, help="learning rate, constant (default: 0.003)")
    opt.add_argument("--momentum", type=_number(0, 1, high_open=True), default=0.9, help="SGD momentum (default: 0.9)")
    opt.add_argument("--weight-decay", type=_number(0, 1), default=0.0, help="SGD weight decay (default: 0)")
    opt.add_argument("--batch", type=whole_option(1, 65536), default=128, help="global batch, split over the processes (default: 128)")
    opt.add_argument("--epochs", type=_number(0, 10_000, low_open=True), help="passes over the training images (default: 1)")
    opt.add_argument("--steps", type=whole_option(1, 10**9), help="optimizer steps in all (instead of --epochs)")
    opt.add_argument("--seed", type=whole_option(0, 2**31 - 2), default=0, help="data order, flips, held-out split, dropout (default: 0)")
    opt.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    opt.add_argument("--bn", choices=["sync", "frozen", "local"], default="sync",
                     help="batch norm across processes: sync (global batch statistics, default), frozen (running "
                          "statistics kept, γ and β trained), local (each process's own)")
    adv = p.add_argument_group("attack (adversarial mode; in other modes, for the robust accuracy)")
    adv.add_argument("--norm", choices=["l2", "linf"], default="l2", help="PGD's norm (default: l2)")
    adv.add_argument("--eps", type=_number(0, 1e4, low_open=True),
                     help="ε in [0, 1] pixel units of the model-input image (L2: over the whole image); '4/255' works")
    adv.add_argument("--attack-steps", type=whole_option(1, 1000), default=7, help="PGD steps per batch (default: 7)")
    adv.add_argument("--attack-step-size", type=_number(0, 1e4, low_open=True), help="PGD step (default: 2.5 ε / --attack-steps)")
    run = p.add_argument_group("run")
    run.add_argument("--name", dest="run_name", type=_run_name,
                     help="the run's name; checkpoints are registered as <name>-step<N> (default: <model>-<mode>[-<norm>])")
    run.add_argument("--out", metavar="DIR", type=text_option, help="output folder (default: <cache>/finetune/<name>)")
    run.add_argument("--checkpoint-every", type=whole_option(1, 10**9),
                     help="steps between checkpoints (default: 17 checkpoints per adversarial run, 7 stylized, 10 standard)")
    run.add_argument("--stop-after", type=whole_option(1, 10**9), help="leave after this many steps (the same command resumes)")
    run.add_argument("--overwrite", action="store_true", help="start over instead of resuming from --out's last checkpoint")
    run.add_argument("--nproc-per-node", type=whole_option(1, 1024), default=1,
                     help="processes (one per GPU) started through torchrun, DDP; 1: this process (default)")
    run.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                     help="mixed precision on GPUs (auto: bf16 where supported, else fp16); the CPU always fp32")
    run.add_argument("--workers", type=whole_option(0, 256), help="image-reading processes per training process (default: 8 on GPUs, 0 on the CPU)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_finetune)
    return p


def _config(args: argparse.Namespace):
    """The resolved :class:`~perturber.pipeline.training.loop.Config`, checked."""
    from perturber.pipeline import config, models
    from perturber.pipeline.options import cannot_create_in, nearest_existing
    from perturber.pipeline.training.loop import Config

    models.spec(args.model)
    if args.mix_original and args.mode != "stylized":
        raise TrainingError("--mix-original applies to --mode stylized only")
    if args.val and args.val_fraction is not None:
        raise TrainingError("give --val or --val-fraction, not both")
    if args.steps and args.epochs:
        raise TrainingError("give --steps or --epochs, not both")
    if args.eps is None and (args.attack_step_size is not None or args.norm != "l2" or args.attack_steps != 7):
        raise TrainingError("--norm, --attack-steps and --attack-step-size need --eps")
    run = args.run_name or re.sub(r"[^A-Za-z0-9._-]", "_", f"{args.model}-{args.mode}" + (f"-{args.norm}" if args.mode == "adversarial" else ""))
    out = Path(args.out or config.cache_dir() / "finetune" / run).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out}: is a file, not a folder")
    parent = nearest_existing(out)
    problem = cannot_create_in(parent) if parent.is_dir() else None
    if not parent.is_dir() or problem is not None:
        raise TrainingError(f"--out {out}: cannot write there ({problem.strerror if problem else f'{parent} is a file'})")
    for name, s in models.registry().items():
        file = s.weights.get("file")
        if re.fullmatch(re.escape(run) + r"-step\d+", name) and file and Path(str(file)).resolve().parent != out.resolve():
            raise TrainingError(f"run {run!r} already has checkpoints in {Path(str(file)).parent} (model {name}); "
                                "choose another --name, or that folder as --out")
    return Config(model=args.model, mode=args.mode, data=tuple(d for d in (args.data, args.mix_original) if d), out=str(out),
                  run=run, val=args.val, val_fraction=0.1 if args.val_fraction is None else args.val_fraction,
                  val_max=args.val_max or None, seed=args.seed, batch=args.batch, lr=args.lr, momentum=args.momentum,
                  weight_decay=args.weight_decay, steps=args.steps, epochs=args.epochs or 1.0,
                  checkpoint_every=args.checkpoint_every, stop_after=args.stop_after, eps=args.eps, norm=args.norm,
                  attack_steps=args.attack_steps, attack_step_size=args.attack_step_size, bn=args.bn, flip=args.flip,
                  precision=args.precision, workers=args.workers, progress=not args.quiet, overwrite=args.overwrite)


def _relaunch(cfg, nproc: int) -> int:
    """Run ``cfg`` in ``nproc`` processes through torchrun on this machine; its exit status."""
    import dataclasses

    import torch

    from perturber.pipeline.training.checkpoints import writing

    out = Path(cfg.out)
    launch = out / "launch.json"
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    with writing(launch):
        launch.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    env = dict(os.environ)
    if not torch.cuda.is_available():  # CPU processes share the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "perturber.pipeline.training.finetune_cli", "--launch", str(launch)]
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise TrainingError(f"the {nproc} training processes failed (torchrun exit status {code}); their messages are above")
    return 0


def _report(cfg, result) -> None:
    last = max(result.entries, key=result.entries.get) if result.entries else None
    more = "" if result.step >= result.steps else f"; stopped at step {result.step} of {result.steps} (the same command resumes)"
    print(f"finetune {cfg.run}: {result.step} steps done, {len(result.entries)} checkpoints registered"
          f"{f' (last: {last})' if last else ''}; files in {result.out}{more}")


def cmd_finetune(args: argparse.Namespace) -> int:
    from perturber.pipeline.training import distributed, loop

    cfg = _config(args)
    w = distributed.world_from_env()
    world = w.world if w.world > 1 else args.nproc_per_node
    p = loop.plan(cfg, world)  # every folder scanned and every option checked before any work
    if args.nproc_per_node > 1 and w.world == 1:
        import torch

        if torch.cuda.is_available() and args.nproc_per_node > torch.cuda.device_count():
            raise TrainingError(f"--nproc-per-node {args.nproc_per_node}: one process per GPU, and this machine has "
                                f"{torch.cuda.device_count()}")
        return _relaunch(cfg, args.nproc_per_node)
    result = loop.train(cfg, w, p)
    if w.main:
        _report(cfg, result)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"perturber: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m perturber.pipeline.training.finetune_cli [finetune's options]``;
    ``--launch FILE``: run the settings torchrun's processes were handed."""
    from perturber.pipeline import config
    from perturber.pipeline.errors import PerturberError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["--launch"] and len(argv) == 2:
            from perturber.pipeline.training import distributed, loop

            settings = json.loads(Path(argv[1]).read_text())
            cfg = loop.Config(**{**settings, "data": tuple(settings["data"])})
            w = distributed.world_from_env()
            result = loop.train(cfg, w)
            if w.main:
                _report(cfg, result)
            return 0
        parser = _Parser(prog="perturber")
        registries = _Parser(add_help=False)
        registries.add_argument("--models-file", metavar="YAML", action="append", default=[],
                                help="a model registry of your own, added to the built-in one (also: PERTURBER_MODELS)")
        add_parser(parser.add_subparsers(dest="command", required=True), [registries])
        args = parser.parse_args(["finetune", *argv])
        if args.models_file:
            config.add_model_registries(args.models_file)
        return args.run(args)
    except PerturberError as exc:
        print(f"perturber: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
