"""Run the pack's nodes and the built-in nodes in-process, the way the executor calls them."""

from __future__ import annotations

import torch


def run(node_cls, **inputs):
    """Execute a V3 node (the pack's or a built-in) and return its outputs as a tuple."""
    if hasattr(node_cls, "FUNCTION"):  # legacy (V1) built-in node
        return tuple(getattr(node_cls(), node_cls.FUNCTION)(**inputs))
    return tuple(node_cls.execute(**inputs).result)


def builtin(name: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


def load(ckpt_name: str):
    return run(builtin("ADDTurboLoader"), ckpt_name=ckpt_name)


def encode(clip, text: str):
    (cond,) = run(builtin("CLIPTextEncode"), clip=clip, text=text)
    return cond


def empty_latent(size: int = 64, batch: int = 1, width: int | None = None):
    """An empty latent for a size x size image (or size high, width wide)."""
    return {"samples": torch.zeros([batch, 4, size // 8, (width or size) // 8])}


def decode(vae, latent) -> torch.Tensor:
    """[B, H, W, 3] image in 0..1."""
    (image,) = run(builtin("VAEDecode"), vae=vae, samples=latent)
    return image


def turbo_sample(model, positive, latent, seed=0, steps=1, strength=1.0, spacing="trailing",
                 sampler="euler_ancestral", eta=1.0):
    (out,) = run(builtin("ADDTurboSample"), model=model, positive=positive, latent_image=latent, seed=seed,
                 steps=steps, strength=strength, spacing=spacing, sampler=sampler, eta=eta)
    return out


def sampler_custom(model, positive, latent, sampler, sigmas, seed=0, negative=None):
    """The built-in SamplerCustom graph at cfg 1 (what users wire for turbo models today)."""
    negative = positive if negative is None else negative
    out, _ = run(builtin("SamplerCustom"), model=model, add_noise=True, noise_seed=seed, cfg=1.0,
                 positive=positive, negative=negative, sampler=sampler, sigmas=sigmas, latent_image=latent)
    return out
