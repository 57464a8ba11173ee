"""The precompute job's throughput against the models' own best, and against a naive loop.

    python benchmarks/precompute_throughput.py [--write docs/benchmarks.md]

The sweep: four objects from 6 yaws (24 renders) x 3 hues x 3 backgrounds, so
image factors multiply each render 9x; EfficientNet-Lite0 and Lite2, no
activations, no images. Measured in one run:

- precompute samples/s in-process, and on a LocalCluster of 1 and 2 workers
  (wall time of the whole job, cluster start and model loading included);
- the models' best throughput: each model at its best batch size (searched)
  in channels_last, on the same machine; combined as the rate at which both
  models could classify every sample with nothing else to do;
- a naive per-sample loop: render every sample, apply its ops, run each model
  at batch 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import date

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

from perturber.pipeline import engine, factors, imageops, inference, models, run, scene, spec  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

MODELS = ["efficientnet_lite0", "efficientnet_lite2"]
SWEEP = {
    "name": "bench",
    "cubes": {
        "bench": {
            "axes": {
                "object": ["dog", "cat", "sports_car", "fire_truck"],
                "yaw": [0, 60, 120, 180, -120, -60],
                "hue": [0, 90, 180],
                "background": ["white", "meadow", "road"],
            },
            "models": MODELS,
            "images": False,
        }
    },
}


def precompute_rate(sweep: spec.SweepSpec, **kwargs) -> float:
    folder = tempfile.mkdtemp()
    try:
        start = time.perf_counter()
        report_ = run.precompute(sweep, os.path.join(folder, "b.zarr"), progress=False, echo=lambda _: None, **kwargs)
        return report_.samples / (time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@torch.no_grad()
def best_model_rates() -> dict[str, tuple[float, int]]:
    out = {}
    for name in MODELS:
        s = models.spec(name)
        net = models.load_model(name, "cpu")
        x = inference.preprocess(torch.rand(32, 3, s.input_size, s.input_size), s)
        best = (0.0, 1)
        for bs in (1, 2, 4, 8, 16, 32):
            net(x[:bs])
            start = time.perf_counter()
            for i in range(0, 32, bs):
                net(x[i : i + bs])
            rate = 32 / (time.perf_counter() - start)
            best = max(best, (rate, bs))
        out[name] = best
    return out


def naive_rate(sweep: spec.SweepSpec, n: int = 36) -> float:
    cube = sweep.cubes[0]
    points = [cube.point(idx) for idx in run.itertools.islice(run.itertools.product(*(range(k) for k in cube.shape)), n)]
    renderer = scene.default_renderer()
    start = time.perf_counter()
    for point in points:
        p = factors.validate(point)
        rgb = engine.model_input(imageops.apply_image_factors(imageops.to_tensor(renderer.render(p, 224).rgba), [p]))
        for name in MODELS:
            with torch.no_grad():
                models.load_model(name, "cpu")(inference.preprocess(rgb, models.spec(name)))
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", metavar="MD", help="replace this benchmark's section of a markdown file")
    args = ap.parse_args()
    sweep = spec.parse_spec(SWEEP)
    samples = sweep.cubes[0].samples
    best = best_model_rates()
    ideal = 1.0 / sum(1.0 / rate for rate, _ in best.values())
    naive = naive_rate(sweep)
    rates = {
        "in-process (synchronous)": precompute_rate(sweep, scheduler="synchronous"),
        "LocalCluster, 1 worker": precompute_rate(sweep, workers=1),
        "LocalCluster, 2 workers": precompute_rate(sweep, workers=2),
    }
    top = max(rates.values())
    lines = [
        "## Precompute throughput",
        "",
        f"Measured {date.today().isoformat()} with `make benchmark` on {report.cpu()}, torch {torch.__version__}. "
        f"Sweep: {samples} samples, 24 renders, image factors x9 per render, {' + '.join(MODELS)}; "
        "wall time of the whole job (cluster start and model loading included).",
        "",
        "| model | best batch | images/s (channels_last) |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {bs} | {rate:.1f} |" for k, (rate, bs) in best.items()],
        f"| both models on every sample (ideal pipeline) | | {ideal:.1f} samples/s |",
        "",
        "| run | samples/s | fraction of ideal | vs naive loop |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {k} | {r:.1f} | {r / ideal:.2f} | {r / naive:.1f}x |" for k, r in rates.items()],
        f"| naive loop (render every sample, batch 1) | {naive:.1f} | {naive / ideal:.2f} | 1.0x |",
        "",
        f"Goals: fraction of ideal >= 0.7 (best here: {top / ideal:.2f}); >= 3x the naive loop (best here: {top / naive:.1f}x).",
        "",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
