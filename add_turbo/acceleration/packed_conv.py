"""2-D convolutions on CPU with weights kept in oneDNN's blocked layout.

PyTorch's CPU convolution hands oneDNN plain weights, and oneDNN reorders them into its blocked
layout on every call. Where a layer has many weights and few pixels (the UNet's 1280-channel layers
at 8x8 and 16x16) that reorder costs about as much as the convolution itself: a 1280->1280 3x3
layer at 8x8 takes 30 ms plain and 7 ms packed on a 2-core AVX-512 machine. Packing once keeps a
second copy of the weights in memory, as large as the first.

A packed layer is used only where its output equals the plain convolution's bit for bit: the first
call of each input shape runs both and compares, and a shape that differs (oneDNN may choose another
algorithm, e.g. for a strided layer) stays on the plain path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

PACKED_DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    """Whether this PyTorch build has oneDNN and the packed-convolution operators."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_convolution_weight")
            and hasattr(ops, "_convolution_pointwise"))


@functools.cache
def dtype_supported(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN runs packed convolutions in `dtype`: bf16 needs AVX-512 (bw, vl, dq) or
    AVX-NE-CONVERT, and without them oneDNN refuses to pack (the plain convolution still runs)."""
    if not available() or dtype not in PACKED_DTYPES:
        return False
    weight = torch.zeros(8, 8, 1, 1, dtype=dtype)
    try:
        torch.ops.mkldnn._reorder_convolution_weight(weight, [0, 0], [1, 1], [1, 1], 1, [1, 8, 4, 4])
    except RuntimeError:
        return False
    return True


def applies(conv: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether conv(x) can run packed: CPU, fp32/bf16, NHWC [B, C, H, W] (an input or the weights: PyTorch
    then computes in NHWC), zero padding, no autograd."""
    weight, bias = conv.weight, conv.bias
    nhwc = x.is_contiguous(memory_format=torch.channels_last) or (
        x.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last))
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dim() == 4 and nhwc
            and x.dtype in PACKED_DTYPES and weight.dtype == x.dtype and dtype_supported(x.dtype) and (bias is None or bias.dtype == x.dtype)
            and not x.is_mkldnn and not weight.is_mkldnn
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)))


class PackedConv:
    """The packed weights of one Conv2d, and per input shape whether they reproduce the plain output.

    Holds the module's weight tensor by reference: when the module gets another weight tensor
    (a patch, a reload) the packed copy is rebuilt from the new one.
    """

    def __init__(self):
        self.source = None  # the weight tensor the packed copy was made from
        self.packed = None
        self.exact = {}  # (batch, height, width, NHWC input) -> packed output equals the plain one

    def __call__(self, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
        """conv(x) [B, C_out, H', W'] (NHWC), or None where the caller must run the plain convolution."""
        if not applies(conv, x):
            return None
        if conv.weight is not self.source:
            self.source, self.packed, self.exact = conv.weight, None, {}
        key = (x.shape[0], x.shape[2], x.shape[3], x.is_contiguous(memory_format=torch.channels_last))
        if self.exact.get(key) is False:
            return None
        if self.packed is None:
            self.packed = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(x.shape))
        out = self.run_packed(conv, x.contiguous(memory_format=torch.channels_last))  # as PyTorch's NHWC path
        if key not in self.exact:
            plain = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            self.exact[key] = torch.equal(plain, out) and plain.stride() == out.stride()  # layout steers later ops
            if not self.exact[key]:
                if not any(self.exact.values()):
                    self.packed = None  # no shape uses it: do not keep the second copy
                return plain
        return out

    def run_packed(self, conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """The convolution over the packed weights (oneDNN's fused-op entry, with no fused op)."""
        return torch.ops.mkldnn._convolution_pointwise(x, self.packed, conv.bias, list(conv.padding),
                                                       list(conv.stride), list(conv.dilation), conv.groups,
                                                       "none", [], "")

    def nbytes(self) -> int:
        """Memory held by the packed copy."""
        return 0 if self.packed is None else self.source.numel() * self.source.element_size()
