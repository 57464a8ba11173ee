# The two set-up commands of the README. Each installs what it needs first.
.PHONY: setup demo test benchmark

setup:
	@scripts/setup.sh

# Main job: the demo sweep (real meshes, two pretrained models) on a LocalCluster,
# into a resumable Zarr store, a summary of top-1 classes across the cube,
# feature visualisations of the stored neurons (lucent, batched), two
# studies on the demo's models (yaw fluctuation and patch shuffle: their
# cubes, the metric with bootstrap intervals, a figure and a report each), a
# short CPPN fooling run and a search for the dog's nearest failure (the
# viewer's Searches tab), then the viewer on it, opened on its Studies tab
# (the two studies) at http://127.0.0.1:5006/ (Ctrl-C stops it).
# A second run finds every task done and goes straight to the analyses and the viewer.
DEMO_MODELS = efficientnet_lite0,efficientnet_lite2

demo: setup
	.venv/bin/perturber precompute workflows/demo.yaml --out data/generated/demo.zarr
	.venv/bin/perturber featureviz workflows/featureviz.yaml --out data/generated/demo.zarr
	.venv/bin/perturber study yaw-fluctuation --store data/generated/demo.zarr --models $(DEMO_MODELS)
	.venv/bin/perturber study patch-shuffle --store data/generated/demo.zarr --models $(DEMO_MODELS)
	.venv/bin/perturber fool --model efficientnet_lite0 --method cppn --generations 10 --population 50 \
		--transfer efficientnet_lite2 --store data/generated/demo.zarr
	.venv/bin/perturber search --object dog --yaw 120 --factors yaw,pitch,distance --budget 40 --store data/generated/demo.zarr
	.venv/bin/perturber view data/generated/demo.zarr --engine local --tab Studies

# Tests: everything but the GPU tests (slow and browser tests included).
test: setup
	PYOPENGL_PLATFORM=egl .venv/bin/python -m pytest -m "not gpu" -q

benchmark: setup
	.venv/bin/python benchmarks/render_throughput.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/engine_throughput.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/precompute_throughput.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/scheduler_overhead.py --write docs/benchmarks.md
	@if .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		.venv/bin/python benchmarks/gpu_precompute.py --write docs/benchmarks.md; \
	else echo "benchmark: no GPU here, benchmarks/gpu_precompute.py skipped (benchmarks/gpu/run.sh runs it on a GPU machine)"; fi
	.venv/bin/python benchmarks/viewer_latency.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/export_site.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/featureviz_throughput.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/live_latency.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/attack_latency.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/startup.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/kill_loop.py --write docs/reliability.md
	.venv/bin/python benchmarks/bad_inputs.py --write docs/reliability.md
	.venv/bin/python benchmarks/study_analysis.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/fooling.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/finetune.py --write docs/benchmarks.md
