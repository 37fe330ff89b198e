"""The VAE side of the host: decoding that survives low memory on CPU, SDPA in the VAE, and with the
engine on TAESD's residual blocks as fused oneDNN convolutions (CPU) and its decode as a CUDA graph."""

import contextlib
import logging
import weakref

import comfy.model_management
import comfy.ops
import comfy.sd
import torch

from ...add_turbo import decode_memory
from ...add_turbo.acceleration import fused_blocks
from ...add_turbo.acceleration.cuda_graphs import GraphedCall
from ...add_turbo.acceleration.openvino_models import OpenVINOCall
from ...add_turbo.log_once import log_once
from .direct_unet import is_set, swaps_modules
from .module_swaps import CONV_CAST_ATTRIBUTES, instance_attributes, instance_forwards

log = logging.getLogger(__name__)

HOST_SYMBOLS = [
    ("comfy.sd", "VAE.__init__", ("sd", "config", "dtype")),
    ("comfy.sd", "VAE.decode", ("samples_in",)),
    ("comfy.sd", "VAE.encode", ("pixel_samples",)),
    ("comfy.sd", "VAE.decode_tiled", ("samples", "tile_x", "tile_y", "overlap")),
    ("comfy.model_management", "get_free_memory", ("dev",)),
    ("comfy.ldm.modules.diffusionmodules.model", "AttnBlock.__init__", ()),
    ("comfy.ldm.modules.diffusionmodules.model", "pytorch_attention", ("q", "k", "v")),
    ("comfy.taesd.taesd", "Block.forward", ("x",)),
    ("comfy.taesd.taesd", "TAESD.decode", ("x",)),
]


class TurboVAE(comfy.sd.VAE):
    """The host's VAE that, on CPU, decodes in tiles rather than fail for memory, and with the engine on
    runs TAESD's residual blocks with fused convolutions (`fuse_taesd_blocks`).

    The host splits a batch by free memory but decodes a single image whole whatever it needs, and
    on CPU a failed allocation is a plain RuntimeError it does not retry (or the kernel's OOM killer
    ends the process). Here an image that would not fit goes through the host's tiled decode (three
    overlapping tilings averaged), and a failed allocation retries tiled. Elsewhere: the host's decode.
    """

    fused_blocks = None  # TAESD Block -> add_turbo.acceleration.fused_blocks.FusedResidualBlock, when fusing is on
    openvino_decode = None  # an openvino_models.OpenVINOCall over TAESD's decode, with cpu_backend openvino
    decode_graph = None  # a cuda_graphs.GraphedCall over TAESD's decode, when the engine records it (graph_taesd_decode)

    def decode(self, samples_in, *args, **kwargs):
        """[B, C, h, w] latent -> [B, 8h, 8w, 3] image, as the host's decode."""
        with _graphed_taesd_decode(self), _openvino_taesd_decode(self) as on_openvino:
            if self.device.type != "cpu":
                return super().decode(samples_in, *args, **kwargs)
            # OpenVINO converts the host's blocks: the fused oneDNN ones would not convert.
            with contextlib.nullcontext() if on_openvino else _fused_taesd_blocks(self):
                return self._decode_on_cpu(samples_in, *args, **kwargs)

    def encode(self, pixel_samples, *args, **kwargs):
        """[B, H, W, 3] image -> latent, as the host's encode."""
        if self.device.type != "cpu":
            return super().encode(pixel_samples, *args, **kwargs)
        with _fused_taesd_blocks(self):
            return super().encode(pixel_samples, *args, **kwargs)

    def _decode_on_cpu(self, samples_in, *args, **kwargs):
        height, width = samples_in.shape[-2:]
        dtype_bytes = comfy.model_management.dtype_size(self.vae_dtype)
        free = comfy.model_management.get_free_memory(self.device)
        side = decode_memory.tile_side(height, width, free, dtype_bytes)
        if side is None:
            try:
                return super().decode(samples_in, *args, **kwargs)
            except (RuntimeError, MemoryError) as error:
                if not decode_memory.is_allocation_failure(error):
                    raise
                side = decode_memory.tile_side(height, width, 0, dtype_bytes)  # the smallest tile
                log.warning("ADD Turbo: decoding failed for memory (%s); retrying in tiles", str(error)[:120])
        need = decode_memory.decode_bytes(height * 8, width * 8, dtype_bytes)
        log.warning("ADD Turbo: decoding %dx%d in %d px tiles: one image needs about %.1f GiB, %.1f GiB is free",
                    width * 8, height * 8, side * 8, need / 2**30, free / 2**30)
        return self.decode_tiled(samples_in, tile_x=side, tile_y=side, overlap=side // 4)


def use_sdpa_in_vae(vae) -> None:
    """The VAE's attention blocks through PyTorch SDPA, as `sdpa_attention` does for the UNet.

    On CPU the host picks split attention there, chunked by free memory; SDPA gives the same
    numbers whatever the memory (max 0.001/255 apart on a full-size SD VAE) at the same speed.
    """
    from comfy.ldm.modules.diffusionmodules import model as vae_model

    for module in vae.first_stage_model.modules():
        if isinstance(module, vae_model.AttnBlock):
            module.optimized_attention = vae_model.pytorch_attention


def fuse_taesd_blocks(vae) -> bool:
    """From now on, on CPU, the TAESD blocks of `vae` run through add_turbo.acceleration.fused_blocks where the fused
    output equals the host's bit for bit. False where there is nothing to fuse (not TAESD, no oneDNN)."""
    if not isinstance(vae, TurboVAE) or not fused_blocks.available() or not _taesd_blocks(vae):
        return False
    vae.fused_blocks = weakref.WeakKeyDictionary()
    return True


def _taesd_blocks(vae) -> list:
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


def _fused_taesd_blocks(vae):
    """A context manager; within, the blocks of a VAE that `fuse_taesd_blocks` was called on run fused
    (nothing changes for other VAEs)."""
    store = vae.fused_blocks
    blocks = _taesd_blocks(vae) if store is not None else []
    return instance_forwards(blocks, {} if store is None else store, fused_blocks.FusedResidualBlock,
                              _FusedBlockForward)


def graph_taesd_decode(vae) -> bool:
    """From now on, TAESD's decode inside `vae.decode` replays a CUDA graph per latent size (a
    cuda_graphs.GraphedCall) wherever taesd_graph_obstacle finds nothing in the way. False: not TAESD."""
    from comfy.taesd import taesd

    model = getattr(vae, "first_stage_model", None)
    if not isinstance(vae, TurboVAE) or type(model) is not taesd.TAESD:
        return False
    vae.decode_graph = GraphedCall(type(model).decode.__get__(model), model, "the TAESD decode")
    return True


def taesd_graph_obstacle(vae) -> str | None:
    """Why `vae`'s TAESD decode is not replayed from a CUDA graph now (it runs as the host's), or None."""
    if vae.device.type != "cuda":
        return f"no CUDA graphs on {vae.device.type}"
    return _decode_obstacle(vae)


def _decode_obstacle(vae) -> str | None:
    """Why TAESD's decode computes something a stand-in recorded or converted earlier would not, or None."""
    model = vae.first_stage_model
    if "decode" in model.__dict__:
        return "another extension replaced the TAESD decode"
    if is_set(getattr(vae.patcher, "patches", None)) or swaps_modules(vae.patcher):
        return "the VAE carries patches"
    if any(getattr(m, name, False) for m in model.modules() for name in CONV_CAST_ATTRIBUTES):
        return "the VAE's layers cast or patch their weights on each call"
    return None


@contextlib.contextmanager
def _graphed_taesd_decode(vae):
    """Within: TAESD's decode replays its CUDA graph, where `graph_taesd_decode` was called and nothing
    is in the way (else the host's decode, with the reason logged once per VAE and reason)."""
    graph = vae.decode_graph
    obstacle = None if graph is None else taesd_graph_obstacle(vae)
    if obstacle is not None and vae.device.type == "cuda":
        log_once(log, f"ADD Turbo engine: {obstacle}: the TAESD decode runs without a CUDA graph", owner=graph)
    with instance_attributes("decode", {} if graph is None or obstacle else {vae.first_stage_model: graph}):
        yield


# --- TAESD's decode on OpenVINO (the loader's cpu_backend openvino) ---------------------------------------

def use_openvino_taesd(vae, folder, precision: str, blob_cache) -> bool:
    """From now on, on CPU, TAESD's decode inside `vae.decode` runs on OpenVINO (converted per latent
    shape) wherever nothing is in the way. False: not TAESD."""
    from comfy.taesd import taesd

    model = getattr(vae, "first_stage_model", None)
    if not isinstance(vae, TurboVAE) or type(model) is not taesd.TAESD:
        return False
    vae.openvino_decode = OpenVINOCall(type(model).decode.__get__(model), model, "taesd_decode", folder, precision,
                                       blob_cache, torch.get_num_threads())
    return True


@contextlib.contextmanager
def _openvino_taesd_decode(vae):
    """Within: TAESD's decode runs on OpenVINO where `use_openvino_taesd` was called and nothing is in the
    way (else the host's, with the reason logged once per VAE and reason). Yields whether it does."""
    call = vae.openvino_decode
    obstacle = None
    if call is not None:
        obstacle = f"OpenVINO runs on the CPU, this VAE on {vae.device.type}" if vae.device.type != "cpu" \
            else _decode_obstacle(vae)
        if obstacle is not None:
            log_once(log, f"ADD Turbo OpenVINO: {obstacle}: the TAESD decode runs in torch", owner=call)
    installed = {} if call is None or obstacle else {vae.first_stage_model: call}
    with instance_attributes("decode", installed):
        yield bool(installed)


# (our override, the host method it overrides): each must accept every parameter of the host's.
OVERRIDES = [
    (TurboVAE.decode, comfy.sd.VAE.decode),
    (TurboVAE.encode, comfy.sd.VAE.encode),
]
