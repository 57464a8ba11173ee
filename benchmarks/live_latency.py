"""Off-grid latency of the on-demand engine (live points the store does not hold).

    python benchmarks/live_latency.py [--write docs/benchmarks.md]

A LiveEngine on a LocalCluster (one worker process, models kept warm), the
demo's models and layers: EfficientNet-Lite0 and Lite2, activations of
stage4, stage6 and head (16 neurons each). Random off-grid points (yaw, pitch,
hue, distance drawn continuously) of the dog and the cat, each new; then the
same points again (cache hits).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import date

import numpy as np

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

MODELS = ["efficientnet_lite0", "efficientnet_lite2"]
LAYERS = ["stage4", "stage6", "head"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--points", type=int, default=20)
    args = parser.parse_args()
    from perturber.viewer.live import LiveEngine

    rng = random.Random(0)
    points = [{"object": rng.choice(["dog", "cat"]), "yaw": round(rng.uniform(-180, 180), 2), "pitch": round(rng.uniform(-10, 40), 2),
               "hue": round(rng.uniform(-180, 180), 2), "distance": round(rng.uniform(1.8, 3.0), 3)} for _ in range(args.points + 2)]
    neurons = {layer: list(range(16)) for layer in LAYERS}
    engine = LiveEngine()
    try:
        start = time.perf_counter()
        engine.evaluate("bench", points[0], MODELS, LAYERS, neurons)  # first: loads the models on the worker
        first = time.perf_counter() - start
        new, worker, hits = [], [], []
        for p in points[1:]:
            t0 = time.perf_counter()
            result, _ = engine.evaluate("bench", p, MODELS, LAYERS, neurons)
            new.append(time.perf_counter() - t0)
            worker.append(result.seconds)
        for p in points[1:]:
            t0 = time.perf_counter()
            engine.evaluate("bench", p, MODELS, LAYERS, neurons)
            hits.append(time.perf_counter() - t0)
    finally:
        engine.close()
    pct = lambda v, q: float(np.percentile(np.array(v) * 1000, q))  # noqa: E731
    lines = [
        "## Off-grid latency (on-demand engine)",
        "",
        f"{date.today()}, {report.cpu()}, `python benchmarks/live_latency.py`: a LocalCluster worker with the models warm, "
        f"EfficientNet-Lite0 and Lite2 with activations of {', '.join(LAYERS)} (16 neurons each), {len(new)} random "
        "off-grid points of the dog and the cat (render, image factors, both models).",
        "",
        "| what | p50 (ms) | p95 (ms) |",
        "| --- | ---: | ---: |",
        f"| a new off-grid point, request to result | {pct(new, 50):.0f} | {pct(new, 95):.0f} |",
        f"| of which on the worker (render + models) | {pct(worker, 50):.0f} | {pct(worker, 95):.0f} |",
        f"| the same point again (cache) | {pct(hits, 50):.2f} | {pct(hits, 95):.2f} |",
        "",
        f"The first request of a fresh engine, models loading on the worker: {first * 1000:.0f} ms. "
        "Goal on this 2-core CPU: p50 < 500 ms for two Lite models with activations.",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
