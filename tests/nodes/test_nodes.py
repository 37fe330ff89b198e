"""The pack's nodes inside an in-process ComfyUI, with the tiny real-architecture models."""

import pytest
import torch

from add_turbo import noise, schedules
from devkit import graphs as g
from tests.support.tolerances import assert_fp32_close

SIZE = 64


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {family: g.load(model.single_file.name) for family, model in tiny_models.items()}


def _count_unet_calls(model):
    """A clone of `model` that records the batch size of every UNet evaluation."""
    calls = []
    patched = model.clone()

    def wrapper(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched.set_model_unet_function_wrapper(wrapper)
    return patched, calls


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sample_runs_exactly_one_model_evaluation_per_step(loaded, family, steps):
    model, clip, _ = loaded[family]
    counted, calls = _count_unet_calls(model)
    g.turbo_sample(counted, g.encode(clip, "a cat"), g.empty_latent(SIZE), steps=steps)
    assert calls == [1] * steps  # one call per step, batch 1: no unconditional pass


def test_loader_forces_epsilon_where_host_heuristic_says_v_prediction(tiny_models, tmp_checkpoint, tmp_path):
    import comfy.model_base
    import comfy.supported_models
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny_models["sd_turbo"].single_file))
    key = "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.norm1.bias"
    heuristic_key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    sd[heuristic_key] = torch.randn_like(sd[key]) * 0.5  # what makes ComfyUI pick v-prediction
    save_file(sd, str(tmp_path / "vpred_looking.safetensors"))
    name = tmp_checkpoint(tmp_path / "vpred_looking.safetensors", "vpred_looking_turbo.safetensors")
    stock = comfy.supported_models.SD20({"in_channels": 4})
    assert stock.model_type(sd, "model.diffusion_model.") == comfy.model_base.ModelType.V_PREDICTION
    model, _, _ = g.load(name)
    assert model.model.model_type == comfy.model_base.ModelType.EPS


def test_sdxl_size_conditioning_follows_the_image_size_or_clip_text_encode_sdxl(loaded):
    """As diffusers and Stability's demo: original = target = the size generated, crop 0, unless a
    user sets the sizes with CLIPTextEncodeSDXL."""
    model, clip, _ = loaded["sdxl_turbo"]
    height, width = 64, 96
    plain = g.encode(clip, "a red kite")

    def sdxl_encode(w, h):
        (cond,) = g.run(g.builtin("CLIPTextEncodeSDXL"), clip=clip, width=w, height=h, crop_w=0, crop_h=0,
                        target_width=w, target_height=h, text_g="a red kite", text_l="a red kite")
        return cond

    def sample(cond):
        return g.turbo_sample(model, cond, g.empty_latent(height, width=width), seed=2)["samples"]

    assert torch.equal(sample(plain), sample(sdxl_encode(width, height)))  # default: the size generated
    assert not torch.allclose(sample(plain), sample(sdxl_encode(512, 512)), rtol=0.01)  # the user's sizes count


@pytest.mark.parametrize("spacing", ["trailing", "sai"])
def test_scheduler_node_gives_model_sigmas_of_core_timesteps(loaded, spacing):
    model, _, _ = loaded["sd_turbo"]
    (sigmas,) = g.run(g.builtin("ADDTurboScheduler"), model=model, steps=2, strength=0.29, spacing=spacing)
    expected = schedules.turbo_sigmas(2, 0.29, spacing)
    assert sigmas.shape == (3,) and torch.allclose(sigmas, expected, rtol=1e-5)


@pytest.mark.parametrize("inputs,message", [
    (dict(steps=0, strength=1.0, spacing="trailing"), "steps must be"),
    (dict(steps=4, strength=0.002, spacing="trailing"), "use strength >= 0.004"),
    (dict(steps=1, strength=1.5, spacing="trailing"), "strength must be in"),
    (dict(steps=5, strength=0.3, spacing="sai"), "fits at most 3 step"),
])
def test_scheduler_node_rejects_out_of_range_values(loaded, inputs, message):
    with pytest.raises(ValueError, match=message):
        g.run(g.builtin("ADDTurboScheduler"), model=loaded["sd_turbo"][0], **inputs)


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_batch_image_k_equals_single_run_with_seed_plus_k(loaded, family):
    model, clip, _ = loaded[family]
    cond = g.encode(clip, "a lighthouse")
    batch = g.turbo_sample(model, cond, g.empty_latent(SIZE, batch=3), seed=10, steps=3)["samples"]
    for k in range(3):
        single = g.turbo_sample(model, cond, g.empty_latent(SIZE), seed=10 + k, steps=3)["samples"]
        # Another batch size takes other kernels: equal up to fp32 rounding, relative to the magnitude.
        assert_fp32_close(batch[k], single[0])


def test_turbo_sampler_in_builtin_sampler_custom_is_deterministic_and_uses_cpu_keyed_noise(loaded):
    model, clip, _ = loaded["sdxl_turbo"]
    cond = g.encode(clip, "a red bicycle")
    (sampler,) = g.run(g.builtin("ADDTurboSampler"), sampler="euler_ancestral", eta=1.0)
    (sigmas,) = g.run(g.builtin("ADDTurboScheduler"), model=model, steps=4, strength=1.0, spacing="trailing")
    a = g.sampler_custom(model, cond, g.empty_latent(SIZE), sampler, sigmas, seed=3)["samples"]
    b = g.sampler_custom(model, cond, g.empty_latent(SIZE), sampler, sigmas, seed=3)["samples"]
    one_node = g.turbo_sample(model, cond, g.empty_latent(SIZE), seed=3, steps=4)["samples"]
    other_seed = g.sampler_custom(model, cond, g.empty_latent(SIZE), sampler, sigmas, seed=4)["samples"]
    assert torch.equal(a, b)
    assert_fp32_close(a, one_node)  # same sampler, same noise keys as the one-node path
    assert not torch.allclose(a, other_seed, rtol=0.01)
    # And the per-step noise is the pack's: with zeroed steps-noise the result would differ.
    assert not torch.equal(noise.seeded_noise(3, a.shape, step=1), noise.seeded_noise(3, a.shape, step=2))


def test_strength_below_one_refines_an_encoded_latent(loaded):
    model, clip, vae = loaded["sd_turbo"]
    cond = g.encode(clip, "a house")
    image = torch.rand(1, SIZE, SIZE, 3)
    (latent,) = g.run(g.builtin("VAEEncode"), pixels=image, vae=vae)
    low = g.turbo_sample(model, cond, latent, seed=1, steps=2, strength=0.05)["samples"]
    high = g.turbo_sample(model, cond, latent, seed=1, steps=2, strength=1.0)["samples"]
    assert (low - latent["samples"]).abs().mean() < (high - latent["samples"]).abs().mean()


def test_repeated_runs_leave_no_stray_tensors(loaded):
    import gc

    model, clip, vae = loaded["sd_turbo"]

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    def one_round(i):
        cond = g.encode(clip, f"a lighthouse {i}")
        g.decode(vae, g.turbo_sample(model, cond, g.empty_latent(SIZE), seed=i, steps=1 + i % 3,
                                     sampler=("euler", "euler_ancestral", "consistency")[i % 3]))
        g.run(g.builtin("ADDTurboRefine"), model=model, vae=vae, positive=cond, image=torch.rand(1, 64, 64, 3),
              seed=i, steps=2, strength=0.5, spacing="trailing", sampler="euler_ancestral", eta=1.0)

    # Warm-up fills the loader's prompt cache (16 prompts), which holds on to their conditioning; a leak
    # of even one tensor a round shows in the 12 rounds after it.
    for i in range(17):
        one_round(i)
    before = live_tensors()
    for i in range(17, 29):
        one_round(i)
    after = live_tensors()
    print(f"\nlive tensors after 17 warm-up rounds: {before}, after 12 more: {after}")
    assert after <= before
