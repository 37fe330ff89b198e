"""ADDTurboRefine in-process: parity with diffusers img2img, sizes, batches, alpha, masks."""

import math

import pytest
import torch

from add_turbo import noise
from devkit import graphs as g
from devkit import turbo_models
from tests.support.tolerances import assert_same_image

PROMPT, SEED = "a watercolor painting of a harbour", 77


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return {family: g.load(model.single_file.name) for family, model in tiny_models.items()}


def refine(model, clip, vae, image, **kw):
    args = dict(seed=SEED, steps=2, strength=0.5, spacing="trailing", sampler="euler_ancestral", eta=1.0)
    args.update(kw)
    (out,) = g.run(g.builtin("ADDTurboRefine"), model=model, vae=vae, positive=g.encode(clip, PROMPT), image=image, **args)
    return out


def _smooth_image(batch=1, height=64, width=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear").movedim(1, -1)


@pytest.fixture(scope="module")
def img2img_pipelines(tiny_models):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    out = {}
    for family, cls in (("sd_turbo", StableDiffusionImg2ImgPipeline), ("sdxl_turbo", StableDiffusionXLImg2ImgPipeline)):
        out[family] = cls(**turbo_models.load_pipeline(tiny_models[family]).components)
    return out


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
@pytest.mark.parametrize("height,width", [(64, 64), (64, 96)])
def test_refine_matches_diffusers_img2img(loaded, img2img_pipelines, family, height, width):
    """steps 2, strength 0.5 here = diffusers steps 4, strength 0.5 (timesteps 499, 249).

    SDXL's size conditioning is diffusers' default: original = target = the image's size.
    """
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as sd_module
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as xl_module
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_module

    model, clip, vae = loaded[family]
    image = _smooth_image(height=height, width=width)
    sampler, eta = ("euler", 0.0) if family == "sd_turbo" else ("euler_ancestral", 1.0)
    ours = refine(model, clip, vae, image, sampler=sampler, eta=eta)

    pipe = img2img_pipelines[family]
    (latent,) = g.run(g.builtin("VAEEncode"), pixels=image, vae=vae)  # the VAE mode latent
    scaled = latent["samples"] * pipe.vae.config.scaling_factor
    module = sd_module if family == "sd_turbo" else xl_module
    steps = iter(range(1, 100))
    patches = [(module, lambda shape, **_: noise.seeded_noise(SEED, shape)),
               (ancestral_module, lambda shape, **_: noise.seeded_noise(SEED, shape, step=next(steps)))]
    originals = [(m, m.randn_tensor) for m, _ in patches]
    kwargs = dict(prompt=PROMPT, image=scaled, strength=0.5, num_inference_steps=4, guidance_scale=0.0, output_type="pt")
    try:
        for m, fn in patches:
            m.randn_tensor = fn
        with torch.no_grad():
            reference = pipe(**kwargs).images.permute(0, 2, 3, 1)
    finally:
        for m, fn in originals:
            m.randn_tensor = fn
    diff = (ours - reference).abs().max().item()
    print(f"\nPARITY img2img {family} {width}x{height} (ours steps 2 / diffusers steps 4, strength 0.5): max|image diff|={diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_strength_one_equals_txt2img_from_the_same_seed(loaded, family):
    model, clip, vae = loaded[family]
    refined = refine(model, clip, vae, _smooth_image(), strength=1.0, steps=2)
    latent = g.turbo_sample(model, g.encode(clip, PROMPT), g.empty_latent(64), seed=SEED, steps=2)
    assert torch.allclose(refined, g.decode(vae, latent), atol=1e-6)


@pytest.mark.parametrize("height,width", [(64, 64), (77, 131), (100, 64)])
def test_any_size_comes_back_exactly(loaded, height, width):
    out = refine(*loaded["sd_turbo"], _smooth_image(1, height, width))
    assert out.shape == (1, height, width, 3)


def test_batch_refines_as_a_batch_with_seed_plus_k(loaded):
    images = _smooth_image(batch=3, seed=4)
    batch = refine(*loaded["sd_turbo"], images)
    single = refine(*loaded["sd_turbo"], images[2:3], seed=SEED + 2)
    assert batch.shape == (3, 64, 64, 3)
    assert_same_image(batch[2], single[0])  # another batch size: other kernels, same 8-bit image


def test_rgba_keeps_alpha(loaded):
    image = torch.cat([_smooth_image(), torch.rand(1, 64, 64, 1)], dim=-1)
    out = refine(*loaded["sd_turbo"], image)
    assert out.shape == (1, 64, 64, 4) and torch.equal(out[..., 3], image[..., 3])


def test_mask_changes_only_masked_pixels(loaded):
    image = _smooth_image(seed=9)
    mask = torch.zeros(64, 64)
    mask[16:48, 8:40] = 1
    out = refine(*loaded["sd_turbo"], image, mask=mask, strength=0.8)
    assert torch.equal(out[0, mask == 0], image[0, mask == 0])
    assert (out[0, mask == 1] - image[0, mask == 1]).abs().mean() > 1e-3


def test_low_strength_changes_less_and_never_zero_steps(loaded):
    image = _smooth_image(seed=5)
    low = (refine(*loaded["sd_turbo"], image, strength=0.02, steps=4) - image).abs().mean()
    high = (refine(*loaded["sd_turbo"], image, strength=0.9, steps=4) - image).abs().mean()
    assert low < high


@pytest.mark.parametrize("image,message", [(torch.zeros(1, 32, 64, 3), "at least 64 px"),
                                           (torch.full((1, 64, 64, 3), math.nan), "NaN")])
def test_bad_images_get_clear_errors(loaded, image, message):
    with pytest.raises(ValueError, match=message):
        refine(*loaded["sd_turbo"], image)
