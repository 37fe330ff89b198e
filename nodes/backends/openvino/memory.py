"""What cpu_backend openvino needs in memory, from the checkpoint's parameter counts, checked before
anything is read: a conversion that would not fit is refused with the figures instead of leaving the
server to the kernel's OOM killer (SDXL-Turbo's first start went past 24 GiB).

Calibrated on SD-Turbo (1.30 B parameters, UNet 0.87 B; fp32 torch modules 4.85 GiB, UNet 3.23 GiB) on
a 2-core AVX-512 machine, peak RSS less the 0.8 GiB the idle host holds: the first start (UNet, text
encoders and TAESD converted) peaked at 13.71 GiB, steady runs at 10.88 GiB in bf16 and 13.22 GiB in f32.
The torch modules stay resident in fp32 beside OpenVINO's, and converting the UNet holds its traced
graph and the IR's weights at once: 4 bytes a parameter for the torch side, plus a multiple of the
UNet's fp32 size for OpenVINO's side.
"""

from __future__ import annotations

from ....add_turbo import memory
from . import cache, unet

FIRST_START_UNET_FACTOR = {"bf16": 2.5, "f32": 3.2}  # (13.71 - 0.8 - 4.85) / 3.23 in bf16; f32 adds its copy
STEADY_UNET_FACTOR = {"bf16": 1.6, "f32": 2.35}  # (10.88 - 0.8 - 4.85) / 3.23; (13.22 - 0.8 - 4.85) / 3.23
TORCH_PATH_FACTOR = 1.15  # the torch fast path's peak over its fp32 weights (SDXL-Turbo: 14.8 GiB, 12.9 GiB)


def need_bytes(parameters: dict, precision: str, first_start: bool) -> int:
    """Bytes a load with cpu_backend openvino takes beyond the running host, for the parameter counts
    {"unet", "text", "vae"} of a checkpoint, in OpenVINO `precision` ("f32", "bf16")."""
    factor = (FIRST_START_UNET_FACTOR if first_start else STEADY_UNET_FACTOR)[precision]
    return int(4 * sum(parameters.values()) + factor * 4 * parameters.get("unet", 0))


def converted_before(info, options) -> bool:
    """Whether a UNet of this checkpoint and these options is on disk already (a second start)."""
    where = cache.for_checkpoint(info.path, {"attention": options.attention, "channels_last": options.channels_last,
                                             "unet_graph": unet.GRAPH_REVISION})
    return where.folder.is_dir() and any(where.folder.glob("unet-*.xml"))


def check_memory(info, options, precision: str) -> None:
    """Refuse (memory.NotEnoughMemory, with the figures and the fixes) a load that would not fit."""
    first = not converted_before(info, options)
    need = need_bytes(info.parameters, precision, first)
    torch_need = TORCH_PATH_FACTOR * 4 * sum(info.parameters.values())
    what = f"cpu_backend openvino ({precision}, {'first start: converting' if first else 'converted before'})"
    memory.refuse_if_short(
        what, need, memory.available_bytes(),
        f"choose cpu_backend torch (about {torch_need / memory.GIB:.2f} GiB for this checkpoint in fp32), or close "
        "other models and programs and run it again")
