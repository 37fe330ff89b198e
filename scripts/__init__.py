"""Host build, test and main-job commands. The Python ones run as modules from the repository root in the
host's Python, e.g. `python -m scripts.run_example` (scripts/run_example.sh builds the host first)."""
