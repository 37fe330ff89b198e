"""The text side of the host: the CLIP that remembers its prompts, which CLIP encoded a conditioning,
text encoders computing in their weights' dtype, and their layer stacks compiled or replayed from CUDA
graphs."""

import contextlib
import inspect
import logging
import weakref

import comfy.sd
import torch

from .. import compiling
from ..prompt_cache import PromptCache, freeze
from .direct_unet import is_set, swaps_modules

log = logging.getLogger(__name__)

HOST_SYMBOLS = [
    ("comfy.sd", "CLIP.__init__", ("target", "embedding_directory", "no_init", "tokenizer_data", "parameters",
                                   "model_options")),
    ("comfy.sd", "CLIP.clone", ()),
    ("comfy.sd", "CLIP.encode_from_tokens", ("tokens", "return_pooled", "return_dict")),
    ("comfy.sd", "CLIP.load_sd", ("sd", "full_model")),
    ("comfy.clip_model", "CLIPEncoder.forward", ("x", "mask", "intermediate_output")),
    ("comfy.clip_model", "CLIPTextModel_.forward", ("embeds", "dtype")),
]


def clip_options() -> dict:
    """Keyword arguments for CLIP(...) that make its patcher non-dynamic on hosts with dynamic VRAM."""
    accepts = inspect.signature(comfy.sd.CLIP.__init__).parameters
    return {"disable_dynamic": True} if "disable_dynamic" in accepts else {}


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
        n.prompt_cache, n.engines = self.prompt_cache, self.engines
        return n

    engines = None  # an attachment.Attachment: the engines' stand-ins for the text encoders' layer stacks

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False, *args, **kwargs):
        def encode():
            with contextlib.nullcontext() if self.engines is None else self.engines.entered("encode_text", self):
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


def text_encoders(clip) -> list:
    """The text encoders' layer stacks (the host's CLIPEncoder modules) of a CachedTextCLIP, else []."""
    from comfy.clip_model import CLIPEncoder

    if not isinstance(clip, CachedTextCLIP):
        return []
    return [m for m in clip.cond_stage_model.modules() if isinstance(m, CLIPEncoder)]


def layer_obstacle(clip) -> str | None:
    """Why the layer stacks compute something a stand-in recorded or converted earlier would not, or None."""
    if clip.apply_hooks_to_conds or is_set(getattr(clip.patcher, "hook_patches", None)):
        return "the text encoder has hooks"
    if swaps_modules(clip.patcher):
        return "the text encoder has modules swapped in by object patches"
    if any(getattr(m, name, None) for m in clip.cond_stage_model.modules()
           for name in ("weight_function", "bias_function")):
        return "the text encoder's layers patch their weights on each call"
    return None


# (our override, the host method it overrides): each must accept every parameter of the host's.
OVERRIDES = [
    (CachedTextCLIP.clone, comfy.sd.CLIP.clone),
    (CachedTextCLIP.encode_from_tokens, comfy.sd.CLIP.encode_from_tokens),
]
