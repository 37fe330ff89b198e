"""The graphs the tests and benchmarks run: the pack's nodes and the built-in ones called in-process the
way the executor calls them, the stock turbo graph they are compared with, and API-format prompts for a
server."""

from __future__ import annotations

import torch


def run(node_cls, **inputs):
    """Execute a V3 node (the pack's or a built-in) and return its outputs as a tuple."""
    if hasattr(node_cls, "FUNCTION"):  # legacy (V1) built-in node
        return tuple(getattr(node_cls(), node_cls.FUNCTION)(**inputs))
    return tuple(node_cls.execute(**inputs).result)


def builtin(name: str):
    """The node class registered as `name` (built-in or the pack's)."""
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


def load(ckpt_name: str, **options):
    """(MODEL, CLIP, VAE) of ADD Turbo Loader with `options`."""
    return run(builtin("ADDTurboLoader"), ckpt_name=ckpt_name, **options)


def load_with_message(ckpt_name: str, **options):
    """(MODEL, CLIP, VAE, message): ADD Turbo Loader with `options`, and the text it shows on the node."""
    out = builtin("ADDTurboLoader").execute(ckpt_name=ckpt_name, **options)
    return (*out.result, (out.ui or {}).get("text", [""])[0])


def load_stock(ckpt_name: str):
    """(MODEL, CLIP, VAE) of the built-in CheckpointLoaderSimple."""
    return run(builtin("CheckpointLoaderSimple"), ckpt_name=ckpt_name)[:3]


def encode(clip, text: str):
    """CLIPTextEncode: the conditioning of `text`."""
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
    """ADD Turbo Sample: the sampled latent."""
    (out,) = run(builtin("ADDTurboSample"), model=model, positive=positive, latent_image=latent, seed=seed,
                 steps=steps, strength=strength, spacing=spacing, sampler=sampler, eta=eta)
    return out


def sampler_custom(model, positive, latent, sampler, sigmas, seed=0, negative=None):
    """The built-in SamplerCustom graph at cfg 1 (what users wire for turbo models today)."""
    negative = positive if negative is None else negative
    out, _ = run(builtin("SamplerCustom"), model=model, add_noise=True, noise_seed=seed, cfg=1.0,
                 positive=positive, negative=negative, sampler=sampler, sigmas=sigmas, latent_image=latent)
    return out


def stock_turbo_sample(model, positive, latent, seed=0, steps=1, sampler="euler_ancestral"):
    """The stock graph for turbo models: SDTurboScheduler + KSamplerSelect + SamplerCustom at cfg 1."""
    (sigmas,) = run(builtin("SDTurboScheduler"), model=model, steps=steps, denoise=1.0)
    (sampler_object,) = run(builtin("KSamplerSelect"), sampler_name=sampler)
    return sampler_custom(model, positive, latent, sampler_object, sigmas, seed=seed)


def load_stock_or_pack(ckpt_name: str, stock: bool, **options):
    """(MODEL, CLIP, VAE, loader message): the built-in loader (message ''), or ADD Turbo Loader with `options`."""
    if stock:
        return (*load_stock(ckpt_name), "")
    return load_with_message(ckpt_name, **options)


def sample_stock_or_pack(model, positive, latent, seed: int, stock: bool, spacing: str = "sai"):
    """One step: the stock turbo graph (euler_ancestral), or ADD Turbo Sample with `spacing`."""
    if stock:
        return stock_turbo_sample(model, positive, latent, seed=seed)
    return turbo_sample(model, positive, latent, seed=seed, steps=1, spacing=spacing)


def txt2img_prompt(ckpt_name: str, text: str = "a photo of a cat", seed: int = 0, steps: int = 1, size: int = 512,
                   prefix: str = "add_turbo") -> dict:
    """API-format graph: ADD Turbo Loader -> CLIPTextEncode -> ADD Turbo Sample -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": "ADDTurboLoader", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "4": {"class_type": "ADDTurboSample", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "latent_image": ["3", 0], "seed": seed, "steps": steps,
            "strength": 1.0, "spacing": "trailing", "sampler": "euler_ancestral", "eta": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": prefix}},
    }
