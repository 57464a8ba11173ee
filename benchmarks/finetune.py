"""Fine-tuning: training images per second, adversarial (PGD in the loop) and standard.

    python benchmarks/finetune.py [--write docs/benchmarks.md] [--steps 4] [--batch 16] [--attack-steps 7]

On the machine it runs on (the GPU when there is one), the whole
``perturber finetune`` loop on the pip-shipped EfficientNet-Lite0 at 224 px:
reading and decoding PNGs, the PGD attack (adversarial mode, the default 7
steps of L2 PGD at ε = 3 in eval mode), the training step, logging. The
images: our own renders (dog, cat, truck at 16 yaws), 224 px PNGs in an
ImageFolder. Images per second are global-batch images over each step's
wall time, as the run's log.csv records them; the first step (warm-up) is
left out, the median of the rest reported. No held-out evaluation (it runs at
checkpoints only, and is excluded here).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

MODEL = "efficientnet_lite0"
OBJECTS = {"n02099601": "dog", "tabby": "cat", "867": "truck"}


def render_folder(root: Path, size: int, per_class: int) -> Path:
    from perturber.pipeline import scene

    for folder, obj in OBJECTS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for yaw in np.linspace(-180, 180, per_class, endpoint=False):
            rgba = scene.render({"object": obj, "yaw": float(yaw), "background": "meadow"}, size=size)
            Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(root / folder / f"{obj}_{yaw:+06.1f}.png")
    return root


def rate(folder: Path, out: Path, mode: str, args, precision: str) -> float:
    """Median images/s of a ``mode`` run (steps after the first)."""
    from perturber.pipeline.training import finetune_cli

    extra = ["--eps", "3", "--attack-steps", str(args.attack_steps)] if mode == "adversarial" else []
    code = finetune_cli.main(["--model", MODEL, "--data", str(folder), "--mode", mode, *extra, "--batch", str(args.batch),
                              "--steps", str(args.steps), "--checkpoint-every", str(args.steps), "--val-fraction", "0",
                              "--out", str(out / mode), "--name", f"bench-{mode}", "--overwrite", "--quiet",
                              "--precision", precision])
    if code:
        raise SystemExit(code)
    with open(out / mode / "log.csv") as log:
        rows = list(csv.DictReader(log))
    return statistics.median(float(r["images_per_s"]) for r in rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--steps", type=int, default=None, help="per mode (default: 4 on CPU, 30 on GPU)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: 16 on CPU, 128 on GPU)")
    parser.add_argument("--attack-steps", type=int, default=7)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    args.steps = args.steps or (30 if gpu else 4)
    args.batch = args.batch or (128 if gpu else 16)
    precision = "auto" if gpu else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        # a throwaway user registry: the benchmark's checkpoints are not kept
        os.environ["PERTURBER_CONFIG"] = str(Path(tmp) / "config")
        folder = render_folder(Path(tmp) / "images", 224, max(16, args.batch // 3 + 1))
        rates = {mode: rate(folder, Path(tmp) / "runs", mode, args, precision) for mode in ("standard", "adversarial")}
    where = torch.cuda.get_device_name(0) if gpu else report.cpu()
    lines = [
        f"## Fine-tuning: images per second{' (GPU)' if gpu else ''}",
        "",
        f"{date.today()}, {where}, torch {torch.__version__}, `python benchmarks/finetune.py`: `perturber finetune` on "
        f"EfficientNet-Lite0 at 224 px, global batch {args.batch}, one process, {precision} "
        f"({'bf16 autocast where supported' if gpu else 'the CPU never autocasts'}), {args.steps} steps per mode; "
        "median over the steps after the first (the whole loop: PNG reading, attack, training step, log).",
        "",
        "| mode | images/s | relative to standard |",
        "| --- | ---: | ---: |",
        *[f"| {mode}{f' (L2 PGD, {args.attack_steps} steps)' if mode == 'adversarial' else ''} | {r:.1f} | "
          f"{r / rates['standard']:.2f} |" for mode, r in rates.items()],
        "",
        f"An adversarial step adds {args.attack_steps} forward and backward passes in eval mode (PGD's); they compute "
        f"gradients for the input only, none for the weights, so adversarial runs faster than 1/{args.attack_steps + 1} "
        "of standard's rate.",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
