"""Benchmarks (not tests): run as modules from the repository root in the host's Python,
e.g. `python -m bench.speed`, or through scripts/bench.sh, which builds the host first."""
