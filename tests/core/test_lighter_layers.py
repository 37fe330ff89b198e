"""Lighter layers equal the plain ones up to fp32 rounding: an upsample convolution as a 2x2 convolution
and a pixel shuffle, GEGLU as two products."""

import pytest
import torch
import torch.nn.functional as F

from add_turbo.acceleration import lighter_layers
from tests.support.tolerances import assert_fp32_close


@pytest.mark.parametrize(("batch", "cin", "cout", "h", "w", "bias"),
                         [(1, 8, 5, 7, 9, True), (2, 3, 4, 1, 1, False), (1, 16, 16, 12, 6, True)])
def test_upsample_conv_equals_nearest_upsample_then_conv(batch, cin, cout, h, w, bias):
    gen = torch.Generator().manual_seed(batch * 100 + h)
    x = torch.randn(batch, cin, h, w, generator=gen)
    weight = torch.randn(cout, cin, 3, 3, generator=gen)
    b = torch.randn(cout, generator=gen) if bias else None
    want = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, b, padding=1)
    assert_fp32_close(lighter_layers.upsample_conv(x, weight, b), want)


def test_phase_kernels_do_four_ninths_of_the_work():
    weight = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    kernels = lighter_layers.phase_kernels(weight)
    assert kernels.shape == (24, 4, 2, 2)  # 4 phases x 4 taps = 16 per output pixel quad, against 4 x 9
    # every phase kernel holds all nine taps' weight once: the taps are summed, never dropped
    assert_fp32_close(kernels.view(6, 4, 4, 2, 2).sum(dim=(3, 4)), weight.sum(dim=(2, 3)).unsqueeze(1).expand(6, 4, 4))


def test_geglu_equals_the_split_projection():
    gen = torch.Generator().manual_seed(2)
    x, weight, bias = torch.randn(2, 5, 8, generator=gen), torch.randn(12, 8, generator=gen), torch.randn(12, generator=gen)
    value, gate = F.linear(x, weight, bias).chunk(2, dim=-1)
    assert_fp32_close(lighter_layers.geglu(x, weight, bias), value * F.gelu(gate))
