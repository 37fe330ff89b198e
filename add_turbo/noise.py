"""Seeded noise that is the same on every device and for every batch size.

Noise for image k of a batch is keyed by (seed + k, step) on a CPU generator and then moved to the
target device, so one seed gives the same image on CPU and GPU, and image k of a batch equals a
single run with seed + k. Step 0 (the starting noise) of a single image equals
`torch.randn(shape, generator=torch.Generator().manual_seed(seed))`, which is also what ComfyUI's
built-in starting noise is for a batch of one.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """A 64-bit mixing function: distinct (seed, step) keys give unrelated generator seeds."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def generator_seed(seed: int, batch_index: int = 0, step: int = 0) -> int:
    """The CPU generator seed for image `batch_index` of a batch at sampler `step` (0 = start)."""
    image_seed = (seed + batch_index) & _MASK64
    if step == 0:
        return image_seed
    return _splitmix64(image_seed ^ _splitmix64(step))


def seeded_noise(
    seed: int,
    shape: tuple[int, ...] | torch.Size,
    step: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise [B, C, H, W] (any [B, ...]) keyed by (seed + b, step) per batch item."""
    batch, *item_shape = shape
    out = torch.empty((batch, *item_shape), dtype=torch.float32)
    generator = torch.Generator(device="cpu")
    for index in range(batch):
        generator.manual_seed(generator_seed(seed, index, step))
        out[index] = torch.randn(item_shape, generator=generator, dtype=torch.float32)
    return out.to(device=device, dtype=dtype)


def grouped_noise(
    groups: list[tuple[int, int]],
    item_shape: tuple[int, ...] | torch.Size,
    step: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise [sum(rows), *item_shape] for a batch made of groups (seed, rows): each group's rows are
    what seeded_noise(seed, [rows, *item_shape], step) gives it alone, so several prompts sampled in
    one batch each get the noise of their own run."""
    return torch.cat([seeded_noise(seed, (rows, *item_shape), step, device, dtype) for seed, rows in groups])
