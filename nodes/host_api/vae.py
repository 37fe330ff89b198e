"""The VAE side of the host: decoding that survives low memory on CPU, SDPA in the VAE, and with the
engine on TAESD's residual blocks as fused oneDNN convolutions (CPU) and its decode as a CUDA graph."""

import contextlib
import logging

import comfy.model_management
import comfy.sd

from ...add_turbo import decode_memory
from .direct_unet import is_set, swaps_modules
from .module_swaps import CONV_CAST_ATTRIBUTES

log = logging.getLogger(__name__)

HOST_SYMBOLS = [
    ("comfy.sd", "VAE.__init__", ("sd", "config", "dtype")),
    ("comfy.sd", "VAE.decode", ("samples_in",)),
    ("comfy.sd", "VAE.encode", ("pixel_samples",)),
    ("comfy.sd", "VAE.decode_tiled", ("samples", "tile_x", "tile_y", "overlap")),
    ("comfy.model_management", "get_free_memory", ("dev",)),
    ("comfy.model_management", "dtype_size", ("dtype",)),
    ("comfy.ldm.modules.diffusionmodules.model", "AttnBlock.__init__", ()),
    ("comfy.ldm.modules.diffusionmodules.model", "pytorch_attention", ("q", "k", "v")),
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

    engines = None  # an attachment.Attachment: the engines' stand-ins for TAESD's decode and blocks

    def _engines(self, hook: str):
        return contextlib.nullcontext() if self.engines is None else self.engines.entered(hook, self)

    def decode(self, samples_in, *args, **kwargs):
        """[B, C, h, w] latent -> [B, 8h, 8w, 3] image, as the host's decode."""
        with self._engines("decode"):
            if self.device.type != "cpu":
                return super().decode(samples_in, *args, **kwargs)
            return self._decode_on_cpu(samples_in, *args, **kwargs)

    def encode(self, pixel_samples, *args, **kwargs):
        """[B, H, W, 3] image -> latent, as the host's encode."""
        with self._engines("encode"):
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


def taesd_model(vae):
    """The host TAESD model a TurboVAE decodes with, else None (the checkpoint's full VAE)."""
    from comfy.taesd import taesd

    model = getattr(vae, "first_stage_model", None)
    return model if isinstance(vae, TurboVAE) and type(model) is taesd.TAESD else None


def decode_obstacle(vae) -> str | None:
    """Why TAESD's decode computes something a stand-in recorded or converted earlier would not, or None."""
    model = vae.first_stage_model
    if "decode" in model.__dict__:
        return "another extension replaced the TAESD decode"
    if is_set(getattr(vae.patcher, "patches", None)) or swaps_modules(vae.patcher):
        return "the VAE carries patches"
    if any(getattr(m, name, False) for m in model.modules() for name in CONV_CAST_ATTRIBUTES):
        return "the VAE's layers cast or patch their weights on each call"
    return None


# (our override, the host method it overrides): each must accept every parameter of the host's.
OVERRIDES = [
    (TurboVAE.decode, comfy.sd.VAE.decode),
    (TurboVAE.encode, comfy.sd.VAE.encode),
]
