"""The pack as the registry and ComfyUI-Manager get it: `comfy node validate` (comfy-cli, the registry's own
tool) passes with no warning, and the zip `comfy node pack` makes installs into a fresh host and runs.
comfy-cli needs no network for either (it reads pyproject.toml, runs ruff, zips git-tracked files)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from devkit import host
from devkit.client import ComfyClient

REPO = Path(__file__).resolve().parents[2]
DEVELOPMENT_ONLY = {".ci", "bench", "devkit", "scripts", "tests"}


def comfy(*args, cwd, home):
    """comfy-cli in this interpreter (installed by build_host.sh), with its config in `home`, asking nothing."""
    return subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(home)})


def test_comfy_node_validate_passes_with_no_warning(tmp_path):
    result = comfy("node", "validate", cwd=REPO, home=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "All validation checks passed" in out and "warning" not in out.lower(), out


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """node.zip as `comfy node pack` makes it in the repository (git-tracked files, less .comfyignore's),
    made in a copy of those files so that nothing is written into the repository."""
    src = tmp_path_factory.mktemp("pack") / "add-turbo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run(["git", "init", "-q"], cwd=src, check=True)
    subprocess.run(["git", "add", "-A"], cwd=src, check=True)
    result = comfy("node", "pack", cwd=src, home=src.parent)
    assert result.returncode == 0 and "Created zip file: node.zip" in result.stdout, result.stdout + result.stderr
    return src / "node.zip"


def test_the_zip_holds_the_pack_and_no_development_files(packed):
    tops = {name.split("/")[0] for name in zipfile.ZipFile(packed).namelist()}
    assert not tops & DEVELOPMENT_ONLY, tops
    assert {"__init__.py", "add_turbo", "nodes", "js", "locales", "workflows", "pyproject.toml", "requirements.txt",
            "LICENSE", "README.md"} <= tops


def test_the_zip_installs_into_a_fresh_host_and_runs_a_workflow(packed, tiny_models, tmp_path):
    """Unpacked into custom_nodes/ of a base directory of its own, as ComfyUI-Manager installs it: the server
    loads it from there, and its own CLI (run from the unpacked folder) runs a template through it."""
    base = tmp_path / "base"
    pack = base / "custom_nodes" / "add-turbo"
    zipfile.ZipFile(packed).extractall(pack)
    ckpt = tiny_models["sd_turbo"].single_file
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / ckpt.name).symlink_to(ckpt)
    (base / "user").mkdir()
    server = host.start_server(base=base)
    try:
        with ComfyClient(server.url, events=False) as client:
            assert "ADDTurboSample" in client.object_info()
        result = subprocess.run(
            [sys.executable, "-m", "add_turbo", "run", str(pack / "workflows" / "SD-Turbo - text to image.json"),
             "--server", server.url, "--out", str(tmp_path / "out"), "--set", f"ADDTurboLoader.ckpt_name={ckpt.name}",
             "--set", "3.width=64", "--set", "3.height=64"],
            cwd=pack, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
        log = server.log()
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    (image,) = [Path(line) for line in result.stdout.split()]
    assert Image.open(image).size == (64, 64)
    assert json.loads(Image.open(image).info["workflow"])["nodes"]
    loaded = [line for line in log.splitlines() if "add-turbo" in line]
    assert any(str(pack) in line for line in loaded) and not any("IMPORT FAILED" in line for line in loaded), loaded
