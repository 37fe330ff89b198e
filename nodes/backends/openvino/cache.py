"""Where cpu_backend openvino keeps its converted models (IR) and OpenVINO's compiled blobs on disk, so
that a second start with the same checkpoint and options loads them in seconds.

The folder, first match wins: ADD_TURBO_OPENVINO_CACHE, else <ComfyUI user directory>/__cache/
add_turbo_openvino, next to the compile cache (nodes/compile_cache.py says why there). IR files are kept
per model identity: the checkpoint's files (path, size, modification time), the loader options that
change the converted graph, and the OpenVINO version; the input shapes name the files inside.
OpenVINO keys its blobs by the IR and the compile options itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ....add_turbo.acceleration import openvino_models
from ... import compile_cache
from .precision import weight_format

ENV = "ADD_TURBO_OPENVINO_CACHE"
FOLDER_NAME = "add_turbo_openvino"


@dataclass(frozen=True)
class OpenVINOCache:
    folder: Path  # this model's IR files
    blobs: Path  # OpenVINO's CACHE_DIR


def root() -> Path:
    if os.environ.get(ENV):
        return Path(os.path.expanduser(os.environ[ENV])).absolute()
    import folder_paths

    return Path(folder_paths.get_system_user_directory("cache")) / FOLDER_NAME


def for_checkpoint(path: str, options: dict) -> OpenVINOCache:
    """The IR folder and blob cache of this checkpoint under these options (created on first use)."""
    tag = compile_cache.cache_tag(path, {**options, "backend": "openvino"})
    base = root()
    return OpenVINOCache(base / f"{tag}-ov{openvino_models.version()}", base / "blobs")


def for_loader(path: str, options, graph_revision: int) -> OpenVINOCache:
    """The IR folder and blob cache of a checkpoint's UNet and text encoders under the loader's `options`
    (the ones that change the converted graph: attention, channels_last, int8 weights)."""
    return for_checkpoint(path, {"attention": options.attention, "channels_last": options.channels_last,
                                 "unet_graph": graph_revision, "weights": weight_format(options.cpu_backend)})
