"""Residual blocks through oneDNN's fused convolutions (add_turbo.acceleration.fused_blocks): never a different result
than the op-by-op block, fused only for the input shapes where it is the same."""

import pytest
import torch

from add_turbo.acceleration import fused_blocks, packed_conv

pytestmark = pytest.mark.skipif(not fused_blocks.available(), reason="this PyTorch build has no oneDNN")

SHAPES = [(1, 16, 16), (2, 8, 12), (1, 40, 24)]


class Block(torch.nn.Module):
    """TAESD's residual block, op by op: relu(c3(relu(c2(relu(c1(x))))) + skip(x))."""

    def __init__(self, channels_in=16, channels=16, dtype=torch.float32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(c, channels, 3, padding=1)
                                         for c in (channels_in, channels, channels))
        self.skip = (torch.nn.Identity() if channels_in == channels
                     else torch.nn.Conv2d(channels_in, channels, 1, bias=False))
        self.to(dtype).to(memory_format=torch.channels_last).requires_grad_(False)

    def forward(self, x):
        first, second, last = self.convs
        return torch.relu(last(torch.relu(second(torch.relu(first(x))))) + self.skip(x))


def _input(block, batch, height, width, nhwc=True, seed=1):
    x = torch.randn(batch, block.convs[0].in_channels, height, width, generator=torch.Generator().manual_seed(seed))
    x = x.to(block.convs[0].weight.dtype)
    return x.contiguous(memory_format=torch.channels_last) if nhwc else x


def _run(fused, block, x):
    return fused(x, list(block.convs), block.skip, block)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_in", [16, 24])  # identity skip, 1x1 conv skip
def test_the_result_is_always_the_op_by_op_block_bit_for_bit(channels_in, dtype):
    block, fused = Block(channels_in, dtype=dtype), fused_blocks.FusedResidualBlock()
    for nhwc in (True, False):
        for shape in SHAPES:
            x = _input(block, *shape, nhwc=nhwc)
            want = block(x)
            for _ in range(3):  # the first call checks; later ones follow the verdict
                got = _run(fused, block, x)
                assert torch.equal(got, want) and got.stride() == want.stride()
    # A dtype this CPU's oneDNN cannot pack (bf16 without AVX-512) always runs op by op, never checked.
    checked = packed_conv.dtype_supported(dtype)
    assert set(fused.exact) == ({(*shape, nhwc, dtype) for shape in SHAPES for nhwc in (True, False)} if checked
                                else set())


def test_the_fused_kernel_runs_after_a_matching_check_and_never_after_a_mismatch(monkeypatch):
    block, x = Block(), _input(Block(), *SHAPES[0])
    calls = []

    def exact_by_construction(x, convs, skip):  # a stand-in whose output is the op-by-op one
        calls.append(1)
        return block(x)

    monkeypatch.setattr(fused_blocks, "fused_residual_block", exact_by_construction)
    fused = fused_blocks.FusedResidualBlock()
    for _ in range(3):
        assert torch.equal(_run(fused, block, x), block(x))
    assert len(calls) == 3 and fused.exact == {(*SHAPES[0], True, torch.float32): True}

    # a fused kernel that differs (here: off by one ulp) is checked once and never used
    calls.clear()
    monkeypatch.setattr(fused_blocks, "fused_residual_block", lambda x, convs, skip: calls.append(1) or torch.nextafter(
        block(x), torch.tensor(float("inf"))))
    other = fused_blocks.FusedResidualBlock()
    for _ in range(3):
        assert torch.equal(_run(other, block, x), block(x))
    assert len(calls) == 1 and other.exact == {(*SHAPES[0], True, torch.float32): False}


def test_the_real_kernels_are_used_where_they_match(monkeypatch):
    """On this CPU: each shape the check found exact runs the fused kernels on later calls, not the block."""
    block, fused = Block(), fused_blocks.FusedResidualBlock()
    x = _input(block, *SHAPES[2])
    _run(fused, block, x)
    reference_calls = []
    monkeypatch.setattr(Block, "__call__", lambda self, v: reference_calls.append(1) or Block.forward(self, v))
    got = _run(fused, block, x)
    assert len(reference_calls) == (0 if fused.exact[(*SHAPES[2], True, torch.float32)] else 1)
    assert torch.equal(got, Block.forward(block, x))


@pytest.mark.parametrize("case", ["fp16", "autograd", "nchw weights and input", "3-d input", "dtype mismatch"])
def test_what_it_cannot_run_is_left_to_the_op_by_op_block(case, monkeypatch):
    block = Block()
    x = _input(block, *SHAPES[0])
    if case == "fp16":
        block, x = block.half(), x.half()
    elif case == "autograd":
        block.requires_grad_(True)
    elif case == "nchw weights and input":
        block.to(memory_format=torch.contiguous_format)
        x = x.contiguous()
    elif case == "3-d input":
        x = x[0]
    else:
        x = x.double()
    monkeypatch.setattr(fused_blocks, "fused_residual_block", lambda *a: pytest.fail("the fused kernel ran"))
    fused = fused_blocks.FusedResidualBlock()
    with torch.enable_grad():
        try:
            want = block(x)
        except RuntimeError:  # e.g. a dtype mismatch fails op by op as well: the same error either way
            with pytest.raises(RuntimeError):
                _run(fused, block, x)
        else:
            assert torch.equal(_run(fused, block, x), want)
    assert fused.exact == {}
