"""Loading a turbo checkpoint as a pipeline of steps over one LoaderOptions value:

identify (the family and sizes from the header, the tensors mapped) -> load (the UNet, the VAE, the
CLIP with the host's classes, through host_api/) -> configure (attention, layouts, precision, compile,
the sampling engine) -> accelerate (the engines of backends/, which the loader knows nothing else of).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import comfy.model_detection
import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..add_turbo import checkpoints, diffusers_folders
from ..add_turbo.checkpoints import CheckpointError
from . import backends, host_api, precision, weights
from .convert import folder_state_dict
from .engine import set_engine
from .loader_options import LoaderOptions

log = logging.getLogger(__name__)
DEFAULT_OPTIONS = LoaderOptions()

HOST_SYMBOLS = [
    ("comfy.model_detection", "detect_unet_config", ("state_dict", "key_prefix")),
    ("comfy.model_management", "get_torch_device", ()),
    ("comfy.model_management", "unet_offload_device", ()),
    ("comfy.utils", "state_dict_prefix_replace", ("state_dict", "replace_prefix", "filter_keys")),
    ("comfy.utils", "calculate_parameters", ("sd",)),
    ("folder_paths", "get_folder_paths", ("folder_name",)),
]


@dataclass
class Loading:
    """One load in progress: the options, what each step found, and the models as they are built."""

    path: str
    options: LoaderOptions
    load_device: object
    weight_dtype: str  # the torch modules' choice, resolved ("fast" is gone)
    info: checkpoints.CheckpointInfo | None = None
    unet_sd: dict | None = None
    sd: dict | None = None  # the rest of the file's tensors, once the UNet is built
    model_config: object = None
    unet_dtype: object = None
    patcher: object = None
    clip: object = None
    vae: object = None
    reports: list = field(default_factory=list)


def load_turbo(path: str, options: LoaderOptions = DEFAULT_OPTIONS):
    """Load an SD-Turbo / SDXL-Turbo single file or diffusers folder.

    Returns:
        (ModelPatcher, CLIP, VAE, CheckpointInfo). The CLIP caches the prompts it encoded; with
        compile other than "off" the UNet is compiled at its first sampling run; with engine "on" the
        MODEL (and its clones) samples through nodes/engine/ where it can; the engines that `options`
        ask for (backends/) are installed last.
    Raises:
        CheckpointError: the file or folder is broken or not a turbo model (message names the fix).
        ValueError, RuntimeError: an option this host cannot run, with the fix.
    """
    load_device = mm.get_torch_device()
    options.check(load_device)
    backends.check(options, load_device)
    weight_dtype, _ = precision.resolve(backends.torch_weight_dtype(options), load_device)
    loading = Loading(path, options, load_device, weight_dtype)
    identify(loading)
    load_unet(loading)
    load_vae(loading)
    load_clip(loading)
    configure(loading)
    loading.reports = backends.accelerate(loading.patcher, loading.clip, loading.vae, options, loading.info)
    host_api.register_reload(reload_patchers, (path, options), loading.patcher, loading.clip, loading.vae)
    log.info("ADD Turbo: loaded %s as %s (UNet %s, decoder %s)", path, loading.info.family_name,
             loading.unet_dtype, options.decoder)
    return loading.patcher, loading.clip, loading.vae, loading.info


def identify(loading: Loading) -> None:
    """The family and every size from the file's header (nothing else read yet), the engines' memory
    check, then the UNet's tensors mapped."""
    path, prefix = loading.path, checkpoints.UNET_PREFIX
    if os.path.isdir(path):
        folder = diffusers_folders.inspect_folder(path, prefer_fp16=loading.weight_dtype == "fp16")
        sd = folder_state_dict(folder)
        loading.info = checkpoints.identify(path, {k: (tuple(v.shape), str(v.dtype)) for k, v in sd.items()})
        loading.unet_sd = {k: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]}
        loading.sd = sd
        backends.check_memory(loading.options, loading.info)
    else:
        loading.info = checkpoints.inspect_checkpoint(path)
        backends.check_memory(loading.options, loading.info)  # before any weight is read
        loading.unet_sd = weights.read_tensors(path, lambda key: key.startswith(prefix), unet_channels_last(loading))
    unet_config = comfy.model_detection.detect_unet_config(loading.unet_sd, prefix)
    if loading.info.family == checkpoints.SDXL_TURBO:
        loading.model_config = host_api.TurboSDXL(unet_config)
        loading.model_config.size_embed_dim = loading.info.size_embed_dim
    else:
        loading.model_config = host_api.TurboSD2(unet_config)


def unet_channels_last(loading: Loading) -> bool:
    """Whether the torch UNet's conv weights take the NHWC layout: not where they stay the file's mapping
    (an engine converts from them and serves in their place: a copy would stay resident for nothing)."""
    return loading.options.channels_last and loading.weight_dtype != precision.CHECKPOINT


def load_unet(loading: Loading) -> None:
    """The host's UNet over the mapped tensors (cast only where the dtype differs), in a ModelPatcher."""
    prefix, config = checkpoints.UNET_PREFIX, loading.model_config
    unet_dtype, manual_cast = precision.unet_dtypes(loading.weight_dtype, loading.load_device, loading.unet_sd,
                                                    prefix, config)
    config.set_inference_dtype(unet_dtype, manual_cast)
    model = weights.build_unet(loading.path, config, loading.unet_sd, prefix, unet_dtype)
    loading.unet_dtype = unet_dtype
    loading.unet_sd = None
    loading.patcher = host_api.new_model_patcher(model, loading.load_device, mm.unet_offload_device())
    if loading.sd is None:  # read after the UNet, from a second mapping that is released once copied
        loading.sd = weights.read_tensors(loading.path, lambda key: not key.startswith(prefix))


def load_vae(loading: Loading) -> None:
    """The checkpoint's VAE or TAESD (decoder taesd), in bf16 where the CPU computes in bf16."""
    bf16 = precision.cpu_bf16(loading.weight_dtype, loading.load_device)
    vae_dtype = precision.WEIGHT_DTYPES["bf16"] if bf16 else None
    if loading.options.decoder == "taesd":
        loading.vae = weights.taesd(loading.info.family, vae_dtype)
        return
    vae_sd = comfy.utils.state_dict_prefix_replace(loading.sd, {checkpoints.VAE_PREFIX: ""}, filter_keys=True)
    loading.vae = host_api.TurboVAE(sd=vae_sd, config={"params": loading.info.vae}, dtype=vae_dtype)


def load_clip(loading: Loading) -> None:
    """The host's CLIP with the pack's prompt cache; an incomplete text encoder is refused."""
    weight_dtype, device, sd = loading.weight_dtype, loading.load_device, loading.sd
    clip_sd = loading.model_config.process_clip_state_dict(sd)
    te_options = {f"{spec.name}_model_config": spec.config_overrides() for spec in loading.info.text_encoders}
    if (te_dtype := precision.text_encoder_dtype(weight_dtype, device)) is not None:
        te_options["dtype"] = te_dtype
    clip = host_api.CachedTextCLIP(loading.model_config.clip_target(state_dict=sd), tokenizer_data=clip_sd,
                                   embedding_directory=folder_paths.get_folder_paths("embeddings"),
                                   parameters=comfy.utils.calculate_parameters(clip_sd), model_options=te_options,
                                   **host_api.clip_options())
    missing, _ = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if ".logit_scale" not in k and "text_projection" not in k]
    if missing:
        raise CheckpointError(loading.path, f"the text encoder is incomplete ({len(missing)} tensors missing, e.g. "
                                            f"{missing[0]})", "The file is damaged: download it again")
    loading.sd = None
    if precision.cpu_bf16(weight_dtype, device):
        host_api.compute_text_encoders_in(clip, te_dtype)
    loading.clip = clip


def configure(loading: Loading) -> None:
    """Attention, layouts, torch.compile and the sampling engine, as the options say."""
    options, patcher, clip, vae = loading.options, loading.patcher, loading.clip, loading.vae
    if options.attention == "sdpa":
        host_api.use_sdpa_in_unet(patcher)
        if options.decoder == "full":
            host_api.use_sdpa_in_vae(vae)
    if options.channels_last:
        host_api.use_channels_last(patcher if unet_channels_last(loading) else None, vae)
    if options.compile != "off":
        host_api.compile_unet(patcher, options.compile)
        host_api.compile_text_encoders(clip, options.compile)
    set_engine(patcher, options.engine)


def reload_patchers(path, options: LoaderOptions, disable_dynamic=False):
    """The models loaded afresh, as [MODEL patcher, CLIP patcher, VAE patcher]: the host's
    cached_patcher_init factory. The UNet and CLIP patchers are never dynamic, so `disable_dynamic`
    holds for them; the VAE's is the host's own choice (dynamic on GPUs with dynamic VRAM), as with
    the host's own checkpoint loader."""
    model, clip, vae, _ = load_turbo(path, options)
    return [model, clip.patcher, vae.patcher]
