"""The functions that sample, for the nodes: the model's sigmas, the turbo SAMPLER for the host's
custom-sampling nodes, and a latent sampled guidance-free, through the engine where it computes the
same, else through the host's sampler with the guidance-free guider."""

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..add_turbo import inputs, noise, samplers, schedules
from . import engine
from .host_api import PositiveOnlyGuider

HOST_SYMBOLS = [
    ("comfy.model_management", "intermediate_device", ()),
    ("comfy.sample", "fix_empty_latent_channels", ("model", "latent_image")),
    ("comfy.utils", "PROGRESS_BAR_ENABLED", None),  # read for CFGGuider.sample's disable_pbar
    ("latent_preview", "prepare_callback", ("model", "steps")),
]


def model_sigmas(model, steps: int, strength: float, spacing: str) -> torch.Tensor:
    """[steps + 1] sigmas from the model's own noise schedule (exactly what the host's schedulers use)."""
    timesteps = torch.tensor(schedules.turbo_timesteps(steps, strength, spacing), dtype=torch.float32)
    sigmas = model.get_model_object("model_sampling").sigma(timesteps).float().cpu()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _turbo_sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None,
                            sampler="euler_ancestral", eta=1.0):
    """k-diffusion style sampler for the host's KSAMPLER: one model call per step, CPU-keyed noise."""
    extra_args = extra_args or {}
    seed = extra_args.get("seed", 0)
    s_in = x.new_ones([x.shape[0]])

    def denoiser(latent, sigma):
        return model(latent, sigma * s_in, **extra_args)

    def noise_for_step(step):
        return noise.seeded_noise(seed, x.shape, step=step, device=x.device, dtype=x.dtype)

    def report(i, latent, denoised):
        if callback is not None:
            callback({"x": latent, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})

    return samplers.sample(denoiser, x, sigmas, sampler, eta, noise_for_step, report)


def turbo_sampler(sampler: str, eta: float) -> comfy.samplers.KSAMPLER:
    """A SAMPLER usable in the built-in SamplerCustom / SamplerCustomAdvanced."""
    if sampler not in samplers.SAMPLERS:
        raise ValueError(f"sampler must be one of {samplers.SAMPLERS}, got {sampler!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    return comfy.samplers.KSAMPLER(_turbo_sampler_function, extra_options={"sampler": sampler, "eta": eta})


def check_model_inputs(model, positive, latent) -> None:
    """Refuse mismatched conditioning and latents with a message, before any model work."""
    base = model.model
    unet_config = base.model_config.unet_config
    inputs.check_latent(latent, base.latent_format.latent_channels)
    inputs.check_conditioning(positive, unet_config.get("context_dim"), unet_config.get("adm_in_channels") is not None)


def _prepare(model, positive, latent, steps, strength, spacing, sampler, eta):
    """(latent as sampling starts from it, sigmas [steps + 1], the host SAMPLER), inputs checked."""
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    check_model_inputs(model, positive, latent)
    sigmas = model_sigmas(model, steps, strength, spacing)
    sampler_object = turbo_sampler(sampler, eta)  # checks sampler and eta for either path
    if strength >= 1.0:
        latent = torch.zeros_like(latent)
    return latent, sigmas, sampler_object


def sample_latents_together(model, positives: list, latent, seeds: list[int], steps, strength, spacing, sampler,
                            eta) -> tuple[list[torch.Tensor], str | None]:
    """One latent [B, C, h, w] per (prompt, seed), all sampled as one batch through the engine:
    (latents, None); or ([], why not) when the engine cannot sample them (it is off, would fall back,
    or the prompts' conditionings differ in shape).

    Latent k equals sample_latent(..., positives[k], ..., seeds[k], ...) up to fp32 rounding of the
    larger batch: its rows get their own prompt and the noise of their own seed (noise.grouped_noise)."""
    if not engine.engine_on(model):
        return [], "the loader's engine is off"
    positive = positives[0]
    latent, sigmas, _ = _prepare(model, positive, latent, steps, strength, spacing, sampler, eta)
    batch = latent.repeat(len(seeds), *([1] * (latent.ndim - 1)))
    for other in positives:
        if other is not positive:  # _prepare checked this run's own
            check_model_inputs(model, other, latent)
        reason = engine.fallback_reason(model, other, batch)
        if reason is not None:
            return [], reason
        if not _same_shapes(other, positive):
            return [], "the prompts' conditionings differ in shape (e.g. a prompt over 77 tokens)"
    groups = [(seed, latent.shape[0]) for seed in seeds]
    start_noise = noise.grouped_noise(groups, latent.shape[1:])
    callback = latent_preview.prepare_callback(model, steps)
    samples = engine.sample_direct(model, positive, batch, start_noise, sigmas, groups, sampler, eta, callback,
                            positives=None if all(p is positive for p in positives) else positives)
    return list(samples.to(comfy.model_management.intermediate_device()).split(latent.shape[0])), None


def _same_shapes(a, b) -> bool:
    """Two plain prompts whose tensors (cond, pooled output, ...) have the same shapes."""
    def shapes(conditioning):
        cond, extra = conditioning[0]
        return tuple(cond.shape), {k: tuple(v.shape) if torch.is_tensor(v) else v for k, v in extra.items()}
    return shapes(a) == shapes(b)


def sample_latent(model, positive, latent, seed, steps, strength, spacing, sampler, eta, denoise_mask=None):
    """Guidance-free sampling of a latent batch [B, C, h, w] -> [B, C, h, w] (one model call per step).

    strength 1.0 starts from pure noise (the latent is ignored, as in text to image); below 1 the
    latent is noised to the first sigma, sigma * noise + latent. With the loader's engine on, the
    engine samples whenever it computes the same (nodes/engine/); otherwise the host's sampler
    does, and why is logged once per model.
    """
    latent, sigmas, sampler_object = _prepare(model, positive, latent, steps, strength, spacing, sampler, eta)
    start_noise = noise.seeded_noise(seed, latent.shape)
    callback = latent_preview.prepare_callback(model, steps)
    if engine.engine_on(model):
        reason = engine.fallback_reason(model, positive, latent, denoise_mask)
        if reason is None:
            samples = engine.sample_direct(model, positive, latent, start_noise, sigmas, seed, sampler, eta, callback)
            return samples.to(comfy.model_management.intermediate_device())
        engine.log_fallback(model, reason)
    guider = PositiveOnlyGuider(model)
    guider.set_conds(positive)
    guider.set_cfg(1.0)
    samples = guider.sample(start_noise, latent, sampler_object, sigmas, denoise_mask=denoise_mask,
                            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())


def empty_latent(model, size: int) -> torch.Tensor:
    """Zeros [1, C, size/8, size/8] for `model`'s latent format: what the warm-ups sample from."""
    return torch.zeros([1, model.model.latent_format.latent_channels, size // 8, size // 8])
