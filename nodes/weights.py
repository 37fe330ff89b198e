"""Reading a checkpoint's tensors into the host's models without a second copy in memory."""

import logging

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from ..add_turbo import checkpoints
from ..add_turbo.checkpoints import CheckpointError
from . import host_api

log = logging.getLogger(__name__)

HOST_SYMBOLS = [
    ("comfy.model_management", "unet_inital_load_device", ("parameters", "dtype")),
    ("comfy.utils", "calculate_parameters", ("sd",)),
    ("comfy.utils", "load_torch_file", ("ckpt", "safe_load")),
    ("folder_paths", "get_full_path", ("folder_name", "filename")),
    ("folder_paths", "get_folder_paths", ("folder_name",)),
]
TAESD_NAMES = {checkpoints.SD_TURBO: "taesd", checkpoints.SDXL_TURBO: "taesdxl"}


def read_tensors(path: str, keep, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """The file's tensors whose names pass `keep`, memory-mapped (safetensors; nothing is unpickled).

    Each call maps the file anew, so the text encoder and VAE tensors, which the host copies into
    its own modules, are unmapped once those copies exist, while the UNet keeps its mapping.
    With `channels_last`, 4-D (conv) weights are copied into that layout through a mapping of their
    own that is released on return: converting them later would leave their file pages resident in
    the kept mapping beside the copies (about a third of the UNet, counted twice).
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as handle:
        names = [k for k in handle.keys() if keep(k)]
        convs = {k for k in names if channels_last and len(handle.get_slice(k).get_shape()) == 4}
        tensors = {k: handle.get_tensor(k) for k in names if k not in convs}
    if convs:
        with safe_open(path, framework="pt", device="cpu") as handle:
            for k in convs:
                mapped = handle.get_tensor(k)
                # always a copy: .contiguous() would keep a 1x1 conv on the mapping
                tensors[k] = torch.empty_like(mapped, memory_format=torch.channels_last).copy_(mapped)
    return tensors


def build_unet(path, model_config, sd, prefix, dtype):
    """The host's UNet model with the file's tensors as its parameters (no second copy in memory).

    The module is created on the meta device (no allocation) and the loaded tensors are assigned to it,
    cast only where the chosen dtype differs. The UNet's entries leave `sd` as they are consumed.
    """
    model = model_config.get_model(sd, prefix, device=torch.device("meta"))
    weights = {k[len(prefix):]: sd.pop(k).to(dtype) for k in [k for k in sd if k.startswith(prefix)]}
    missing, unexpected = model.diffusion_model.load_state_dict(weights, strict=False, assign=True)
    if missing:
        raise CheckpointError(path, f"the UNet is incomplete ({len(missing)} tensors missing, e.g. {missing[0]})",
                              "The file is damaged or not a standard SD 2.x / SDXL checkpoint: download it again")
    if unexpected:
        log.debug("ADD Turbo: unused UNet tensors: %s", unexpected[:10])
    initial = mm.unet_inital_load_device(comfy.utils.calculate_parameters(weights), dtype)
    return model.to(initial) if initial != torch.device("cpu") else model


def taesd_file(family: str, part: str) -> str | None:
    """The path of TAESD's (TAESDXL's) `part` ("encoder" or "decoder") in models/vae_approx, or None."""
    return folder_paths.get_full_path("vae_approx", f"{TAESD_NAMES[family]}_{part}.safetensors")


def taesd(family: str, dtype):
    """TAESD / TAESDXL from models/vae_approx (safetensors only: never unpickle)."""
    name = TAESD_NAMES[family]
    sd = {}
    for part in ("encoder", "decoder"):
        file = taesd_file(family, part)
        if file is None:
            raise ValueError(f"decoder 'taesd' needs {name}_encoder.safetensors and {name}_decoder.safetensors in "
                             f"{', '.join(folder_paths.get_folder_paths('vae_approx'))}: download them from the TAESD "
                             "release, or choose decoder 'full'")
        checkpoints.read_header(file)  # refuse broken files with a clear message
        sd.update({f"taesd_{part}.{k}": v for k, v in comfy.utils.load_torch_file(file, safe_load=True).items()})
    sd["vae_scale"] = torch.tensor(0.18215 if family == checkpoints.SD_TURBO else 0.13025)
    sd["vae_shift"] = torch.tensor(0.0)
    return host_api.TurboVAE(sd=sd, dtype=dtype)
