"""A corpus of bad model files fed to ADDTurboLoader through a running server.

Each prompt must end in an execution_error that names the file and the fix; no code from a model
file may run (a pickle that would create a marker file); a good prompt right after each bad one works.
"""

import json
import os
import pickle
import shutil
import struct

import pytest
from safetensors.torch import load_file, save_file

from devkit import host
from devkit.graphs import txt2img_prompt

CHECKPOINTS = host.BASE_DIR / "models" / "checkpoints"


class _MarkerOnUnpickle:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _corpus(tiny_models, work, marker):
    """(ckpt_name, expected message part) for every kind of bad input; files are created here."""
    good = tiny_models["sd_turbo"].single_file
    sd = load_file(str(good))
    xl = load_file(str(tiny_models["sdxl_turbo"].single_file))
    header = json.dumps({"w": {"dtype": "F32", "shape": [512, 512], "data_offsets": [0, 1048576]}}).encode()
    raw = {
        "bad_truncated.safetensors": (good.read_bytes()[:100_000], "download it again"),
        "bad_empty.safetensors": (b"", "download it again"),
        "bad_garbage.safetensors": (os.urandom(4096), "download it again"),
        "bad_header_corrupt.safetensors": (struct.pack("<Q", 30) + b'{"w": {"dtype": "F32", "sha' + b"\x00" * 64,
                                           "download it again"),
        "bad_header_claims_more.safetensors": (struct.pack("<Q", len(header)) + header + b"\x00" * 64, "download it again"),
        "bad_pickle_disguised.safetensors": (pickle.dumps(_MarkerOnUnpickle(str(marker))), "not a valid safetensors"),
        "bad_pickle.ckpt": (pickle.dumps(_MarkerOnUnpickle(str(marker))), "never unpickled"),
    }
    cases = []
    for name, (data, expect) in raw.items():
        (CHECKPOINTS / name).write_bytes(data)
        cases.append((name, expect))
    kinds = {
        "bad_sd15.safetensors": ({**{k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")},
                                  "cond_stage_model.transformer.text_model.final_layer_norm.weight": sd["cond_stage_model.model.ln_final.weight"]},
                                 "SD 1.x checkpoint"),
        "bad_sd3.safetensors": ({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": sd["cond_stage_model.model.ln_final.weight"]},
                                "Stable Diffusion 3"),
        "bad_flux.safetensors": ({"double_blocks.0.img_attn.qkv.weight": sd["cond_stage_model.model.ln_final.weight"]}, "Flux"),
        "bad_vae_only.safetensors": ({k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")},
                                     "VAE file"),
        "bad_lora.safetensors": ({"lora_unet_input_blocks_1_1.lora_down.weight": sd["cond_stage_model.model.ln_final.weight"]}, "LoRA"),
        "bad_unet_only.safetensors": ({k[len("model.diffusion_model."):]: v for k, v in xl.items() if k.startswith("model.diffusion_model.")},
                                      "UNet-only"),
    }
    for name, (state, expect) in kinds.items():
        save_file(state, str(CHECKPOINTS / name))
        cases.append((name, expect))
    os.symlink(work / "gone.safetensors", CHECKPOINTS / "bad_dangling_link.safetensors")
    cases.append(("bad_dangling_link.safetensors", "not found"))
    diffusers = host.BASE_DIR / "models" / "diffusers" / "bad_no_unet"
    shutil.copytree(tiny_models["sd_turbo"].diffusers_dir, diffusers, dirs_exist_ok=True)
    shutil.rmtree(diffusers / "unet")
    cases.append(("[diffusers] bad_no_unet", "no unet/"))
    return cases


@pytest.fixture(scope="module")
def corpus(tiny_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("corpus")
    marker = work / "MARKER_code_ran"
    cases = _corpus(tiny_models, work, marker)
    yield cases, marker
    for path in CHECKPOINTS.glob("bad_*"):
        path.unlink()
    shutil.rmtree(host.BASE_DIR / "models" / "diffusers" / "bad_no_unet", ignore_errors=True)


def test_every_bad_file_fails_cleanly_and_the_next_good_prompt_works(client, corpus, tiny_models):
    cases, marker = corpus
    good_name = tiny_models["sd_turbo"].single_file.name
    for seed, (name, expect) in enumerate(cases):
        run = client.run(txt2img_prompt(name, size=64))
        if run.error is None:
            pytest.fail(f"{name}: no error")
        message = run.error["exception_message"]
        shown = name.removeprefix("[diffusers] ")
        print(f"\nBAD {name}: {message}")
        assert shown in message and expect in message, message
        assert "Traceback" not in message
        good = client.run(txt2img_prompt(good_name, seed=seed + 100, size=64))
        assert good.error is None, good.error
        assert client.images(good.prompt_id)
    assert not marker.exists(), "code from a model file ran"
    print(f"\nbad inputs tried: {len(cases)}, every one refused with its fix; marker file never created")
