"""Which precision OpenVINO computes in (its INFERENCE_PRECISION_HINT), from the loader's weight_dtype
and the CPU's feature flags."""

from __future__ import annotations

from ....add_turbo.acceleration.openvino_models import BF16_FLAGS, has_bf16_units

OPENVINO_WEIGHT_DTYPES = ("auto", "fast", "fp32", "bf16")
WEIGHT_FORMATS = {"openvino": "as_module", "openvino_int8": "int8"}  # cpu_backend -> the IR's weights


def weight_format(cpu_backend: str) -> str:
    """The IR's weights for a cpu_backend: the checkpoint's own dtype, or NNCF's int8 (openvino_int8)."""
    return WEIGHT_FORMATS[cpu_backend]


def openvino_precision(weight_dtype: str, cpu_flags: frozenset) -> tuple[str, str]:
    """(OpenVINO's INFERENCE_PRECISION_HINT, a note for the loader) for cpu_backend openvino.

    fast is bf16 where the CPU has bf16 units (its /proc/cpuinfo flags name avx512_bf16 or amx_bf16:
    OpenVINO's own default there), f32 elsewhere; auto and fp32 are f32 (the exact path's numbers up to
    fp32 rounding); bf16 is bf16 whatever the CPU (OpenVINO emulates it, slowly, without the units).
    """
    if weight_dtype not in OPENVINO_WEIGHT_DTYPES:
        raise ValueError(f"cpu_backend openvino computes in f32 or bf16: choose weight_dtype "
                         f"{', '.join(OPENVINO_WEIGHT_DTYPES)} (got {weight_dtype!r})")
    units = has_bf16_units(cpu_flags)
    if weight_dtype == "fast":
        if units:
            found = ", ".join(sorted(cpu_flags & BF16_FLAGS))
            return "bf16", f"OpenVINO bf16 (fast: this CPU has bf16 units, {found})"
        return "f32", "OpenVINO f32 (fast: this CPU has no bf16 units, avx512_bf16 or amx_bf16)"
    if weight_dtype == "bf16":
        return "bf16", "OpenVINO bf16" + ("" if units else " (emulated: this CPU has no bf16 units, f32 is faster)")
    return "f32", "OpenVINO f32"


def describe(options, cpu_flags: frozenset) -> str:
    """The loader's note for cpu_backend openvino / openvino_int8: the precision chosen, and int8 weights."""
    note = openvino_precision(options.weight_dtype, cpu_flags)[1]
    return note + (", int8 weights (NNCF)" if weight_format(options.cpu_backend) == "int8" else "")
