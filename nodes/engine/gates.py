"""When the engine may sample (its gates): the loader's choice, carried by the MODEL and its clones,
and every reason a run must take the host's normal path instead or run its steps unrecorded."""

from __future__ import annotations

import torch

from .. import host_api

ENGINE_OPTION = "add_turbo_engine"  # key in MODEL.model_options: clones of the model carry it
ENGINE_MODES = ("off", "on")
# Conditioning entries of one plain prompt: the pooled output and SDXL size conditioning.
PLAIN_PROMPT_KEYS = frozenset({"pooled_output", "width", "height", "crop_w", "crop_h", "target_width",
                               "target_height"})
AREA_KEYS = frozenset({"area", "strength", "mask", "mask_strength", "set_area_to_bounds"})
TIMESTEP_RANGE_KEYS = frozenset({"start_percent", "end_percent", "timestep_start", "timestep_end",
                                 "clip_start_percent", "clip_end_percent"})


def set_engine(patcher, mode: str) -> None:
    """Turn the engine on or off for `patcher` and its later clones."""
    if mode not in ENGINE_MODES:
        raise ValueError(f"engine must be one of {ENGINE_MODES}, got {mode!r}")
    if mode == "on":
        patcher.model_options[ENGINE_OPTION] = mode
    else:
        patcher.model_options.pop(ENGINE_OPTION, None)


def engine_on(patcher) -> bool:
    return patcher.model_options.get(ENGINE_OPTION) == "on"


def conditioning_obstacle(positive) -> str | None:
    """Why `positive` is more than one plain prompt, or None."""
    if len(positive) != 1:
        return f"the conditioning has {len(positive)} entries (combined or concatenated prompts)"
    keys = set(positive[0][1])
    if "control" in keys:
        return "the conditioning has a ControlNet"
    if "hooks" in keys:
        return "the conditioning has hooks (e.g. a hook LoRA)"
    if keys & AREA_KEYS:
        return f"the conditioning has an area, strength or mask ({', '.join(sorted(keys & AREA_KEYS))})"
    if keys & TIMESTEP_RANGE_KEYS:
        return "the conditioning has a timestep range"
    unknown = sorted(keys - PLAIN_PROMPT_KEYS)
    if unknown:
        return f"the conditioning has entries the engine does not know ({', '.join(unknown)})"
    return None


def fallback_reason(patcher, positive, latent, denoise_mask=None, device=None) -> str | None:
    """Why this sampling call must take the normal path, or None when the engine computes the same.

    Args:
        latent: [B, C, h, w] as sampling gets it. denoise_mask: the latent's noise mask, if any.
        device: where the model computes (default its load device): on CUDA the size must suit a graph.
    """
    device = patcher.load_device if device is None else torch.device(device)
    if denoise_mask is not None:
        return "the latent has a noise mask (inpainting)"
    if latent.is_nested or latent.ndim != 4:
        return "the latent is not one [batch, channels, height, width] tensor"
    if device.type == "cuda" and (latent.shape[-1] % 8 or latent.shape[-2] % 8):
        return (f"the image is {latent.shape[-1] * 8}x{latent.shape[-2] * 8} px: CUDA graphs need sides "
                "that are multiples of 64 px")
    return host_api.direct_sampling_obstacle(patcher, own_options=(ENGINE_OPTION,)) or conditioning_obstacle(positive)


def capture_obstacle(patcher, unet) -> str | None:
    """Why this run's steps are not recorded as a CUDA graph (they run directly instead), or None.
    `unet`: the run's host_api.DirectUNet, entered."""
    if unet.start.device.type != "cuda":
        return f"no CUDA graphs on {unet.start.device.type}"
    if host_api.has_compile_wrapper(patcher):
        return "the UNet is compiled: torch.compile runs it"
    if not host_api.fully_loaded(patcher):
        return "the model is only partly in GPU memory"
    if not all(torch.is_tensor(v) for v in unet.inputs.values()):
        return "the conditioning holds inputs that are not tensors"
    return None
