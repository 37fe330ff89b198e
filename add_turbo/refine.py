"""Image-to-image helpers: input checks, padding to the UNet's multiple, soft masks and blending.

Images are ComfyUI-style [B, H, W, C] floats in 0..1 (C = 3, or 4 with alpha); masks [B, H, W] or [H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_SIDE = 64
MAX_SIDE = 4096
MAX_PIXELS = 4096 * 4096


def check_image(image: torch.Tensor) -> None:
    """Raise ValueError naming the limit when an IMAGE cannot be refined."""
    if image.ndim != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be [batch, height, width, 3 or 4 channels], got shape {list(image.shape)}")
    batch, height, width, _ = image.shape
    if batch == 0:
        raise ValueError("the image batch is empty: connect an image with at least one picture")
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image is {width}x{height}: both sides must be at least {MIN_SIDE} px; upscale it first")
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise ValueError(f"image is {width}x{height}: the limit is {MAX_SIDE} px a side ({MAX_PIXELS // 10**6} MP); "
                         "downscale it or refine it in tiles")
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values: check the node that produced it")


def pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad [B, H, W, C] at the bottom/right by edge replication to a multiple of `multiple`.

    Returns:
        (padded [B, H', W', C], (H, W)) for `crop_to`.
    """
    height, width = image.shape[1:3]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return image, (height, width)
    padded = F.pad(image.movedim(-1, 1), (0, pad_w, 0, pad_h), mode="replicate").movedim(1, -1)
    return padded, (height, width)


def crop_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H', W', C] -> [B, H, W, C], undoing `pad_to_multiple`."""
    return image[:, : size[0], : size[1], :]


def soft_mask(mask: torch.Tensor, batch: int, height: int, width: int, feather: int = 8) -> torch.Tensor:
    """A mask with a soft inner edge, [B, H, W, 1] in 0..1; zero wherever `mask` is zero.

    Args:
        mask: [H, W] or [B, H, W] (B = 1 or batch), 1 = change this pixel.
        feather: width of the soft edge in pixels (0 = hard edge).
    """
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or tuple(mask.shape[1:]) != (height, width):
        raise ValueError(f"mask is {list(mask.shape)} but the image is {width}x{height}: give a mask of the "
                         "image's size (e.g. from Load Image's alpha or a resized mask)")
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"mask batch {mask.shape[0]} does not match the image batch {batch}: give 1 or {batch} masks")
    if not torch.isfinite(mask).all():
        raise ValueError("mask contains NaN or infinite values")
    hard = mask.float().clamp(0, 1).expand(batch, height, width)[:, None]
    soft = hard
    if feather > 0:
        kernel = 2 * feather + 1
        for _ in range(2):  # two box blurs: a smooth, nearly Gaussian falloff
            soft = F.avg_pool2d(F.pad(soft, (feather,) * 4, mode="replicate"), kernel, stride=1)
        soft = torch.minimum(soft, hard)  # the soft edge lies inside the mask
    return soft[:, 0, :, :, None]


def blend(original: torch.Tensor, refined: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """original * (1 - weight) + refined * weight, all [B, H, W, C] (weight [B, H, W, 1])."""
    return original + (refined - original) * weight
