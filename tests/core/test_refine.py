"""Refine helpers without ComfyUI: checks, padding round trip, soft masks."""

import pytest
import torch

from add_turbo import refine


@pytest.mark.parametrize("shape,message", [
    ((64, 64, 3), "must be \\[batch"), ((1, 64, 64, 2), "must be \\[batch"), ((0, 64, 64, 3), "batch is empty"),
    ((1, 63, 200, 3), "at least 64 px"), ((1, 64, 5000, 3), "limit is 4096 px"),
])
def test_check_image_names_the_limit(shape, message):
    with pytest.raises(ValueError, match=message):
        refine.check_image(torch.zeros(shape))


def test_check_image_refuses_nan():
    image = torch.zeros(1, 64, 64, 3)
    image[0, 3, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        refine.check_image(image)


@pytest.mark.parametrize("height,width,multiple", [(65, 99, 16), (64, 64, 64), (100, 77, 64)])
def test_pad_and_crop_round_trip(height, width, multiple):
    image = torch.rand(2, height, width, 4)
    padded, size = refine.pad_to_multiple(image, multiple)
    assert padded.shape[1] % multiple == 0 and padded.shape[2] % multiple == 0
    assert torch.equal(refine.crop_to(padded, size), image)
    assert torch.equal(padded[:, -1, :width], padded[:, height - 1, :width])  # edge replicated


def test_soft_mask_is_zero_outside_and_soft_inside():
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    soft = refine.soft_mask(mask, 2, 64, 64, feather=4)
    assert soft.shape == (2, 64, 64, 1)
    assert soft[:, mask == 0].abs().max() == 0
    assert soft[0, 32, 32, 0] == 1 and 0 < soft[0, 16, 32, 0] < 1


@pytest.mark.parametrize("mask_shape,message", [((1, 32, 64), "image's size"), ((3, 64, 64), "mask batch 3")])
def test_soft_mask_rejects_mismatches(mask_shape, message):
    with pytest.raises(ValueError, match=message):
        refine.soft_mask(torch.ones(mask_shape), 2, 64, 64)


def test_blend():
    a, b = torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 3)
    w = torch.tensor([0.0, 0.25, 0.5, 1.0]).reshape(1, 2, 2, 1)
    assert torch.allclose(refine.blend(a, b, w)[..., 0], w[..., 0])
