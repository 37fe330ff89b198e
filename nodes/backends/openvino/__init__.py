"""The OpenVINO engine (the loader's cpu_backend openvino): the UNet, the text encoders' layer stacks and
TAESD's decode run on Intel's OpenVINO runtime on the CPU, each converted once per input shape and kept
on disk (add_turbo.acceleration.openvino_models), wherever the converted model computes what the host
would; elsewhere the host's torch modules run, with the reason logged once.

- unet: the UNet's stand-in, swapped in through the host's apply_model compile wrapper
- parts: the text encoders' and TAESD's stand-ins
- cache: where the IR files and OpenVINO's compiled blobs are kept
- precision: f32 or bf16, from weight_dtype and the CPU's flags
- warm_up: the loader's 512x512 conversion (or load from disk) and compile
"""

from __future__ import annotations

import torch

from ....add_turbo.acceleration import openvino_models
from ...precision import CHECKPOINT
from ...weights import taesd_file
from ..report import Report
from . import cache, memory, parts, unet
from .precision import WEIGHT_FORMATS, describe, openvino_precision, weight_format
from .warm_up import warm_up

HOST_SYMBOLS: list = []  # the modules of this room name their own
NAME = "openvino"
TOOLTIP = (
    "What runs the UNet, the text encoders and TAESD's decode on a CPU. torch: PyTorch. openvino: Intel's "
    "OpenVINO runtime, converted once per image size and kept on disk (user/__cache/add_turbo_openvino, or "
    "ADD_TURBO_OPENVINO_CACHE). weight_dtype picks its precision: fast = bf16 on CPUs with bf16 units "
    "(avx512_bf16 or AMX; slightly different images), f32 elsewhere; auto / fp32 = f32. LoRAs, ControlNet "
    "and other patches run in torch (the log says why). openvino_int8: the same with the UNet's and text "
    "encoders' weights compressed to int8 by NNCF (a quarter of fp32's memory, as FastSD's int8 SDXL-Turbo; "
    "slightly different images). Needs the openvino package (and nncf for int8): pip install "
    "\"add-turbo[openvino]\", or pip install openvino nncf in ComfyUI's Python.")
WARM_UP = "OpenVINO"  # the warm-up's label above the node
# The torch UNet keeps the checkpoint's own dtype and stays its memory mapping: OpenVINO converts from it
# (its graph casts to fp32), then its pages go back to the kernel while OpenVINO serves (unet.py).
TORCH_WEIGHT_DTYPE = CHECKPOINT


def wanted(options) -> bool:
    return options.cpu_backend in WEIGHT_FORMATS


def check(options, load_device) -> str:
    """Refuse what cannot run, with the fix; else the note that names the precision chosen."""
    if load_device.type != "cpu":
        raise ValueError(f"cpu_backend 'openvino' runs the UNet on the CPU, and this ComfyUI computes on "
                         f"{load_device.type}: choose cpu_backend 'torch'")
    if options.compile != "off":
        raise ValueError("compile and cpu_backend 'openvino' both replace the UNet: set compile to 'off'")
    weights = weight_format(options.cpu_backend)
    if (why := openvino_models.missing(weights)) is not None:
        raise RuntimeError(f"cpu_backend '{options.cpu_backend}': {why}")
    return describe(options, openvino_models.cpu_flags())


def check_memory(options, info) -> None:
    """Refuse, before anything is read, a load whose conversion or models would not fit in memory."""
    memory.check_memory(info, options, openvino_precision(options.weight_dtype, openvino_models.cpu_flags())[0])


def install(model, clip, vae, options, info) -> Report:
    """From now on the UNet of `model` (and its clones), `clip`'s text encoders and, with decoder taesd,
    `vae`'s TAESD decode run on OpenVINO where they compute the same. `info`: the CheckpointInfo, whose
    file keys the converted models on disk."""
    precision, _ = openvino_precision(options.weight_dtype, openvino_models.cpu_flags())
    threads = torch.get_num_threads()
    weights = weight_format(options.cpu_backend)
    where = cache.for_loader(info.path, options, unet.GRAPH_REVISION)
    report = Report(NAME)
    unet.use_openvino_unet(model, where.folder, precision, where.blobs, weights)
    report.took(unet.PART)
    if parts.use_openvino_text_encoders(clip, where.folder, precision, where.blobs, threads, weights):
        report.took(parts.TEXT)
    else:
        report.left(parts.TEXT, "the CLIP is not the loader's")
    if options.decoder != "taesd":
        return report.left(parts.DECODE, "the decoder is the checkpoint's full VAE")
    taesd_where = cache.for_checkpoint(taesd_file(info.family, "decoder"), {"taesd": info.family})
    if parts.use_openvino_taesd(vae, taesd_where.folder, precision, taesd_where.blobs, threads):
        return report.took(parts.DECODE)
    return report.left(parts.DECODE, "the VAE is not TAESD")


__all__ = ["NAME", "TORCH_WEIGHT_DTYPE", "cache", "check", "check_memory", "memory", "install", "openvino_precision", "parts", "unet",
           "wanted", "warm_up"]
