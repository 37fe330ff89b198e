"""Sampler math without ComfyUI, against the formulas in the reference notes."""

import math

import pytest
import torch

from add_turbo import noise, samplers, schedules


def counting(denoise):
    calls = []

    def denoiser(x, sigma):
        calls.append(float(sigma))
        return denoise(x, sigma)

    return denoiser, calls


def test_ancestral_sigmas_formula():
    s, s_next = 14.6146, 4.0817
    down, up = samplers.ancestral_sigmas(s, s_next, 1.0)
    assert math.isclose(up, math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    assert math.isclose(down**2 + up**2, s_next**2)
    assert samplers.ancestral_sigmas(s, s_next, 0.0) == (s_next, 0.0)
    assert samplers.ancestral_sigmas(s, 0.0, 1.0) == (0.0, 0.0)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_one_step_returns_x0_prediction(sampler):
    x = torch.randn(2, 4, 8, 8)
    target = torch.randn(2, 4, 8, 8)
    denoiser, calls = counting(lambda x, s: target)
    out = samplers.sample(denoiser, x, schedules.turbo_sigmas(1), sampler)
    assert torch.equal(out, target) and len(calls) == 1


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_exactly_one_model_call_per_step(sampler, steps):
    denoiser, calls = counting(lambda x, s: x * 0.5)
    samplers.sample(denoiser, torch.randn(1, 4, 8, 8), schedules.turbo_sigmas(steps), sampler,
                    noise_for_step=lambda i: torch.randn(1, 4, 8, 8))
    assert len(calls) == steps


def test_euler_equals_ancestral_with_eta_zero_and_is_deterministic():
    sigmas = schedules.turbo_sigmas(4)
    x = torch.randn(1, 4, 8, 8)
    model = lambda x, s: torch.tanh(x / (1 + s))  # noqa: E731
    a = samplers.sample(model, x, sigmas, "euler")
    b = samplers.sample(model, x, sigmas, "euler_ancestral", eta=0.0)
    assert torch.equal(a, b)


def test_euler_ancestral_step_by_hand():
    sigmas = schedules.turbo_sigmas(2)
    x = torch.randn(1, 4, 4, 4)
    fixed_noise = torch.randn(1, 4, 4, 4)
    out = samplers.sample(lambda x, s: x * 0.1, x, sigmas, "euler_ancestral", 1.0, lambda i: fixed_noise)
    s, s_next = float(sigmas[0]), float(sigmas[1])
    down, up = samplers.ancestral_sigmas(s, s_next, 1.0)
    x1 = x + (x - x * 0.1) / s * (down - s) + fixed_noise * up
    assert torch.allclose(out, x1 * 0.1, atol=1e-6)  # the last step returns the x0 prediction


def test_consistency_renoises_fully():
    sigmas = schedules.turbo_sigmas(2)
    fixed_noise = torch.ones(1, 4, 4, 4)
    seen = []

    def model(x, s):
        seen.append(x.clone())
        return torch.zeros_like(x)

    samplers.sample(model, torch.randn(1, 4, 4, 4), sigmas, "consistency", noise_for_step=lambda i: fixed_noise)
    assert torch.allclose(seen[1], fixed_noise * sigmas[1])


def test_noised_start_scaling():
    latent, eps = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    assert torch.allclose(samplers.noised_start(latent, eps, 14.6146, True), eps * math.sqrt(1 + 14.6146**2))
    assert torch.allclose(samplers.noised_start(latent + 1, eps, 2.0, False), latent + 1 + 2.0)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="sampler must be one of"):
        samplers.sample(lambda x, s: x, torch.zeros(1), schedules.turbo_sigmas(1), "dpmpp")
    with pytest.raises(ValueError, match="needs noise_for_step"):
        samplers.sample(lambda x, s: x, torch.zeros(1, 1), schedules.turbo_sigmas(2), "euler_ancestral")
    with pytest.raises(ValueError, match="end in 0"):
        samplers.sample(lambda x, s: x, torch.zeros(1), torch.tensor([1.0, 0.5]), "euler")


def test_noise_is_keyed_by_seed_batch_index_and_step():
    shape = (3, 4, 8, 8)
    batch = noise.seeded_noise(7, shape)
    for k in range(3):
        single = noise.seeded_noise(7 + k, (1, 4, 8, 8))
        assert torch.equal(batch[k], single[0])
    assert torch.equal(noise.seeded_noise(7, (1, 4, 8, 8))[0],
                       torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))[0])
    assert not torch.equal(noise.seeded_noise(7, shape, step=1), batch)
    assert not torch.equal(noise.seeded_noise(7, shape, step=1), noise.seeded_noise(7, shape, step=2))
    assert torch.equal(noise.seeded_noise(7, shape, step=3), noise.seeded_noise(7, shape, step=3))
    big = noise.seeded_noise(2**64 - 1, (2, 1, 2, 2))  # wraps, never overflows
    assert torch.equal(big[1], noise.seeded_noise(0, (1, 1, 2, 2))[0])


def test_noise_dtype_and_device_conversion_after_cpu_draw():
    n32 = noise.seeded_noise(3, (1, 4, 4, 4))
    n16 = noise.seeded_noise(3, (1, 4, 4, 4), dtype=torch.bfloat16)
    assert n16.dtype == torch.bfloat16 and torch.equal(n16, n32.to(torch.bfloat16))
