"""Parity: the pack's txt2img equals diffusers (trailing, guidance 0) and the built-in SDTurboScheduler graph.

Identical weights (one tiny random model in both forms) and identical noise. diffusers scales its
starting latents by init_noise_sigma = sigma_max while the reference (Stability, ComfyUI) uses
sqrt(1 + sigma_max^2), so the injected latents are pre-scaled by the ratio; ancestral per-step noise
is fed to diffusers from the pack's own noise function.
"""

import math

import pytest
import torch

from add_turbo import noise, schedules
from devkit import graphs as g
from devkit import turbo_models

# Images (0..1): 1e-4 is 0.03/255. Latents: relative to their magnitude (another library, other kernels).
IMAGE_TOL, LATENT_REL = 1e-4, 1e-5
SIZE, SEED, PROMPT = 64, 1234, "a photo of a red fox in the snow"


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {family: g.load(model.single_file.name) for family, model in tiny_models.items()}


@pytest.fixture(scope="module")
def pipelines(tiny_models):
    return {family: turbo_models.load_pipeline(model) for family, model in tiny_models.items()}


def _diffusers_run(pipe, family, steps, sampler_noise_seed, height=SIZE, width=SIZE):
    """Run the diffusers pipeline with the pack's noise; returns (image [1, H, W, 3], latent / scale).

    SDXL's size conditioning is diffusers' own default: original = target = (height, width).
    """
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_module

    shape = (1, 4, height // 8, width // 8)
    sigma_max = float(schedules.training_sigmas()[999])
    start = noise.seeded_noise(SEED, shape) * (math.sqrt(1 + sigma_max**2) / sigma_max)
    kwargs = dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=height, width=width)
    outputs = {}
    original_randn = ancestral_module.randn_tensor
    for output_type in ("pt", "latent"):
        calls = iter(range(1, 100))
        ancestral_module.randn_tensor = lambda shape, **_: noise.seeded_noise(sampler_noise_seed, shape, step=next(calls))
        try:
            with torch.no_grad():
                outputs[output_type] = pipe(**kwargs, latents=start.clone(), output_type=output_type).images
        finally:
            ancestral_module.randn_tensor = original_randn
    image = outputs["pt"].permute(0, 2, 3, 1).float()
    return image, outputs["latent"].float() / pipe.vae.config.scaling_factor


# (family, steps, height, width): square and non-square sizes that are not 512; SDXL-Turbo at 768x512.
CASES = [(family, steps, height, width) for family in ("sd_turbo", "sdxl_turbo") for steps in (1, 4)
         for height, width in ((SIZE, SIZE), (SIZE, 96))] + [("sdxl_turbo", 1, 512, 768)]


@pytest.mark.parametrize("family,steps,height,width", CASES)
def test_matches_diffusers(family, steps, height, width, loaded, pipelines):
    model, clip, vae = loaded[family]
    # The published schedulers: SD-Turbo Euler (eta 0), SDXL-Turbo Euler ancestral (eta 1).
    sampler, eta = ("euler", 0.0) if family == "sd_turbo" else ("euler_ancestral", 1.0)
    latent = g.turbo_sample(model, g.encode(clip, PROMPT), g.empty_latent(height, width=width), seed=SEED, steps=steps,
                            sampler=sampler, eta=eta)
    image = g.decode(vae, latent)
    ref_image, ref_latent = _diffusers_run(pipelines[family], family, steps, SEED, height, width)
    image_diff = (image - ref_image).abs().max().item()
    latent_diff = (latent["samples"] - ref_latent).abs().max().item()
    latent_scale = ref_latent.abs().max().item()
    print(f"\nPARITY diffusers {family} {width}x{height} steps={steps} {sampler}: max|image diff|={image_diff:.2e} "
          f"max|latent diff|={latent_diff:.2e} (latent max |value| {latent_scale:.1f}) image std={image.std():.3f}")
    assert image.std() > 0.01, "degenerate image: parity would prove nothing"
    assert image_diff <= IMAGE_TOL
    assert latent_diff <= LATENT_REL * latent_scale


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
@pytest.mark.parametrize("steps,sampler", [(1, "euler_ancestral"), (4, "euler")])
def test_sai_spacing_matches_builtin_graph(family, steps, sampler, loaded):
    """spacing 'sai' equals the built-in SDTurboScheduler + SamplerCustom graph (cfg 1)."""
    model, clip, vae = loaded[family]
    cond = g.encode(clip, PROMPT)
    (builtin_sigmas,) = g.run(g.builtin("SDTurboScheduler"), model=model, steps=steps, denoise=1.0)
    (builtin_sampler,) = g.run(g.builtin("KSamplerSelect"), sampler_name=sampler)
    reference = g.sampler_custom(model, cond, g.empty_latent(SIZE), builtin_sampler, builtin_sigmas, seed=SEED)
    (pack_sigmas,) = g.run(g.builtin("ADDTurboScheduler"), model=model, steps=steps, strength=1.0, spacing="sai")
    ours = g.turbo_sample(model, cond, g.empty_latent(SIZE), seed=SEED, steps=steps, spacing="sai",
                          sampler=sampler, eta=1.0)
    sigma_diff = (pack_sigmas - builtin_sigmas).abs().max().item()
    latent_diff = (ours["samples"] - reference["samples"]).abs().max().item()
    image_diff = (g.decode(vae, ours) - g.decode(vae, reference)).abs().max().item()
    print(f"\nPARITY built-in sai {family} steps={steps} {sampler}: max|sigma diff|={sigma_diff:.2e} "
          f"max|latent diff|={latent_diff:.2e} max|image diff|={image_diff:.2e}")
    assert sigma_diff == 0
    assert image_diff <= IMAGE_TOL
    assert latent_diff <= LATENT_REL * reference["samples"].abs().max().item()
