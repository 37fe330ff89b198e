"""Diffusers-folder weights -> the original single-file key layout, with the host's own key maps."""

import torch
from comfy.diffusers_convert import convert_text_enc_state_dict_v20, convert_vae_state_dict
from comfy.utils import unet_to_diffusers
from safetensors.torch import load_file

from ..add_turbo import checkpoints, diffusers_folders
from ..add_turbo.checkpoints import CheckpointError

HOST_SYMBOLS = [
    ("comfy.diffusers_convert", "convert_text_enc_state_dict_v20", ("text_enc_dict",)),
    ("comfy.diffusers_convert", "convert_vae_state_dict", ("vae_state_dict",)),
    ("comfy.utils", "unet_to_diffusers", ("unet_config",)),
]


def _hf_text(state_dict: dict) -> dict:
    """HF CLIP text weights with the `text_model.` prefix (newer transformers save them without it)."""
    return {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
            for k, v in state_dict.items()}


def _open_clip(state_dict: dict) -> dict:
    return convert_text_enc_state_dict_v20({"transformer." + k: v for k, v in _hf_text(state_dict).items()})


def _restore_penultimate_layout(open_clip: dict) -> dict:
    """diffusers' SD 2.x text encoder stops one layer before OpenCLIP-H's last; the original layout
    uses the penultimate layer, so a copy of the last layer is appended (its output is never used)."""
    layers = {int(k.split(".")[2]) for k in open_clip if k.startswith("transformer.resblocks.")}
    last = max(layers)
    extra = {k.replace(f"resblocks.{last}.", f"resblocks.{last + 1}.", 1): v.clone()
             for k, v in open_clip.items() if k.startswith(f"transformer.resblocks.{last}.")}
    return {**open_clip, **extra}


def folder_state_dict(folder: diffusers_folders.DiffusersFolder) -> dict[str, torch.Tensor]:
    """All weights of a diffusers turbo folder in the single-file (Stability) key layout."""
    unet = load_file(folder.weights["unet"])
    key_map = unet_to_diffusers(diffusers_folders.unet_layout(folder.configs["unet"]))
    unknown = [k for k in unet if k not in key_map]
    if unknown:
        raise CheckpointError(folder.path, f"unet/ holds {len(unknown)} weights of an unknown layout (e.g. {unknown[0]})",
                              "Use an SD 2.x / SDXL UNet snapshot")
    sd = {checkpoints.UNET_PREFIX + key_map[k]: v for k, v in unet.items()}
    sd.update({checkpoints.VAE_PREFIX + k: v for k, v in convert_vae_state_dict(load_file(folder.weights["vae"])).items()})
    text = load_file(folder.weights["text_encoder"])
    if folder.family == checkpoints.SD_TURBO:
        clip_h = _restore_penultimate_layout(_open_clip(text))
        sd.update({"cond_stage_model.model." + k: v for k, v in clip_h.items()})
    else:
        sd.update({"conditioner.embedders.0.transformer." + k: v for k, v in _hf_text(text).items()})
        clip_g = _open_clip(load_file(folder.weights["text_encoder_2"]))
        sd.update({"conditioner.embedders.1.model." + k: v for k, v in clip_g.items()})
    return sd
