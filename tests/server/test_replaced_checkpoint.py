"""A checkpoint replaced under its name while the server has it loaded (the loader maps the file).

Copying a new file over the loaded one rewrites the same inode in place: without the loader noticing,
the mapped pages change under the model (a mix of two models) or vanish when the new file is shorter,
and the next run ends the server with SIGBUS. The loader's fingerprint (path, size, modification time,
inode) makes the host load the name again on the next run: the new file's image, or the fix for a
broken file, and the server stays up. Replacing by rename, the safe way, works the same.
"""

import io
import os
import shutil

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from devkit import host
from devkit.graphs import txt2img_prompt

CHECKPOINTS = host.BASE_DIR / "models" / "checkpoints"
NAME = "replaced_while_loaded.safetensors"


@pytest.fixture(scope="module")
def versions(tiny_models, tmp_path_factory):
    """The original file and its replacements: longer, shorter (both other weights), truncated."""
    work = tmp_path_factory.mktemp("replacements")
    original = tiny_models["sd_turbo"].single_file
    state = load_file(str(original))
    unet_in = "model.diffusion_model.input_blocks.0.0.weight"
    longer = {**state, unet_in: state[unet_in] * 1.5, "extra.padding": state[unet_in].new_zeros(64, 1024)}
    shorter = {k: v.half() if k.startswith("model.diffusion_model.") else v for k, v in state.items()}
    files = {"original": original, "longer": work / "longer.safetensors", "shorter": work / "shorter.safetensors",
             "truncated": work / "truncated.safetensors"}
    save_file(longer, str(files["longer"]))
    save_file(shorter, str(files["shorter"]))
    files["truncated"].write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    assert files["longer"].stat().st_size > original.stat().st_size > files["shorter"].stat().st_size
    yield files
    (CHECKPOINTS / NAME).unlink(missing_ok=True)
    for path in CHECKPOINTS.glob("reference_*"):
        path.unlink()


def _image(client, name, seed=3) -> bytes:
    """The pixels of the run's image (the PNG's metadata names the checkpoint: compared apart)."""
    run = client.run(txt2img_prompt(name, seed=seed, size=64, prefix="replaced"))
    assert run.error is None, run.error
    return Image.open(io.BytesIO(client.images(run.prompt_id)[0])).tobytes()


def _load_original(client, versions):
    """The original under NAME, loaded by a run: the server maps it now."""
    fresh = CHECKPOINTS / f".{NAME}.tmp"
    shutil.copyfile(versions["original"], fresh)
    os.replace(fresh, CHECKPOINTS / NAME)
    return _image(client, NAME)


def _reference(client, versions, kind):
    """The image of a replacement loaded under a name of its own."""
    name = f"reference_{kind}.safetensors"
    shutil.copyfile(versions[kind], CHECKPOINTS / name)
    return _image(client, name)


@pytest.mark.parametrize("kind", ["longer", "shorter"])
def test_a_file_copied_over_the_loaded_one_is_loaded_again(client, versions, kind):
    before = _load_original(client, versions)
    inode = (CHECKPOINTS / NAME).stat().st_ino
    shutil.copyfile(versions[kind], CHECKPOINTS / NAME)  # as `cp new old`: the same inode, rewritten
    assert (CHECKPOINTS / NAME).stat().st_ino == inode
    after = _image(client, NAME)
    assert after == _reference(client, versions, kind) and after != before  # the new file, whole
    assert client.get_json("/system_stats")


def test_a_truncated_copy_over_the_loaded_one_gives_the_fix_and_the_server_stays_up(client, versions):
    _load_original(client, versions)
    shutil.copyfile(versions["truncated"], CHECKPOINTS / NAME)
    run = client.run(txt2img_prompt(NAME, seed=3, size=64))
    assert run.error is not None and "download it again" in run.error["exception_message"], run.error
    assert client.get_json("/system_stats")
    _load_original(client, versions)  # and the name works again once the file is whole


def test_a_deleted_checkpoint_is_named_and_a_rename_replacement_just_works(client, versions):
    before = _load_original(client, versions)
    (CHECKPOINTS / NAME).unlink()
    try:
        run = client.run(txt2img_prompt(NAME, seed=3, size=64))
    except ValueError as rejected:  # 0.33 checks the name against the list before it runs anything
        assert f"ckpt_name: '{NAME}' not in" in str(rejected)
    else:  # 0.3.75 runs the loader, which names the folders to put it in
        assert run.error is not None and "was not found" in run.error["exception_message"], run.error
    assert client.get_json("/system_stats")
    staged = CHECKPOINTS / f".{NAME}.new"
    shutil.copyfile(versions["longer"], staged)
    os.replace(staged, CHECKPOINTS / NAME)  # the safe way: a new inode under the old name
    after = _image(client, NAME)
    assert after == _reference(client, versions, "longer") and after != before
