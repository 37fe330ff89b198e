"""ADDTurboLoader: a turbo checkpoint (single file or diffusers folder) -> MODEL, CLIP, VAE.

Everything is built with the host's own classes; the core package decides the family and the sizes.
"""

import logging
import os
import time

import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..add_turbo import checkpoints, diffusers_folders
from ..add_turbo.checkpoints import CheckpointError
from . import fast_path
from .convert import folder_state_dict
from .turbo_models import TurboSD2, TurboSDXL, sdpa_attention, text_encoder_dtype, use_sdpa_in_vae

log = logging.getLogger(__name__)

DIFFUSERS_TAG = "[diffusers] "
WEIGHT_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DECODERS = ("full", "taesd")
ATTENTIONS = ("sdpa", "host")
TAESD_NAMES = {checkpoints.SD_TURBO: "taesd", checkpoints.SDXL_TURBO: "taesdxl"}


def checkpoint_choices() -> list[str]:
    """Single files from models/checkpoints, then diffusers folders from models/diffusers."""
    names = [n for n in folder_paths.get_filename_list("checkpoints")]
    folders = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            folders += [d for d in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, d, "model_index.json"))]
    return names + [DIFFUSERS_TAG + d for d in folders]


def _resolve(ckpt_name: str) -> str:
    if ckpt_name.startswith(DIFFUSERS_TAG):
        name = ckpt_name[len(DIFFUSERS_TAG):]
        for root in folder_paths.get_folder_paths("diffusers"):
            if os.path.isdir(os.path.join(root, name)):
                return os.path.join(root, name)
        folders = ", ".join(folder_paths.get_folder_paths("diffusers"))
    else:
        path = folder_paths.get_full_path("checkpoints", ckpt_name)
        if path is not None:
            return path
        folders = ", ".join(folder_paths.get_folder_paths("checkpoints"))
    raise ValueError(f"checkpoint {ckpt_name!r} was not found in {folders}: put it there and refresh the node list (R)")


def _unet_dtypes(weight_dtype: str, load_device, sd, prefix, model_config):
    """(storage dtype, manual-cast dtype or None). On CPU a chosen dtype is also the compute dtype."""
    supported = model_config.supported_inference_dtypes
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


def _read_tensors(path: str, keep) -> dict[str, torch.Tensor]:
    """The file's tensors whose names pass `keep`, memory-mapped (safetensors; nothing is unpickled).

    Each call maps the file anew, so the text encoder and VAE tensors, which the host copies into
    its own modules, are unmapped once those copies exist, while the UNet keeps its mapping.
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys() if keep(k)}


def _build_unet(path, model_config, sd, prefix, dtype, load_device):
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


def _taesd(family: str, path: str, dtype):
    """TAESD / TAESDXL from models/vae_approx (safetensors only: never unpickle)."""
    name = TAESD_NAMES[family]
    sd = {}
    for part in ("encoder", "decoder"):
        file = folder_paths.get_full_path("vae_approx", f"{name}_{part}.safetensors")
        if file is None:
            raise ValueError(f"decoder 'taesd' needs {name}_encoder.safetensors and {name}_decoder.safetensors in "
                             f"{', '.join(folder_paths.get_folder_paths('vae_approx'))}: download them from the TAESD "
                             "release, or choose decoder 'full'")
        checkpoints.read_header(file)  # refuse broken files with a clear message
        sd.update({f"taesd_{part}.{k}": v for k, v in comfy.utils.load_torch_file(file, safe_load=True).items()})
    sd["vae_scale"] = torch.tensor(0.18215 if family == checkpoints.SD_TURBO else 0.13025)
    sd["vae_shift"] = torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd, dtype=dtype)


def load_turbo(path: str, weight_dtype: str = "auto", decoder: str = "full", attention: str = "sdpa",
               channels_last: bool = True, compile_mode: str = "off"):
    """Load an SD-Turbo / SDXL-Turbo single file or diffusers folder.

    Returns:
        (ModelPatcher, CLIP, VAE, CheckpointInfo). The CLIP caches the prompts it encoded; with
        compile_mode other than "off" the UNet is compiled at its first sampling run.
    Raises:
        CheckpointError: the file or folder is broken or not a turbo model (message names the fix).
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    load_device = mm.get_torch_device()
    fast_path.check_compile(compile_mode, load_device)
    prefix = checkpoints.UNET_PREFIX
    if os.path.isdir(path):
        folder = diffusers_folders.inspect_folder(path, prefer_fp16=weight_dtype == "fp16")
        sd = folder_state_dict(folder)
        info = checkpoints.identify(path, {k: (tuple(v.shape), str(v.dtype)) for k, v in sd.items()})
        unet_sd = {k: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}
    else:
        info = checkpoints.inspect_checkpoint(path)
        unet_sd = _read_tensors(path, lambda key: key.startswith(prefix))
        sd = None  # read after the UNet, from a second mapping that is released once copied
    unet_config = comfy.model_detection.detect_unet_config(unet_sd, prefix)
    if info.family == checkpoints.SDXL_TURBO:
        model_config = TurboSDXL(unet_config)
        model_config.size_embed_dim = info.size_embed_dim
    else:
        model_config = TurboSD2(unet_config)

    unet_dtype, manual_cast = _unet_dtypes(weight_dtype, load_device, unet_sd, prefix, model_config)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    model = _build_unet(path, model_config, unet_sd, prefix, unet_dtype, load_device)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    if attention == "sdpa":
        patcher.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sdpa_attention
    if sd is None:
        sd = _read_tensors(path, lambda key: not key.startswith(prefix))

    cpu_bf16 = weight_dtype == "bf16" and load_device.type == "cpu"  # bf16 compute everywhere, not just storage
    vae_dtype = torch.bfloat16 if cpu_bf16 else None
    if decoder == "taesd":
        vae = _taesd(info.family, path, vae_dtype)
    else:
        vae_sd = comfy.utils.state_dict_prefix_replace(sd, {checkpoints.VAE_PREFIX: ""}, filter_keys=True)
        vae = comfy.sd.VAE(sd=vae_sd, config={"params": info.vae}, dtype=vae_dtype)
        del vae_sd
        if attention == "sdpa":
            use_sdpa_in_vae(vae)

    clip_sd = model_config.process_clip_state_dict(sd)
    te_options = {f"{spec.name}_model_config": spec.config_overrides() for spec in info.text_encoders}
    if cpu_bf16:
        te_options["dtype"] = torch.bfloat16
    elif (dtype := text_encoder_dtype(load_device)) is not None:
        te_options["dtype"] = dtype
    clip = fast_path.CachedTextCLIP(model_config.clip_target(state_dict=sd), tokenizer_data=clip_sd,
                         embedding_directory=folder_paths.get_folder_paths("embeddings"),
                         parameters=comfy.utils.calculate_parameters(clip_sd), model_options=te_options)
    missing, _ = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if ".logit_scale" not in k and "text_projection" not in k]
    if missing:
        raise CheckpointError(path, f"the text encoder is incomplete ({len(missing)} tensors missing, e.g. {missing[0]})",
                              "The file is damaged: download it again")
    del sd, clip_sd
    if cpu_bf16:
        fast_path.compute_text_encoders_in(clip, torch.bfloat16)
    if channels_last:
        fast_path.use_channels_last(patcher, vae)
    if compile_mode != "off":
        fast_path.compile_unet(patcher, compile_mode)
        fast_path.compile_text_encoders(clip, compile_mode)
    log.info("ADD Turbo: loaded %s as %s (UNet %s, decoder %s)", path, info.family_name, unet_dtype, decoder)
    return patcher, clip, vae, info


class ADDTurboLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ADDTurboLoader",
            display_name="ADD Turbo Loader",
            category="ADD Turbo",
            description="Loads an SD-Turbo or SDXL-Turbo checkpoint (single file or diffusers folder) configured "
                        "for turbo sampling: epsilon prediction, 512 px size conditioning, sizes read from the file.",
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_choices(),
                               tooltip="A single-file SD-Turbo (sd_turbo.safetensors) or SDXL-Turbo "
                                       "(sd_xl_turbo_1.0[_fp16].safetensors) from models/checkpoints, or a "
                                       "'[diffusers] ' snapshot folder from models/diffusers."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="auto", optional=True,
                               tooltip="Precision. auto: fp32 on CPU (exact), the host's choice on GPU. bf16 on CPU "
                                       "computes the UNet, VAE and text encoder in bf16 (about 2x faster there, "
                                       "slightly different images). fp16 picks the snapshot's fp16 variant."),
                io.Combo.Input("decoder", options=list(DECODERS), default="full", optional=True,
                               tooltip="full: the checkpoint's VAE. taesd: the tiny TAESD/TAESDXL autoencoder from "
                                       "models/vae_approx, much cheaper to decode with a small loss of detail."),
                io.Combo.Input("attention", options=list(ATTENTIONS), default="sdpa", optional=True,
                               tooltip="sdpa: PyTorch scaled-dot-product attention in the UNet and VAE, deterministic "
                                       "(one seed, one image, whatever the free memory) and fast. host: whatever "
                                       "ComfyUI picked (on CPU its memory-dependent sub-quadratic attention)."),
                io.Boolean.Input("channels_last", default=True, optional=True,
                                 tooltip="Store the UNet and VAE conv weights channels-last (NHWC), the layout fast "
                                         "convolution kernels prefer: on CPU in fp32 the UNet step and the VAE decode "
                                         "run about 30 % faster. Same arithmetic in another order (images within "
                                         "0.01/255). Off: the host's layout."),
                io.Combo.Input("compile", options=list(fast_path.COMPILE_MODES), default="off", optional=True,
                               tooltip="torch.compile the UNet and the text encoder layers. The loader runs a "
                                       "512x512 warm-up and reports its time; another image size or batch compiles "
                                       "once more on its first run. "
                                       "'+ cuda graphs' replays each UNet call as one CUDA graph (GPU only)."),
            ],
            outputs=[
                io.Model.Output(tooltip="The turbo UNet, epsilon prediction."),
                io.Clip.Output(tooltip="The text encoder(s): OpenCLIP-H, or CLIP-L + OpenCLIP-bigG."),
                io.Vae.Output(tooltip="The checkpoint's VAE, or TAESD with decoder 'taesd'."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name, weight_dtype="auto", decoder="full", attention="sdpa", channels_last=True,
                compile="off") -> io.NodeOutput:
        model, clip, vae, _ = load_turbo(_resolve(ckpt_name), weight_dtype, decoder, attention, channels_last, compile)
        if compile == "off":
            return io.NodeOutput(model, clip, vae)
        message = warm_up_compiled(model, clip, vae, compile)
        return io.NodeOutput(model, clip, vae, ui={"text": [message]})


def warm_up_compiled(model, clip, vae, compile_mode: str, size: int = 512) -> str:
    """Compile (and record CUDA graphs) now, at size x size batch 1, so the first image is not slow.

    Returns the message the node shows.
    """
    from .sampling import sample_latent

    positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = torch.zeros([1, model.model.latent_format.latent_channels, size // 8, size // 8])
    runs = 3 if fast_path.COMPILE_MODES[compile_mode] == "reduce-overhead" else 1  # warm-up, record, replay
    start = time.perf_counter()
    for _ in range(runs):
        vae.decode(sample_latent(model, positive, latent, 0, 1, 1.0, "trailing", "euler", 0.0))
    seconds = time.perf_counter() - start
    message = (f"UNet and text encoder compiled ({compile_mode}) for {size}x{size} batch 1: warm-up {seconds:.1f} s. "
               "Other sizes or batches compile on their first run.")
    log.info("ADD Turbo: %s", message)
    return message
