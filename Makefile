# The two set-up commands of the README. Each installs what it needs first.
.PHONY: setup demo test benchmark

setup:
	@scripts/setup.sh

# Main job: a contact sheet of every built-in object, and a shape morph.
demo: setup
	.venv/bin/perturber sheet --objects all --sweep yaw=-90,-45,0,45,90,180 -o data/generated/contact-sheet.png
	.venv/bin/perturber sheet --objects dog:cat,fire_truck:sports_car --sweep morph_t=0:1:5 --yaw 45 -o data/generated/morph-sheet.png
	.venv/bin/perturber assets

# Tests: everything but the GPU tests (slow and browser tests included).
test: setup
	PYOPENGL_PLATFORM=egl .venv/bin/python -m pytest -m "not gpu" -q

benchmark: setup
	.venv/bin/python benchmarks/render_throughput.py --write docs/benchmarks.md
	.venv/bin/python benchmarks/engine_throughput.py --write docs/benchmarks.md
