"""The loader's speed options: channels_last, torch.compile (optionally with CUDA graphs), cached prompts.

None of them changes what is computed: channels_last and compile reorder the same arithmetic (fp
rounding may differ), the prompt cache returns the very tensors a previous encode produced.
"""

import collections
import logging

import comfy.sd
import torch
from comfy.patcher_extension import WrappersMP
from comfy_api.torch_helpers.torch_compile import COMPILE_KEY, apply_torch_compile_factory

log = logging.getLogger(__name__)

# torch.compile modes: plain inductor kernels, or the same kernels replayed as CUDA graphs (one
# launch per UNet call instead of hundreds; on GPU only).
COMPILE_MODES = {"off": None, "inductor": "default", "inductor + cuda graphs": "reduce-overhead"}
PROMPT_CACHE_SIZE = 16
_NOT_YET = object()  # no UNet call seen yet


def check_compile(compile_mode: str, device: torch.device) -> None:
    """Refuse unknown modes and CUDA graphs off the GPU, with the fix."""
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
    if COMPILE_MODES[compile_mode] == "reduce-overhead" and device.type != "cuda":
        raise ValueError(f"compile 'inductor + cuda graphs' needs a CUDA GPU (this host computes on {device.type}): "
                         "choose 'inductor' or 'off'")


def use_channels_last(patcher, vae) -> None:
    """NHWC weights for the UNet and the decoder: the layout fast conv kernels prefer (cuDNN, oneDNN)."""
    patcher.model.diffusion_model.to(memory_format=torch.channels_last)
    vae.first_stage_model.to(memory_format=torch.channels_last)


def _copies(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    return type(out)(_copies(o) for o in out) if isinstance(out, (tuple, list)) else out


def _compile(fn, compile_mode: str, freeze: bool = False):
    """torch.compile `fn`; with CUDA graphs, each call is one graph replay that returns copies.

    Each call begins a new graph step, so the replay may reuse the buffers of the previous one
    (without it, a still-referenced earlier output makes the graph trees record a new graph on
    every other call), and the copies mean nothing a caller keeps is overwritten by a later replay.
    `freeze` folds the weights into the graph as constants (prepacked for the CPU's conv and
    matmul kernels): faster on CPU, but blind to later weight changes (see _CompiledUNet).
    """
    mode = COMPILE_MODES[compile_mode]
    if freeze:
        compiled = torch.compile(fn, backend="inductor", options={"freezing": True}, dynamic=False)
    else:
        compiled = torch.compile(fn, backend="inductor", mode=mode, dynamic=False)
    if mode != "reduce-overhead":
        return compiled

    def replay(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return _copies(compiled(*args, **kwargs))

    return replay


class _CompiledUNet(torch.nn.Module):
    """The compiled UNet as a module: the host swaps it in for `diffusion_model` while sampling.

    Attributes the host reads (dtype, ...) come from the UNet itself, which is not registered as a
    submodule: no second registration of its weights. A graph with frozen weights is used only while
    the weights are those it was compiled with: once the host patches them (a LoRA on a clone of the
    model, say), the UNet runs uncompiled rather than with stale weights.
    """

    def __init__(self, unet, run, base_model=None):
        super().__init__()
        object.__setattr__(self, "unet", unet)
        object.__setattr__(self, "base_model", base_model)  # set when the weights are frozen
        self.run = run
        self.frozen_weights = _NOT_YET

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "unet"), name)

    def forward(self, *args, **kwargs):
        if self.base_model is not None:
            weights = getattr(self.base_model, "current_weight_patches_uuid", None)
            if self.frozen_weights is _NOT_YET:
                self.frozen_weights = weights
            elif self.frozen_weights != weights:
                log.warning("ADD Turbo: the UNet's weights changed since it was compiled (a LoRA or other patch): "
                            "running it uncompiled; load the model again to compile the patched weights")
                return self.unet(*args, **kwargs)
        return self.run(*args, **kwargs)


def compile_unet(patcher, compile_mode: str) -> None:
    """Compile the UNet for sampling, swapped in through the host's apply_model compile wrapper.

    On CPU the weights are frozen into the graph (oneDNN prepacking); elsewhere they stay inputs.
    Shapes are static: a new image size or batch compiles once more (the first run at it is slow).
    """
    unet = patcher.get_model_object("diffusion_model")
    freeze = patcher.load_device.type == "cpu"
    compiled = _CompiledUNet(unet, _compile(unet, compile_mode, freeze), patcher.model if freeze else None)
    patcher.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY,
                                 apply_torch_compile_factory({"diffusion_model": compiled}))


def compile_text_encoders(clip, compile_mode: str) -> None:
    """Compile the transformer layers of each text encoder ([B, 77, width] in and out).

    Only the layer stack: token embedding and pooling take the prompt length as a Python value,
    which would make every new prompt length compile again.
    """
    from comfy.clip_model import CLIPEncoder

    for module in clip.cond_stage_model.modules():
        if isinstance(module, CLIPEncoder):
            module.forward = _compile(_unmutated_input(module.forward), compile_mode)


def _unmutated_input(forward):
    """The host's CLIP layers add into their input in place (`x += ...`); CUDA graphs refuse a graph
    that mutates an input, so the copy is made inside the compiled region."""

    def encoder(x, mask=None, intermediate_output=None):
        return forward(x.clone(), mask, intermediate_output)

    return encoder


def _freeze(value):
    """A hashable, exact key for tokenizer output (token ids, weights, embedding tensors)."""
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        return ("tensor", tuple(data.shape), str(data.dtype), hash(data.view(torch.uint8).numpy().tobytes()))
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class CachedTextCLIP(comfy.sd.CLIP):
    """The host's CLIP that remembers the last prompts it encoded (an LRU of PROMPT_CACHE_SIZE).

    The key is the exact token ids and weights, the CLIP skip layer and the patch set, so a changed
    prompt, a LoRA on the text encoder or hooks never hit a stale entry. Clones share the cache.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompt_cache = collections.OrderedDict()
        self.prompt_cache_hits = 0

    def clone(self):
        base = super().clone()
        n = CachedTextCLIP(no_init=True)
        n.__dict__.update(base.__dict__)
        n.prompt_cache, n.prompt_cache_hits = self.prompt_cache, 0
        return n

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        if self.apply_hooks_to_conds or self.patcher.hook_patches:
            return super().encode_from_tokens(tokens, return_pooled, return_dict)
        key = (_freeze(tokens), self.layer_idx, return_pooled, return_dict, self.patcher.patches_uuid)
        if key in self.prompt_cache:
            self.prompt_cache.move_to_end(key)
            self.prompt_cache_hits += 1
            out = self.prompt_cache[key]
        else:
            out = super().encode_from_tokens(tokens, return_pooled, return_dict)
            self.prompt_cache[key] = out
            while len(self.prompt_cache) > PROMPT_CACHE_SIZE:
                self.prompt_cache.popitem(last=False)
        # callers pop from and add to the dict they get: hand out a fresh one each time
        return dict(out) if isinstance(out, dict) else out


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
