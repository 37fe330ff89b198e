"""The loader's precision choices: which dtype the UNet, VAE and text encoders store and compute in."""

import comfy.model_management as mm
import comfy.utils
import torch

HOST_SYMBOLS = [  # also supports_fp8_compute and unet_manual_cast, listed in host_api/models.py
    ("comfy.model_management", "unet_dtype", ("model_params", "supported_dtypes", "weight_dtype")),
    ("comfy.utils", "calculate_parameters", ("sd", "prefix")),
    ("comfy.utils", "weight_dtype", ("sd", "prefix")),
]
FP8 = "fp8_e4m3fn"
CHECKPOINT = "checkpoint"  # not a user's choice: the file's own dtype, kept mapped (an engine converts from it)
WEIGHT_DTYPES = {"auto": None, "fast": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                 FP8: torch.float8_e4m3fn}


def cpu_has_amx() -> bool:
    """AMX tile units (Intel Xeon 4th gen and later, when the OS or hypervisor enables them): what makes
    bf16 matrix work about twice as fast as fp32 on a CPU. Without them, oneDNN's bf16 kernels are
    slower than fp32 (measured, SD 2.1 UNet on a 2-core AVX-512 VM without AMX: 6.0 s bf16, 4.5 s fp32)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def fp8_matmuls(load_device) -> bool:
    """The host runs fp8 weights' linear layers as fp8 matmuls here (NVIDIA, compute capability 8.9+)."""
    return mm.supports_fp8_compute(load_device)


def _fp8_note(load_device) -> str:
    if fp8_matmuls(load_device):
        return f"{FP8}: UNet weights in fp8, linear layers as fp8 matmuls (the host's fp8 ops)"
    compute = "fp32" if load_device.type == "cpu" else "fp16/bf16"
    return (f"{FP8}: UNet weights stored in fp8 (a quarter of fp32's memory), computed in {compute}: this "
            "device has no fp8 matmuls, so each layer's weights are cast on every step")


def resolve(weight_dtype: str, load_device) -> tuple[str, str]:
    """("fast" resolved to a concrete choice, a note for the loader or ""): fast is bf16 on a CPU with
    AMX, fp32 on other CPUs, the host's choice (auto) on a GPU."""
    if weight_dtype == FP8:
        return weight_dtype, _fp8_note(load_device)
    if load_device.type != "cpu":
        return ("auto", "") if weight_dtype == "fast" else (weight_dtype, "")
    amx = cpu_has_amx()
    if weight_dtype == "fast":
        return ("bf16", "fast: bf16 (this CPU has AMX)") if amx else \
            ("fp32", "fast: fp32 (this CPU has no AMX units, so bf16 would compute slower than fp32)")
    if weight_dtype == "bf16" and not amx:
        return weight_dtype, "bf16 on a CPU without AMX units computes slower than fp32 here: 'fast' picks fp32"
    return weight_dtype, ""


def unet_dtypes(weight_dtype: str, load_device, sd, prefix, model_config):
    """(storage dtype, manual-cast dtype or None). On CPU a chosen dtype is also the compute dtype, but
    fp8, which is cast to fp32 there, and CHECKPOINT (the file's fp16 / bf16, computed in fp32). fp8 also asks the host for its fp8 matmuls (the host's
    UNETLoader option fp8_e4m3fn_fast), which it uses where the device has them."""
    supported = model_config.supported_inference_dtypes
    if weight_dtype == FP8:
        model_config.optimizations["fp8"] = True
        cast = torch.float32 if load_device.type == "cpu" else mm.unet_manual_cast(WEIGHT_DTYPES[FP8], load_device,
                                                                                   supported)
        return WEIGHT_DTYPES[FP8], cast
    if weight_dtype == CHECKPOINT:  # stored as the file has it (so it stays the file's mapping), computed in fp32
        dtype = comfy.utils.weight_dtype(sd, prefix)
        dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        return dtype, (None if dtype == torch.float32 else torch.float32)
    if weight_dtype == "auto":
        if load_device.type == "cpu":
            return torch.float32, None  # exact and, without native bf16 units, not slower
        dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(sd, prefix), supported_dtypes=supported,
                              weight_dtype=comfy.utils.weight_dtype(sd, prefix))
        return dtype, mm.unet_manual_cast(dtype, load_device, supported)
    dtype = WEIGHT_DTYPES[weight_dtype]
    if load_device.type == "cpu":
        # The host would store bf16 and compute fp32 by casting; compute in bf16 for real. fp16 has
        # no fast CPU kernels, so it stays a storage format there.
        return dtype, (torch.float32 if dtype == torch.float16 else None)
    return dtype, mm.unet_manual_cast(dtype, load_device, supported)


def cpu_bf16(weight_dtype: str, load_device) -> bool:
    """bf16 chosen on CPU: the UNet, VAE and text encoders all compute in bf16, not just store it."""
    return weight_dtype == "bf16" and load_device.type == "cpu"


def text_encoder_dtype(weight_dtype: str, load_device):
    """bf16 with cpu_bf16; fp32 otherwise on CPU (fp16 there is slower and moves the image); else the host's."""
    if cpu_bf16(weight_dtype, load_device):
        return torch.bfloat16
    return torch.float32 if load_device.type == "cpu" else None
