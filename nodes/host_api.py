"""Every place the pack subclasses, wraps or patches ComfyUI code, in one module.

Host code changes under us (0.3.75, 0.33, 0.38, ...). Each override here accepts the host's current
arguments and passes them on; HOST_SYMBOLS names every host symbol the pack builds on, with the
parameters it relies on, and tests/nodes/test_host_contract.py checks them on whichever host runs.
"""

import contextlib
import inspect
import logging
import sys
import weakref

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.samplers
import comfy.sd
import torch
from comfy import model_base, supported_models
from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
from comfy.model_base import ModelType
from comfy.patcher_extension import WrappersMP
from comfy_api.torch_helpers.torch_compile import COMPILE_KEY, apply_torch_compile_factory

from ..add_turbo import decode_memory, fused_blocks, packed_conv
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
    ("comfy.sd", "VAE.decode", ("samples_in",)),
    ("comfy.sd", "VAE.encode", ("pixel_samples",)),
    ("comfy.sd", "VAE.decode_tiled", ("samples", "tile_x", "tile_y", "overlap")),
    ("comfy.model_management", "get_free_memory", ("dev",)),
    ("comfy.model_management", "supports_fp8_compute", ("device",)),  # precision.fp8_matmuls
    ("comfy.model_management", "unet_manual_cast", ("weight_dtype", "inference_device", "supported_dtypes")),
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


class TurboVAE(comfy.sd.VAE):
    """The host's VAE that, on CPU, decodes in tiles rather than fail for memory, and with the engine on
    runs TAESD's residual blocks with fused convolutions (`fuse_taesd_blocks`).

    The host splits a batch by free memory but decodes a single image whole whatever it needs, and
    on CPU a failed allocation is a plain RuntimeError it does not retry (or the kernel's OOM killer
    ends the process). Here an image that would not fit goes through the host's tiled decode (three
    overlapping tilings averaged), and a failed allocation retries tiled. Elsewhere: the host's decode.
    """

    fused_blocks = None  # TAESD Block -> add_turbo.fused_blocks.FusedResidualBlock, when fusing is on
    decode_graph = None  # engine.GraphedCall over TAESD's decode, when the engine records it (graph_taesd_decode)

    def decode(self, samples_in, *args, **kwargs):
        """[B, C, h, w] latent -> [B, 8h, 8w, 3] image, as the host's decode."""
        with _graphed_taesd_decode(self):
            if self.device.type != "cpu":
                return super().decode(samples_in, *args, **kwargs)
            with _fused_taesd_blocks(self):
                return self._decode_on_cpu(samples_in, *args, **kwargs)

    def encode(self, pixel_samples, *args, **kwargs):
        """[B, H, W, 3] image -> latent, as the host's encode."""
        if self.device.type != "cpu":
            return super().encode(pixel_samples, *args, **kwargs)
        with _fused_taesd_blocks(self):
            return super().encode(pixel_samples, *args, **kwargs)

    def _decode_on_cpu(self, samples_in, *args, **kwargs):
        height, width = samples_in.shape[-2:]
        dtype_bytes = comfy.model_management.dtype_size(self.vae_dtype)
        free = comfy.model_management.get_free_memory(self.device)
        side = decode_memory.tile_side(height, width, free, dtype_bytes)
        if side is None:
            try:
                return super().decode(samples_in, *args, **kwargs)
            except (RuntimeError, MemoryError) as error:
                if not decode_memory.is_allocation_failure(error):
                    raise
                side = decode_memory.tile_side(height, width, 0, dtype_bytes)  # the smallest tile
                log.warning("ADD Turbo: decoding failed for memory (%s); retrying in tiles", str(error)[:120])
        need = decode_memory.decode_bytes(height * 8, width * 8, dtype_bytes)
        log.warning("ADD Turbo: decoding %dx%d in %d px tiles: one image needs about %.1f GiB, %.1f GiB is free",
                    width * 8, height * 8, side * 8, need / 2**30, free / 2**30)
        return self.decode_tiled(samples_in, tile_x=side, tile_y=side, overlap=side // 4)


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
        n.prompt_cache, n.encoder_graphs = self.prompt_cache, self.encoder_graphs
        return n

    encoder_graphs = None  # CLIPEncoder -> engine.GraphedCall, when the engine records them (graph_text_encoders)

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False, *args, **kwargs):
        def encode():
            with _graphed_text_encoders(self):
                return super(CachedTextCLIP, self).encode_from_tokens(tokens, return_pooled, return_dict, *args,
                                                                      **kwargs)

        if args or kwargs or self.apply_hooks_to_conds or self.patcher.hook_patches:
            return encode()  # arguments this cache does not know, or hooks: never cached
        key = (freeze(tokens), self.layer_idx, return_pooled, return_dict, self.patcher.patches_uuid)
        out = self.prompt_cache.get_or_encode(key, encode)
        _remember_encoder(out.get("cond") if isinstance(out, dict) else out, self)
        return out


# Conditioning tensor -> the CLIP that encoded it (queue_batch encodes a queued prompt's other text with
# it, as that prompt's CLIPTextEncode will). Keyed by id, checked through a weak reference.
_ENCODED_BY: dict = {}


def _remember_encoder(cond, clip) -> None:
    if not torch.is_tensor(cond):
        return
    for key in [k for k, (tensor, _) in _ENCODED_BY.items() if tensor() is None]:
        del _ENCODED_BY[key]
    _ENCODED_BY[id(cond)] = (weakref.ref(cond), weakref.ref(clip))


def clip_that_encoded(cond) -> "CachedTextCLIP | None":
    """The pack's CLIP whose encode returned the tensor `cond` ([B, tokens, width]), while both live."""
    tensor, clip = _ENCODED_BY.get(id(cond), (None, None))
    return clip() if tensor is not None and tensor() is cond else None


def encode_text(clip, text: str):
    """`text` encoded as the host's CLIPTextEncode encodes it: the conditioning [[cond, {...}]]."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


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
    (TurboVAE.decode, comfy.sd.VAE.decode),
    (TurboVAE.encode, comfy.sd.VAE.encode),
]


# --- The sampling engine (nodes/engine.py): the host's own sampling steps, prepared once per run ----

HOST_SYMBOLS += [
    ("comfy.sampler_helpers", "convert_cond", ("cond",)),
    ("comfy.sampler_helpers", "prepare_model_patcher", ("model", "conds", "model_options")),
    ("comfy.sampler_helpers", "prepare_sampling", ("model", "noise_shape", "conds", "model_options")),
    ("comfy.sampler_helpers", "cleanup_models", ("conds", "models")),
    ("comfy.model_patcher", "create_model_options_clone", ("orig_model_options",)),
    ("comfy.model_patcher", "ModelPatcher.pre_run", ()),
    ("comfy.model_patcher", "ModelPatcher.cleanup", ()),
    ("comfy.model_patcher", "ModelPatcher.current_loaded_device", ()),
    ("comfy.samplers", "process_conds", ("model", "noise", "conds", "device", "latent_image", "denoise_mask", "seed")),
    ("comfy.samplers", "get_area_and_mult", ("conds", "x_in", "timestep_in")),
    ("comfy.samplers", "cond_cat", ("c_list",)),
    ("comfy.model_base", "BaseModel.apply_model", ("x", "t", "c_crossattn", "transformer_options")),
    ("comfy.model_base", "BaseModel.process_latent_in", ("latent",)),
    ("comfy.model_base", "BaseModel.process_latent_out", ("latent",)),
    ("comfy.model_sampling", "EPS.noise_scaling", ("sigma", "noise", "latent_image", "max_denoise")),
    ("comfy.model_sampling", "EPS.inverse_noise_scaling", ("sigma", "latent")),
]

# What a ModelPatcher may carry that changes sampling, as (attribute, what it is). Any of it set:
# the engine leaves the run to the host. An attribute this host lacks counts as set (unknown layout).
_PATCHER_ADDITIONS = (
    ("patches", "weight patches (a LoRA, a merge or another patch node)"),
    ("weight_wrapper_patches", "weight wrappers"),
    ("object_patches", "object patches"),
    ("hook_patches", "hooks"),
    ("forced_hooks", "hooks"),
    ("current_hooks", "hooks"),
    ("callbacks", "callbacks"),
    ("injections", "injections"),
    ("additional_models", "additional models"),
    ("attachments", "attachments"),
)
_MISSING = object()


def _is_set(value) -> bool:
    """True for anything but None and empty containers."""
    return len(value) > 0 if isinstance(value, (dict, list, tuple, set)) else value is not None


def _holds_any(value) -> bool:
    """For registries of lists by type and key (wrappers, callbacks, transformer options): True when
    any list in it is non-empty or anything else is set. Removing an entry leaves empty dicts behind."""
    if isinstance(value, dict):
        return any(_holds_any(v) for v in value.values())
    return _is_set(value)


def _foreign_wrappers(patcher) -> list[str]:
    """Wrapper types on the patcher other than the compile wrapper (ours or TorchCompileModel's)."""
    found = []
    for wrapper_type, by_key in patcher.wrappers.items():
        others = [fns for key, fns in by_key.items() if (wrapper_type, key) != (WrappersMP.APPLY_MODEL, COMPILE_KEY)]
        if any(_holds_any(fns) for fns in others):
            found.append(wrapper_type)
    return found


def direct_sampling_obstacle(patcher, own_options=()) -> str | None:
    """Why sampling `patcher` could compute something other than plain UNet calls, or None.

    None means: no weight or object patches, hooks, callbacks, injections or extra models, no wrapper
    but the compile one, no model option but `own_options` and transformer options holding at most
    the pack's attention override. Then the host's sampling of one plain prompt is apply_model with
    the same inputs at every step, which `DirectUNet` reproduces.
    """
    for attribute, what in _PATCHER_ADDITIONS:
        value = getattr(patcher, attribute, _MISSING)
        if value is _MISSING:
            return f"this host's model has no '{attribute}' attribute (an unknown host version)"
        if _holds_any(value) if attribute == "callbacks" else _is_set(value):
            return f"the model has {what}" + (f" ({', '.join(map(str, value))})" if attribute == "object_patches" else "")
    wrappers = _foreign_wrappers(patcher)
    if wrappers:
        return f"the model has wrappers ({', '.join(wrappers)})"
    options = sorted(k for k, v in patcher.model_options.items() if k not in ("transformer_options", *own_options))
    if options:
        return f"the model has sampling options ({', '.join(options)})"
    transformer = patcher.model_options.get("transformer_options", {})
    extra = sorted(k for k, v in transformer.items() if _holds_any(v)
                   and not (k == "optimized_attention_override" and v is sdpa_attention))
    if extra:
        return f"the model has transformer options ({', '.join(extra)})"
    if getattr(patcher, "is_dynamic", lambda: False)():
        return "the model streams its weights (dynamic VRAM)"
    return None


def has_compile_wrapper(patcher) -> bool:
    """Whether the UNet runs through torch.compile (the loader's compile option or TorchCompileModel)."""
    return _holds_any(patcher.wrappers.get(WrappersMP.APPLY_MODEL, {}).get(COMPILE_KEY))


def fully_loaded(patcher) -> bool:
    """Whether every weight is on the load device (not a partial, low-VRAM load)."""
    return patcher.current_loaded_device() == patcher.load_device and not getattr(patcher.model, "model_lowvram", True)


class DirectUNet:
    """The UNet calls of one guidance-free sampling run, made as the host's sampler makes them but
    prepared once: for a patcher without obstacles (`direct_sampling_obstacle`) and a conditioning
    of one plain prompt (no area, mask, timestep range, hooks or ControlNet).

    The host, on every step, copies and batches the conditioning, asks for free memory and runs its
    guider's wrappers before it calls apply_model; with one plain prompt and cfg 1 that computes the
    same inputs each step and returns apply_model's output unchanged. Here the host's own functions
    compute those inputs once (convert_cond, process_conds: SDXL size conditioning and pooled output;
    get_area_and_mult, cond_cat) and each call goes straight to the host's apply_model.

    As a context manager: entering loads the model as the host's sampling does (prepare_sampling,
    which unpatches weights another clone left patched) and marks the patcher running; leaving cleans
    up as the host does.

    Args:
        noise: starting noise [B, C, h, w] (CPU, fp32). latent: the latent [B, C, h, w] (zeros: none).
        sigmas: [steps + 1] on the CPU, highest first, ending in 0.
    Attributes (after entering):
        device; start: the latent at sigmas[0], [B, C, h, w] fp32 on the device (the host's noise
        scaling); inputs: the UNet's conditioning {"c_crossattn": [B, tokens, width], "y": [B, adm]
        (SDXL)} on the device; sigmas: `sigmas` on the device.
    """

    def __init__(self, patcher, positive, noise, latent, seed, sigmas, groups=None):
        self.patcher, self.positive, self.noise, self.latent = patcher, positive, noise, latent
        self.seed, self.cpu_sigmas = seed, sigmas
        self.groups = groups  # [(positive, rows)] in batch order: each group's rows get its own prompt

    def __enter__(self):
        import comfy.sampler_helpers as helpers

        patcher = self.patcher
        conds = {"positive": helpers.convert_cond(self.positive)}
        model_options = comfy.model_patcher.create_model_options_clone(patcher.model_options)
        helpers.prepare_model_patcher(patcher, conds, model_options)  # wrappers into transformer_options
        self.base, conds, self.loaded = helpers.prepare_sampling(patcher, self.noise.shape, conds, model_options)
        self.conds = conds
        self.device = patcher.load_device
        noise = self.noise.to(device=self.device, dtype=torch.float32)
        latent = self.latent.to(device=self.device, dtype=torch.float32)
        self.sigmas = self.cpu_sigmas.to(self.device)
        patcher.pre_run()
        try:
            if torch.count_nonzero(latent) > 0:  # as the host: an empty latent is not shifted
                latent = self.base.process_latent_in(latent)
            conds = comfy.samplers.process_conds(self.base, noise, conds, self.device, latent, None, self.seed)
            self.conds = conds
            entry = conds["positive"][0]
            self.inputs = self._inputs(entry, noise)
            if self.groups:
                self.inputs = self._grouped_inputs(noise, latent)
            self.uuid = entry["uuid"]
            self.transformer_options = model_options["transformer_options"]
            self.transformer_options["sample_sigmas"] = self.sigmas
            self.start = self.base.model_sampling.noise_scaling(self.sigmas[0], noise, latent, self._max_denoise())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _inputs(self, entry, noise) -> dict:
        """The UNet inputs of one processed conditioning entry for the whole batch, on the device."""
        part = comfy.samplers.get_area_and_mult(entry, noise, self.sigmas[:1])
        inputs = comfy.samplers.cond_cat([part.conditioning])
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}

    def _grouped_inputs(self, noise, latent) -> dict:
        """Each group's rows of the inputs its own prompt gives the whole batch, concatenated."""
        import comfy.sampler_helpers as helpers

        parts, start = [], 0
        for positive, rows in self.groups:
            inputs = self.inputs  # this run's own prompt: already prepared
            if positive is not self.positive:
                conds = {"positive": helpers.convert_cond(positive)}
                conds = comfy.samplers.process_conds(self.base, noise, conds, self.device, latent, None, self.seed)
                inputs = self._inputs(conds["positive"][0], noise)
            parts.append({k: v[start:start + rows] for k, v in inputs.items()})
            start += rows
        if start != noise.shape[0] or any(p.keys() != self.inputs.keys() for p in parts):
            raise ValueError("the prompt groups do not cover the batch with the same kinds of inputs")
        return {k: torch.cat([p[k] for p in parts]) for k in self.inputs}

    def _max_denoise(self) -> bool:
        """As comfy.samplers.Sampler.max_denoise: the first sigma is the schedule's maximum."""
        import math

        max_sigma = float(self.base.model_sampling.sigma_max)
        sigma = float(self.cpu_sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    def __call__(self, x, timestep, inputs):
        """Denoised x [B, C, h, w] (fp32) at `timestep` [B] (sigmas), as the host's apply_model
        call for the positive prompt; `inputs` as `self.inputs` (or static copies of them)."""
        options = {**self.transformer_options, "cond_or_uncond": [0], "uuids": [self.uuid], "sigmas": timestep}
        return self.base.apply_model(x, timestep, transformer_options=options, **inputs)

    def finish(self, x):
        """The sampled latent [B, C, h, w] out of the model's latent space, as the host returns it."""
        x = self.base.model_sampling.inverse_noise_scaling(self.sigmas[-1], x)
        return self.base.process_latent_out(x.to(torch.float32))

    def __exit__(self, *exc):
        import comfy.sampler_helpers as helpers

        self.patcher.cleanup()
        helpers.cleanup_models(self.conds, self.loaded)
        return False


# --- Packed convolutions (engine on CPU): the UNet's conv layers with weights in oneDNN's layout ----

HOST_SYMBOLS += [
    ("comfy.ops", "disable_weight_init.Conv2d.forward", ()),
    ("comfy.ops", "run_every_op", ()),
]
# The host's Conv2d runs its own forward (with weight casts and patches) when any of these is set.
CONV_CAST_ATTRIBUTES = ("comfy_cast_weights", "weight_function", "bias_function")


class _PackedConvForward:
    """A host Conv2d's forward that runs the layer's packed copy where it applies, else the host's own.

    A callable object, not a closure, so that a deep copy of the model points at the copied layer.
    """

    def __init__(self, conv, packed):
        self.conv, self.packed = conv, packed

    def __call__(self, *args, **kwargs):
        conv = self.conv
        if len(args) == 1 and not kwargs and not any(getattr(conv, name, True) for name in CONV_CAST_ATTRIBUTES):
            comfy.ops.run_every_op()  # as the host's forward: cancelling a run still stops it here
            out = self.packed(conv, args[0])
            if out is not None:
                return out
        return type(conv).forward(conv, *args, **kwargs)


@contextlib.contextmanager
def _instance_attributes(name: str, values: dict):
    """Within: each module in `values` (module -> callable) has it as its instance attribute `name`, over
    its class's method; removed afterwards unless something else replaced it meanwhile."""
    for module, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, value in values.items():
            if module.__dict__.get(name) is value:
                delattr(module, name)


@contextlib.contextmanager
def _instance_forwards(modules: list, store, new_state, forward_class):
    """Within: each module runs forward_class(module, state) as its instance forward, its state kept in
    `store` (module -> state, made by new_state()) between calls. Yields `modules`."""
    forwards = {}
    for module in modules:
        state = store.get(module)
        if state is None:
            state = store[module] = new_state()
        forwards[module] = forward_class(module, state)
    with _instance_attributes("forward", forwards):
        yield modules


def packed_convolutions(patcher, packs):
    """A context manager; within, the UNet's Conv2d layers (the host's ops) run with packed weights
    (add_turbo.packed_conv) where the packed output equals the host's bit for bit, the host's forward
    elsewhere. It yields the layers.

    `packs` (a weakref.WeakKeyDictionary, layer -> PackedConv) keeps the packed weights between runs.
    Layers that already carry an instance forward (another extension's) are left alone.
    """
    layers = [m for m in patcher.model.diffusion_model.modules()
              if isinstance(m, comfy.ops.disable_weight_init.Conv2d) and "forward" not in m.__dict__]
    return _instance_forwards(layers, packs, packed_conv.PackedConv, _PackedConvForward)


# --- TAESD on CPU with the engine on: residual blocks through fused convolutions ---------------------

HOST_SYMBOLS += [
    ("comfy.taesd.taesd", "Block.forward", ("x",)),
]


def fuse_taesd_blocks(vae) -> bool:
    """From now on, on CPU, the TAESD blocks of `vae` run through add_turbo.fused_blocks where the fused
    output equals the host's bit for bit. False where there is nothing to fuse (not TAESD, no oneDNN)."""
    if not isinstance(vae, TurboVAE) or not fused_blocks.available() or not _taesd_blocks(vae):
        return False
    vae.fused_blocks = weakref.WeakKeyDictionary()
    return True


def _taesd_blocks(vae) -> list:
    """The host TAESD Blocks of the shape relu(conv(relu(conv(relu(conv(x))))) + skip(x)), no extra forward."""
    from comfy.taesd import taesd

    def host_conv(module):
        return isinstance(module, comfy.ops.disable_weight_init.Conv2d) and "forward" not in module.__dict__

    found = []
    for block in vae.first_stage_model.modules():
        if not isinstance(block, taesd.Block) or "forward" in block.__dict__ or getattr(block, "pool", None) is not None:
            continue
        layers = list(block.conv) if isinstance(block.conv, torch.nn.Sequential) else []
        kinds = [host_conv(m) if i % 2 == 0 else type(m) is torch.nn.ReLU for i, m in enumerate(layers)]
        skip_ok = type(block.skip) is torch.nn.Identity or (host_conv(block.skip) and block.skip.bias is None)
        if len(layers) == 5 and all(kinds) and type(block.fuse) is torch.nn.ReLU and skip_ok:
            found.append(block)
    return found


class _FusedBlockForward:
    """A TAESD Block's forward through the fused block where it applies, else the host's own."""

    def __init__(self, block, fused):
        self.block, self.fused = block, fused

    def __call__(self, *args, **kwargs):
        block = self.block
        convs = list(block.conv)[0::2]
        layers = convs if type(block.skip) is torch.nn.Identity else [*convs, block.skip]
        casts = any(getattr(m, name, True) for m in layers for name in CONV_CAST_ATTRIBUTES)
        if len(args) != 1 or kwargs or casts:
            return type(block).forward(block, *args, **kwargs)
        comfy.ops.run_every_op()  # as the host's conv forwards: cancelling a run still stops it here
        return self.fused(args[0], convs, block.skip, lambda x: type(block).forward(block, x))


def _fused_taesd_blocks(vae):
    """A context manager; within, the blocks of a VAE that `fuse_taesd_blocks` was called on run fused
    (nothing changes for other VAEs)."""
    store = vae.fused_blocks
    blocks = _taesd_blocks(vae) if store is not None else []
    return _instance_forwards(blocks, {} if store is None else store, fused_blocks.FusedResidualBlock,
                              _FusedBlockForward)


# --- TAESD's decode as a CUDA graph with the engine on (engine.GraphedCall) ----------------------------

HOST_SYMBOLS += [
    ("comfy.taesd.taesd", "TAESD.decode", ("x",)),
]


def _swaps_modules(patcher) -> bool:
    """Object patches that put another module in (engine.WeightIndex lists the modules once). Plain
    values are fine: newer hosts patch the text encoder's manual_cast_dtype by default."""
    return any(isinstance(v, torch.nn.Module) for v in (getattr(patcher, "object_patches", None) or {}).values())


def graph_taesd_decode(vae, graphed_call) -> bool:
    """From now on, TAESD's decode inside `vae.decode` runs through graphed_call(fn, module, name) (an
    engine.GraphedCall) wherever taesd_graph_obstacle finds nothing in the way. False: not TAESD."""
    from comfy.taesd import taesd

    model = getattr(vae, "first_stage_model", None)
    if not isinstance(vae, TurboVAE) or type(model) is not taesd.TAESD:
        return False
    vae.decode_graph = graphed_call(type(model).decode.__get__(model), model, "the TAESD decode")
    return True


def taesd_graph_obstacle(vae) -> str | None:
    """Why `vae`'s TAESD decode is not replayed from a CUDA graph now (it runs as the host's), or None."""
    if vae.device.type != "cuda":
        return f"no CUDA graphs on {vae.device.type}"
    model = vae.first_stage_model
    if "decode" in model.__dict__:
        return "another extension replaced the TAESD decode"
    if _is_set(getattr(vae.patcher, "patches", None)) or _swaps_modules(vae.patcher):
        return "the VAE carries patches"
    if any(getattr(m, name, False) for m in model.modules() for name in CONV_CAST_ATTRIBUTES):
        return "the VAE's layers cast or patch their weights on each call"
    return None


@contextlib.contextmanager
def _graphed_taesd_decode(vae):
    """Within: TAESD's decode replays its CUDA graph, where `graph_taesd_decode` was called and nothing
    is in the way (else the host's decode, with the reason logged once per VAE and reason)."""
    graph = vae.decode_graph
    obstacle = None if graph is None else taesd_graph_obstacle(vae)
    if obstacle is not None and vae.device.type == "cuda":
        _log_obstacle_once(graph, obstacle, "the TAESD decode runs without a CUDA graph")
    with _instance_attributes("decode", {} if graph is None or obstacle else {vae.first_stage_model: graph}):
        yield


# --- The text encoders' layer stacks as CUDA graphs with the engine on (engine.GraphedCall) --------------

def graph_text_encoders(clip, graphed_call) -> int:
    """From now on, each text encoder's layer stack (CLIPEncoder: [B, 77, width] and its attention mask
    in, the last and the chosen intermediate layer's output out) runs through graphed_call(fn, module,
    name) wherever text_graph_obstacle finds nothing in the way. Returns how many stacks."""
    from comfy.clip_model import CLIPEncoder

    if not isinstance(clip, CachedTextCLIP):
        return 0
    encoders = [m for m in clip.cond_stage_model.modules() if isinstance(m, CLIPEncoder)]
    clip.encoder_graphs = {m: graphed_call(type(m).forward.__get__(m), m, "a text encoder") for m in encoders}
    return len(encoders)


def text_graph_obstacle(clip) -> str | None:
    """Why the text encoders do not replay CUDA graphs for this encode (they run as the host's), or None."""
    device = clip.patcher.load_device
    if device.type != "cuda":
        return f"no CUDA graphs on {device.type}"
    if clip.apply_hooks_to_conds or _is_set(getattr(clip.patcher, "hook_patches", None)):
        return "the text encoder has hooks"
    if _swaps_modules(clip.patcher):
        return "the text encoder has modules swapped in by object patches"
    if any(getattr(m, name, None) for m in clip.cond_stage_model.modules()
           for name in ("weight_function", "bias_function")):
        return "the text encoder's layers patch their weights on each call"
    return None


@contextlib.contextmanager
def _graphed_text_encoders(clip):
    """Within: each text encoder's layer stack replays its CUDA graph, where `graph_text_encoders` was
    called and nothing is in the way (a compiled or otherwise replaced stack is left as it is)."""
    graphs = clip.encoder_graphs or {}
    obstacle = text_graph_obstacle(clip) if graphs else None
    if obstacle is not None and clip.patcher.load_device.type == "cuda":
        _log_obstacle_once(next(iter(graphs.values())), obstacle, "the text encoders run without CUDA graphs")
    installed = {} if obstacle else {m: graph for m, graph in graphs.items() if "forward" not in m.__dict__}
    with _instance_attributes("forward", installed):
        yield


def _log_obstacle_once(graph, obstacle: str, consequence: str) -> None:
    if obstacle not in graph.obstacles_logged:
        graph.obstacles_logged.add(obstacle)
        log.info("ADD Turbo engine: %s: %s", obstacle, consequence)


# --- The host's prompt queue (ADD Turbo Sample's queue_batch): read only, under its lock ----------

HOST_SYMBOLS += [
    ("execution", "PromptQueue.__init__", ("server",)),
    ("execution", "PromptQueue.get", ()),
]
# Queue items are (number, prompt id, prompt, extra data, outputs to execute[, sensitive]).
_ITEM_ID, _ITEM_PROMPT = 1, 2


def _prompt_queue():
    """The running server's PromptQueue, or None. The host's main imports its server module; where
    nothing did (nodes run in-process), there is no queue, and importing it here would start one."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    return getattr(instance, "prompt_queue", None)


def queued_prompts() -> list[tuple[str, dict]]:
    """(prompt id, API-format prompt) of each prompt waiting in the host's queue, in run order."""
    queue = _prompt_queue()
    if queue is None:
        return []
    with queue.mutex:
        items = sorted(queue.queue, key=lambda item: item[0])
    return [(item[_ITEM_ID], item[_ITEM_PROMPT]) for item in items
            if len(item) > _ITEM_PROMPT and isinstance(item[_ITEM_PROMPT], dict)]


def live_prompt_ids() -> set:
    """The ids of the prompts waiting in the host's queue or running now."""
    queue = _prompt_queue()
    if queue is None:
        return set()
    with queue.mutex:
        items = list(queue.queue) + list(queue.currently_running.values())
    return {item[_ITEM_ID] for item in items if len(item) > _ITEM_ID}
