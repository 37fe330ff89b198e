"""The pack with the built-in nodes users combine it with: LoRA, hook LoRA, ControlNet, torch.compile.

Every add-on is a tiny file of the real format built by `devkit.tiny_addons` and placed in
the host's own model folders, so the built-in loader nodes read it as they read a downloaded one.
Latents are compared relative to their magnitude (fp32 rounding of another kernel path), images in
steps of 1/255 (`tests.support.tolerances`); each case also asserts that the add-on changes the
result, so an add-on that silently does nothing fails.
"""

from dataclasses import dataclass

import pytest
import torch

from devkit import graphs as g
from devkit import tiny_addons
from tests.support.model_links import linked_into_models
from tests.support.tolerances import assert_fp32_close, assert_same_image, max_rel_diff

SIZE, PROMPT, SEED, STEPS = 64, "a red fox in the snow", 3, 2
# Distinct model and text encoder strengths, neither 1: a loader that mixed them up or ignored
# one would not match the merged checkpoint.
STRENGTH_MODEL, STRENGTH_CLIP = 0.75, 1.25
# "Changes the result": ten times the 0.5/255 that counts as the same image. The tiny LoRA moves
# the image by about 25/255 and the ControlNet by about 70/255.
CHANGED_STEPS = 5.0
CHANGED_REL = 0.1  # conditioning: the LoRA moves it by 0.7 to 1.0 of its magnitude


@dataclass(frozen=True)
class Addons:
    lora: dict  # family -> LoRA file name in models/loras
    merged: dict  # family -> merged checkpoint name in models/checkpoints
    controlnet: str  # SD-Turbo ControlNet name in models/controlnet


@pytest.fixture(scope="module", autouse=True)
def executor_mode(comfy_host):
    """Run every node the way the host's executor does: under torch.inference_mode().

    It matters for compile: inductor applies the loader's weight freezing only with grad disabled,
    and with grad enabled the UNet's output requires grad on some hosts (0.3.75), so the compiled
    UNet compiles again at the second step (its input no longer matches the first graph's guards).
    """
    import comfy.model_management

    with torch.inference_mode():
        yield
        comfy.model_management.unload_all_models()  # unpatch weights in the mode they were patched in


@pytest.fixture(scope="module")
def addons(tiny_models):
    """The tiny LoRAs, their merged checkpoints and the ControlNet, linked into the host's folders
    for this module (removed afterwards, so other tests see the folders as before)."""
    with linked_into_models() as place:
        lora, merged = {}, {}
        for family, model in tiny_models.items():
            built = tiny_addons.build_lora(model)
            lora[family] = place(built.path, "loras")
            merged[family] = place(tiny_addons.build_merged_checkpoint(model, built, STRENGTH_MODEL, STRENGTH_CLIP),
                                   "checkpoints")
        controlnet = place(tiny_addons.build_controlnet(tiny_models["sd_turbo"]), "controlnet")
        yield Addons(lora, merged, controlnet)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """family -> (MODEL, CLIP, VAE) from ADDTurboLoader with its defaults."""
    return {family: g.load(model.single_file.name) for family, model in tiny_models.items()}


def _generate(model, positive, vae=None, size=SIZE, steps=STEPS):
    """ADDTurboSample of `positive` at SEED: (latent [1, 4, size/8, size/8], image [1, size, size, 3] or None)."""
    out = g.turbo_sample(model, positive, g.empty_latent(size), seed=SEED, steps=steps)
    return out["samples"], None if vae is None else g.decode(vae, out)


def _steps_of_255(a, b) -> float:
    return (a - b).abs().max().item() * 255


def _lora(model, clip, lora_name, strength_model=STRENGTH_MODEL, strength_clip=STRENGTH_CLIP):
    """The built-in LoraLoader: (MODEL, CLIP)."""
    return g.run(g.builtin("LoraLoader"), model=model, clip=clip, lora_name=lora_name,
                 strength_model=strength_model, strength_clip=strength_clip)


def _hooked_clip(clip, lora_name):
    """CreateHookLora (model and clip strengths) + SetClipHooks, conditioning carries the hooks."""
    (hooks,) = g.run(g.builtin("CreateHookLora"), lora_name=lora_name, strength_model=STRENGTH_MODEL,
                     strength_clip=STRENGTH_CLIP)
    (hooked,) = g.run(g.builtin("SetClipHooks"), clip=clip, apply_to_conds=True, schedule_clip=False, hooks=hooks)
    return hooked


def _has_node(name: str) -> bool:
    import nodes

    return name in nodes.NODE_CLASS_MAPPINGS


def _assert_same_conditioning(actual, expected):
    """Same [1, 77, width] tokens and pooled output, up to fp32 rounding; returns the larger difference."""
    return max(assert_fp32_close(actual[0][0], expected[0][0]),
               assert_fp32_close(actual[0][1]["pooled_output"], expected[0][1]["pooled_output"]))


# --- 1. LoraLoader ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_lora_loader_equals_the_lora_merged_into_the_checkpoint(loaded, addons, family):
    model, clip, vae = loaded[family]
    base_latent, base_image = _generate(model, g.encode(clip, PROMPT), vae)

    lora_model, lora_clip = _lora(model, clip, addons.lora[family])
    lora_cond = g.encode(lora_clip, PROMPT)
    lora_latent, lora_image = _generate(lora_model, lora_cond, vae)
    merged_model, merged_clip, merged_vae = g.load(addons.merged[family])
    merged_cond = g.encode(merged_clip, PROMPT)
    merged_latent, merged_image = _generate(merged_model, merged_cond, merged_vae)

    # The host patches W + s * alpha/rank * up @ down in fp32; the file holds the fp64 sum rounded
    # once: a few ulps per weight, fp32 rounding in the outputs.
    cond_diff = _assert_same_conditioning(lora_cond, merged_cond)
    latent_diff = assert_fp32_close(lora_latent, merged_latent)
    image_diff = assert_same_image(lora_image, merged_image)
    effect = _steps_of_255(lora_image, base_image)
    print(f"\nLORA {family}: LoraLoader vs merged: conditioning {cond_diff:.1e}, latent {latent_diff:.1e} "
          f"(relative), image {image_diff:.4f}/255; LoRA moves the image by {effect:.1f}/255")
    assert max_rel_diff(lora_cond[0][0], g.encode(clip, PROMPT)[0][0]) > CHANGED_REL  # the text encoder part
    assert effect > CHANGED_STEPS
    # The LoRA is on a clone: the loader's own MODEL and CLIP still give the image without it.
    again_latent, _ = _generate(model, g.encode(clip, PROMPT))
    assert torch.equal(again_latent, base_latent)


# --- 2. Hook LoRA on the CLIP (CreateHookLora + SetClipHooks) --------------------------------------

@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_hook_lora_on_the_clip_equals_the_lora_loader(loaded, addons, family):
    model, clip, vae = loaded[family]
    plain_cond = g.encode(clip, PROMPT)
    # SetClipHooks clones the pack's CLIP (newer hosts: clone(disable_dynamic=True)) and encodes through hooks
    hooked_cond = g.encode(_hooked_clip(clip, addons.lora[family]), PROMPT)
    lora_model, lora_clip = _lora(model, clip, addons.lora[family])
    lora_cond = g.encode(lora_clip, PROMPT)

    assert "hooks" in hooked_cond[0][1]  # apply_to_conds: the model part travels with the conditioning
    change = max_rel_diff(hooked_cond[0][0], plain_cond[0][0])
    assert change > CHANGED_REL
    # Same patches through two host paths (hook patches vs model patches): equal up to fp32 rounding.
    cond_diff = _assert_same_conditioning(hooked_cond, lora_cond)

    # Sampling the plain MODEL with the hooked conditioning applies the model half of the hook:
    # the same image as both halves through LoraLoader.
    hooked_latent, hooked_image = _generate(model, hooked_cond, vae)
    lora_latent, lora_image = _generate(lora_model, lora_cond, vae)
    latent_diff = assert_fp32_close(hooked_latent, lora_latent)
    image_diff = assert_same_image(hooked_image, lora_image)
    print(f"\nHOOKS {family}: hooked vs unhooked conditioning {change:.2f} (relative); hooked vs LoraLoader: "
          f"conditioning {cond_diff:.1e}, latent {latent_diff:.1e}, image {image_diff:.4f}/255")
    # and the unhooked CLIP (its prompt cache included) is untouched
    assert torch.equal(g.encode(clip, PROMPT)[0][0], plain_cond[0][0])


# --- 3. ControlNet ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def control(loaded, addons):
    """(CONTROL_NET from the built-in ControlNetLoader, hint image [1, SIZE, SIZE, 3] in 0..1)."""
    (control_net,) = g.run(g.builtin("ControlNetLoader"), control_net_name=addons.controlnet)
    assert type(control_net).__name__ == "ControlNet" and hasattr(control_net, "control_model")
    hint = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(4))
    return control_net, hint


def _apply_advanced(positive, control_net, hint, strength):
    """ControlNetApplyAdvanced over the whole schedule; the negative output is unused (no guidance)."""
    out, _ = g.run(g.builtin("ControlNetApplyAdvanced"), positive=positive, negative=positive,
                   control_net=control_net, image=hint, strength=strength, start_percent=0.0, end_percent=1.0)
    return out


def test_controlnet_changes_the_image_and_strength_zero_is_no_control(loaded, control):
    model, clip, vae = loaded["sd_turbo"]
    control_net, hint = control
    positive = g.encode(clip, PROMPT)
    base_latent, base_image = _generate(model, positive, vae)

    controlled_latent, controlled_image = _generate(model, _apply_advanced(positive, control_net, hint, 1.0), vae)
    effect = _steps_of_255(controlled_image, base_image)
    assert effect > CHANGED_STEPS

    # The node passes strength 0 through untouched; the control path itself at strength 0 adds
    # 0 * residual to each skip connection, which is exact in IEEE arithmetic.
    zero_latent, _ = _generate(model, _apply_advanced(positive, control_net, hint, 0.0))
    assert torch.equal(zero_latent, base_latent)
    at_zero = control_net.copy().set_cond_hint(hint.movedim(-1, 1), 0.0, (0.0, 1.0))
    zero_path = [[positive[0][0], {**positive[0][1], "control": at_zero, "control_apply_to_uncond": False}]]
    zero_path_latent, _ = _generate(model, zero_path)
    assert torch.equal(zero_path_latent, base_latent)
    print(f"\nCONTROLNET: control moves the image by {effect:.1f}/255; strength 0 (node and control path) "
          f"equal to no control: exactly")


def test_legacy_controlnet_apply_equals_the_advanced_node(loaded, control):
    if not _has_node("ControlNetApply"):
        pytest.skip("this host has no ControlNetApply node (removed in favour of ControlNetApplyAdvanced)")
    model, clip, _ = loaded["sd_turbo"]
    control_net, hint = control
    positive = g.encode(clip, PROMPT)
    (legacy,) = g.run(g.builtin("ControlNetApply"), conditioning=positive, control_net=control_net, image=hint,
                      strength=0.8)
    legacy_latent, _ = _generate(model, legacy)
    advanced_latent, _ = _generate(model, _apply_advanced(positive, control_net, hint, 0.8))
    diff = assert_fp32_close(legacy_latent, advanced_latent)
    base_latent, _ = _generate(model, positive)
    assert max_rel_diff(legacy_latent, base_latent) > CHANGED_REL
    print(f"\nCONTROLNET legacy ControlNetApply vs ControlNetApplyAdvanced: latent {diff:.1e} (relative)")


@pytest.mark.parametrize("steps", [1, 3])
def test_sample_runs_one_unet_evaluation_per_step_with_the_control_applied(loaded, control, steps):
    model, clip, _ = loaded["sd_turbo"]
    control_net, hint = control
    positive = _apply_advanced(g.encode(clip, PROMPT), control_net, hint, 1.0)
    unet_calls, control_calls = [], []

    def unet_wrapper(apply_model, args):
        control_out = args["c"].get("control") or {}
        residuals = sum(x is not None for x in control_out.get("output", []) + control_out.get("middle", []))
        unet_calls.append((args["input"].shape[0], residuals))
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = model.clone()
    counted.set_model_unet_function_wrapper(unet_wrapper)
    # the ControlNet module is shared by every copy the apply node makes
    handle = control_net.control_model.register_forward_hook(lambda *_: control_calls.append(1))
    try:
        _generate(counted, positive, steps=steps)
    finally:
        handle.remove()
    # One UNet call per step, batch 1 (no unconditional pass), each with all the control residuals
    # (one per zero conv, for the skip connections, and the middle block's); one ControlNet run per call.
    residuals_per_call = len(control_net.control_model.zero_convs) + 1
    assert [batch for batch, _ in unet_calls] == [1] * steps
    assert all(residuals == residuals_per_call for _, residuals in unet_calls), unet_calls
    assert len(control_calls) == steps


# --- 4. The built-in TorchCompileModel -------------------------------------------------------------

def test_torch_compile_model_node_gives_the_uncompiled_image(loaded):
    from torch._dynamo.utils import counters

    model, clip, vae = loaded["sd_turbo"]
    positive = g.encode(clip, PROMPT)
    eager_latent, eager_image = _generate(model, positive, vae)
    (compiled,) = g.run(g.builtin("TorchCompileModel"), model=model, backend="inductor")
    graphs_before = counters["stats"]["unique_graphs"]
    compiled_latent, compiled_image = _generate(compiled, positive, vae)
    assert counters["stats"]["unique_graphs"] > graphs_before  # the UNet really ran through torch.compile
    # inductor fuses and reorders the same fp32 arithmetic: rounding-level differences only
    latent_diff = assert_fp32_close(compiled_latent, eager_latent)
    image_diff = assert_same_image(compiled_image, eager_image)
    print(f"\nTORCH COMPILE node (inductor, CPU) vs eager: latent {latent_diff:.1e} (relative), "
          f"image {image_diff:.4f}/255")


# --- 5. The loader's compile option with a LoRA ----------------------------------------------------

# The loader compiles the UNet (with weight freezing on CPU) during a 512x512 batch-1 warm-up: the
# comparisons run at that size so its graph is reused, not compiled again.
COMPILED_SIZE = 512


@pytest.fixture(scope="module")
def compiled_sd_turbo(tiny_models):
    """(MODEL, CLIP, VAE) from ADDTurboLoader with compile 'inductor' (compiled during its warm-up)."""
    return g.run(g.builtin("ADDTurboLoader"), ckpt_name=tiny_models["sd_turbo"].single_file.name, compile="inductor")


def test_lora_on_the_compiled_model_equals_the_uncompiled_lora(loaded, addons, compiled_sd_turbo):
    model, clip, vae = loaded["sd_turbo"]
    compiled_model, compiled_clip, _ = compiled_sd_turbo
    lora_name = addons.lora["sd_turbo"]
    eager_latent, _ = _generate(model, g.encode(clip, PROMPT), size=COMPILED_SIZE, steps=1)
    compiled_latent, _ = _generate(compiled_model, g.encode(compiled_clip, PROMPT), size=COMPILED_SIZE, steps=1)
    assert_fp32_close(compiled_latent, eager_latent)  # the compiled graph itself is right

    want_model, want_clip = _lora(model, clip, lora_name)
    want_cond = g.encode(want_clip, PROMPT)
    want_latent, want_image = _generate(want_model, want_cond, vae, size=COMPILED_SIZE, steps=1)
    got_model, got_clip = _lora(compiled_model, compiled_clip, lora_name)
    got_cond = g.encode(got_clip, PROMPT)
    got_latent, got_image = _generate(got_model, got_cond, vae, size=COMPILED_SIZE, steps=1)
    cond_diff = _assert_same_conditioning(got_cond, want_cond)  # compiled text encoder layers, patched weights
    latent_diff = assert_fp32_close(got_latent, want_latent)  # patched weights, not the frozen ones
    image_diff = assert_same_image(got_image, want_image)
    assert max_rel_diff(want_latent, eager_latent) > CHANGED_REL  # the LoRA matters at this size too
    # the unpatched compiled model afterwards: its compiled graph, still the base weights
    again_latent, _ = _generate(compiled_model, g.encode(compiled_clip, PROMPT), size=COMPILED_SIZE, steps=1)
    assert_fp32_close(again_latent, eager_latent)
    print(f"\nCOMPILE + LORA (loader inductor, CPU) vs eager LoRA: conditioning {cond_diff:.1e}, "
          f"latent {latent_diff:.1e} (relative), image {image_diff:.4f}/255")


def test_hook_lora_on_the_compiled_model_equals_the_uncompiled_lora(loaded, addons, compiled_sd_turbo):
    """Hook patches reach the weights during sampling, not through the model's patch set: the
    frozen graph must not run with the weights it was compiled with either."""
    model, clip, _ = loaded["sd_turbo"]
    compiled_model, compiled_clip, _ = compiled_sd_turbo
    lora_name = addons.lora["sd_turbo"]
    want_model, want_clip = _lora(model, clip, lora_name)
    want_latent, _ = _generate(want_model, g.encode(want_clip, PROMPT), size=COMPILED_SIZE, steps=1)
    hooked_cond = g.encode(_hooked_clip(compiled_clip, lora_name), PROMPT)
    got_latent, _ = _generate(compiled_model, hooked_cond, size=COMPILED_SIZE, steps=1)
    diff = assert_fp32_close(got_latent, want_latent)
    print(f"\nCOMPILE + HOOK LORA vs eager LoRA: latent {diff:.1e} (relative)")
