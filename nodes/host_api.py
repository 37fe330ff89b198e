"""Every place the pack subclasses, wraps or patches ComfyUI code, in one module.

Host code changes under us (0.3.75, 0.33, 0.38, ...). Each override here accepts the host's current
arguments and passes them on; HOST_SYMBOLS names every host symbol the pack builds on, with the
parameters it relies on, and tests/nodes/test_host_contract.py checks them on whichever host runs.
"""

import inspect
import logging

import comfy.model_patcher
import comfy.samplers
import comfy.sd
import torch
from comfy import model_base, supported_models
from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
from comfy.model_base import ModelType
from comfy.patcher_extension import WrappersMP
from comfy_api.torch_helpers.torch_compile import COMPILE_KEY, apply_torch_compile_factory

from . import compiling
from .prompt_cache import PromptCache, freeze

log = logging.getLogger(__name__)

# (module, attribute path, parameters the pack passes or relies on). Overrides are in OVERRIDES.
HOST_SYMBOLS = [
    ("comfy.sd", "CLIP.__init__", ("target", "embedding_directory", "no_init", "tokenizer_data", "parameters",
                                   "model_options")),
    ("comfy.sd", "CLIP.clone", ()),
    ("comfy.sd", "CLIP.encode_from_tokens", ("tokens", "return_pooled", "return_dict")),
    ("comfy.sd", "CLIP.load_sd", ("sd", "full_model")),
    ("comfy.sd", "VAE.__init__", ("sd", "config", "dtype")),
    ("comfy.model_base", "SDXL.__init__", ("model_config", "model_type", "device")),
    ("comfy.model_base", "SDXL.encode_adm", ()),
    ("comfy.supported_models", "SD20.model_type", ("state_dict", "prefix")),
    ("comfy.supported_models", "SDXL.model_type", ("state_dict", "prefix")),
    ("comfy.supported_models", "SDXL.get_model", ("state_dict", "prefix", "device")),
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "Timestep.__init__", ("dim",)),
    ("comfy.ldm.modules.attention", "attention_pytorch", ("q", "k", "v", "heads", "mask")),
    ("comfy.ldm.modules.diffusionmodules.model", "AttnBlock.__init__", ()),
    ("comfy.ldm.modules.diffusionmodules.model", "pytorch_attention", ("q", "k", "v")),
    ("comfy.clip_model", "CLIPEncoder.forward", ("x", "mask", "intermediate_output")),
    ("comfy.clip_model", "CLIPTextModel_.forward", ("embeds", "dtype")),
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


def use_sdpa_in_vae(vae) -> None:
    """The VAE's attention blocks through PyTorch SDPA, as `sdpa_attention` does for the UNet.

    On CPU the host picks split attention there, chunked by free memory; SDPA gives the same
    numbers whatever the memory (max 0.001/255 apart on a full-size SD VAE) at the same speed.
    """
    from comfy.ldm.modules.diffusionmodules import model as vae_model

    for module in vae.first_stage_model.modules():
        if isinstance(module, vae_model.AttnBlock):
            module.optimized_attention = vae_model.pytorch_attention


def use_channels_last(patcher, vae) -> None:
    """NHWC weights for the UNet and the decoder: the layout fast conv kernels prefer (cuDNN, oneDNN)."""
    patcher.model.diffusion_model.to(memory_format=torch.channels_last)
    vae.first_stage_model.to(memory_format=torch.channels_last)


def new_model_patcher(model, load_device, offload_device):
    """The host's (non-dynamic) ModelPatcher for the UNet."""
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def clip_options() -> dict:
    """Keyword arguments for CLIP(...) that make its patcher non-dynamic on hosts with dynamic VRAM."""
    accepts = inspect.signature(comfy.sd.CLIP.__init__).parameters
    return {"disable_dynamic": True} if "disable_dynamic" in accepts else {}


def register_reload(factory, args: tuple, model, clip, vae) -> None:
    """Tell newer hosts how to load these models afresh (ModelPatcher.cached_patcher_init).

    Dynamic-VRAM hosts call `factory(*args, disable_dynamic=True)[index]` for
    `clone(disable_dynamic=True)` and multi-GPU deep clones; without it they raise "Cannot create
    non-dynamic delegate". Older hosts have no such attribute and never ask.
    """
    for index, patcher in enumerate((model, clip.patcher, vae.patcher)):
        if hasattr(patcher, "cached_patcher_init"):
            patcher.cached_patcher_init = (factory, args, index)


class CachedTextCLIP(comfy.sd.CLIP):
    """The host's CLIP that remembers the last prompts it encoded (a PromptCache).

    The key is the exact token ids and weights, the CLIP skip layer and the patch set, so a changed
    prompt, a LoRA on the text encoder or hooks never hit a stale entry. Clones share the cache.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt_cache = PromptCache()

    def clone(self, *args, **kwargs):
        base = super().clone(*args, **kwargs)  # newer hosts: clone(disable_dynamic=...)
        n = CachedTextCLIP(no_init=True)
        n.__dict__.update(base.__dict__)
        n.prompt_cache = self.prompt_cache
        return n

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False, *args, **kwargs):
        def encode():
            return super(CachedTextCLIP, self).encode_from_tokens(tokens, return_pooled, return_dict, *args, **kwargs)

        if args or kwargs or self.apply_hooks_to_conds or self.patcher.hook_patches:
            return encode()  # arguments this cache does not know, or hooks: never cached
        key = (freeze(tokens), self.layer_idx, return_pooled, return_dict, self.patcher.patches_uuid)
        return self.prompt_cache.get_or_encode(key, encode)


def compute_text_encoders_in(clip, dtype: torch.dtype) -> None:
    """Make the text encoders compute in `dtype` (their weights' dtype), not fp32.

    The host runs every text encoder's activations in fp32 and casts each weight up to it on every
    call; with bf16 weights on CPU that halves the speed of the encode. Outputs are still returned
    in fp32 by the host.
    """
    from comfy.clip_model import CLIPTextModel_

    for module in clip.cond_stage_model.modules():
        if isinstance(module, CLIPTextModel_):
            module.forward = _with_dtype(module.forward, dtype)


def _with_dtype(forward, dtype):
    def run(*args, **kwargs):
        kwargs["dtype"] = dtype
        if kwargs.get("embeds") is not None:  # the host hands over fp32 token embeddings
            kwargs["embeds"] = kwargs["embeds"].to(dtype)
        return forward(*args, **kwargs)

    return run


def compile_text_encoders(clip, compile_mode: str) -> None:
    """Compile the transformer layers of each text encoder ([B, 77, width] in and out).

    Only the layer stack: token embedding and pooling take the prompt length as a Python value,
    which would make every new prompt length compile again.
    """
    from comfy.clip_model import CLIPEncoder

    for module in clip.cond_stage_model.modules():
        if isinstance(module, CLIPEncoder):
            module.forward = compiling.compile_fn(compiling.unmutated_input(module.forward), compile_mode)


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
    (CachedTextCLIP.clone, comfy.sd.CLIP.clone),
    (CachedTextCLIP.encode_from_tokens, comfy.sd.CLIP.encode_from_tokens),
    (TurboSD2.model_type, supported_models.SD20.model_type),
    (TurboSDXL.model_type, supported_models.SDXL.model_type),
    (TurboSDXL.get_model, supported_models.SDXL.get_model),
    (PositiveOnlyGuider.set_conds, comfy.samplers.CFGGuider.set_conds),
]
