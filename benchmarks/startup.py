"""Start-up cost: how long a fresh interpreter takes to import each part of
Perturber and to answer the command line, against `import torch` in the same run.

`import perturber`, the factors and the command's options must stay light (no
torch, panel or pyrender); each command loads what it needs once its options
are read; the process that submits precompute chunks does not load the
renderer (its Dask workers do). Each figure is the median of ``--repeats``
fresh interpreters, after one warm-up run that fills the page cache.

    python benchmarks/startup.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import date

sys.path.insert(0, os.path.dirname(__file__))
import report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [
    ("empty interpreter", ["-c", "pass"]),
    ("import torch (the reference)", ["-c", "import torch"]),
    ("import perturber", ["-c", "import perturber"]),
    ("import perturber.pipeline.factors", ["-c", "import perturber.pipeline.factors"]),
    ("perturber --version", ["-m", "perturber", "--version"]),
    ("perturber render --yaw 999 (refused)", ["-m", "perturber", "render", "--yaw", "999"]),
    ("import perturber.pipeline.run (precompute driver)", ["-c", "import perturber.pipeline.run"]),
    ("import perturber.pipeline.engine (a worker computing chunks)", ["-c", "import perturber.pipeline.engine"]),
    ("import perturber.viewer.app (the viewer's process)", ["-c", "import perturber.viewer.app"]),
]


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, env={**os.environ, "PYOPENGL_PLATFORM": "egl"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for label, case in CASES:
        seconds(case)  # warm-up
        rows.append((label, statistics.median(seconds(case) for _ in range(args.repeats))))
    torch_s = dict(rows)["import torch (the reference)"]
    lines = [
        "## Start-up",
        "",
        f"{date.today().isoformat()}, {report.cpu()}, `python benchmarks/startup.py` (median of {args.repeats} fresh "
        "interpreters after a warm-up; wall time including the interpreter).",
        "",
        "| what | seconds | relative to import torch |",
        "| --- | ---: | ---: |",
        *[f"| {label} | {s:.2f} | {s / torch_s:.2f} |" for label, s in rows],
        "",
        "The command line answers `--version` and refuses a bad value before torch loads; a precompute "
        "driver loads torch (the store probes the models' layers) but not the renderer, which its Dask "
        "workers load with the engine.",
    ]
    report.publish(lines, args.write)


if __name__ == "__main__":
    main()
