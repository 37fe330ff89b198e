"""The host's own sampling steps, prepared once per run (the engine's direct path): what a model may
carry that changes sampling (the obstacles), and DirectUNet, which calls the host's apply_model
straight with the inputs the host's sampler would compute."""

import math

import comfy.model_patcher
import comfy.sampler_helpers as helpers
import comfy.samplers
import torch
from comfy.patcher_extension import WrappersMP
from comfy_api.torch_helpers.torch_compile import COMPILE_KEY

from .models import sdpa_attention

HOST_SYMBOLS = [
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


def is_set(value) -> bool:
    """True for anything but None and empty containers."""
    return len(value) > 0 if isinstance(value, (dict, list, tuple, set)) else value is not None


def holds_any(value) -> bool:
    """For registries of lists by type and key (wrappers, callbacks, transformer options): True when
    any list in it is non-empty or anything else is set. Removing an entry leaves empty dicts behind."""
    if isinstance(value, dict):
        return any(holds_any(v) for v in value.values())
    return is_set(value)


def swaps_modules(patcher) -> bool:
    """Object patches that put another module in (a WeightIndex lists the modules once). Plain
    values are fine: newer hosts patch the text encoder's manual_cast_dtype by default."""
    return any(isinstance(v, torch.nn.Module) for v in (getattr(patcher, "object_patches", None) or {}).values())


def _foreign_wrappers(patcher) -> list[str]:
    """Wrapper types on the patcher other than the compile wrapper (ours or TorchCompileModel's)."""
    found = []
    for wrapper_type, by_key in patcher.wrappers.items():
        others = [fns for key, fns in by_key.items() if (wrapper_type, key) != (WrappersMP.APPLY_MODEL, COMPILE_KEY)]
        if any(holds_any(fns) for fns in others):
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
        if holds_any(value) if attribute == "callbacks" else is_set(value):
            return f"the model has {what}" + (f" ({', '.join(map(str, value))})" if attribute == "object_patches" else "")
    wrappers = _foreign_wrappers(patcher)
    if wrappers:
        return f"the model has wrappers ({', '.join(wrappers)})"
    options = sorted(k for k, v in patcher.model_options.items() if k not in ("transformer_options", *own_options))
    if options:
        return f"the model has sampling options ({', '.join(options)})"
    transformer = patcher.model_options.get("transformer_options", {})
    extra = sorted(k for k, v in transformer.items() if holds_any(v)
                   and not (k == "optimized_attention_override" and v is sdpa_attention))
    if extra:
        return f"the model has transformer options ({', '.join(extra)})"
    if getattr(patcher, "is_dynamic", lambda: False)():
        return "the model streams its weights (dynamic VRAM)"
    return None


def has_compile_wrapper(patcher) -> bool:
    """Whether the UNet runs through torch.compile (the loader's compile option or TorchCompileModel)."""
    return holds_any(patcher.wrappers.get(WrappersMP.APPLY_MODEL, {}).get(COMPILE_KEY))


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
        self.patcher.cleanup()
        helpers.cleanup_models(self.conds, self.loaded)
        return False

