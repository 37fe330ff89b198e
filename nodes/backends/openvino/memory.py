"""What cpu_backend openvino needs in memory, from the checkpoint's parameter counts, checked before
anything is read: a conversion that would not fit is refused with the figures instead of leaving the
server to the kernel's OOM killer.

What a load holds at its peak, beyond the idle host:
- the compiled models' weights (the UNet's and the text encoders'), in the bytes a weight takes in the
  compiled model: 4 in f32, 2 in bf16. With int8 weights (openvino_int8) they are counted as f32's,
  an upper bound: since GEGLU's sliced weights are compressed too (openvino_graph.py) SDXL-Turbo's int8
  first start peaks at 12.8 GiB and renders in 6.7, but SD-Turbo's was not measured again;
- while the UNet compiles, its IR being read: the file's bytes a weight (the IR keeps the checkpoint's
  dtype), about 1 with int8 weights; handed back after the compile (openvino_models.StaticModel);
- a first start adds a share of the UNet's file bytes for the conversion itself; the torch modules are
  the checkpoint's mapping, handed back once converted (unet.py).

Calibrated on a 2-core AVX2 machine, peak RSS less the idle host's 0.8 GiB, and kept at or above every
figure measured (bench/results_memory_sd.md, results_memory_sdxl.md):
- SD-Turbo (UNet 0.87 B, text 0.35 B parameters, fp32 file): f32 first start 8.27 GiB, second start
  7.91 (of which 4.54 the compiled weights and 3.23 the UNet IR read while compiling); int8 weights 5.91
  and 5.46. Steady runs stay under the load's peak (f32: 4.9 GiB beyond the host);
- SDXL-Turbo (UNet 2.57 B, text 0.82 B, fp16 file): f32 first start 19.3 GiB, int8 weights 13.8.
"""

from __future__ import annotations

from ....add_turbo import memory
from . import cache, unet
from .precision import weight_format

COMPILED_BYTES = {"f32": 4.0, "bf16": 2.0}  # a weight in the compiled model (int8 weights too, see above)
IR_BYTES_INT8 = 1.0  # a weight in an int8 IR (uint8, a scale and zero point per output channel)
# A first start over a second: SD-Turbo (8.27 - 7.91) GiB = 0.11 of its UNet's 3.23 GiB of fp32 file,
# SDXL-Turbo 0.34 of its 4.78 GiB of fp16 file (its text encoders convert from fp32 copies): the larger.
FIRST_START_FILE_SHARE = 0.35
RESIDUAL_GIB = 0.25  # activations and buffers beyond the weights (SD-Turbo, f32: 0.14 measured)
TORCH_PATH_FACTOR = 1.15  # the torch fast path's peak over its fp32 weights (SDXL-Turbo: 14.8 GiB, 12.9 GiB)
FILE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}  # a weight in the checkpoint file, by its safetensors dtype


def need_bytes(parameters: dict, precision: str, first_start: bool, weights: str = "as_module",
               file_bytes: float = 4) -> int:
    """Bytes a load with cpu_backend openvino takes at its peak beyond the running host, for the parameter
    counts {"unet", "text", "vae"} of a checkpoint, in OpenVINO `precision` ("f32", "bf16"), with IR
    `weights` ("as_module", "int8") and the checkpoint's `file_bytes` a weight."""
    unet_params = parameters.get("unet", 0)
    need = COMPILED_BYTES[precision] * (unet_params + parameters.get("text", 0))
    need += (IR_BYTES_INT8 if weights == "int8" else file_bytes) * unet_params
    if first_start:
        need += FIRST_START_FILE_SHARE * file_bytes * unet_params
    return int(need + RESIDUAL_GIB * memory.GIB)


def converted_before(info, options) -> bool:
    """Whether a UNet of this checkpoint and these options is on disk already (a second start)."""
    where = cache.for_loader(info.path, options, unet.GRAPH_REVISION)
    return where.folder.is_dir() and any(where.folder.glob("unet-*.xml"))


def file_bytes(info) -> int:
    """Bytes a weight takes in the checkpoint: the widest of its floating-point dtypes."""
    return max((FILE_BYTES[d] for d in info.dtypes if d in FILE_BYTES), default=4)


def check_memory(info, options, precision: str) -> None:
    """Refuse (memory.NotEnoughMemory, with the figures and the fixes) a load that would not fit."""
    first = not converted_before(info, options)
    weights = weight_format(options.cpu_backend)
    need = need_bytes(info.parameters, precision, first, weights, file_bytes(info))
    torch_need = TORCH_PATH_FACTOR * 4 * sum(info.parameters.values())
    int8_need = need_bytes(info.parameters, precision, True, "int8", file_bytes(info))
    what = (f"cpu_backend {options.cpu_backend} ({precision}, "
            f"{'first start: converting' if first else 'converted before'})")
    int8 = "" if weights == "int8" else f"choose cpu_backend openvino_int8 (about {int8_need / memory.GIB:.2f} GiB), "
    memory.refuse_if_short(
        what, need, memory.available_bytes(),
        f"{int8}choose cpu_backend torch (about {torch_need / memory.GIB:.2f} GiB for this checkpoint in fp32), or "
        "close other models and programs and run it again")
