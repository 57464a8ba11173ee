"""PGD step latency, and a step followed by the transfer view's alpha grid.

    python benchmarks/attack_latency.py [--write docs/benchmarks.md] [--image dog.npy]

On the rendered dog (canonical view, meadow), EfficientNet-Lite0 attacked
(L-infinity, eps 8/255, step eps/8), models warm. Measured in one run:

- one PGD step (forward + backward of the attacked model, projection);
- one step plus the evaluation of Lite0 and Lite2 on x + alpha*delta for five
  alphas in one batch each (what the viewer does after each press);
- the first step of a fresh process, model loading included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date

import numpy as np
import torch

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

MODELS = ["efficientnet_lite0", "efficientnet_lite2"]
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def dog_image(path: str | None) -> np.ndarray:
    """(224, 224, 3) uint8: from ``path`` (.npy) or rendered here."""
    if path:
        return np.load(path)
    from perturber.pipeline import scene

    return scene.render({"object": "dog", "background": "meadow"}, size=224)[..., :3]  # no model loaded yet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--image", help="a (224, 224, 3) uint8 .npy to attack instead of rendering the dog")
    parser.add_argument("--save-image", help="save the rendered dog as .npy (for a machine without the renderer)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    image = dog_image(args.image)
    if args.save_image:
        np.save(args.save_image, image)
    from perturber.pipeline import inference, models
    from perturber.pipeline.attack import Attack, blend, label_for, pgd_step
    from perturber.pipeline.imageops import to_tensor

    device = models.best_device()
    gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    x = to_tensor(image, device).contiguous()
    attack = Attack(MODELS[0], eps=8 / 255)

    start = time.perf_counter()
    label = label_for(x, attack)  # loads the model
    delta = pgd_step(x, torch.zeros_like(x), attack, label)
    sync()
    first = time.perf_counter() - start
    for name in MODELS:
        models.load_model(name, device)

    steps, with_grid = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        delta = pgd_step(x, delta, attack, label)
        sync()
        t1 = time.perf_counter()
        with torch.no_grad():
            batch = blend(x, delta, ALPHAS)
            for name in MODELS:
                models.load_model(name, device)(inference.preprocess(batch, models.spec(name))).argmax(1).cpu()
        sync()
        t2 = time.perf_counter()
        steps.append(t1 - t0)
        with_grid.append(t2 - t0)
    pct = lambda v, q: float(np.percentile(np.array(v) * 1000, q))  # noqa: E731
    where = torch.cuda.get_device_name(0) if gpu else report.cpu()
    lines = [
        f"## PGD step latency{' (GPU)' if gpu else ''}",
        "",
        f"{date.today()}, {where}, torch {torch.__version__}, `python benchmarks/attack_latency.py`: the rendered dog at 224 px, "
        f"EfficientNet-Lite0 attacked (L∞, ε = 8/255, step ε/8), {args.repeats} steps, models warm.",
        "",
        "| what | p50 (ms) | p95 (ms) |",
        "| --- | ---: | ---: |",
        f"| one PGD step | {pct(steps, 50):.0f} | {pct(steps, 95):.0f} |",
        f"| one step + Lite0 and Lite2 on {len(ALPHAS)} alphas | {pct(with_grid, 50):.0f} | {pct(with_grid, 95):.0f} |",
        "",
        f"First step of a fresh process, the model's loading included: {first * 1000:.0f} ms "
        "(goal on a 2-core CPU: under 1 s per step; the original reports about 10 s for its first step).",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
