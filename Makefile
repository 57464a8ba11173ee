# The two set-up commands of the README. Each installs what it needs first.
.PHONY: setup demo test benchmark

setup:
	@scripts/setup.sh

# Main job: the demo sweep (real meshes, two pretrained models) on a LocalCluster,
# into a resumable Zarr store; then a summary of top-1 classes across the cube.
# A second run finds every chunk done and only prints the summary.
demo: setup
	.venv/bin/perturber precompute workflows/demo.yaml --out data/generated/demo.zarr

# Tests: everything but the GPU tests (slow and browser tests included).
test: setup
	PYOPENGL_PLATFORM=egl .venv/bin/python -m pytest -m "not gpu" -q

benchmark: setup
	.venv/bin/python benchmarks/render_throughput.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/engine_throughput.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/precompute_throughput.py --write docs/benchmarks.md
