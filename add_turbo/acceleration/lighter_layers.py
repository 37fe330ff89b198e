"""Layers rewritten to do the same arithmetic with less work, for a graph that is converted once (OpenVINO).

- `upsample_conv`: a 3x3 convolution after a nearest 2x upsample reads each input pixel four times.
  Each of the four output phases (even/odd row, even/odd column) is a 2x2 convolution of the input
  with the 3x3 kernel's taps summed where they land on the same input pixel. All four run as one 2x2
  convolution with 4x the output channels, then a pixel shuffle: 4/9 of the multiply-adds.
- `geglu`: GEGLU's projection as two matrix products (value, gate) instead of one product split in
  two, which OpenVINO runs as a slow reference split.

Both equal the plain layers in real arithmetic; in floating point they differ by the rounding of the
summed taps and of another kernel order (fp32 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """weight [O, I, 3, 3] -> [4 * O, I, 2, 2]: the 2x2 kernels of the four output phases of "nearest 2x
    upsample, then this 3x3 convolution with padding 1", in pixel-shuffle channel order (o * 4 + 2 * r + c).

    With the input padded by 1, output row p of a 2x2 convolution sees input rows p - 1 and p. The odd
    upsampled row 2p - 1 reads input rows (p - 1, p - 1, p) through taps (0, 1, 2): kernel rows (w0 + w1, w2);
    the even row 2p reads (p - 1, p, p): (w0, w1 + w2). Shuffle position r = 0 holds the odd row, so
    the shuffled output is the upsampled one shifted by one pixel (cropped in `upsample_conv`).
    """
    def phases(w, dim):  # the odd phase's two taps, then the even phase's, along kernel axis `dim`
        t0, t1, t2 = w.unbind(dim)
        return torch.stack([t0 + t1, t2], dim), torch.stack([t0, t1 + t2], dim)

    rows = phases(weight, 2)
    kernels = torch.stack([torch.stack(phases(r, 3)) for r in rows])  # [2 (row phase), 2 (column phase), O, I, 2, 2]
    o, i = weight.shape[:2]
    return kernels.permute(2, 0, 1, 3, 4, 5).reshape(4 * o, i, 2, 2)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1) with 4/9 of its
    multiply-adds. x [N, I, H, W], weight [O, I, 3, 3], bias [O] or None -> [N, O, 2H, 2W]."""
    h, w = x.shape[-2:]
    out = F.conv2d(x, phase_kernels(weight), None if bias is None else bias.repeat_interleave(4), padding=1)
    return F.pixel_shuffle(out, 2)[:, :, 1:2 * h + 1, 1:2 * w + 1]  # [N, O, 2H + 2, 2W + 2] shifted by one


def geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """GEGLU: value * gelu(gate), where value and gate are the two halves of linear(x, weight, bias).
    x [..., I], weight [2 * O, I], bias [2 * O] or None -> [..., O]."""
    half = weight.shape[0] // 2
    value = F.linear(x, weight[:half], None if bias is None else bias[:half])
    gate = F.linear(x, weight[half:], None if bias is None else bias[half:])
    return value * F.gelu(gate)
