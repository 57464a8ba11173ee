"""Renders per second at 224 px through the real EGL renderer.

    python benchmarks/render_throughput.py [--size 224] [--n 60] [--write docs/benchmarks.md]

Cases, measured in one run (so their ratios are comparable):
  camera sweep   yaw changes only: the mesh stays uploaded (the precompute's common case)
  light sweep    light and shading changes only
  object switch  a different object every render: mesh and textures re-uploaded
  with background  camera sweep plus compositing a photo background
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402

from perturber.pipeline import factors, scene  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402


def _gl_renderer() -> str:
    from OpenGL import GL

    return GL.glGetString(GL.GL_RENDERER).decode()


def measure(size: int, n: int) -> tuple[dict[str, float], str]:
    r = scene.default_renderer()
    objects = ["dog", "cat", "sports_car", "fire_truck"]
    for o in objects:  # warm the asset caches: we time rendering, not disk
        r.render(factors.validate({"object": o}), size)
    cases = {
        "camera sweep": [{"object": "dog", "yaw": y} for y in np.linspace(-180, 180, n)],
        "light sweep": [{"object": "dog", "light_azimuth": a, "shading": "flat" if i % 2 else "smooth"}
                        for i, a in enumerate(np.linspace(-90, 90, n))],
        "object switch": [{"object": objects[i % 4]} for i in range(n)],
    }
    rates = {}
    for name, values in cases.items():
        params = [factors.validate(v) for v in values]
        t = time.perf_counter()
        for p in params:
            r.render(p, size)
        rates[name] = n / (time.perf_counter() - t)
    values = [{"object": "dog", "yaw": y, "background": "meadow"} for y in np.linspace(-180, 180, n)]
    scene.render(values[0], size)  # decode the photo once, outside the timing
    t = time.perf_counter()
    for v in values:
        scene.render(v, size)
    rates["with background"] = n / (time.perf_counter() - t)
    return rates, _gl_renderer()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=60, help="renders per case")
    ap.add_argument("--write", metavar="MD", help="replace the render section of this markdown file")
    args = ap.parse_args()
    rates, gl = measure(args.size, args.n)
    base = rates["camera sweep"]
    lines = [
        f"## Rendering throughput ({args.size} px)",
        "",
        f"Measured {date.today().isoformat()} with `make benchmark` on {report.cpu()}; "
        f"OpenGL renderer: {gl}; {args.n} renders per case, one process, one renderer.",
        "",
        "| case | renders/s | relative to camera sweep |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {v:.1f} | {v / base:.2f} |" for k, v in rates.items()],
        "",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
