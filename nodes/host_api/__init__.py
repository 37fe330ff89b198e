"""Every place the pack subclasses, wraps or patches ComfyUI code, one module per host object.

Host code changes under us (0.3.75, 0.33, 0.38, ...). Each override here accepts the host's current
arguments and passes them on. Each module names the host symbols it builds on, with the parameters it
relies on (HOST_SYMBOLS), and its overrides (OVERRIDES); this package joins them, and
tests/nodes/test_host_contract.py checks them on whichever host runs.

- models: model configs (always epsilon), the model patcher, attention and layout, compile wrapper,
  reload registration, the guidance-free guider
- vae: decoding on CPU, SDPA in the VAE, TAESD's model and what keeps its decode from a stand-in
- text: the CLIP prompt cache, text encoders' dtype and compile, their layer stacks for stand-ins
- direct_unet: the engine's obstacles and DirectUNet (the host's sampling steps, prepared once)
- module_swaps: instance forwards for a call (packed convolutions)
- prompt_queue: the host's queue, read only
- attachment: the one typed object the engines (backends/) hang on the CLIP and the VAE
The engines' own stand-ins for host code live in their rooms under backends/ and declare their
HOST_SYMBOLS there.
"""

from . import attachment, direct_unet, models, module_swaps, prompt_queue, text, vae
from .direct_unet import DirectUNet, direct_sampling_obstacle, fully_loaded, has_compile_wrapper
from .models import (
    PositiveOnlyGuider,
    TurboSD2,
    TurboSDXL,
    compile_unet,
    new_model_patcher,
    register_reload,
    use_channels_last,
    use_sdpa_in_unet,
)
from .module_swaps import packed_convolutions
from .prompt_queue import live_prompt_ids, queued_prompts
from .text import (
    CachedTextCLIP,
    clip_options,
    clip_that_encoded,
    compile_text_encoders,
    compute_text_encoders_in,
    encode_text,
    layer_obstacle,
    text_encoders,
)
from .vae import (
    TurboVAE,
    decode_obstacle,
    taesd_model,
    use_sdpa_in_vae,
)

_MODULES = (models, vae, text, direct_unet, module_swaps, prompt_queue, attachment)
HOST_SYMBOLS = [symbol for module in _MODULES for symbol in module.HOST_SYMBOLS]
OVERRIDES = [override for module in _MODULES for override in getattr(module, "OVERRIDES", [])]

__all__ = ["HOST_SYMBOLS", "OVERRIDES", "CachedTextCLIP", "DirectUNet", "PositiveOnlyGuider", "TurboSD2", "TurboSDXL",
           "TurboVAE", "clip_options", "clip_that_encoded", "compile_text_encoders", "compile_unet",
           "compute_text_encoders_in", "decode_obstacle", "direct_sampling_obstacle", "encode_text", "fully_loaded",
           "has_compile_wrapper", "layer_obstacle", "live_prompt_ids", "new_model_patcher", "packed_convolutions",
           "queued_prompts", "register_reload", "taesd_model", "text_encoders", "use_channels_last",
           "use_sdpa_in_unet", "use_sdpa_in_vae"]
