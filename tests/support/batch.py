"""Helpers for the batch tests: the CLI in a subprocess, a one-thread server, the manifest, lone runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

from devkit import host

REPO = Path(__file__).resolve().parents[2]


def cli_env(**extra) -> dict:
    # Servers of the development host need its torchvision stand-in on the path.
    paths = [str(host.STUBS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "add_turbo", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env or cli_env())


def comfy_args() -> str:
    return " ".join(host.base_args())


def manifest(folder: Path) -> tuple[dict, list[dict]]:
    """(header, item lines) of folder/manifest.jsonl."""
    header, *lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    return header, lines


def write_prompt(path: Path, ckpt: str, size: int = 64) -> Path:
    from devkit.graphs import txt2img_prompt

    path.write_text(json.dumps(txt2img_prompt(ckpt, size=size)))
    return path


def lone_pixel_hashes(workflow: Path, url: str, seeds, out: Path) -> dict:
    """seed -> pixel hash of `python -m add_turbo run` of the workflow with that seed on the server at `url`."""
    from add_turbo.batch import pixel_hash

    hashes = {}
    for seed in seeds:
        result = cli("run", workflow, "--server", url, "--out", out / f"lone-{seed}", "--set", f"ADDTurboSample.seed={seed}")
        assert result.returncode == 0, result.stderr
        (path,) = result.stdout.split()
        hashes[seed] = pixel_hash(Path(path).read_bytes())
    return hashes
