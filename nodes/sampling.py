"""ADDTurboScheduler, ADDTurboSampler and the one-node ADDTurboSample."""

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..add_turbo import inputs, noise, samplers, schedules
from . import engine
from .host_api import PositiveOnlyGuider

SEED_MAX = 0xFFFFFFFFFFFFFFFF
QUEUE_BATCH_MAX = 16
STEPS_TOOLTIP = "Number of steps actually run (1-4 is what ADD models are made for). Never rounded to zero."
STRENGTH_TOOLTIP = ("How much of the image is re-generated, continuous in (0, 1]: 1.0 starts from pure noise "
                    "(text to image); 0.5 runs the steps over the lower half of the noise schedule.")
SPACING_TOOLTIP = ("'trailing': the ADD paper / diffusers spacing (4 steps: 999, 749, 499, 249). "
                   "'sai': Stability's 100-step grid, as the built-in SDTurboScheduler (999, 899, 799, 699).")
SAMPLER_TOOLTIP = ("euler_ancestral: the reference sampler (eta 1 = Stability / SDXL-Turbo card); "
                   "euler: deterministic (SD-Turbo card); consistency: full re-noise each step.")
ETA_TOOLTIP = "Ancestral noise for euler_ancestral: 1.0 is the reference, 0 equals euler. Unused by other samplers."


def _steps_input(default=1):
    return io.Int.Input("steps", default=default, min=1, max=schedules.MAX_STEPS, tooltip=STEPS_TOOLTIP)


def schedule_inputs():
    return [
        _steps_input(),
        io.Float.Input("strength", default=1.0, min=0.001, max=1.0, step=0.01, round=False, tooltip=STRENGTH_TOOLTIP),
        io.Combo.Input("spacing", options=list(schedules.SPACINGS), default="trailing", tooltip=SPACING_TOOLTIP),
    ]


def sampler_inputs():
    return [
        io.Combo.Input("sampler", options=list(samplers.SAMPLERS), default="euler_ancestral", tooltip=SAMPLER_TOOLTIP),
        io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.01, round=False, tooltip=ETA_TOOLTIP),
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
    samples = engine.sample(model, positive, batch, start_noise, sigmas, groups, sampler, eta, callback,
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
    engine samples whenever it computes the same (nodes/engine.py); otherwise the host's sampler
    does, and why is logged once per model.
    """
    latent, sigmas, sampler_object = _prepare(model, positive, latent, steps, strength, spacing, sampler, eta)
    start_noise = noise.seeded_noise(seed, latent.shape)
    callback = latent_preview.prepare_callback(model, steps)
    if engine.engine_on(model):
        reason = engine.fallback_reason(model, positive, latent, denoise_mask)
        if reason is None:
            samples = engine.sample(model, positive, latent, start_noise, sigmas, seed, sampler, eta, callback)
            return samples.to(comfy.model_management.intermediate_device())
        engine.log_fallback(model, reason)
    guider = PositiveOnlyGuider(model)
    guider.set_conds(positive)
    guider.set_cfg(1.0)
    samples = guider.sample(start_noise, latent, sampler_object, sigmas, denoise_mask=denoise_mask,
                            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.to(comfy.model_management.intermediate_device())


class ADDTurboScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADDTurboScheduler",
            display_name="ADD Turbo Scheduler",
            category="ADD Turbo",
            description="Guidance-free turbo timesteps -> SIGMAS for SamplerCustom. Steps are the steps run; "
                        "strength is continuous and never rounds to zero steps.",
            inputs=[io.Model.Input("model", tooltip="The turbo model whose noise schedule gives the sigmas."),
                    *schedule_inputs()],
            outputs=[io.Sigmas.Output(tooltip="steps + 1 sigmas, highest first, ending in 0.")],
        )

    @classmethod
    def execute(cls, model, steps, strength, spacing) -> io.NodeOutput:
        return io.NodeOutput(model_sigmas(model, steps, strength, spacing))


class ADDTurboSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADDTurboSampler",
            display_name="ADD Turbo Sampler",
            category="ADD Turbo",
            description="A few-step turbo sampler for SamplerCustom / SamplerCustomAdvanced. Its per-step noise "
                        "comes from a CPU generator keyed by the seed: the same image on CPU and GPU.",
            inputs=sampler_inputs(),
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustom's sampler input (use cfg 1.0).")],
        )

    @classmethod
    def execute(cls, sampler, eta) -> io.NodeOutput:
        return io.NodeOutput(turbo_sampler(sampler, eta))


class ADDTurboSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADDTurboSample",
            display_name="ADD Turbo Sample",
            category="ADD Turbo",
            description="One-node turbo sampling: exactly one model evaluation per step, no negative prompt and "
                        "no unconditional pass. Image k of a batch equals a single run with seed + k.",
            inputs=[
                io.Model.Input("model", tooltip="A turbo model from ADD Turbo Loader."),
                io.Conditioning.Input("positive", tooltip="The prompt. There is no negative: turbo models run "
                                                          "without classifier-free guidance."),
                io.Latent.Input("latent_image", tooltip="Empty latent for text to image (512x512 is what the "
                                                        "models were trained at), or an encoded image with strength < 1."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Noise seed; image k of a batch uses seed + k."),
                *schedule_inputs(),
                *sampler_inputs(),
                io.Int.Input("queue_batch", default=1, min=1, max=QUEUE_BATCH_MAX, optional=True,
                             tooltip="Most prompts per UNet call. Above 1, with the loader's engine on: prompts "
                                     "waiting in the queue that differ from this one only in this node's seed "
                                     "(queueing a graph several times with a random seed) or in the text of the "
                                     "CLIP Text Encode feeding it are sampled together with it in one UNet call, "
                                     "and take their latents from it when they run. Each image equals its lone "
                                     "run up to float rounding, as images of one batch do. 1: each prompt "
                                     "samples alone."),
            ],
            outputs=[io.Latent.Output(tooltip="The sampled latent; decode with VAE Decode.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, strength, spacing, sampler, eta,
                queue_batch=1) -> io.NodeOutput:
        from . import queue_batching  # it builds on this module

        hidden = getattr(cls, "hidden", None)  # None when the node is called outside the executor
        samples, note = queue_batching.sample(model, positive, latent_image["samples"], seed, steps, strength,
                                              spacing, sampler, eta, queue_batch, getattr(hidden, "prompt", None),
                                              getattr(hidden, "unique_id", None), latent_image.get("noise_mask"))
        out = {**latent_image, "samples": samples}
        out.pop("noise_mask", None)
        return io.NodeOutput(out, ui={"text": [note]} if note else None)
