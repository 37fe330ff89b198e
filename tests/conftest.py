"""Shared fixtures. Layers: tests/core (no ComfyUI), tests/nodes (in-process host), tests/server (HTTP)."""

import os
import shutil

import pytest

from devkit import host


@pytest.fixture(scope="session")
def comfy_host():
    """ComfyUI imported into this process with the pack loaded (as from custom_nodes/)."""
    host.init_in_process()
    import nodes

    return nodes


@pytest.fixture(scope="session")
def tiny_models(comfy_host):
    """Both tiny turbo models, placed in the host's checkpoints and diffusers folders."""
    from devkit import turbo_models

    models = {family: turbo_models.build(family) for family in turbo_models.BUILDERS}
    for model in models.values():
        for src, folder in ((model.single_file, "checkpoints"), (model.diffusers_dir, "diffusers")):
            dst = host.BASE_DIR / "models" / folder / (src.name if folder == "checkpoints" else f"tiny_{model.family}")
            if not dst.exists():
                os.symlink(src, dst)
    taesd = turbo_models.build_taesd()
    for src in taesd.glob("*.safetensors"):
        dst = host.BASE_DIR / "models" / "vae_approx" / src.name
        if not dst.exists():
            os.symlink(src, dst)
    return models


@pytest.fixture(scope="session")
def example_inputs(comfy_host):
    """The example workflows' input images, in the host's input folder."""
    examples = host.REPO / "docs" / "examples"
    for image in examples.glob("*.png"):
        shutil.copy(image, host.BASE_DIR / "input" / image.name)
    return examples


@pytest.fixture
def tmp_checkpoint(comfy_host, tmp_path):
    """Place a file into the checkpoints folder under a unique name; removed afterwards."""
    placed = []

    def place(src_or_bytes, name):
        dst = host.BASE_DIR / "models" / "checkpoints" / name
        if isinstance(src_or_bytes, bytes):
            dst.write_bytes(src_or_bytes)
        else:
            shutil.copy(src_or_bytes, dst)
        placed.append(dst)
        return name

    yield place
    for path in placed:
        path.unlink(missing_ok=True)


from tests.support.server_fixtures import client, server  # noqa: E402, F401  (fixtures for tests/server, tests/browser)
