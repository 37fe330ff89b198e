#!/usr/bin/env bash
# Run a benchmark script from bench/ with the host's Python: scripts/bench.sh load_memory [args]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/host_env.sh"
ADD_TURBO_BROWSER=0 "$repo/scripts/build_host.sh"
name="$1"; shift
exec "$root/venv/bin/python" "$repo/bench/$name.py" "$@"
