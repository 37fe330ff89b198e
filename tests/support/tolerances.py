"""Tolerances that follow from fp32 arithmetic, relative to the magnitude they bound.

Two fp32 computations of the same math that take different kernels (another batch size, layout,
operation order, or library) differ by a few ulps per operation: about 1e-7 of the values involved,
growing with depth to about 1e-6 over a UNet pass. So latents (values up to a few hundred with
the tiny random models) are compared relative to their largest magnitude, and decoded images
(0..1) in steps of 1/255, the resolution a saved image has.
"""

import torch

FP32_REL = 1e-5  # ten times the largest rounding drift seen between kernel paths (about 1e-6)
HALF_STEP = 0.5 / 255  # below this the 8-bit image is the same, up to pixels that sit on a rounding edge


def max_rel_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return ((actual.float() - expected.float()).abs().max() / scale).item()


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = FP32_REL) -> float:
    """Same values up to fp32 rounding of another kernel path; returns the relative difference."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = max_rel_diff(actual, expected)
    assert diff <= rel, f"max|diff| is {diff:.2e} of max|expected| (allowed {rel:.0e})"
    return diff


def assert_same_image(actual: torch.Tensor, expected: torch.Tensor, steps_of_255: float = 0.5) -> float:
    """Images in 0..1 that agree within `steps_of_255` of one 8-bit level; returns max|diff| in 1/255."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual.float() - expected.float()).abs().max().item() * 255
    assert diff <= steps_of_255, f"max|image diff| is {diff:.3f}/255 (allowed {steps_of_255}/255)"
    return diff
