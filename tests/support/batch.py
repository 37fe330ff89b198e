"""Helpers for the batch tests: the CLI in a subprocess, a one-thread server, the manifest, lone runs."""

import json
import os
import signal
import subprocess
import sys
import time
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
    from add_turbo.headless.batch import pixel_hash

    hashes = {}
    for seed in seeds:
        result = cli("run", workflow, "--server", url, "--out", out / f"lone-{seed}", "--set", f"ADDTurboSample.seed={seed}")
        assert result.returncode == 0, result.stderr
        (path,) = result.stdout.split()
        hashes[seed] = pixel_hash(Path(path).read_bytes())
    return hashes


def item_lines(out: Path) -> list[str]:
    """The manifest's item lines as text, the last one possibly still being written."""
    path = out / "manifest.jsonl"
    return path.read_text().splitlines()[1:] if path.exists() else []


def interrupt_after(command: list[str], out: Path, images: int = 3) -> tuple[int, str]:
    """Run `command`, send it SIGINT once `images` manifest lines exist; (exit code, stderr)."""
    # SIGINT as a terminal's Ctrl-C gives it, even where this run was started in the background (a shell
    # starts background jobs with SIGINT ignored, and their children inherit that)
    proc = subprocess.Popen(command, cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and len(item_lines(out)) < images:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr
