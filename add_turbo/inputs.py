"""Checks of graph inputs before any model work, with messages that name the input and the fix."""

from __future__ import annotations

import torch

from .refine import MAX_PIXELS, MAX_SIDE

LATENT_SCALE = 8  # pixels per latent cell of the SD / SDXL VAE


def check_latent(samples: torch.Tensor, channels: int) -> None:
    """A LATENT's samples [B, C, h, w] must fit the model: C channels, a sane size, finite values."""
    if samples.ndim != 4:
        raise ValueError(f"latent_image must be [batch, channels, height, width], got shape {list(samples.shape)}")
    batch, got, height, width = samples.shape
    if batch == 0:
        raise ValueError("latent_image holds an empty batch: give it at least one latent")
    if got != channels:
        raise ValueError(f"latent_image has {got} channels but this model's VAE latents have {channels}: encode the "
                         "image with the VAE from the same ADD Turbo Loader (or use Empty Latent Image)")
    if height == 0 or width == 0:
        raise ValueError(f"latent_image is {width * LATENT_SCALE}x{height * LATENT_SCALE} px: it must not be empty")
    px_h, px_w = height * LATENT_SCALE, width * LATENT_SCALE
    if max(px_h, px_w) > MAX_SIDE or px_h * px_w > MAX_PIXELS:
        raise ValueError(f"latent_image is {px_w}x{px_h} px: the limit is {MAX_SIDE} px a side; turbo models are "
                         "trained at 512 px, so generate smaller and upscale with ADD Turbo Refine")
    if not torch.isfinite(samples).all():
        raise ValueError("latent_image contains NaN or infinite values: check the node that produced it")


def check_conditioning(conditioning: list, context_dim: int, needs_pooled: bool) -> None:
    """CONDITIONING ([[cond [B, tokens, dim], {extras}], ...]) must come from this model's text encoder."""
    if not conditioning:
        raise ValueError("positive conditioning is empty: connect a CLIP Text Encode node")
    for cond, extras in conditioning:
        if cond.shape[-1] != context_dim:
            raise ValueError(f"positive conditioning is {cond.shape[-1]} wide but this model expects {context_dim}: "
                             "encode the prompt with the CLIP output of the same ADD Turbo Loader (SD-Turbo and "
                             "SDXL-Turbo text encoders do not mix)")
        if needs_pooled and extras.get("pooled_output") is None:
            raise ValueError("SDXL-Turbo needs the pooled text embedding: encode the prompt with the CLIP output of "
                             "the same ADD Turbo Loader")
        if not torch.isfinite(cond).all():
            raise ValueError("positive conditioning contains NaN or infinite values")
