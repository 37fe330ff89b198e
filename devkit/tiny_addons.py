"""Tiny add-ons for the tiny turbo models: a LoRA, the same LoRA merged into a checkpoint, a ControlNet.

Built deterministically (seeded) from the tiny models of `turbo_models` and cached next to them;
nothing is downloaded. The LoRA uses the kohya key layout that LoRA files for SD 2.x / SDXL ship
with (`lora_unet_*`, `lora_te_*` / `lora_te1_*` / `lora_te2_*`, each `.lora_down.weight`,
`.lora_up.weight`, `.alpha`), and the ControlNet is the host's `comfy.cldm.cldm.ControlNet` with
the tiny UNet's sizes, saved in the original `control_model.*` layout. Needs the host imported
(`host.init_in_process()`), as the tests have it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .turbo_models import CACHE, TEXT_HIDDEN, TurboModel

ADDONS_VERSION = "1"  # bump when a builder changes: files are rebuilt only when missing
ADDONS_CACHE = CACHE / f"addons-v{ADDONS_VERSION}"
LORA_RANK, LORA_ALPHA = 4, 2.0  # alpha / rank = 0.5: a file whose scale is not 1, as most are
LORA_SEED = 21
CONTROLNET_SEED = 31
# Relative size of a LoRA's weight change (std of alpha/rank * up @ down over std of the weight):
# big enough that the tiny random models' images visibly change.
LORA_RELATIVE_CHANGE = 0.5


@dataclass(frozen=True)
class LoraTarget:
    """One weight a LoRA changes.

    lora_name: the kohya module name (`lora_unet_<diffusers name with _>`, `lora_te*_text_model_...`).
    checkpoint_key: the weight in the single file (original Stability layout).
    rows: (start, stop) of the rows of `checkpoint_key` the module owns (OpenCLIP stores q, k and v
        fused in one `in_proj_weight` [3 * width, width]), or None for the whole tensor.
    """

    lora_name: str
    checkpoint_key: str
    rows: tuple[int, int] | None = None


def _unet(diffusers_name: str, original_name: str) -> LoraTarget:
    return LoraTarget("lora_unet_" + diffusers_name.replace(".", "_"), f"model.diffusion_model.{original_name}.weight")


_OPEN_CLIP_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


def _open_clip(lora_prefix: str, ckpt_prefix: str, layer: int, module: str, width: int) -> LoraTarget:
    """A LoRA target in an OpenCLIP tower (HF module names in the LoRA, fused qkv in the file)."""
    name = f"{lora_prefix}_text_model_encoder_layers_{layer}_{module.replace('.', '_')}"
    block = f"{ckpt_prefix}transformer.resblocks.{layer}."
    if module.startswith("self_attn.") and module[len("self_attn."):] in _OPEN_CLIP_QKV:
        i = _OPEN_CLIP_QKV[module[len("self_attn."):]]
        return LoraTarget(name, block + "attn.in_proj_weight", (i * width, (i + 1) * width))
    original = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}[module]
    return LoraTarget(name, f"{block}{original}.weight")


def _hf_clip(lora_prefix: str, ckpt_prefix: str, layer: int, module: str) -> LoraTarget:
    """A LoRA target in a CLIP-L tower (HF layout in both the LoRA and the file)."""
    name = f"{lora_prefix}_text_model_encoder_layers_{layer}_{module.replace('.', '_')}"
    return LoraTarget(name, f"{ckpt_prefix}transformer.text_model.encoder.layers.{layer}.{module}.weight")


# Per family: a cross-attention key projection (reads the prompt), a linear proj_in, a 3x3 conv
# (a LoCon-style conv LoRA), and an attention and an MLP projection in each text tower. Text layer
# 0: the towers are used at their penultimate layer, and the tiny ones have 3 layers.
LORA_TARGETS = {
    "sd_turbo": (
        _unet("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
              "input_blocks.1.1.transformer_blocks.0.attn2.to_k"),
        _unet("down_blocks.0.attentions.0.proj_in", "input_blocks.1.1.proj_in"),
        _unet("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
        _open_clip("lora_te", "cond_stage_model.model.", 0, "self_attn.q_proj", TEXT_HIDDEN),
        _open_clip("lora_te", "cond_stage_model.model.", 0, "mlp.fc1", TEXT_HIDDEN),
    ),
    "sdxl_turbo": (
        _unet("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
              "input_blocks.3.1.transformer_blocks.1.attn2.to_k"),
        _unet("down_blocks.1.attentions.0.proj_in", "input_blocks.3.1.proj_in"),
        _unet("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
        _hf_clip("lora_te1", "conditioner.embedders.0.", 0, "self_attn.q_proj"),
        _hf_clip("lora_te1", "conditioner.embedders.0.", 0, "mlp.fc2"),
        _open_clip("lora_te2", "conditioner.embedders.1.model.", 0, "self_attn.v_proj", TEXT_HIDDEN),
        _open_clip("lora_te2", "conditioner.embedders.1.model.", 0, "mlp.fc1", TEXT_HIDDEN),
    ),
}


@dataclass(frozen=True)
class TinyLora:
    family: str
    path: Path  # the LoRA file
    targets: tuple[LoraTarget, ...]


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write atomically: two test processes (one per host) may build the same file at once."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
    os.replace(partial, path)


def _target_weight(weights: dict[str, torch.Tensor], target: LoraTarget) -> torch.Tensor:
    weight = weights[target.checkpoint_key]
    return weight if target.rows is None else weight[target.rows[0]:target.rows[1]]


def lora_diff(lora: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """alpha / rank * up @ down for one module, in the weight's `shape`.

    up [out, rank] (a conv LoRA: [out, rank, 1, 1]), down [rank, in] (conv: [rank, in, kh, kw]).
    """
    up, down = lora[f"{name}.lora_up.weight"], lora[f"{name}.lora_down.weight"]
    scale = lora[f"{name}.alpha"].item() / down.shape[0]
    return (scale * (up.flatten(1).double() @ down.flatten(1).double())).reshape(shape)


def build_lora(model: TurboModel, cache: Path = ADDONS_CACHE) -> TinyLora:
    """A rank-4 LoRA on UNet and text encoder weights of the tiny `model` (built once, cached)."""
    targets = LORA_TARGETS[model.family]
    path = cache / f"tiny_{model.family}_lora.safetensors"
    if path.exists():
        return TinyLora(model.family, path, targets)
    weights = _read(model.single_file)
    generator = torch.Generator().manual_seed(LORA_SEED)
    lora = {}
    for target in targets:
        weight = _target_weight(weights, target)
        out_dim, in_dim = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        down = torch.randn((LORA_RANK, in_dim, *kernel), generator=generator)
        up = torch.randn((out_dim, LORA_RANK, *(1,) * len(kernel)), generator=generator)
        lora[f"{target.lora_name}.lora_down.weight"] = down
        lora[f"{target.lora_name}.alpha"] = torch.tensor(LORA_ALPHA)
        lora[f"{target.lora_name}.lora_up.weight"] = up
        # Scale `up` so that the change is LORA_RELATIVE_CHANGE of the weight's spread.
        change = lora_diff(lora, target.lora_name, weight.shape).std().item()
        lora[f"{target.lora_name}.lora_up.weight"] = up * (LORA_RELATIVE_CHANGE * weight.std().item() / change)
    _save(lora, path)
    return TinyLora(model.family, path, targets)


def build_merged_checkpoint(model: TurboModel, lora: TinyLora, strength_model: float, strength_clip: float,
                            cache: Path = ADDONS_CACHE) -> Path:
    """The tiny single file with the LoRA merged in: W' = W + strength * alpha / rank * up @ down.

    UNet targets get `strength_model`, text encoder targets `strength_clip`. The sum is taken in
    fp64 and rounded once to fp32, so the file holds the correctly rounded merged weights.
    """
    path = cache / f"tiny_{model.family}_lora_merged_m{strength_model:g}_c{strength_clip:g}.safetensors"
    if path.exists():
        return path
    weights = _read(model.single_file)
    lora_sd = _read(lora.path)
    for target in lora.targets:
        strength = strength_model if target.lora_name.startswith("lora_unet_") else strength_clip
        weight = _target_weight(weights, target)
        merged = weight.double() + strength * lora_diff(lora_sd, target.lora_name, weight.shape)
        weight.copy_(merged.float())  # in place: a row slice writes into the fused tensor
    _save(weights, path)
    return path


def controlnet_config(model: TurboModel) -> dict:
    """The `comfy.cldm.cldm.ControlNet` arguments for the tiny model's UNet.

    Detected the way the host's ControlNet loader detects a file (its base config with 64-wide
    heads when no known model matches the tiny sizes), so the saved file loads back the same.
    """
    from comfy.model_detection import model_config_from_unet

    unet = {k: v for k, v in _read(model.single_file).items() if k.startswith("model.diffusion_model.")}
    config = dict(model_config_from_unet(unet, "model.diffusion_model.", True).unet_config)
    config.pop("out_channels")  # a ControlNet has no output head
    return {**config, "hint_channels": 3}


def _init_controlnet(control: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded weights for every parameter: conv / linear N(0, 1 / fan_in) (bias N(0, 0.02^2)),
    norms at identity. The zero convs get random weights too, as a trained ControlNet has."""
    with torch.no_grad():
        for module in control.modules():
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if not isinstance(weight, torch.nn.Parameter):
                continue
            if weight.ndim >= 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) / weight[0].numel() ** 0.5)
                if isinstance(bias, torch.nn.Parameter):
                    bias.copy_(torch.randn(bias.shape, generator=generator) * 0.02)
            else:  # GroupNorm / LayerNorm
                weight.fill_(1.0)
                if isinstance(bias, torch.nn.Parameter):
                    bias.zero_()


def build_controlnet(model: TurboModel, cache: Path = ADDONS_CACHE) -> Path:
    """A tiny ControlNet for `model` (the host's architecture, seeded weights), saved with the
    `control_model.` prefix of the original ControlNet files. Hint: RGB at pixel resolution."""
    import comfy.cldm.cldm
    import comfy.ops

    path = cache / f"tiny_{model.family}_controlnet.safetensors"
    if path.exists():
        return path
    config = controlnet_config(model)
    control = comfy.cldm.cldm.ControlNet(**config, dtype=torch.float32, device="cpu",
                                         operations=comfy.ops.disable_weight_init)
    _init_controlnet(control, torch.Generator().manual_seed(CONTROLNET_SEED))
    _save({"control_model." + k: v for k, v in control.state_dict().items()}, path)
    return path
