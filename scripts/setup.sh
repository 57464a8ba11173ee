#!/usr/bin/env bash
# Install everything Perturber needs into .venv (and, where apt is available,
# the Debian packages for headless EGL rendering, the 3D assets and Chromium).
# Idempotent: a second run with nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libopengl0   # EGL on Mesa (CPU) or NVIDIA
  sweethome3d-furniture flightgear-data-models               # meshes
  mate-backgrounds plasma-workspace-wallpapers gimp-data     # backgrounds and patterns
  chromium                                                   # the viewer's browser tests
)

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    [[ $p == \#* ]] && continue
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "setup: no apt-get here; install EGL (Mesa) yourself and see 'perturber assets --fetch' for the assets" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv (first time: a few minutes, about 6 GB with CUDA torch)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
