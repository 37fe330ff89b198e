#!/usr/bin/env bash
# The test command: build (or reuse) the development host, then run every test layer.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/core -k schedule).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${ADD_TURBO_HOME:-$HOME/.cache/add-turbo}"
"$repo/scripts/build_host.sh"
cd "$repo"
exec "$home/venv/bin/python" -m pytest -ra "$@"
