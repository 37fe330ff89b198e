"""The loader's `engine` option, its gates: whatever the direct path cannot reproduce takes the normal
path with its reason logged once (each obstacle and the normal result), and what is no obstacle."""

import logging

import pytest
import torch

from devkit import graphs as g
from devkit import tiny_addons
from tests.support.engine_runs import FAMILIES, PROMPT, SEED, SIZE, turbo_latents
from tests.support.model_links import linked_into_models
from tests.support.tolerances import assert_fp32_close


@pytest.fixture(scope="module")
def addons(tiny_models):
    """family -> tiny LoRA name in models/loras, and the SD-Turbo ControlNet name (linked for this module)."""
    with linked_into_models() as place:
        loras = {family: place(tiny_addons.build_lora(model).path, "loras") for family, model in tiny_models.items()}
        controlnet = place(tiny_addons.build_controlnet(tiny_models["sd_turbo"]), "controlnet")
        yield loras, controlnet


def _lora(model, clip, lora_name):
    return g.run(g.builtin("LoraLoader"), model=model, clip=clip, lora_name=lora_name, strength_model=0.75,
                 strength_clip=1.25)


def _hooked(clip, lora_name):
    (hooks,) = g.run(g.builtin("CreateHookLora"), lora_name=lora_name, strength_model=0.75, strength_clip=1.25)
    (hooked,) = g.run(g.builtin("SetClipHooks"), clip=clip, apply_to_conds=True, schedule_clip=False, hooks=hooks)
    return hooked


def _controlled(positive, controlnet_name):
    (control_net,) = g.run(g.builtin("ControlNetLoader"), control_net_name=controlnet_name)
    hint = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(4))
    out, _ = g.run(g.builtin("ControlNetApplyAdvanced"), positive=positive, negative=positive, control_net=control_net,
                   image=hint, strength=1.0, start_percent=0.0, end_percent=1.0)
    return out


def _identity_post_cfg(args):
    return args["denoised"]


def _passthrough_wrapper(executor, *args, **kwargs):
    return executor(*args, **kwargs)


def _with_model_change(model, change):
    """A clone of `model` changed by `change(clone)` (the option setters nodes use)."""
    clone = model.clone()
    change(clone)
    return clone


def _object_patch(clone):
    clone.add_object_patch("model_sampling", clone.get_model_object("model_sampling"))


def _foreign_wrapper(clone):
    from comfy.patcher_extension import WrappersMP

    clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "someone_elses_wrapper", _passthrough_wrapper)


# name -> (what it changes, expected words of the reason)
FALLBACKS = {
    "lora": ("LoraLoader on MODEL and CLIP", "weight patches"),
    "hook_lora": ("CreateHookLora + SetClipHooks", "conditioning has hooks"),
    "controlnet": ("ControlNetApplyAdvanced", "conditioning has a ControlNet"),
    "noise_mask": ("SetLatentNoiseMask", "noise mask"),
    "combined": ("ConditioningCombine", "conditioning has 2 entries"),
    "area": ("ConditioningSetArea", "an area, strength or mask (area, "),
    "timestep_range": ("ConditioningSetTimestepRange", "timestep range"),
    "object_patch": ("an object patch on the model", "object patches (model_sampling)"),
    "sampler_option": ("a post-cfg function", "sampling options (sampler_post_cfg_function)"),
    "wrapper": ("another node's apply_model wrapper", "wrappers (apply_model)"),
}


def _fallback_case(case, family, models, addons):
    """(engine MODEL, normal MODEL, positive, latent dict) for `case`, both sides built the same way."""
    (normal_model, clip, _), engine_model = models["off"], models["on"][0]
    loras, controlnet = addons
    positive, latent = g.encode(clip, PROMPT), g.empty_latent(SIZE)
    if case == "lora":
        engine_model, engine_clip = _lora(engine_model, clip, loras[family])
        normal_model, _ = _lora(normal_model, clip, loras[family])
        positive = g.encode(engine_clip, PROMPT)
    elif case == "hook_lora":
        positive = g.encode(_hooked(clip, loras[family]), PROMPT)
    elif case == "controlnet":
        positive = _controlled(positive, controlnet)
    elif case == "noise_mask":
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 16:48, 16:48] = 1
        (latent,) = g.run(g.builtin("SetLatentNoiseMask"), samples=latent, mask=mask)
    elif case == "combined":
        (positive,) = g.run(g.builtin("ConditioningCombine"), conditioning_1=positive,
                            conditioning_2=g.encode(clip, "a red fox"))
    elif case == "area":
        (positive,) = g.run(g.builtin("ConditioningSetArea"), conditioning=positive, width=SIZE, height=SIZE // 2,
                            x=0, y=0, strength=1.0)
    elif case == "timestep_range":
        (positive,) = g.run(g.builtin("ConditioningSetTimestepRange"), conditioning=positive, start=0.0, end=0.5)
    else:
        change = {"object_patch": _object_patch, "wrapper": _foreign_wrapper,
                  "sampler_option": lambda m: m.set_model_sampler_post_cfg_function(_identity_post_cfg)}[case]
        engine_model, normal_model = (_with_model_change(m, change) for m in (engine_model, normal_model))
    return engine_model, normal_model, positive, latent


@pytest.mark.parametrize("case", list(FALLBACKS))
@pytest.mark.parametrize("family", FAMILIES)
def test_each_obstacle_falls_back_with_its_reason_and_the_normal_result(loaded, addons, engine, host_sampler_runs,
                                                                        caplog, family, case):
    if case == "controlnet" and family != "sd_turbo":
        pytest.skip("the tiny ControlNet is built for SD-Turbo")
    engine_model, normal_model, positive, latent = _fallback_case(case, family, loaded[family], addons)
    reason = engine.fallback_reason(engine_model, positive, latent["samples"], latent.get("noise_mask"))
    assert reason is not None and FALLBACKS[case][1] in reason, reason

    state = engine.state_of(engine_model)
    direct_before, fallback_before = state.runs["direct"], state.runs["fallback"]
    with caplog.at_level(logging.WARNING):
        got = [g.turbo_sample(engine_model, positive, latent, seed=SEED, steps=2)["samples"] for _ in range(2)]
    want = g.turbo_sample(normal_model, positive, latent, seed=SEED, steps=2)["samples"]
    assert host_sampler_runs == ["PositiveOnlyGuider"] * 3  # both engine runs took the normal path
    assert state.runs["direct"] == direct_before and state.runs["fallback"] == fallback_before + 2
    logged = [r.getMessage() for r in caplog.records if "ADD Turbo engine" in r.getMessage()]
    assert logged == [f"ADD Turbo engine: {reason}: sampling the normal way"]  # once per model and reason
    for latent_out in got:
        assert_fp32_close(latent_out, want)


def test_what_the_model_itself_carries_is_named(loaded, engine):
    """Hooks and callbacks on the patcher, another attention override, an unknown host layout; and what
    a removed wrapper leaves behind is no obstacle."""
    import comfy.hooks
    from comfy.patcher_extension import CallbacksMP, WrappersMP

    model, clip, _ = loaded["sd_turbo"]["on"]
    positive, latent = g.encode(clip, PROMPT), torch.zeros(1, 4, 8, 8)

    def reason(change):
        clone = model.clone()
        change(clone)
        return engine.fallback_reason(clone, positive, latent)

    def added_and_removed(clone):
        clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "gone", _passthrough_wrapper)
        clone.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, "gone")

    def other_attention(clone):
        clone.model_options["transformer_options"]["optimized_attention_override"] = _passthrough_wrapper

    assert reason(lambda clone: None) is None
    assert reason(added_and_removed) is None
    assert reason(lambda clone: setattr(clone, "forced_hooks", comfy.hooks.HookGroup())) == "the model has hooks"
    assert reason(lambda clone: clone.add_callback(CallbacksMP.ON_PRE_RUN, print)) == "the model has callbacks"
    assert reason(other_attention) == "the model has transformer options (optimized_attention_override)"
    assert "unknown host version" in reason(lambda clone: delattr(clone, "injections"))


def test_after_a_lora_clone_ran_the_plain_model_samples_its_own_weights_again(loaded, addons, engine):
    """A LoRA clone patches the weights the plain model shares: the engine's run must load them back."""
    engine_model, clip, _ = loaded["sd_turbo"]["on"]
    positive = g.encode(clip, PROMPT)
    before = turbo_latents(engine_model, positive)
    lora_model, lora_clip = _lora(engine_model, clip, addons[0]["sd_turbo"])
    patched = turbo_latents(lora_model, g.encode(lora_clip, PROMPT))
    assert (patched - before).abs().max() > 1e-3  # the LoRA matters
    assert torch.equal(turbo_latents(engine_model, positive), before)


def test_the_compile_wrapper_is_no_obstacle_and_runs_on_every_step(loaded, engine, host_sampler_runs):
    """The loader's compile option (or TorchCompileModel) wraps apply_model under the host's compile key:
    the engine calls apply_model, so the wrapper runs, once per step."""
    from comfy.patcher_extension import WrappersMP
    from comfy_api.torch_helpers.torch_compile import COMPILE_KEY

    normal_model, clip, _ = loaded["sd_turbo"]["off"]
    calls = []

    def counting(executor, *args, **kwargs):
        calls.append(1)
        return executor(*args, **kwargs)

    wrapped = loaded["sd_turbo"]["on"][0].clone()
    wrapped.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY, counting)
    positive = g.encode(clip, PROMPT)
    assert engine.fallback_reason(wrapped, positive, torch.zeros(1, 4, 8, 8)) is None
    got = turbo_latents(wrapped, positive, steps=3)
    assert len(calls) == 3 and host_sampler_runs == []
    assert engine.state_of(wrapped).last == "direct path (no CUDA graphs on cpu)"  # compiled code: nothing packed
    assert_fp32_close(got, turbo_latents(normal_model, positive, steps=3))


def test_unsupported_size_falls_back_only_where_a_cuda_graph_would_be_recorded(loaded, engine):
    model, clip, _ = loaded["sd_turbo"]["on"]
    positive = g.encode(clip, PROMPT)
    odd = torch.zeros(1, 4, 9, 8)  # 64 px wide, 72 px high
    reason = engine.fallback_reason(model, positive, odd, device="cuda")
    assert reason == "the image is 64x72 px: CUDA graphs need sides that are multiples of 64 px"
    assert engine.fallback_reason(model, positive, torch.zeros(1, 4, 8, 16), device="cuda") is None
    assert engine.fallback_reason(model, positive, odd) is None  # on the CPU nothing is recorded


def test_engine_off_and_other_loaders_never_use_the_engine(loaded, engine):
    normal_model = loaded["sd_turbo"]["off"][0]
    assert not engine.engine_on(normal_model)
    clone = loaded["sd_turbo"]["on"][0].clone()
    engine.set_engine(clone, "off")
    assert not engine.engine_on(clone) and engine.engine_on(loaded["sd_turbo"]["on"][0])
