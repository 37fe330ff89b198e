"""Diffusers-format turbo snapshots: which files to read, and the UNet layout from config.json.

A folder (model_index.json, unet/, vae/, text_encoder/[, text_encoder_2/]) is checked completely
before any weight is read. Only safetensors weights are used; pickled `.bin` weights are refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .checkpoints import SD_TURBO, SDXL_TURBO, CheckpointError

PIPELINES = {"StableDiffusionPipeline": SD_TURBO, "StableDiffusionImg2ImgPipeline": SD_TURBO,
             "StableDiffusionXLPipeline": SDXL_TURBO, "StableDiffusionXLImg2ImgPipeline": SDXL_TURBO}
COMPONENTS = {SD_TURBO: ("unet", "vae", "text_encoder"), SDXL_TURBO: ("unet", "vae", "text_encoder", "text_encoder_2")}
WEIGHT_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
                "text_encoder": "model", "text_encoder_2": "model"}


@dataclass(frozen=True)
class DiffusersFolder:
    path: str
    family: str
    weights: dict  # component -> .safetensors path
    configs: dict  # component -> parsed config.json


def _read_json(folder: str, relative: str, what: str) -> dict:
    path = os.path.join(folder, relative)
    if not os.path.isfile(path):
        raise CheckpointError(folder, f"the folder has no {relative}", f"Download the complete diffusers snapshot ({what})")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(folder, f"{relative} cannot be read ({error})", "Download the snapshot again") from error


def _weights_file(folder: str, component: str, prefer_fp16: bool) -> str:
    directory = os.path.join(folder, component)
    stem = WEIGHT_NAMES[component]
    candidates = [f"{stem}.fp16.safetensors", f"{stem}.safetensors"]
    if not prefer_fp16:
        candidates.reverse()
    for name in candidates:
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    if any(n.endswith((".bin", ".ckpt", ".pt")) for n in os.listdir(directory)):
        raise CheckpointError(folder, f"{component}/ has only pickle-based weights (.bin), which are never unpickled here",
                              "Download the snapshot's .safetensors files")
    raise CheckpointError(folder, f"{component}/ has no {stem}.safetensors",
                          "Download the complete diffusers snapshot (weights of every component)")


def inspect_folder(folder: str, prefer_fp16: bool = False) -> DiffusersFolder:
    """Identify an SD-Turbo / SDXL-Turbo diffusers folder and pick its weight files.

    Args:
        prefer_fp16: use `*.fp16.safetensors` variants where the snapshot has them.
    Raises:
        CheckpointError: not a diffusers folder, another pipeline, or a missing component.
    """
    if not os.path.isdir(folder):
        raise CheckpointError(folder, "the folder does not exist", "Check the path")
    index = _read_json(folder, "model_index.json", "model_index.json names the pipeline")
    pipeline = index.get("_class_name", "")
    if pipeline not in PIPELINES:
        raise CheckpointError(folder, f"this is a {pipeline or 'unknown'} snapshot, not SD-Turbo / SDXL-Turbo",
                              "Use the built-in loaders for it")
    family = PIPELINES[pipeline]
    for component in COMPONENTS[family]:
        if not os.path.isdir(os.path.join(folder, component)):
            raise CheckpointError(folder, f"the folder has no {component}/", "Download the complete snapshot")
    configs = {c: _read_json(folder, f"{c}/config.json", f"{c}/config.json") for c in COMPONENTS[family]}
    weights = {c: _weights_file(folder, c, prefer_fp16) for c in COMPONENTS[family]}
    return DiffusersFolder(folder, family, weights, configs)


def unet_layout(config: dict) -> dict:
    """The original-layout UNet structure (ComfyUI's unet_config keys) of a diffusers UNet config.

    Returns:
        num_res_blocks, channel_mult, transformer_depth (one per down res block),
        transformer_depth_output (one per up res block, highest resolution first), transformer_depth_middle.
    """
    channels = config["block_out_channels"]
    levels = len(channels)
    per_block = config["layers_per_block"]
    per_block = list(per_block) if isinstance(per_block, (list, tuple)) else [per_block] * levels
    depth = config.get("transformer_layers_per_block", 1)
    depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * levels
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = list(reversed(["CrossAttn" in t for t in config["up_block_types"]]))
    reverse_depth = config.get("reverse_transformer_layers_per_block")
    up_depth = list(reversed(reverse_depth)) if reverse_depth else depth
    return {
        "num_res_blocks": per_block,
        "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": [depth[i] if down_attn[i] else 0 for i in range(levels) for _ in range(per_block[i])],
        "transformer_depth_output": [up_depth[i] if up_attn[i] else 0 for i in range(levels)
                                     for _ in range(per_block[i] + 1)],
        "transformer_depth_middle": depth[-1] if "CrossAttn" in (config.get("mid_block_type") or "UNetMidBlock2DCrossAttn") else 0,
    }
