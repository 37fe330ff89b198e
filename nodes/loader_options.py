"""The loader's options as one value: what ADD Turbo Loader's widgets chose, checked once and passed
whole through the loading steps, the engines and the reload factory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import compiling, precision
from .engine import ENGINE_MODES

DECODERS = ("full", "taesd")
ATTENTIONS = ("sdpa", "host")
CPU_BACKENDS = ("torch", "openvino", "openvino_int8")


@dataclass(frozen=True)
class LoaderOptions:
    """ADD Turbo Loader's options (the widgets' names and defaults; `compile` is compile's mode)."""

    weight_dtype: str = "auto"
    decoder: str = "full"
    attention: str = "sdpa"
    channels_last: bool = True
    compile: str = "off"
    engine: str = "off"
    cpu_backend: str = "torch"

    def check(self, load_device) -> None:
        """Refuse any value outside its choices, naming them (engine-specific checks are the engines')."""
        for name, value, choices in (("weight_dtype", self.weight_dtype, list(precision.WEIGHT_DTYPES)),
                                     ("decoder", self.decoder, DECODERS), ("attention", self.attention, ATTENTIONS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        compiling.check_compile(self.compile, load_device)
        if self.cpu_backend not in CPU_BACKENDS:
            raise ValueError(f"cpu_backend must be one of {CPU_BACKENDS}, got {self.cpu_backend!r}")
        if self.engine not in ENGINE_MODES:
            raise ValueError(f"engine must be one of {ENGINE_MODES}, got {self.engine!r}")

    def replace(self, **changes) -> "LoaderOptions":
        return dataclasses.replace(self, **changes)
