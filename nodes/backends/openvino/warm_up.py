"""The OpenVINO engine's warm-up at load: the models converted (or loaded from disk) and compiled at
512x512 batch 1, so that the first image is not the slow one."""

from __future__ import annotations

import logging
import time

import torch

from ....add_turbo.acceleration import openvino_models
from ...latent_sampling import empty_latent, sample_latent
from . import parts
from .precision import describe
from .unet import openvino_unet_of

log = logging.getLogger(__name__)

WARM_UP_SIZE = 512  # the size the models are made for


def warm_up(model, clip, vae, options, size: int = WARM_UP_SIZE) -> tuple[str, float]:
    """Convert (or load from disk) and compile the OpenVINO models now, at size x size batch 1: the UNet,
    the text encoders' layer stacks and, with TAESD, its decode. The message names the precision that
    `options` chose, what runs on OpenVINO and whether this start converted or found the models on disk.
    Returns (the loader's message, the warm-up's seconds)."""
    note = describe(options, openvino_models.cpu_flags())
    groups = {"UNet": [openvino_unet_of(model).call], "text encoders": parts.calls_of(clip, parts.TEXT),
              "TAESD decode": parts.calls_of(vae, parts.DECODE)}
    began = time.perf_counter()
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        vae.decode(sample_latent(model, positive, empty_latent(model, size), 0, 1, 1.0, "trailing", "euler", 0.0))
    seconds = time.perf_counter() - began
    calls = [call for group in groups.values() for call in group]
    failed = [f"{name}: {call.failure}" for name, group in groups.items() for call in group if call.failure]
    on_openvino = ", ".join(name for name, group in groups.items() if group and not any(c.failure for c in group))
    converted = sum(call.runs["converted"] for call in calls)
    done = "converted and compiled" if converted else "loaded from the disk cache"
    message = f"{note}: {on_openvino or 'nothing'} {done}, {size}x{size} warm-up {seconds:.1f} s"
    if failed:
        message += "; in torch: " + "; ".join(failed)
    log.info("ADD Turbo: %s (%s)", message, groups["UNet"][0].folder)
    return message, seconds
