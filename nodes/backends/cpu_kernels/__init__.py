"""The CPU kernels engine (with the loader's engine on): TAESD's residual blocks run as fused oneDNN
convolutions, ReLU and skip add inside (add_turbo.acceleration.fused_blocks), where the fused output
equals the host's bit for bit. The UNet's packed convolutions belong to the sampling engine
(nodes/engine/direct.py): they are entered per sampling run, not installed at load.
"""

from __future__ import annotations

import weakref

import comfy.ops
import torch

from ....add_turbo.acceleration import fused_blocks
from ...host_api import TurboVAE
from ...host_api.attachment import StandIn, attachment_of
from ...host_api.module_swaps import CONV_CAST_ATTRIBUTES
from ..report import Report

HOST_SYMBOLS = [
    ("comfy.taesd.taesd", "Block.forward", ("x",)),
    ("comfy.ops", "disable_weight_init.Conv2d.forward", ()),
    ("comfy.ops", "run_every_op", ()),
]
NAME = "cpu_kernels"
ENGINE = "engine"  # in the log: it is part of the loader's engine option
PART = "the TAESD blocks"


def wanted(options) -> bool:
    return options.engine == "on"


def install(model, clip, vae, options, info) -> Report:
    """From now on, on CPU, the TAESD blocks of `vae` (decode and encode) run fused where that gives
    the host's bits. `model`, `clip`, `options` and `info` are unused: the UNet's kernels are the sampling
    engine's."""
    report = Report(NAME)
    if not isinstance(vae, TurboVAE) or not taesd_blocks(vae):
        return report.left(PART, "the VAE is not TAESD")
    if not fused_blocks.available():
        return report.left(PART, "this PyTorch build has no oneDNN")
    store = weakref.WeakKeyDictionary()  # Block -> FusedResidualBlock (its exactness checks per shape)
    attachment_of(vae).add(StandIn(
        ENGINE, PART, "run unfused", frozenset({"decode", "encode"}), "forward",
        targets=lambda vae: {b: _FusedBlockForward(b, store.setdefault(b, fused_blocks.FusedResidualBlock()))
                             for b in taesd_blocks(vae)},
        obstacle=lambda vae: None if vae.device.type == "cpu" else f"no fused oneDNN blocks on {vae.device.type}",
        logged=lambda vae: False, calls=[store], yields_to=("OpenVINO",)))  # OpenVINO converts the host's blocks
    return report.took(PART)


def fused_store(vae):
    """Block -> FusedResidualBlock of `vae`'s fused TAESD blocks, or None where they are not fused."""
    engines = getattr(vae, "engines", None)
    stand_in = None if engines is None else engines.find(ENGINE, PART)
    return None if stand_in is None else stand_in.calls[0]


def note(vae) -> str | None:
    """The loader's line on the fused blocks, where they run (on CPU, where OpenVINO does not decode)."""
    engines = getattr(vae, "engines", None)
    if fused_store(vae) is None or vae.device.type != "cpu" or any(s.engine == "OpenVINO" for s in engines.stand_ins
                                                                    if "decode" in s.hooks):
        return None
    return "TAESD blocks run as fused oneDNN convolutions (ReLU and skip add inside)"


def taesd_blocks(vae) -> list:
    """The host TAESD Blocks of the shape relu(conv(relu(conv(relu(conv(x))))) + skip(x)), no extra forward."""
    from comfy.taesd import taesd

    def host_conv(module):
        return isinstance(module, comfy.ops.disable_weight_init.Conv2d) and "forward" not in module.__dict__

    found = []
    for block in vae.first_stage_model.modules():
        if not isinstance(block, taesd.Block) or "forward" in block.__dict__ or getattr(block, "pool", None) is not None:
            continue
        layers = list(block.conv) if isinstance(block.conv, torch.nn.Sequential) else []
        kinds = [host_conv(m) if i % 2 == 0 else type(m) is torch.nn.ReLU for i, m in enumerate(layers)]
        skip_ok = type(block.skip) is torch.nn.Identity or (host_conv(block.skip) and block.skip.bias is None)
        if len(layers) == 5 and all(kinds) and type(block.fuse) is torch.nn.ReLU and skip_ok:
            found.append(block)
    return found


class _FusedBlockForward:
    """A TAESD Block's forward through the fused block where it applies, else the host's own."""

    def __init__(self, block, fused):
        self.block, self.fused = block, fused

    def __call__(self, *args, **kwargs):
        block = self.block
        convs = list(block.conv)[0::2]
        layers = convs if type(block.skip) is torch.nn.Identity else [*convs, block.skip]
        casts = any(getattr(m, name, True) for m in layers for name in CONV_CAST_ATTRIBUTES)
        if len(args) != 1 or kwargs or casts:
            return type(block).forward(block, *args, **kwargs)
        comfy.ops.run_every_op()  # as the host's conv forwards: cancelling a run still stops it here
        return self.fused(args[0], convs, block.skip, lambda x: type(block).forward(block, x))
