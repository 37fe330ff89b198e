"""The UNet run by OpenVINO on the CPU (the loader's cpu_backend: openvino): a module the host swaps in
for diffusion_model while sampling, through the same apply_model wrapper key torch.compile uses.

Each input shape is converted once (add_turbo.acceleration.openvino_models) from the UNet as the host
runs it (its own forward, with the pack's SDPA attention), saved as IR on disk and compiled from it.
A call the converted model cannot reproduce runs the host's UNet instead, with the reason logged once
and kept for the node's message: a ControlNet, attention or block patches, extra model inputs, or
weights patched since the model was loaded (a LoRA: the IR holds the file's weights).

While converting, the host's upsample layers and GEGLU projections run as lighter layers that compute
the same (add_turbo.acceleration.lighter_layers): the IR does 4/9 of the upsample convolutions' work.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

import torch
from comfy.ldm.modules.attention import GEGLU
from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample
from comfy.patcher_extension import WrappersMP
from comfy_api.torch_helpers.torch_compile import COMPILE_KEY, apply_torch_compile_factory

from ....add_turbo import mapped_weights
from ....add_turbo.acceleration import lighter_layers, openvino_models
from ....add_turbo.log_once import log_once
from ...host_api.direct_unet import holds_any
from ...host_api.module_swaps import instance_attributes

log = logging.getLogger(__name__)

HOST_SYMBOLS = [
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "UNetModel.forward",
     ("x", "timesteps", "context", "y", "control", "transformer_options")),
    ("comfy.ldm.modules.diffusionmodules.openaimodel", "Upsample.forward", ("x", "output_shape")),
    ("comfy.ldm.modules.attention", "GEGLU.forward", ("x",)),
]
PART = "the UNet"
GRAPH_REVISION = 4  # in the IR cache key: bump when the converted graph changes (2: lighter layers, 3: the
# file's own weight dtype, cast in the graph, 4: sliced weights folded)
WEIGHT_PATCHES = ("weight_function", "bias_function")  # a host layer's per-call weight patches
PATCH_KEYS = ("patches", "patches_replace", "block_modifiers")  # transformer options that change the UNet's math


class OpenVINOUNet(torch.nn.Module):
    """diffusion_model's stand-in: OpenVINO where it computes the same, the host's UNet elsewhere.

    Attributes the host reads (dtype, ...) come from the UNet, which is not registered as a submodule.
    """

    def __init__(self, unet, base_model, folder: Path, precision: str, blob_cache: Path | None, attention=None,
                 weights=None, weight_format: str = "as_module"):
        super().__init__()
        object.__setattr__(self, "unet", unet)
        object.__setattr__(self, "base_model", base_model)
        options = {} if attention is None else {"optimized_attention_override": attention}

        def tensors_in_tensor_out(x, timesteps, context, y=None):  # what OpenVINO converts, per shape
            return unet(x, timesteps, context=context, y=y, transformer_options=dict(options))

        self.call = openvino_models.OpenVINOCall(tensors_in_tensor_out, unet, "unet", folder, precision, blob_cache,
                                                 torch.get_num_threads(), lighter=lambda: lighter_unet_layers(unet),
                                                 ready=lambda _: self.release_torch_weights(), weights=weight_format)
        # The loaded file's patch set (the loading patcher's, which its plain clones share): the IR holds
        # those weights. Set at install, not at the first call: that call may come from a LoRA clone.
        self.weights = weights
        self.last = "not run yet"  # how the last call ran, for the loader's message
        self.released = 0  # bytes of the torch UNet's mapped weights handed back while OpenVINO serves

    folder = property(lambda self: self.call.folder)
    failure = property(lambda self: self.call.failure)
    precision = property(lambda self: self.call.precision)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "unet"), name)

    def obstacle(self, x, context, control, transformer_options, kwargs) -> str | None:
        """Why this call must run on the host's UNet, or None."""
        weights = getattr(self.base_model, "current_weight_patches_uuid", None)
        if self.call.failure is not None:
            return self.call.failure
        if x.device.type != "cpu" or x.is_nested or context is None:
            return "the inputs are not plain CPU tensors"
        if control is not None:
            return "a ControlNet is applied"
        if kwargs:
            return f"the model gets inputs OpenVINO was not converted for ({', '.join(sorted(kwargs))})"
        if any(holds_any(transformer_options.get(key)) for key in PATCH_KEYS):
            return "the model has attention or block patches"
        if weights != self.weights:
            return "the UNet's weights are patched (a LoRA or another patch): load the model again to convert them"
        return None

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        reason = self.obstacle(x, context, control, transformer_options, kwargs)
        if reason is None:
            inputs = (x.float(), timesteps.float(), context.float()) + (() if y is None else (y.float(),))
            out = self.call(*inputs)
            reason = self.call.failure
            if reason is None:
                self.last = f"OpenVINO {self.precision}"
                return out.to(x.dtype)
        if self.released:
            reason += f"; its weights ({self.released / 2**30:.2f} GiB) are read again from the checkpoint"
            self.released = 0
        log_once(log, f"ADD Turbo OpenVINO: {reason}: the UNet runs in torch", owner=self, level=logging.WARNING)
        self.last = f"torch ({reason})"
        return self.unet(x, timesteps, context=context, y=y, control=control,
                         transformer_options=transformer_options, **kwargs)

    def release_torch_weights(self) -> int:
        """Hand the torch UNet's weights back to the kernel where they are the checkpoint's mapping (the
        file stays their copy, read again by a fallback or the next conversion). Returns the bytes."""
        self.released += mapped_weights.release(mapped_weights.parameters_of(self.unet))
        if self.released:
            log.info("ADD Turbo OpenVINO: the torch UNet's weights (%.2f GiB) stay on disk while OpenVINO serves",
                     self.released / 2**30)
        return self.released


def _plain(layer: torch.nn.Module) -> bool:
    """A host layer that computes from its own weights, cast to the input's dtype at most (no weight
    functions: those are patches, which the IR does not hold)."""
    return "forward" not in layer.__dict__ and not any(getattr(layer, a, False) for a in WEIGHT_PATCHES)


def _weights(layer, x):
    """`layer`'s weight and bias as its forward computes with them on `x`, or None where the dtypes
    differ and the layer does not cast (the host's forward then runs, and says why)."""
    if x.dtype != layer.weight.dtype and not getattr(layer, "comfy_cast_weights", False):
        return None
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return layer.weight.to(x.dtype), bias


class _LighterUpsample:
    """Upsample's forward as one 2x2 convolution and a pixel shuffle where it doubles the size exactly."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, output_shape=None, *args, **kwargs):
        doubled = [2 * n for n in x.shape[2:]]
        weights = _weights(self.layer.conv, x)
        if not args and not kwargs and x.dim() == 4 and weights is not None and (
                output_shape is None or list(output_shape[2:]) == doubled):
            return lighter_layers.upsample_conv(x, *weights)
        return Upsample.forward(self.layer, x, output_shape, *args, **kwargs)


class _LighterGEGLU:
    """GEGLU's forward as two matrix products (no split of one)."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, *args, **kwargs):
        weights = _weights(self.layer.proj, x)
        if args or kwargs or weights is None:
            return GEGLU.forward(self.layer, x, *args, **kwargs)
        return lighter_layers.geglu(x, *weights)


def lighter_unet_layers(unet):
    """A context manager: within, the UNet's 2D upsample convolutions and GEGLU projections (the host's
    own classes, with plain weights) run as lighter layers that compute the same."""
    forwards = {}
    for m in unet.modules():
        if type(m) is Upsample and m.dims == 2 and m.use_conv and _plain(m) and _plain(m.conv):
            conv = m.conv
            if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode) == (
                    (3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros"):
                forwards[m] = _LighterUpsample(m)
        elif type(m) is GEGLU and _plain(m) and _plain(m.proj):
            forwards[m] = _LighterGEGLU(m)
    return instance_attributes("forward", forwards)


_INSTALLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # base model -> (wrapper, stand-in)


def use_openvino_unet(patcher, folder: Path, precision: str, blob_cache: Path | None,
                      weight_format: str = "as_module") -> OpenVINOUNet:
    """From now on the UNet of `patcher` (and its clones) runs on OpenVINO where it computes the same (up to
    int8 rounding with weight_format "int8")."""
    unet = patcher.get_model_object("diffusion_model")
    attention = patcher.model_options.get("transformer_options", {}).get("optimized_attention_override")
    stand_in = OpenVINOUNet(unet, patcher.model, Path(folder), precision, blob_cache, attention,
                            getattr(patcher, "patches_uuid", None), weight_format)
    wrapper = apply_torch_compile_factory({"diffusion_model": stand_in})
    patcher.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY, wrapper)
    _INSTALLED[patcher.model] = (wrapper, stand_in)
    return stand_in


def openvino_unet_of(patcher) -> OpenVINOUNet | None:
    """The OpenVINO stand-in that runs `patcher`'s UNet, if one still does (TorchCompileModel replaces it)."""
    wrapper, stand_in = _INSTALLED.get(patcher.model, (None, None))
    registered = patcher.wrappers.get(WrappersMP.APPLY_MODEL, {}).get(COMPILE_KEY, [])
    return stand_in if wrapper is not None and wrapper in registered else None
