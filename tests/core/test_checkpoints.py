"""Checkpoint inspection without ComfyUI: families from headers, and every bad file refused clearly."""

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from add_turbo import checkpoints
from add_turbo.checkpoints import CheckpointError, inspect_checkpoint

U = checkpoints.UNET_PREFIX


def _t(*shape):
    return torch.zeros(shape)


def _open_clip(prefix, hidden=8, layers=3, proj=8):
    sd = {f"{prefix}token_embedding.weight": _t(10, hidden), f"{prefix}positional_embedding": _t(77, hidden),
          f"{prefix}text_projection": _t(hidden, proj), f"{prefix}ln_final.weight": _t(hidden)}
    for i in range(layers):
        sd[f"{prefix}transformer.resblocks.{i}.mlp.c_fc.weight"] = _t(4 * hidden, hidden)
    return sd


def _vae():
    return {"first_stage_model.encoder.conv_in.weight": _t(4, 3, 3, 3),
            **{f"first_stage_model.encoder.down.{i}.block.{j}.conv1.weight": _t(4 * m, 4, 3, 3)
               for i, m in enumerate([1, 2, 4, 4]) for j in range(2)},
            "first_stage_model.decoder.conv_in.weight": _t(8, 4, 3, 3),
            "first_stage_model.post_quant_conv.weight": _t(4, 4, 1, 1)}


def _unet(context=8, adm=None):
    sd = {f"{U}input_blocks.0.0.weight": _t(8, 4, 3, 3),
          f"{U}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": _t(8, context)}
    if adm:
        sd[f"{U}label_emb.0.0.weight"] = _t(16, adm)
    return sd


def _sd2():
    return {**_unet(), **_vae(), **_open_clip("cond_stage_model.model.")}


def _sdxl(size_embed=4):
    clip_l = {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": _t(10, 8),
              "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": _t(77, 8),
              "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight": _t(32, 8)}
    return {**_unet(16, adm=8 + 6 * size_embed), **_vae(), **clip_l, **_open_clip("conditioner.embedders.1.model.")}


@pytest.fixture
def write(tmp_path):
    def _write(state_dict, name="model.safetensors"):
        path = tmp_path / name
        save_file(state_dict, str(path))
        return str(path)
    return _write


def test_sd_turbo_detected_with_sizes_from_shapes(write):
    info = inspect_checkpoint(write(_sd2()))
    assert info.family == checkpoints.SD_TURBO
    (clip_h,) = info.text_encoders
    assert (clip_h.name, clip_h.hidden_size, clip_h.num_hidden_layers, clip_h.intermediate_size) == ("clip_h", 8, 3, 32)
    assert clip_h.config_overrides()["num_attention_heads"] == 1
    assert info.vae["ddconfig"]["ch_mult"] == [1, 2, 4, 4] and info.vae["ddconfig"]["num_res_blocks"] == 2


def test_sdxl_turbo_detected_with_size_embedding_width(write):
    info = inspect_checkpoint(write(_sdxl(size_embed=4)))
    assert info.family == checkpoints.SDXL_TURBO
    assert [s.name for s in info.text_encoders] == ["clip_l", "clip_g"]
    assert info.size_embed_dim == 4 and info.context_dim == 16


def _without(sd, prefix):
    return {k: v for k, v in sd.items() if not k.startswith(prefix)}


@pytest.mark.parametrize("make,expect", [
    (lambda: {**_without(_sd2(), "cond_stage_model."),
              "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": _t(10, 8)},
     "SD 1.x checkpoint.*built-in Load Checkpoint"),
    (lambda: {f"{U}joint_blocks.0.x.weight": _t(2)}, "Stable Diffusion 3"),
    (lambda: {f"{U}double_blocks.0.img_attn.qkv.weight": _t(2)}, "Flux"),
    (lambda: {"double_blocks.0.img_attn.qkv.weight": _t(2)}, "Flux"),
    (lambda: {"encoder.conv_in.weight": _t(2), "decoder.conv_in.weight": _t(2)}, "VAE file"),
    (lambda: {"lora_unet_down_blocks_0.lora_down.weight": _t(2)}, "LoRA file.*Load LoRA"),
    (lambda: {"input_blocks.0.0.weight": _t(8, 4, 3, 3)}, "UNet-only file"),
    (lambda: _without(_sd2(), "first_stage_model."), "no VAE"),
    (lambda: _without(_sd2(), "cond_stage_model."), "no text encoder"),
    (lambda: {**_sd2(), f"{U}input_blocks.0.0.weight": _t(8, 9, 3, 3)}, "9 input channels"),
    (lambda: {"something.else": _t(2)}, "no Stable Diffusion UNet"),
])
def test_wrong_kinds_are_named_with_a_fix(write, make, expect):
    path = write(make(), "wrong.safetensors")
    with pytest.raises(CheckpointError, match=expect) as error:
        inspect_checkpoint(path)
    assert "wrong.safetensors" in str(error.value)


def _raw(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_broken_files_are_refused_with_fix(tmp_path, write):
    good = open(write(_sd2(), "good.safetensors"), "rb").read()
    header = json.dumps({"a": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    cases = {
        "empty.safetensors": b"",
        "garbage.safetensors": b"\x00\xff" * 64,
        "truncated.safetensors": good[: len(good) // 2],
        "bad_header.safetensors": struct.pack("<Q", 20) + b"{this is not json!!}",
        "claims_more.safetensors": struct.pack("<Q", len(header)) + header + b"\x00" * 16,
    }
    for name, data in cases.items():
        with pytest.raises(CheckpointError, match="download it again") as error:
            inspect_checkpoint(_raw(tmp_path, name, data))
        assert name in str(error.value), name


def test_pickles_are_never_unpickled(tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Evil())
    for name in ("evil.ckpt", "evil.pt", "evil.bin"):
        with pytest.raises(CheckpointError, match="pickle-based.*never unpickled"):
            inspect_checkpoint(_raw(tmp_path, name, payload))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        inspect_checkpoint(_raw(tmp_path, "disguised.safetensors", payload))
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(str(tmp_path / "nope.safetensors"))
