#!/usr/bin/env bash
# The test command: build (or reuse) each development host, then run every test layer against it.
# Hosts: ComfyUI 0.3.75 (PyPI) and upstream 0.33.0 ($ADD_TURBO_HOSTS overrides the list; with
# COMFYUI_DIR set, only that checkout). Extra arguments go to pytest (scripts/test.sh tests/core -k schedule).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/host_env.sh"
if [ -n "${COMFYUI_DIR:-}" ]; then
  hosts="$host"
else
  hosts="${ADD_TURBO_HOSTS:-0.3.75 0.33.0}"
fi
cd "$repo"
failed=""
for name in $hosts; do
  start=$(date +%s)
  echo "=== ComfyUI host $name"
  if ! ADD_TURBO_HOST="$name" "$repo/scripts/build_host.sh"; then
    failed="$failed $name(build)"; continue
  fi
  ADD_TURBO_HOST="$name" "$home/hosts/$name/venv/bin/python" -m pytest -ra "$@"
  rc=$?
  echo "=== ComfyUI host $name: pytest exit $rc in $(( $(date +%s) - start )) s"
  [ "$rc" = 0 ] || failed="$failed $name"
done
if [ -n "$failed" ]; then
  echo "=== failed on:$failed"
  exit 1
fi
