"""The UNet side of the host: model configs that are always epsilon, the model patcher, attention and
layout choices, the compile wrapper, reload registration and the guidance-free guider."""

import comfy.model_patcher
import comfy.samplers
import torch
from comfy import model_base, supported_models
from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
from comfy.model_base import ModelType
from comfy.patcher_extension import WrappersMP
from comfy_api.torch_helpers.torch_compile import COMPILE_KEY, apply_torch_compile_factory

from .. import compiling

# (module, attribute path, parameters the pack passes or relies on). Overrides are in OVERRIDES.
HOST_SYMBOLS = [
    ("comfy.model_management", "supports_fp8_compute", ("device",)),  # precision.fp8_matmuls
    ("comfy.model_management", "unet_manual_cast", ("weight_dtype", "inference_device", "supported_dtypes")),
    ("comfy.model_base", "SDXL.__init__", ("model_config", "model_type", "device")),
    ("comfy.model_base", "SDXL.encode_adm", ()),
    ("comfy.model_base", "ModelType.EPS", None),
    ("comfy.supported_models", "SD20.model_type", ("state_dict", "prefix")),
    ("comfy.supported_models", "SDXL.model_type", ("state_dict", "prefix")),
    ("comfy.supported_models", "SDXL.get_model", ("state_dict", "prefix", "device")),
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "Timestep.__init__", ("dim",)),
    ("comfy.ldm.modules.attention", "attention_pytorch", ("q", "k", "v", "heads", "mask")),
    ("comfy.model_patcher", "ModelPatcher.__init__", ("model", "load_device", "offload_device")),
    ("comfy.model_patcher", "ModelPatcher.add_wrapper_with_key", ("wrapper_type", "key", "wrapper")),
    ("comfy.model_patcher", "ModelPatcher.remove_wrappers_with_key", ("wrapper_type", "key")),
    ("comfy.patcher_extension", "WrappersMP.APPLY_MODEL", None),
    ("comfy_api.torch_helpers.torch_compile", "apply_torch_compile_factory", ("compiled_module_dict",)),
    ("comfy_api.torch_helpers.torch_compile", "COMPILE_KEY", None),
    ("comfy.samplers", "CFGGuider.inner_set_conds", ("conds",)),
    ("comfy.samplers", "CFGGuider.set_cfg", ("cfg",)),
    ("comfy.samplers", "CFGGuider.sample", ("noise", "latent_image", "sampler", "sigmas", "denoise_mask", "callback",
                                            "disable_pbar", "seed")),
    ("comfy.samplers", "KSAMPLER.__init__", ("sampler_function", "extra_options")),
    ("folder_paths", "get_system_user_directory", ("name",)),  # compile_cache: where compiled graphs live
]


class TurboSD2(supported_models.SD20):
    """SD 2.x layout, always epsilon: the host's v-prediction weight heuristic must not decide."""

    def model_type(self, state_dict, prefix="", *args, **kwargs):
        return ModelType.EPS


class TurboSDXLModel(model_base.SDXL):
    """SDXL with the size embedding width read from the checkpoint (the host hard-codes 256).

    Size conditioning is the host's: the size generated (original = target = the latent's size x 8,
    crop 0), or the values of CLIPTextEncodeSDXL when a user sets them, as diffusers' SDXL
    pipelines and Stability's turbo demo condition.
    """

    def __init__(self, model_config, size_embed_dim: int, device=None, **kwargs):
        super().__init__(model_config, model_type=ModelType.EPS, device=device, **kwargs)
        self.embedder = Timestep(size_embed_dim)


class TurboSDXL(supported_models.SDXL):
    size_embed_dim = 256

    def model_type(self, state_dict, prefix="", *args, **kwargs):
        return ModelType.EPS

    def get_model(self, state_dict, prefix="", device=None, *args, **kwargs):
        return TurboSDXLModel(self, self.size_embed_dim, device=device)


def sdpa_attention(host_attention, *args, **kwargs):
    """UNet attention override (transformer_options["optimized_attention_override"]): PyTorch SDPA,
    whatever the host picked.

    On CPU the host uses sub-quadratic attention whose chunking follows free memory, so one seed
    can give slightly different pixels as the process's memory changes; SDPA is deterministic for
    given shapes and faster there.
    """
    from comfy.ldm.modules.attention import attention_pytorch

    return attention_pytorch(*args, **kwargs)


def use_sdpa_in_unet(patcher) -> None:
    patcher.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sdpa_attention


def use_channels_last(patcher, vae) -> None:
    """NHWC weights for the UNet (unless `patcher` is None) and the decoder: the layout fast conv kernels
    prefer (cuDNN, oneDNN)."""
    if patcher is not None:
        patcher.model.diffusion_model.to(memory_format=torch.channels_last)
    vae.first_stage_model.to(memory_format=torch.channels_last)


def new_model_patcher(model, load_device, offload_device):
    """The host's (non-dynamic) ModelPatcher for the UNet."""
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def register_reload(factory, args: tuple, model, clip, vae) -> None:
    """Tell newer hosts how to load these models afresh (ModelPatcher.cached_patcher_init).

    Dynamic-VRAM hosts call `factory(*args, disable_dynamic=True)[index]` for
    `clone(disable_dynamic=True)` and multi-GPU deep clones; without it they raise "Cannot create
    non-dynamic delegate". Older hosts have no such attribute and never ask.
    """
    for index, patcher in enumerate((model, clip.patcher, vae.patcher)):
        if hasattr(patcher, "cached_patcher_init"):
            patcher.cached_patcher_init = (factory, args, index)


def compile_unet(patcher, compile_mode: str) -> None:
    """Compile the UNet for sampling, swapped in through the host's apply_model compile wrapper.

    On CPU the weights are frozen into the graph (oneDNN prepacking); elsewhere they stay inputs.
    Shapes are static: a new image size or batch compiles once more (the first run at it is slow).
    """
    unet = patcher.get_model_object("diffusion_model")
    freeze_weights = patcher.load_device.type == "cpu"
    compiled = compiling.CompiledUNet(unet, compiling.compile_fn(unet, compile_mode, freeze_weights),
                                      patcher.model if freeze_weights else None)
    patcher.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY,
                                 apply_torch_compile_factory({"diffusion_model": compiled}))


class PositiveOnlyGuider(comfy.samplers.CFGGuider):
    """Guidance-free: only the positive conditioning, cfg 1, so the host never runs an unconditional pass."""

    def set_conds(self, positive, *args, **kwargs):
        self.inner_set_conds({"positive": positive})


# (our override, the host method it overrides): each must accept every parameter of the host's.
OVERRIDES = [
    (TurboSD2.model_type, supported_models.SD20.model_type),
    (TurboSDXL.model_type, supported_models.SDXL.model_type),
    (TurboSDXL.get_model, supported_models.SDXL.get_model),
    (PositiveOnlyGuider.set_conds, comfy.samplers.CFGGuider.set_conds),
]
