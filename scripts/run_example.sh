#!/usr/bin/env bash
# The main job: build (or reuse) the host with this pack installed, start ComfyUI headless, run the
# example txt2img workflow and write a PNG. Uses models/checkpoints/sd_turbo.safetensors when present
# (or $ADD_TURBO_CKPT), else builds a small embedded random-weight SD-Turbo model.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/host_env.sh"
ADD_TURBO_BROWSER=0 "$repo/scripts/build_host.sh"
cd "$repo"
# -B: no bytecode caches in the checkout the host loads the pack from (the script keeps them out of its server).
exec "$root/venv/bin/python" -B -m scripts.run_example "$@"
