"""Convolutions over packed oneDNN weights (add_turbo.acceleration.packed_conv): never a different result than the
plain convolution, packed only where it is the same, rebuilt when the layer's weights change."""

import pytest
import torch

from add_turbo.acceleration import packed_conv

pytestmark = pytest.mark.skipif(not packed_conv.available(), reason="this PyTorch build has no oneDNN")

# (in, out, kernel, stride, padding): the UNet's layer kinds (3x3, 1x1 skip, strided downsample)
LAYERS = [(64, 64, 3, 1, 1), (96, 64, 1, 1, 0), (64, 64, 3, 2, 1), (4, 64, 3, 1, 1)]
SHAPES = [(1, 16, 16), (2, 8, 12), (1, 32, 32)]


def _layer(cin, cout, kernel, stride, padding, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride, padding).to(dtype).requires_grad_(False)
    return conv.to(memory_format=torch.channels_last)


def _input(conv, batch, height, width, nhwc=True, seed=1):
    x = torch.randn(batch, conv.in_channels, height, width, generator=torch.Generator().manual_seed(seed))
    x = x.to(conv.weight.dtype)
    return x.contiguous(memory_format=torch.channels_last) if nhwc else x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", LAYERS)
def test_the_result_is_always_the_plain_convolution_bit_for_bit(spec, dtype):
    conv, pack = _layer(*spec, dtype=dtype), packed_conv.PackedConv()
    if not packed_conv.dtype_supported(dtype):  # bf16 without AVX-512: never packed, the caller's conv runs
        for nhwc in (True, False):
            assert all(pack(conv, _input(conv, *shape, nhwc=nhwc)) is None for shape in SHAPES)
        assert pack.packed is None and pack.exact == {}
        return
    for nhwc in (True, False):
        for shape in SHAPES:
            x = _input(conv, *shape, nhwc=nhwc)
            want = conv(x)
            assert pack(conv, x) is not None  # the first call of a shape checks, returning either result
            for _ in range(2):  # later calls follow the verdict: packed, or None (the caller runs its own)
                got = pack(conv, x)
                assert (got is None) == (not pack.exact[(*shape, nhwc)])
                got = conv(x) if got is None else got
                assert torch.equal(got, want) and got.stride() == want.stride()
    assert set(pack.exact) == {(*shape, nhwc) for shape in SHAPES for nhwc in (True, False)}


def test_packed_weights_are_used_after_a_matching_check_and_dropped_when_none_match(monkeypatch):
    conv, pack = _layer(640, 640, 3, 1, 1), packed_conv.PackedConv()  # a UNet layer at a low level
    x = _input(conv, 1, 8, 8)
    calls = []
    real = packed_conv.PackedConv.run_packed
    monkeypatch.setattr(packed_conv.PackedConv, "run_packed", lambda self, c, v: calls.append(1) or real(self, c, v))
    pack(conv, x)
    if not pack.exact[(1, 8, 8, True)]:
        pytest.skip("oneDNN's packed kernel differs from its plain one for this layer on this CPU")
    pack(conv, x)
    assert len(calls) == 2 and pack.packed is not None and pack.nbytes() == conv.weight.numel() * 4

    # a packed kernel that differs from the plain one (here: off by one ulp) is never used
    other = packed_conv.PackedConv()
    monkeypatch.setattr(packed_conv.PackedConv, "run_packed", lambda self, c, v: torch.nextafter(
        real(self, c, v), torch.tensor(float("inf"))))
    assert torch.equal(other(conv, x), conv(x)) and other.exact == {(1, 8, 8, True): False}
    assert other.packed is None and other.nbytes() == 0  # no shape uses it: the copy is freed
    assert other(conv, x) is None  # the caller runs the plain convolution


def test_new_weights_are_packed_again():
    conv, pack = _layer(*LAYERS[0]), packed_conv.PackedConv()
    x = _input(conv, *SHAPES[0])
    pack(conv, x)
    first = pack.packed
    conv.weight = torch.nn.Parameter(conv.weight * 2, requires_grad=False)  # what a weight patch does
    assert torch.equal(pack(conv, x), conv(x))
    assert pack.source is conv.weight and (pack.packed is not first or pack.packed is None)


@pytest.mark.parametrize("case", ["fp16", "reflect padding", "same padding", "autograd", "3-d input",
                                  "dtype mismatch"])
def test_what_it_cannot_run_is_left_to_the_plain_convolution(case):
    conv = _layer(*LAYERS[0])
    x = _input(conv, *SHAPES[0])
    if case == "fp16":
        conv, x = conv.half(), x.half()
    elif case == "reflect padding":
        conv.padding_mode = "reflect"
    elif case == "same padding":
        conv = torch.nn.Conv2d(64, 64, 3, padding="same").requires_grad_(False)
    elif case == "autograd":
        conv.requires_grad_(True)
    elif case == "3-d input":
        x = x[0]
    else:
        x = x.double()
    with torch.enable_grad():
        assert packed_conv.PackedConv()(conv, x) is None
