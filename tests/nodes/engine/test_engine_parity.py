"""The loader's `engine` option, direct path: it gives the normal path's latents (txt2img, refine,
batches, several queued prompts in one run), and the loader reports its warm-up."""

import re

import pytest
import torch

from devkit import graphs as g
from devkit.pack import pack_module
from tests.support.engine_runs import FAMILIES, PROMPT, SEED, SIZE, smooth_photo, turbo_latents, vae_encoded
from tests.support.tolerances import assert_fp32_close, max_rel_diff


def _refine(model, vae, positive, image, steps, mask=None):
    (out,) = g.run(g.builtin("ADDTurboRefine"), model=model, vae=vae, positive=positive, image=image, seed=SEED,
                   steps=steps, strength=0.5, spacing="trailing", sampler="euler_ancestral", eta=1.0,
                   **({} if mask is None else {"mask": mask}))
    return out


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_through_the_engine_equals_the_normal_path(loaded, engine, host_sampler_runs, family, steps):
    normal_model, clip, _ = loaded[family]["off"]
    engine_model = loaded[family]["on"][0]
    positive = g.encode(clip, PROMPT)
    state = engine.state_of(engine_model)
    direct_before = state.runs["direct"]

    want = turbo_latents(normal_model, positive, steps=steps)
    assert host_sampler_runs == ["PositiveOnlyGuider"]
    got = turbo_latents(engine_model, positive, steps=steps)
    assert host_sampler_runs == ["PositiveOnlyGuider"]  # the engine ran without the host's sampler
    assert state.runs["direct"] == direct_before + 1
    assert re.fullmatch(r"direct path \(no CUDA graphs on cpu\), \d+ of \d+ conv layers packed for oneDNN "
                        r"\(\+\d\.\d\d GiB\)", state.last), state.last
    diff = assert_fp32_close(got, want)
    assert torch.equal(got, want), f"{diff:.1e} apart: the same calls on the same inputs should be bit-identical"
    print(f"\nENGINE {family} txt2img {steps} step(s): bit-identical to the normal path")


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_refine_through_the_engine_equals_the_normal_path(loaded, engine, host_sampler_runs, family, steps):
    normal_model, clip, vae = loaded[family]["off"]
    engine_model = loaded[family]["on"][0]
    positive = g.encode(clip, PROMPT)
    image = smooth_photo()

    # strength 0.5 from an encoded image: ADD Turbo Sample's latents
    latent = vae_encoded(vae, image)
    want = turbo_latents(normal_model, positive, latent, steps=steps, strength=0.5)
    got = turbo_latents(engine_model, positive, latent, steps=steps, strength=0.5)
    latent_diff = assert_fp32_close(got, want)
    assert torch.equal(got, want), f"{latent_diff:.1e} apart: the same calls on the same inputs should be bit-identical"
    # and ADD Turbo Refine (size conditioning of the image's own size)
    want_image = _refine(normal_model, vae, positive, image, steps)
    got_image = _refine(engine_model, vae, positive, image, steps)
    image_diff = assert_fp32_close(got_image, want_image)
    assert host_sampler_runs == ["PositiveOnlyGuider"] * 2  # only the engine-off runs
    print(f"\nENGINE {family} refine 0.5, {steps} step(s): latent {latent_diff:.1e}, image {image_diff:.1e} "
          "(relative)")


def test_refine_with_a_mask_uses_the_engine_the_mask_is_a_pixel_blend(loaded, engine, host_sampler_runs):
    normal_model, clip, vae = loaded["sd_turbo"]["off"]
    engine_model = loaded["sd_turbo"]["on"][0]
    positive = g.encode(clip, PROMPT)
    mask = torch.zeros(SIZE, SIZE)
    mask[8:40, 16:56] = 1
    want = _refine(normal_model, vae, positive, smooth_photo(), 2, mask)
    got = _refine(engine_model, vae, positive, smooth_photo(), 2, mask)
    assert host_sampler_runs == ["PositiveOnlyGuider"]
    assert_fp32_close(got, want)


def test_batches_and_sdxl_size_conditioning_match(loaded, host_sampler_runs):
    """Batch 2 at a non-square size: image k keyed by seed + k and SDXL's size conditioning as the host's."""
    normal_model, clip, _ = loaded["sdxl_turbo"]["off"]
    engine_model = loaded["sdxl_turbo"]["on"][0]
    positive = g.encode(clip, PROMPT)
    latent = g.empty_latent(SIZE, batch=2, width=2 * SIZE)
    assert_fp32_close(turbo_latents(engine_model, positive, latent, steps=3), turbo_latents(normal_model, positive, latent, steps=3))
    assert host_sampler_runs == ["PositiveOnlyGuider"]


@pytest.mark.parametrize("family", FAMILIES)
def test_several_seeds_in_one_engine_batch_each_equal_their_lone_run(loaded, engine, host_sampler_runs, family):
    """ADD Turbo Sample's queue_batch: the latents of several queued prompts from one UNet call per step."""
    sampling = pack_module("nodes.latent_sampling")
    model, clip = loaded[family]["on"][:2]
    positive = g.encode(clip, PROMPT)
    latent = g.empty_latent(SIZE, batch=2)["samples"]
    seeds = [SEED, 40, SEED + 1]  # image 1 of the first prompt and image 0 of the third share a seed
    state = engine.state_of(model)
    direct_before = state.runs["direct"]
    latents, reason = sampling.sample_latents_together(model, [positive] * 3, latent, seeds, 2, 1.0, "trailing",
                                                       "euler_ancestral", 1.0)
    assert reason is None and state.runs["direct"] == direct_before + 1  # one engine run for all three prompts
    for seed, got in zip(seeds, latents, strict=True):
        alone = sampling.sample_latent(model, positive, latent, seed, 2, 1.0, "trailing", "euler_ancestral", 1.0)
        assert_fp32_close(got, alone)  # another batch size takes other kernels: equal up to fp32 rounding
    # One seed, one noise, one batch, but rows 1 and 4 of it: torch's CPU GEMM splits a 6-row matmul over
    # threads by row position (seen on 2 threads), so equal only up to fp32 rounding.
    assert_fp32_close(latents[0][1], latents[2][0])
    assert host_sampler_runs == []
    _, off_reason = sampling.sample_latents_together(loaded[family]["off"][0], [positive] * 3, latent, seeds, 2,
                                                     1.0, "trailing", "euler_ancestral", 1.0)
    assert off_reason == "the loader's engine is off"
    patched = model.clone()
    patched.add_object_patch("diffusion_model.input_blocks.0.0.weight", torch.nn.Parameter(torch.zeros(1)))
    _, patched_reason = sampling.sample_latents_together(patched, [positive] * 3, latent, seeds, 2, 1.0,
                                                         "trailing", "euler_ancestral", 1.0)
    assert patched_reason is not None and "object patches" in patched_reason


@pytest.mark.parametrize("family", FAMILIES)
def test_several_prompts_in_one_engine_batch_each_equal_their_lone_run(loaded, engine, host_sampler_runs, family):
    """queue_batch with other prompt texts: each group of rows gets its own prompt (and SDXL its own pooled
    output), so each latent is its lone run's up to fp32 rounding."""
    sampling = pack_module("nodes.latent_sampling")
    model, clip = loaded[family]["on"][:2]
    positives = [g.encode(clip, text) for text in (PROMPT, "a red fox", "a city at night, neon")]
    latent = g.empty_latent(SIZE, width=2 * SIZE)["samples"]
    seeds = [SEED, SEED, 3]
    state = engine.state_of(model)
    direct_before = state.runs["direct"]
    latents, reason = sampling.sample_latents_together(model, positives, latent, seeds, 2, 1.0, "trailing",
                                                       "euler_ancestral", 1.0)
    assert reason is None and state.runs["direct"] == direct_before + 1
    for positive, seed, got in zip(positives, seeds, latents, strict=True):
        alone = sampling.sample_latent(model, positive, latent, seed, 2, 1.0, "trailing", "euler_ancestral", 1.0)
        assert_fp32_close(got, alone)
    assert max_rel_diff(latents[0], latents[1]) > 1e-2  # one seed, two prompts: two images
    long_prompt = g.encode(clip, " ".join(["word"] * 90))  # over 77 tokens: a longer conditioning
    _, reason = sampling.sample_latents_together(model, [positives[0], long_prompt], latent, [1, 2], 1, 1.0,
                                                 "trailing", "euler_ancestral", 1.0)
    assert reason == "the prompts' conditionings differ in shape (e.g. a prompt over 77 tokens)"
    assert host_sampler_runs == []


def test_loader_reports_the_engine_warm_up(tiny_models, engine):
    name = tiny_models["sd_turbo"].single_file.name
    model, _, _, message = g.load_with_message(name, engine="on")
    assert re.fullmatch(r"engine: direct path \(no CUDA graphs on cpu\), conv layers packed for oneDNN at each "
                        r"size's first run, 64x64 warm-up \d+\.\d s", message), message
    assert engine.engine_on(model) and engine.engine_on(model.clone())  # clones carry the choice
    _, _, _, off_message = g.load_with_message(name)
    assert off_message == ""
    with pytest.raises(ValueError, match="engine must be one of"):
        g.load(name, engine="fast")
