#!/usr/bin/env bash
# Run ON the GPU machine, from the repository's root (the device tool's working
# folder), with the folders that benchmarks/gpu/prepare.sh filled here carried:
#   carry: ["benchmarks/gpu/wheels", "benchmarks/gpu/gl", "benchmarks/gpu/assets"]
#   command: bash benchmarks/gpu/run.sh            (timeout_s: 600)
# Installs the carried wheels into /tmp/site and the EGL loaders into /, makes
# the repository importable as `perturber` (as its editable install maps the
# folders), then runs benchmarks/gpu_precompute.py within 8 minutes. Its table
# and log land in $OUT. Extra arguments go to the script (e.g. --quick).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

for f in benchmarks/gpu/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
nvidia=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$nvidia" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$nvidia"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  benchmarks/gpu/wheels/*.whl || exit 1
pkg=/tmp/perturber-src/perturber
rm -rf "$pkg" && mkdir -p "$pkg"
cp perturber/*.py perturber/py.typed "$pkg"/
for part in pipeline viewer featureviz data; do ln -s "$root/$part" "$pkg/$part"; done
export PYTHONPATH=/tmp/perturber-src:/tmp/site PYTHONUNBUFFERED=1 PYOPENGL_PLATFORM=egl
export PERTURBER_ASSET_DIR="$root/benchmarks/gpu/assets" PERTURBER_CACHE=/tmp/perturber-cache

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, perturber.pipeline.run; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
timeout 480 python3 benchmarks/gpu_precompute.py --out "$OUT" --budget 330 "$@"
status=$?
cat "$OUT/gpu_precompute.md" 2>/dev/null
exit $status
