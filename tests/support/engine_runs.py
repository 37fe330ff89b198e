"""What the engine tests (tests/nodes/engine/) share besides their fixtures (tests/nodes/engine/conftest.py):
the size, prompt and seed they run, and the runs they compare."""

import torch

from devkit import graphs as g

SIZE, PROMPT, SEED = 64, "a lighthouse at dusk", 7
FAMILIES = ["sd_turbo", "sdxl_turbo"]


def turbo_latents(model, positive, latent=None, steps=2, strength=1.0, seed=SEED):
    """ADD Turbo Sample: the sampled latent [B, 4, h, w]."""
    latent = g.empty_latent(SIZE) if latent is None else latent
    return g.turbo_sample(model, positive, latent, seed=seed, steps=steps, strength=strength)["samples"]


def smooth_photo(seed=3, size=SIZE):
    """A smooth RGB image [1, size, size, 3] in 0..1."""
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").movedim(1, -1)


def vae_encoded(vae, image):
    """VAEEncode: the latent dict of `image`."""
    (latent,) = g.run(g.builtin("VAEEncode"), pixels=image, vae=vae)
    return latent
