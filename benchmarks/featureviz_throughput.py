"""Feature visualisation: neurons per hour batched versus one at a time, and where the time goes.

    python benchmarks/featureviz_throughput.py [--write docs/benchmarks.md] [--section-suffix " (GPU)"]

Measured in one run on the machine it runs on (the GPU when there is one):

- neurons per hour for EfficientNet-Lite0's head channels, Fourier
  parameterisation with lucent's transforms: one batch of B channels against
  the same channels one at a time (B separate optimisations);
- per step: time in the parameterisation and transforms, the forward and the
  backward pass (from :func:`featureviz.optimize.visualise`'s own timers);
- what cuts it: image size, channels_last off, bfloat16 autocast (CPU) or
  float16 autocast (GPU);
- the projection for the original Perturber's ~300,000 visualisations (the
  original: about a month on two GTX 1070s) at the batched rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date

import torch

from perturber.featureviz.optimize import Settings, visualise
from perturber.pipeline import models

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

MODEL, LAYER = "efficientnet_lite0", "head"


def rate(units: int, seconds: float) -> float:
    return units / seconds * 3600


def timed(units, settings, net):
    device = next(net.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = visualise(MODEL, LAYER, units, settings=settings, net=net)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--steps", type=int, default=None, help="steps per visualisation (default: 16 on CPU, 64 on GPU)")
    parser.add_argument("--batch", type=int, default=None, help="units per batch (default: 4 on CPU, 128 on GPU)")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    steps = args.steps or (64 if gpu else 16)
    batch = args.batch or (128 if gpu else 4)
    single_count = min(batch, 8 if gpu else 4)
    net = models.load_model(MODEL, device)
    settings = Settings(size=args.size, steps=steps, seed=0)
    warm = Settings(size=args.size, steps=2, seed=0)
    visualise(MODEL, LAYER, list(range(batch)), settings=warm, net=net)  # warm-up: kernels, allocator
    visualise(MODEL, LAYER, [0], settings=warm, net=net)

    units = list(range(batch))
    batched_s, batched = timed(units, settings, net)
    single_s, diffs = 0.0, []
    for i, u in enumerate(units[:single_count]):
        seconds, alone = timed([u], settings, net)
        single_s += seconds
        diffs.append(float(abs(alone.images[0].astype(int) - batched.images[i].astype(int)).mean()))
    single_rate, batched_rate = rate(single_count, single_s), rate(batch, batched_s)
    per_step = batched.timing
    variants = []
    for label, s in [
        (f"{args.size // 2} px", Settings(size=args.size // 2, steps=steps, seed=0)),
        ("channels_last on", Settings(size=args.size, steps=steps, seed=0, channels_last=True)),
        ("bfloat16 autocast", Settings(size=args.size, steps=steps, seed=0, precision="bfloat16")),
    ] + ([("float16 autocast", Settings(size=args.size, steps=steps, seed=0, precision="float16"))] if gpu else []):
        try:
            visualise(MODEL, LAYER, units, settings=Settings(**{**s.__dict__, "steps": 2}), net=net)  # warm-up
            seconds, _ = timed(units, s, net)
            variants.append((label, f"{rate(batch, seconds):,.0f}"))
        except Exception as exc:  # a variant that does not run here is reported, not fatal
            variants.append((label, f"fails: {type(exc).__name__}"))
    where = torch.cuda.get_device_name(0) if gpu else report.cpu()
    strict = ""
    if gpu:  # is the GPU's difference TF32 rounding amplified by the optimisation?
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        a = timed(units[:4], settings, net)[1].images
        b = [timed([u], settings, net)[1].images[0] for u in units[:4]]
        strict = (f" With TF32 off: {max(float(abs(b[i].astype(int) - a[i].astype(int)).mean()) for i in range(4)):.2f} "
                  "grey levels at most over 4 channels.")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    # The original: ~300,000 visualisations at Lucid's default 512 steps; this
    # run's rate scales with steps (the time per step is constant).
    per_hour_512 = batched_rate * steps / 512
    hours = 300_000 / per_hour_512
    lines = [
        f"## Feature visualisation throughput{' (GPU)' if gpu else ''}",
        "",
        f"{date.today()}, {where}, torch {torch.__version__}, `python benchmarks/featureviz_throughput.py`: "
        f"EfficientNet-Lite0 `{LAYER}` channels, Fourier parameterisation, lucent's transforms, {args.size} px, {steps} steps.",
        "",
        "| how | neurons per hour |",
        "| --- | ---: |",
        f"| one at a time ({single_count} channels in turn) | {single_rate:,.0f} |",
        f"| batched ({batch} channels in one batch) | {batched_rate:,.0f} |",
        f"| **batched / one at a time** | **{batched_rate / single_rate:.1f}×** |",
    ]
    for label, r in variants:
        lines.append(f"| batched, {label} | {r} |")
    lines += [
        "",
        f"Per step of the batch of {batch}: parameterisation + transforms {per_step['parameterise + transforms'] * 1000:.1f} ms, "
        f"forward {per_step['forward'] * 1000:.1f} ms, backward + Adam {per_step['backward + step'] * 1000:.1f} ms. "
        f"Batched against alone, same seeds: mean absolute difference {max(diffs):.2f} grey levels (of 255) at most "
        f"over the {single_count} channels.{strict}",
        "",
        "Time per step is constant, so the time is linear in the steps; the image size cuts it about in proportion "
        "to the pixels (the network sees the image at its own size, as in Lucid).",
        "",
        f"Projection: the original's ~300,000 visualisations at Lucid's 512 steps, at this batched rate, "
        f"{hours:,.1f} hours on this {'GPU' if gpu else 'CPU'} (the original: about a month on two GTX 1070s).",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
