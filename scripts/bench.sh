#!/usr/bin/env bash
# Run a benchmark script from bench/ with the host's Python: scripts/bench.sh load_memory [args]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${ADD_TURBO_HOME:-$HOME/.cache/add-turbo}"
"$repo/scripts/build_host.sh"
name="$1"; shift
exec "$home/venv/bin/python" "$repo/bench/$name.py" "$@"
