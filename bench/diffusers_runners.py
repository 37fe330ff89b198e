"""The GPU bench's runners for diffusers pipelines (text to image and img2img, eager or compiled UNet,
full VAE or AutoencoderTiny with the pack's TAESD weights), with the hooks that time their stages."""

from __future__ import annotations

import contextlib
import math
import time
import types

from bench import gpu_plan as plan
from bench.gpu_stages import Stages, sync


def _timing_hooks(module, name, current):
    """Forward hooks that add the module's synchronised time to the current image's stage `name`, when
    that image syncs its stages; for the UNet only when it is the one the pipeline runs (the eager UNet's
    hooks also fire inside the compiled one). torch.compile never traces them."""
    import torch

    def timing():
        stages = current.get("stages")
        return stages is not None and stages.sync and (name != "unet" or current.get("unet") is module)

    @torch.compiler.disable
    def before(*_):
        if timing():
            sync()
            current[("t", name)] = time.perf_counter()

    @torch.compiler.disable
    def after(*_):
        if timing():
            sync()
            times = current["stages"].times
            times[name] = times.get(name, 0.0) + time.perf_counter() - current[("t", name)]

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def _time_method(obj, name, current):
    """Wrap obj.<name> (a VAE's encode / decode) to add its synchronised time to the stage `name`."""
    method = getattr(obj, name)

    def timed(*args, **kwargs):
        stages = current.get("stages")
        if stages is None or not stages.sync:
            return method(*args, **kwargs)
        sync()
        began = time.perf_counter()
        out = method(*args, **kwargs)
        sync()
        stages.times[name] = stages.times.get(name, 0.0) + time.perf_counter() - began
        return out

    setattr(obj, name, timed)


def _parts(pipe):
    """What the diffusers variants of one pipeline share: its UNet and VAE, the tiny VAE and the compiled
    UNet (made once: every variant replays the same compiled graphs), the img2img pipeline, prompt
    embeddings and start latents. Hooks go on at creation, before anything is compiled."""
    parts = pipe.__dict__.get("_bench")
    if parts is None:
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        pipe.set_progress_bar_config(disable=True)
        parts = types.SimpleNamespace(unet=pipe.unet, vae=pipe.vae, tiny=None, compiled=None, img2img=None,
                                      embeds={}, latents={}, current={})
        pipe.__dict__["_bench"] = parts
        _timing_hooks(parts.unet, "unet", parts.current)
        for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if encoder is not None:
                _timing_hooks(encoder, "text", parts.current)
        for name in ("encode", "decode"):
            _time_method(parts.vae, name, parts.current)
    return parts


def tiny_vae(family: str, dtype):
    """diffusers' AutoencoderTiny with the TAESD weights the pack's loader reads (models/vae_approx), so
    its images compare with the pack's TAESD ones."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    from devkit import turbo_models

    folder = turbo_models.build_taesd()
    name = "taesd" if family == "sd_turbo" else "taesdxl"
    state = {f"encoder.layers.{k}": v for k, v in load_file(str(folder / f"{name}_encoder.safetensors")).items()}
    for key, value in load_file(str(folder / f"{name}_decoder.safetensors")).items():
        index, rest = key.split(".", 1)  # the host's decoder starts with its clamp, diffusers' applies it in forward
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    vae = AutoencoderTiny()
    vae.load_state_dict(state)
    return vae.to(plan.DEVICE, dtype)


def _tiny(parts, family):
    if parts.tiny is None:
        parts.tiny = tiny_vae(family, parts.unet.dtype)
        for name in ("encode", "decode"):
            _time_method(parts.tiny, name, parts.current)
    return parts.tiny


def _compiled(parts):
    if parts.compiled is None:
        import torch

        parts.compiled = torch.compile(parts.unet, mode="reduce-overhead")
        _timing_hooks(parts.compiled, "unet", parts.current)
    return parts.compiled


def _img2img(pipe, parts, family):
    if parts.img2img is None:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

        cls = StableDiffusionImg2ImgPipeline if family == "sd_turbo" else StableDiffusionXLImg2ImgPipeline
        parts.img2img = cls(**{**pipe.components, "unet": parts.unet, "vae": parts.vae})
        parts.img2img.set_progress_bar_config(disable=True)
    return parts.img2img


def _embeddings(pipe, parts, prompt):
    """prompt_embeds (and SDXL's pooled ones) computed once per prompt, as a live app keeps them."""
    if prompt not in parts.embeds:
        import torch

        with torch.no_grad():
            out = pipe.encode_prompt(prompt, device=plan.DEVICE, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)
        parts.embeds[prompt] = {"prompt_embeds": out[0]}
        if len(out) == 4:  # SDXL
            parts.embeds[prompt]["pooled_prompt_embeds"] = out[2]
    return parts.embeds[prompt]


def _start_latents(parts, batch):
    """The pack's start noise for SEED (image k: seed + k) on the device, scaled as diffusers takes `latents`
    (it multiplies by its init_noise_sigma, the pack's noise scaling does the same in one step)."""
    if batch not in parts.latents:
        from add_turbo import noise, schedules

        sigma = float(schedules.training_sigmas()[999])
        shape = (batch, 4, plan.SIZE // 8, plan.SIZE // 8)
        start = noise.seeded_noise(plan.SEED, shape) * (math.sqrt(1 + sigma**2) / sigma)
        parts.latents[batch] = start.to(plan.DEVICE, parts.unet.dtype)
    return parts.latents[batch]


@contextlib.contextmanager
def _pack_noise(family):
    """diffusers img2img draws the pack's noise (start and per step, CPU-keyed by seed), as the parity
    tests do; only for the compared image: timed images keep diffusers' own generator."""
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as sd_module
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as xl_module
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral

    from add_turbo import noise

    module = sd_module if family == "sd_turbo" else xl_module
    steps = iter(range(1, 100))

    def start(shape, device=None, dtype=None, **_):
        return noise.seeded_noise(plan.SEED, shape).to(device, dtype)

    def step(shape, device=None, dtype=None, **_):
        return noise.seeded_noise(plan.SEED, shape, step=next(steps)).to(device, dtype)

    originals = [(module, module.randn_tensor), (ancestral, ancestral.randn_tensor)]
    module.randn_tensor, ancestral.randn_tensor = start, step
    try:
        yield
    finally:
        for owner, fn in originals:
            owner.randn_tensor = fn


def diffusers_runner(variant: str, family: str, pipe, hooked=None):
    """(run, ''): run(prompt, batch=1, keep=False, sync=True) -> Stages for a diffusers pipeline; the
    variants share the pipeline's weights (`hooked` is unused: the shared parts carry their hooks).
    Text to image starts from the pack's noise, so its image compares with the pack's."""
    import torch

    parts = _parts(pipe)
    base = variant.removeprefix("refine_").removesuffix("_cached")
    refine = variant.startswith("refine_")
    cached = refine or variant.endswith("_cached")
    unet = _compiled(parts) if base.endswith("_compile") else parts.unet
    vae = _tiny(parts, family) if "tiny" in base else parts.vae
    target = _img2img(pipe, parts, family) if refine else pipe

    def run(prompt, batch=1, keep=False, sync=True):
        stages = Stages(sync)
        parts.current.update(stages=stages, unet=unet)
        if target.unet is not unet or target.vae is not vae:  # a pipeline's setattr also rewrites its config
            target.unet, target.vae = unet, vae
        kwargs = dict(num_images_per_prompt=batch, guidance_scale=0.0, output_type="pt",
                      generator=torch.Generator(plan.DEVICE).manual_seed(plan.SEED))
        kwargs.update(_embeddings(pipe, parts, prompt) if cached else {"prompt": prompt})
        if refine:  # a batch refines copies of one frame
            kwargs.update(image=plan.frame(1).movedim(-1, 1), **plan.DIFFUSERS_REFINE)
        else:
            kwargs.update(height=plan.SIZE, width=plan.SIZE, num_inference_steps=1,
                          latents=_start_latents(parts, batch))
        with torch.no_grad(), _pack_noise(family) if keep and refine else contextlib.nullcontext():
            images = target(**kwargs).images.cpu()
        stages.image = images.movedim(1, -1).float() if keep else None
        return stages

    return run, ""
