"""The ComfyUI graphs the benchmarks time, called the way the executor calls the nodes."""

from __future__ import annotations


def load(ckpt: str, stock: bool, **options):
    """(MODEL, CLIP, VAE, loader message): the built-in loader, or the pack's with `options`."""
    import nodes

    if stock:
        return (*nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3], "")
    out = nodes.NODE_CLASS_MAPPINGS["ADDTurboLoader"].execute(ckpt_name=ckpt, **options)
    return (*out.result, (out.ui or {}).get("text", [""])[0])


def sample(model, cond, latent: dict, seed: int, stock: bool, spacing: str = "sai") -> dict:
    """One step: SDTurboScheduler + SamplerCustom (euler_ancestral, cfg 1), or ADD Turbo Sample."""
    import nodes

    mapping = nodes.NODE_CLASS_MAPPINGS
    if stock:
        (sigmas,) = mapping["SDTurboScheduler"].execute(model=model, steps=1, denoise=1.0).result
        (sampler,) = mapping["KSamplerSelect"].execute(sampler_name="euler_ancestral").result
        return mapping["SamplerCustom"].execute(model=model, add_noise=True, noise_seed=seed, cfg=1.0, positive=cond,
                                                negative=cond, sampler=sampler, sigmas=sigmas,
                                                latent_image=latent).result[0]
    return mapping["ADDTurboSample"].execute(model=model, positive=cond, latent_image=latent, seed=seed, steps=1,
                                             strength=1.0, spacing=spacing, sampler="euler_ancestral",
                                             eta=1.0).result[0]
