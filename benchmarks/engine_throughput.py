"""Image ops, models and evaluate() throughput, measured in one run.

    python benchmarks/engine_throughput.py [--write docs/benchmarks.md]

- each image op on a batch of 64 RGB images at 224 px (images/s);
- each pip-shipped model at batch 1, 4 and 32, at its own input size (images/s);
- evaluate() on 32 points (2 objects x 2 yaws x 8 hue values, two models) against a
  naive loop over the same points: render, each op, each model at batch 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

from perturber.pipeline import engine, expression, factors, imageops, inference, models, scene  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def _rate(n: int, fn, repeat: int = 2) -> float:
    fn()  # warm up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def image_ops(batch: int = 64, size: int = 224) -> dict[str, float]:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    v = lambda value: torch.full((batch,), float(value))  # noqa: E731
    seeds = torch.arange(batch)
    cases = {
        "brightness": lambda: imageops.brightness(x, v(0.1)),
        "contrast": lambda: imageops.contrast(x, v(1.5)),
        "saturation": lambda: imageops.saturation(x, v(0.5)),
        "hue": lambda: imageops.hue_shift(x, v(90)),
        "gamma": lambda: imageops.gamma(x, v(2.0)),
        "expression (default, p=2)": lambda: imageops.colour_expression(x, expression.DEFAULT_EXPRESSION, v(2.0)),
        "band gains": lambda: imageops.band_gains(x, v(1.0), v(0.5), v(2.0)),
        "blur (sigma 2)": lambda: imageops.gaussian_blur(x, v(2.0)),
        "patch shuffle (k 4)": lambda: imageops.patch_shuffle(x, v(4), seeds),
        "gaussian noise": lambda: imageops.gaussian_noise(x, v(0.1), seeds),
        "salt and pepper": lambda: imageops.salt_and_pepper(x, v(0.1), seeds),
    }
    return {name: _rate(batch, fn) for name, fn in cases.items()}


@torch.no_grad()
def model_rates(device: str) -> dict[str, dict[int, float]]:
    out = {}
    for name in MODELS:
        s = models.spec(name)
        net = models.load_model(name, device)
        x = inference.preprocess(torch.rand(32, 3, s.input_size, s.input_size, device=device), s)
        out[name] = {bs: _rate(32, lambda: [net(x[i : i + bs]) for i in range(0, 32, bs)], repeat=2) for bs in (1, 4, 32)}
    return out


def evaluate_vs_naive(device: str) -> tuple[float, float]:
    points = [{"object": o, "yaw": y, "hue": h} for o in ("dog", "cat") for y in (0, 90) for h in range(0, 180, 23)]
    names = ["efficientnet_lite0", "efficientnet_lite2"]

    def naive():
        renderer = scene.default_renderer()  # no reuse of renders, batch 1 everywhere
        for point in points:
            p = factors.validate(point)
            rgba = imageops.to_tensor(renderer.render(p, 224).rgba).to(device)
            rgb = engine.model_input(imageops.apply_image_factors(rgba, [p]))
            for name in names:
                with torch.no_grad():
                    models.load_model(name, device)(inference.preprocess(rgb, models.spec(name)))

    fast = _rate(len(points), lambda: engine.evaluate(points, names, device=device), repeat=1)
    slow = _rate(len(points), naive, repeat=1)
    return fast, slow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", metavar="MD", help="replace this benchmark's section of a markdown file")
    ap.add_argument("--device", default=str(models.best_device()))
    args = ap.parse_args()
    torch.manual_seed(0)
    ops = image_ops()
    nets = model_rates(args.device)
    fast, slow = evaluate_vs_naive(args.device)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else report.cpu()
    lines = [
        "## Image ops, models and evaluate()",
        "",
        f"Measured {date.today().isoformat()} with `make benchmark` on {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.",
        "",
        "| image op (batch 64, 224 px) | images/s |",
        "| --- | ---: |",
        *[f"| {k} | {v:.0f} |" for k, v in ops.items()],
        "",
        "| model (own input size, channels_last) | batch 1, images/s | batch 4 | batch 32 | best / batch 1 |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {k} | {r[1]:.1f} | {r[4]:.1f} | {r[32]:.1f} | {max(r.values()) / r[1]:.2f} |" for k, r in nets.items()],
        "",
        "| 32 points (4 scenes x 8 hues), Lite0 + Lite2 | samples/s |",
        "| --- | ---: |",
        f"| evaluate(): distinct scenes rendered once, batched ops and models | {fast:.1f} |",
        f"| naive loop: render, ops, each model at batch 1 | {slow:.1f} |",
        f"| speed-up | {fast / slow:.2f}x |",
        "",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
