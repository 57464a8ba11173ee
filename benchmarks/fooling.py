"""Fooling by evolution: images evaluated per second, as a fraction of the model's own best throughput.

    python benchmarks/fooling.py [--write docs/benchmarks.md] [--generations 3] [--population 32]

On the machine it runs on (the GPU when there is one), EfficientNet-Lite0 at
its input size (224 px), measured in one run:

- the model's own best throughput: plain batched forward passes (inputs
  already normalised, channels_last, no_grad) at the best of the candidate
  batch sizes; measured in each round right before the evolution runs, since
  a shared machine's load changes from minute to minute;
- MAP-Elites (:func:`perturber.pipeline.searches.mapelites.evolve`, in-process)
  with the CPPN and the direct encoding at that batch size: images per second
  over the whole loop (parent sampling, mutation, decoding, scoring, the
  archive's update, the history), model already warm;
- decoding alone (images per second), to show where the rest goes.

Goal: evolution at ≥ 0.8 of the model's own throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

MODEL = "efficientnet_lite0"


def model_throughput(device: torch.device, size: int, candidates: tuple[int, ...], images: int) -> tuple[float, int]:
    """(best images/s, its batch size) of plain forward passes."""
    from perturber.pipeline import inference, models

    spec, net = models.spec(MODEL), models.load_model(MODEL, device)
    x = inference.preprocess(torch.rand(max(candidates), 3, size, size, device=device), spec)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, best_bs = 0.0, candidates[0]
    with torch.no_grad():
        for bs in candidates:
            net(x[:bs])
            sync()
            n = max(1, images // bs)
            start = time.perf_counter()
            for _ in range(n):
                net(x[:bs])
            sync()
            rate = n * bs / (time.perf_counter() - start)
            if rate > best:
                best, best_bs = rate, bs
    return best, best_bs


def decode_rate(encoding: str, size: int, batch: int, device: torch.device) -> float:
    from perturber.pipeline.searches import encodings, mapelites

    enc = encodings.make(encoding, size)
    g = enc.initial(batch, np.random.default_rng(0))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        mapelites.quantised(enc.decode(g, device))
        sync()
        start = time.perf_counter()
        for _ in range(3):
            mapelites.quantised(enc.decode(g, device))
        sync()
    return 3 * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--generations", type=int, default=None, help="per round (default: 2 on CPU, 10 on GPU)")
    parser.add_argument("--population", type=int, default=None, help="default: 32 on CPU, 2048 on GPU")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    from perturber.pipeline import models
    from perturber.pipeline.searches import mapelites

    device = models.best_device()
    gpu = device.type == "cuda"
    candidates = (64, 128, 256, 512) if gpu else (1, 2, 4, 8, 16)
    generations = args.generations or (10 if gpu else 2)
    population = args.population or (2048 if gpu else 32)
    probe = 2048 if gpu else 64
    _, bs = model_throughput(device, args.size, candidates, probe)
    mapelites.evolve(MODEL, "cppn", generations=0, population=bs, size=args.size, batch=bs)  # warm: model, kernels
    # On a shared machine the load changes from minute to minute: each round measures the model's own
    # throughput and both encodings back to back, and the fraction is taken within the round.
    own, rates = [], {"cppn": [], "direct": []}
    for _ in range(args.rounds):
        own.append(model_throughput(device, args.size, (bs,), probe)[0])
        for encoding in rates:
            e = mapelites.evolve(MODEL, encoding, generations=generations, population=population, size=args.size, batch=bs)
            rates[encoding].append(e.evaluations / e.seconds)
    own_rate = float(np.median(own))
    rows = [(name, float(np.median(r)), float(np.median(np.array(r) / np.array(own))), decode_rate(name, args.size, bs, device))
            for name, r in rates.items()]
    where = torch.cuda.get_device_name(0) if gpu else report.cpu()
    lines = [
        f"## Fooling by evolution: images per second{' (GPU)' if gpu else ''}",
        "",
        f"{date.today()}, {where}, torch {torch.__version__}, `python benchmarks/fooling.py`: EfficientNet-Lite0 at "
        f"{args.size} px, batches of {bs} (the model's best batch size here, of {', '.join(map(str, candidates))}); "
        f"{args.rounds} rounds, each: the model's own throughput (plain batched forward passes), then MAP-Elites "
        f"in-process with each encoding ({generations} generations of {population} offspring after the initial one). "
        f"Medians over the rounds; the fraction is taken within each round. The model's own: {own_rate:.0f} images/s "
        f"(rounds: {', '.join(f'{r:.0f}' for r in own)}).",
        "",
        "| encoding | evolution (images/s) | fraction of the model's own | decoding alone (images/s) |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {name} | {rate:.0f} | {frac:.2f} | {dec:.0f} |" for name, rate, frac, dec in rows],
        "",
        "Goal: ≥ 0.8 of the model's own throughput (evolution = sampling, mutation, decoding, scoring and the "
        "archive's update, over the whole loop).",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
