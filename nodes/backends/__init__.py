"""The engines, one room each: what makes the models fast on a device, apart from the sampling code.

Each room is a package with one entry point, `install(model, clip, vae, options, info) -> Report`,
plus `NAME` and `wanted(options)`. What a room hangs on the CLIP or the VAE is a stand-in in their one
typed attachment (host_api.attachment); the UNet's is a host wrapper of its own room. The loader calls
`accelerate` and knows nothing else about them. A new engine is a new room and one line in ENGINES.

- openvino: the UNet, the text encoders and TAESD's decode on OpenVINO (cpu_backend openvino);
- cuda_graphs: the text encoders and TAESD's decode replayed as CUDA graphs (engine on);
- cpu_kernels: TAESD's blocks as fused oneDNN convolutions (engine on).
The sampling engine itself (nodes/engine/) runs the UNet's steps; it is entered per run, not installed.
"""

from __future__ import annotations

import logging

from . import cpu_kernels, cuda_graphs, openvino
from .report import Report

log = logging.getLogger(__name__)

CPU_BACKEND_TOOLTIP = openvino.TOOLTIP  # the loader's cpu_backend widget: torch, or this room
ENGINES = (openvino, cuda_graphs, cpu_kernels)  # installed in this order: OpenVINO first, the others yield to it


def check(options, load_device) -> list[str]:
    """Refuse, with the fix, an engine that `options` ask for and this host cannot run (before anything
    loads). Returns the engines' notes for the node (OpenVINO's precision)."""
    return [note for engine in ENGINES if engine.wanted(options) and hasattr(engine, "check")
            for note in [engine.check(options, load_device)] if note]


def check_memory(options, info) -> None:
    """Refuse, before the weights are read, what an engine `options` ask for needs and this machine has not
    (add_turbo.memory.NotEnoughMemory, with the figures and what to do)."""
    for engine in ENGINES:
        if engine.wanted(options) and hasattr(engine, "check_memory"):
            engine.check_memory(options, info)


def torch_weight_dtype(options) -> str:
    """The weight_dtype the torch modules load in: an engine that converts from them may fix it."""
    fixed = [engine.TORCH_WEIGHT_DTYPE for engine in ENGINES if engine.wanted(options)
             and hasattr(engine, "TORCH_WEIGHT_DTYPE")]
    return fixed[0] if fixed else options.weight_dtype


def accelerate(model, clip, vae, options, info) -> list[Report]:
    """Install every engine the loader's `options` ask for; one Report each, in order."""
    reports = [engine.install(model, clip, vae, options, info) for engine in ENGINES if engine.wanted(options)]
    for report in reports:
        log.debug("ADD Turbo: %s", report)
    return reports


def warm_up(model, clip, vae, options) -> list[tuple[str, str, float]]:
    """Run the warm-up of every engine `options` ask for that has one: (its label, the loader's message,
    seconds) each."""
    return [(engine.WARM_UP, *engine.warm_up(model, clip, vae, options)) for engine in ENGINES
            if engine.wanted(options) and hasattr(engine, "warm_up")]


__all__ = ["ENGINES", "Report", "accelerate", "check", "check_memory", "torch_weight_dtype", "warm_up", "cpu_kernels", "cuda_graphs", "openvino"]
