#!/usr/bin/env bash
# Run a benchmark from bench/ with the host's Python, as a module from the repository root:
# scripts/bench.sh load_memory [args] runs python -m bench.load_memory [args]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/host_env.sh"
ADD_TURBO_BROWSER=0 "$repo/scripts/build_host.sh"
name="$1"; shift
cd "$repo"
exec "$root/venv/bin/python" -m "bench.$name" "$@"
