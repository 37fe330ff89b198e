"""The loader's `engine` option: the direct sampling path gives the normal path's latents, and whatever
it cannot reproduce takes the normal path, with its reason logged once.

The CUDA graph itself needs a GPU; here its static buffers and graph cache run with an eager stand-in
for the recording (`eager_record`), so everything but the CUDA calls is exercised on the CPU.
"""

import logging
import re
import sys

import pytest
import torch

from devkit import graphs as g
from devkit import tiny_addons
from tests.support.model_links import linked_into_models
from tests.support.tolerances import assert_fp32_close, max_rel_diff

SIZE, PROMPT, SEED = 64, "a lighthouse at dusk", 7
FAMILIES = ["sd_turbo", "sdxl_turbo"]


@pytest.fixture(scope="module")
def engine(comfy_host):
    """The pack's nodes/engine module, as the host imported it (from custom_nodes/)."""
    return next(m for key, m in sys.modules.items() if key.endswith("nodes.engine") and hasattr(m, "fallback_reason"))


@pytest.fixture(scope="module")
def cuda_graphs(engine):
    """The pack's add_turbo.acceleration.cuda_graphs, as the host imported it (through the engine)."""
    return engine.direct.cuda_graphs


@pytest.fixture(scope="module", autouse=True)
def executor_mode(comfy_host):
    """Run the nodes the way the host's executor does, under torch.inference_mode()."""
    import comfy.model_management

    with torch.inference_mode():
        yield
        comfy.model_management.unload_all_models()  # unpatch weights in the mode they were patched in


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """family -> {"off": (MODEL, CLIP, VAE), "on": (MODEL, CLIP, VAE)} from ADD Turbo Loader."""
    return {family: {mode: g.load(model.single_file.name, engine=mode) for mode in ("off", "on")}
            for family, model in tiny_models.items()}


@pytest.fixture(scope="module")
def addons(tiny_models):
    """family -> tiny LoRA name in models/loras, and the SD-Turbo ControlNet name (linked for this module)."""
    with linked_into_models() as place:
        loras = {family: place(tiny_addons.build_lora(model).path, "loras") for family, model in tiny_models.items()}
        controlnet = place(tiny_addons.build_controlnet(tiny_models["sd_turbo"]), "controlnet")
        yield loras, controlnet


@pytest.fixture
def host_sampler_runs(monkeypatch):
    """The guider class of every run of the host's sampler (the normal path), in order."""
    import comfy.samplers

    runs = []
    original = comfy.samplers.CFGGuider.sample

    def counted(self, *args, **kwargs):
        runs.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(comfy.samplers.CFGGuider, "sample", counted)
    return runs


def _sample(model, positive, latent=None, steps=2, strength=1.0, seed=SEED):
    """ADD Turbo Sample: the sampled latent [B, 4, h, w]."""
    latent = g.empty_latent(SIZE) if latent is None else latent
    return g.turbo_sample(model, positive, latent, seed=seed, steps=steps, strength=strength)["samples"]


def _photo(seed=3, size=SIZE):
    """A smooth RGB image [1, size, size, 3] in 0..1."""
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").movedim(1, -1)


def _encoded(vae, image):
    (latent,) = g.run(g.builtin("VAEEncode"), pixels=image, vae=vae)
    return latent


def _refine(model, vae, positive, image, steps, mask=None):
    (out,) = g.run(g.builtin("ADDTurboRefine"), model=model, vae=vae, positive=positive, image=image, seed=SEED,
                   steps=steps, strength=0.5, spacing="trailing", sampler="euler_ancestral", eta=1.0,
                   **({} if mask is None else {"mask": mask}))
    return out


# --- The direct path equals the normal path -------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_through_the_engine_equals_the_normal_path(loaded, engine, host_sampler_runs, family, steps):
    normal_model, clip, _ = loaded[family]["off"]
    engine_model = loaded[family]["on"][0]
    positive = g.encode(clip, PROMPT)
    state = engine.state_of(engine_model)
    direct_before = state.runs["direct"]

    want = _sample(normal_model, positive, steps=steps)
    assert host_sampler_runs == ["PositiveOnlyGuider"]
    got = _sample(engine_model, positive, steps=steps)
    assert host_sampler_runs == ["PositiveOnlyGuider"]  # the engine ran without the host's sampler
    assert state.runs["direct"] == direct_before + 1
    assert re.fullmatch(r"direct path \(no CUDA graphs on cpu\), \d+ of \d+ conv layers packed for oneDNN "
                        r"\(\+\d\.\d\d GiB\)", state.last), state.last
    diff = assert_fp32_close(got, want)
    assert torch.equal(got, want), f"{diff:.1e} apart: the same calls on the same inputs should be bit-identical"
    print(f"\nENGINE {family} txt2img {steps} step(s): bit-identical to the normal path")


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_refine_through_the_engine_equals_the_normal_path(loaded, engine, host_sampler_runs, family, steps):
    normal_model, clip, vae = loaded[family]["off"]
    engine_model = loaded[family]["on"][0]
    positive = g.encode(clip, PROMPT)
    image = _photo()

    # strength 0.5 from an encoded image: ADD Turbo Sample's latents
    latent = _encoded(vae, image)
    want = _sample(normal_model, positive, latent, steps=steps, strength=0.5)
    got = _sample(engine_model, positive, latent, steps=steps, strength=0.5)
    latent_diff = assert_fp32_close(got, want)
    assert torch.equal(got, want), f"{latent_diff:.1e} apart: the same calls on the same inputs should be bit-identical"
    # and ADD Turbo Refine (size conditioning of the image's own size)
    want_image = _refine(normal_model, vae, positive, image, steps)
    got_image = _refine(engine_model, vae, positive, image, steps)
    image_diff = assert_fp32_close(got_image, want_image)
    assert host_sampler_runs == ["PositiveOnlyGuider"] * 2  # only the engine-off runs
    print(f"\nENGINE {family} refine 0.5, {steps} step(s): latent {latent_diff:.1e}, image {image_diff:.1e} "
          "(relative)")


def test_refine_with_a_mask_uses_the_engine_the_mask_is_a_pixel_blend(loaded, engine, host_sampler_runs):
    normal_model, clip, vae = loaded["sd_turbo"]["off"]
    engine_model = loaded["sd_turbo"]["on"][0]
    positive = g.encode(clip, PROMPT)
    mask = torch.zeros(SIZE, SIZE)
    mask[8:40, 16:56] = 1
    want = _refine(normal_model, vae, positive, _photo(), 2, mask)
    got = _refine(engine_model, vae, positive, _photo(), 2, mask)
    assert host_sampler_runs == ["PositiveOnlyGuider"]
    assert_fp32_close(got, want)


def test_batches_and_sdxl_size_conditioning_match(loaded, host_sampler_runs):
    """Batch 2 at a non-square size: image k keyed by seed + k and SDXL's size conditioning as the host's."""
    normal_model, clip, _ = loaded["sdxl_turbo"]["off"]
    engine_model = loaded["sdxl_turbo"]["on"][0]
    positive = g.encode(clip, PROMPT)
    latent = g.empty_latent(SIZE, batch=2, width=2 * SIZE)
    assert_fp32_close(_sample(engine_model, positive, latent, steps=3), _sample(normal_model, positive, latent, steps=3))
    assert host_sampler_runs == ["PositiveOnlyGuider"]


@pytest.mark.parametrize("family", FAMILIES)
def test_several_seeds_in_one_engine_batch_each_equal_their_lone_run(loaded, engine, host_sampler_runs, family):
    """ADD Turbo Sample's queue_batch: the latents of several queued prompts from one UNet call per step."""
    sampling = next(m for k, m in sys.modules.items() if k.endswith("nodes.latent_sampling"))
    model, clip = loaded[family]["on"][:2]
    positive = g.encode(clip, PROMPT)
    latent = g.empty_latent(SIZE, batch=2)["samples"]
    seeds = [SEED, 40, SEED + 1]  # image 1 of the first prompt and image 0 of the third share a seed
    state = engine.state_of(model)
    direct_before = state.runs["direct"]
    latents, reason = sampling.sample_latents_together(model, [positive] * 3, latent, seeds, 2, 1.0, "trailing",
                                                       "euler_ancestral", 1.0)
    assert reason is None and state.runs["direct"] == direct_before + 1  # one engine run for all three prompts
    for seed, got in zip(seeds, latents, strict=True):
        alone = sampling.sample_latent(model, positive, latent, seed, 2, 1.0, "trailing", "euler_ancestral", 1.0)
        assert_fp32_close(got, alone)  # another batch size takes other kernels: equal up to fp32 rounding
    # One seed, one noise, one batch, but rows 1 and 4 of it: torch's CPU GEMM splits a 6-row matmul over
    # threads by row position (seen on 2 threads), so equal only up to fp32 rounding.
    assert_fp32_close(latents[0][1], latents[2][0])
    assert host_sampler_runs == []
    _, off_reason = sampling.sample_latents_together(loaded[family]["off"][0], [positive] * 3, latent, seeds, 2,
                                                     1.0, "trailing", "euler_ancestral", 1.0)
    assert off_reason == "the loader's engine is off"
    patched = model.clone()
    patched.add_object_patch("diffusion_model.input_blocks.0.0.weight", torch.nn.Parameter(torch.zeros(1)))
    _, patched_reason = sampling.sample_latents_together(patched, [positive] * 3, latent, seeds, 2, 1.0,
                                                         "trailing", "euler_ancestral", 1.0)
    assert patched_reason is not None and "object patches" in patched_reason


@pytest.mark.parametrize("family", FAMILIES)
def test_several_prompts_in_one_engine_batch_each_equal_their_lone_run(loaded, engine, host_sampler_runs, family):
    """queue_batch with other prompt texts: each group of rows gets its own prompt (and SDXL its own pooled
    output), so each latent is its lone run's up to fp32 rounding."""
    sampling = next(m for k, m in sys.modules.items() if k.endswith("nodes.latent_sampling"))
    model, clip = loaded[family]["on"][:2]
    positives = [g.encode(clip, text) for text in (PROMPT, "a red fox", "a city at night, neon")]
    latent = g.empty_latent(SIZE, width=2 * SIZE)["samples"]
    seeds = [SEED, SEED, 3]
    state = engine.state_of(model)
    direct_before = state.runs["direct"]
    latents, reason = sampling.sample_latents_together(model, positives, latent, seeds, 2, 1.0, "trailing",
                                                       "euler_ancestral", 1.0)
    assert reason is None and state.runs["direct"] == direct_before + 1
    for positive, seed, got in zip(positives, seeds, latents, strict=True):
        alone = sampling.sample_latent(model, positive, latent, seed, 2, 1.0, "trailing", "euler_ancestral", 1.0)
        assert_fp32_close(got, alone)
    assert max_rel_diff(latents[0], latents[1]) > 1e-2  # one seed, two prompts: two images
    long_prompt = g.encode(clip, " ".join(["word"] * 90))  # over 77 tokens: a longer conditioning
    _, reason = sampling.sample_latents_together(model, [positives[0], long_prompt], latent, [1, 2], 1, 1.0,
                                                 "trailing", "euler_ancestral", 1.0)
    assert reason == "the prompts' conditionings differ in shape (e.g. a prompt over 77 tokens)"
    assert host_sampler_runs == []


def test_loader_reports_the_engine_warm_up(tiny_models, engine):
    name = tiny_models["sd_turbo"].single_file.name
    model, _, _, message = g.load_with_message(name, engine="on")
    assert re.fullmatch(r"engine: direct path \(no CUDA graphs on cpu\), conv layers packed for oneDNN at each "
                        r"size's first run, 64x64 warm-up \d+\.\d s", message), message
    assert engine.engine_on(model) and engine.engine_on(model.clone())  # clones carry the choice
    _, _, _, off_message = g.load_with_message(name)
    assert off_message == ""
    with pytest.raises(ValueError, match="engine must be one of"):
        g.load(name, engine="fast")


# --- Fallbacks: each reason, and the normal path's result ------------------------------------------

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
    before = _sample(engine_model, positive)
    lora_model, lora_clip = _lora(engine_model, clip, addons[0]["sd_turbo"])
    patched = _sample(lora_model, g.encode(lora_clip, PROMPT))
    assert (patched - before).abs().max() > 1e-3  # the LoRA matters
    assert torch.equal(_sample(engine_model, positive), before)


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
    got = _sample(wrapped, positive, steps=3)
    assert len(calls) == 3 and host_sampler_runs == []
    assert engine.state_of(wrapped).last == "direct path (no CUDA graphs on cpu)"  # compiled code: nothing packed
    assert_fp32_close(got, _sample(normal_model, positive, steps=3))


def test_packed_convolutions_exist_only_during_an_engine_run_and_leave_other_forwards_alone(loaded, engine):
    """The host's Conv2d layers get the packed forward for the run only; a layer that another extension
    gave its own forward keeps it, and the result stays the normal path's."""
    import comfy.ops

    normal_model, clip, _ = loaded["sd_turbo"]["off"]
    engine_model = loaded["sd_turbo"]["on"][0]
    layers = [m for m in engine_model.model.diffusion_model.modules()
              if isinstance(m, comfy.ops.disable_weight_init.Conv2d)]
    foreign, seen_during_run = layers[1], []

    def foreign_forward(*args, **kwargs):
        seen_during_run.append(sum("forward" in m.__dict__ for m in layers))
        return type(foreign).forward(foreign, *args, **kwargs)

    foreign.forward = foreign_forward
    try:
        positive = g.encode(clip, PROMPT)
        got = _sample(engine_model, positive)
        assert seen_during_run and all(n == len(layers) for n in seen_during_run)  # all wrapped while it ran
        assert foreign.forward is foreign_forward
    finally:
        del foreign.forward
    assert not any("forward" in m.__dict__ for m in layers)  # and none after
    assert torch.equal(got, _sample(normal_model, positive))


def test_taesd_blocks_run_fused_during_decode_and_encode_only_with_the_same_bits(tiny_models, engine):
    """With the engine on, TAESD's blocks get the fused forward while the VAE decodes or encodes, a block
    that another extension gave its own forward keeps it, and images and latents stay the host's."""
    from comfy.taesd import taesd

    name = tiny_models["sd_turbo"].single_file.name
    _, _, host_vae = g.load(name, decoder="taesd")
    _, _, vae, message = g.load_with_message(name, decoder="taesd", engine="on")
    assert host_vae.fused_blocks is None and vae.fused_blocks is not None
    assert message.endswith("; TAESD blocks run as fused oneDNN convolutions (ReLU and skip add inside)"), message
    blocks = [m for m in vae.first_stage_model.modules() if isinstance(m, taesd.Block)]
    foreign, fused_during_run = blocks[-1], []

    def foreign_forward(x):
        return type(foreign).forward(foreign, x)

    foreign.forward = foreign_forward
    decoder_blocks = [b for b in vae.first_stage_model.taesd_decoder.modules() if isinstance(b, taesd.Block)]
    hooks = [block.register_forward_pre_hook(lambda *_: fused_during_run.append(
        sum(type(b.__dict__.get("forward")).__name__ == "_FusedBlockForward" for b in blocks)))
        for block in (decoder_blocks[0], blocks[0])]  # blocks[0] is the encoder's
    latent = {"samples": torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(5))}
    try:
        image = g.decode(vae, latent)
        encoded = _encoded(vae, image)
        assert fused_during_run == [len(blocks) - 1, len(blocks) - 1]  # all but the foreign one, in both
        assert foreign.forward is foreign_forward
    finally:
        for hook in hooks:
            hook.remove()
        del foreign.forward
    assert not any("forward" in b.__dict__ for b in blocks)  # and none after
    assert torch.equal(image, g.decode(host_vae, latent))
    assert torch.equal(encoded["samples"], _encoded(host_vae, image)["samples"])
    assert all(vae.fused_blocks[b].exact for b in decoder_blocks if b is not foreign)  # each checked its shape


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


# --- The recorded-graph path, with an eager stand-in for CUDA graph recording ------------------------

@pytest.mark.parametrize("sampler", ["euler_ancestral", "euler", "consistency"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_noise_steps_are_the_steps_the_sampler_draws_noise_for(engine, sampler, eta, steps):
    """A recorded graph reads per-step noise from buffers filled before each replay: exactly these."""
    from add_turbo import samplers, schedules

    sigmas = schedules.turbo_sigmas(steps)
    asked = []

    def noise_for_step(step):
        asked.append(step)
        return torch.zeros(1, 4, 2, 2)

    samplers.sample(lambda x, sigma: x * 0.5, torch.ones(1, 4, 2, 2), sigmas, sampler, eta, noise_for_step)
    assert engine.noise_steps(sigmas, sampler, eta) == asked


class EagerGraph:
    """Stands in for a CUDA graph: `replay` runs the recorded body again into the same output buffer."""

    def __init__(self, body):
        self.body = body
        self.out = body()
        self.replays = 0

    def replay(self):
        self.replays += 1
        fresh = self.body()
        for buffer, value in zip(*(o if isinstance(o, (tuple, list)) else (o,) for o in (self.out, fresh)), strict=True):
            if buffer is not None:
                buffer.copy_(value)


@pytest.fixture
def eager_graphs(engine, cuda_graphs, monkeypatch):
    """The engine records 'graphs' on the CPU: every obstacle to recording lifted, recording eager."""
    recorded = []

    def eager_record(body, device):
        graph = EagerGraph(body)
        recorded.append(graph)
        return graph, graph.out

    monkeypatch.setattr(cuda_graphs, "record", eager_record)
    monkeypatch.setattr(engine.gates, "capture_obstacle", lambda patcher, unet: None)
    return recorded


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_buffers_take_each_runs_inputs(tiny_models, loaded, engine, eager_graphs, family):
    """Recorded once per shape and schedule, then replayed with new noise, prompt, image and seed."""
    engine_model = g.load(tiny_models[family].single_file.name, engine="on")[0]  # a model of its own
    normal_model, clip, vae = loaded[family]["off"]
    state = engine.state_of(engine_model)
    assert state.runs["recorded"] == 1 and len(eager_graphs) == 1  # the loader's warm-up: 1 step
    del eager_graphs[:]
    fox, lighthouse = g.encode(clip, "a red fox"), g.encode(clip, PROMPT)
    image_latent = _encoded(vae, _photo())

    runs = [  # (positive, latent, steps, strength, seed, sampler)
        (lighthouse, None, 4, 1.0, SEED, "euler_ancestral"),
        (lighthouse, None, 4, 1.0, SEED + 1, "euler_ancestral"),  # another seed: new start and step noise
        (fox, None, 4, 1.0, SEED, "euler_ancestral"),  # another prompt: new context (and pooled output)
        (fox, image_latent, 2, 0.5, SEED, "euler_ancestral"),  # refine: a new schedule, a new graph
        (lighthouse, image_latent, 2, 0.5, SEED + 2, "euler_ancestral"),
        (fox, None, 2, 1.0, SEED, "consistency"),
    ]
    for positive, latent, steps, strength, seed, sampler in runs:
        latent = g.empty_latent(SIZE) if latent is None else latent
        sample = {"seed": seed, "steps": steps, "strength": strength, "spacing": "trailing", "sampler": sampler,
                  "eta": 1.0}
        got = g.turbo_sample(engine_model, positive, latent, **sample)["samples"]
        want = g.turbo_sample(normal_model, positive, latent, **sample)["samples"]
        assert_fp32_close(got, want)
    assert state.runs["recorded"] == 1 + 3 and state.runs["replayed"] == 1 + len(runs) and state.runs["direct"] == 0
    assert [graph.replays for graph in eager_graphs] == [3, 2, 1]
    assert state.last == "CUDA graph"


def test_a_graph_reads_only_buffers_it_owns(tiny_models, loaded, engine, eager_graphs, monkeypatch):
    """A CUDA graph replays reads by address: what the recording run allocated is freed (and reused)
    once that run ends. Here each run's tensors are overwritten with NaN when it ends; replays must
    not notice."""
    host_api = next(m for key, m in sys.modules.items() if key.endswith("nodes.host_api") and hasattr(m, "DirectUNet"))
    original_exit = host_api.DirectUNet.__exit__

    def exit_and_scribble(self, *exc):
        self.sigmas.fill_(float("nan"))
        self.start.fill_(float("nan"))
        for value in self.inputs.values():
            value.fill_(float("nan"))
        return original_exit(self, *exc)

    monkeypatch.setattr(host_api.DirectUNet, "__exit__", exit_and_scribble)
    engine_model, clip, _ = g.load(tiny_models["sd_turbo"].single_file.name, engine="on")
    positive = g.encode(clip, PROMPT)
    want = _sample(loaded["sd_turbo"]["off"][0], positive, steps=2)
    for _ in range(2):  # recorded, then replayed after the recording run's tensors were scribbled over
        got = _sample(engine_model, positive, steps=2)
        assert torch.isfinite(got).all()
        assert_fp32_close(got, want)
    assert engine.state_of(engine_model).runs["replayed"] >= 2


def test_graphs_are_dropped_when_the_weights_move_and_kept_to_a_few(tiny_models, loaded, engine, cuda_graphs,
                                                                    eager_graphs):
    engine_model, clip, _ = g.load(tiny_models["sd_turbo"].single_file.name, engine="on")
    normal_model = loaded["sd_turbo"]["off"][0]
    positive = g.encode(clip, PROMPT)
    state = engine.state_of(engine_model)
    want = _sample(normal_model, positive)
    assert_fp32_close(_sample(engine_model, positive), want)
    assert state.runs["recorded"] == 2 and len(state.graphs) == 2  # the loader's warm-up (1 step), then 2 steps

    # A recorded graph reads the weights where they were: a reload elsewhere (same values) voids it.
    bias = engine_model.model.diffusion_model.out[2].bias
    bias.data = bias.data.clone()
    assert_fp32_close(_sample(engine_model, positive), want)
    assert state.runs["recorded"] == 3 and len(state.graphs) == 1

    for steps in range(1, cuda_graphs.GRAPHS_KEPT + 3):
        _sample(engine_model, positive, steps=steps)
    assert len(state.graphs) == cuda_graphs.GRAPHS_KEPT


def test_a_recording_that_fails_leaves_the_direct_path_for_good(tiny_models, loaded, engine, cuda_graphs, monkeypatch):
    """Should some host's UNet not be recordable, the run (and every later one) takes the direct path."""
    attempts = []

    def failing_record(body, device):
        attempts.append(device)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "record", failing_record)
    monkeypatch.setattr(engine.gates, "capture_obstacle", lambda patcher, unet: None)
    engine_model, clip, _, message = g.load_with_message(tiny_models["sd_turbo"].single_file.name, engine="on")
    assert message.startswith("engine: direct path (recording a CUDA graph failed: operation not permitted")
    positive = g.encode(clip, PROMPT)
    assert_fp32_close(_sample(engine_model, positive), _sample(loaded["sd_turbo"]["off"][0], positive))
    state = engine.state_of(engine_model)
    assert len(attempts) == 1 and state.runs["direct"] == 2 and not state.graphs  # the warm-up and this run


@pytest.fixture
def host_api(comfy_host):
    return next(m for key, m in sys.modules.items() if key.endswith("nodes.host_api") and hasattr(m, "HOST_SYMBOLS"))


def test_taesd_decode_replays_a_graph_per_latent_size_with_the_hosts_bits(tiny_models, engine, cuda_graphs, host_api,
                                                                           eager_graphs, monkeypatch):
    """With the engine on, TAESD's decode is one recorded graph per latent size; its input buffer takes each
    decode's latent, and a move of the weights, a failed recording or another extension's decode are
    respected. (On CPU no graph is used: the obstacle is lifted here, the recording eager.)"""
    name = tiny_models["sd_turbo"].single_file.name
    plain_vae = g.load(name, decoder="taesd")[2]
    vae = g.load(name, decoder="taesd", engine="on")[2]
    graph = vae.decode_graph
    assert isinstance(graph, cuda_graphs.GraphedCall) and plain_vae.decode_graph is None
    obstacle = host_api.taesd_graph_obstacle
    assert obstacle(vae) == "no CUDA graphs on cpu"
    shapes = [(1, 4, 8, 8)] * 3 + [(2, 4, 8, 12)]
    latents = [{"samples": torch.randn(shape, generator=torch.Generator().manual_seed(i)) * 3}
               for i, shape in enumerate(shapes)]
    g.decode(vae, latents[0])
    assert sum(graph.runs.values()) == 0  # on CPU the host's decode ran, no graph

    monkeypatch.setattr(host_api.vae, "taesd_graph_obstacle", lambda vae: None)
    for latent in latents:
        assert torch.equal(g.decode(vae, latent), g.decode(plain_vae, latent))
    assert graph.runs == {"recorded": 2, "replayed": 4}  # two sizes; each decode replays
    with torch.inference_mode(False), torch.no_grad():  # outside inference mode: the host's decode
        assert torch.equal(g.decode(vae, latents[0]), g.decode(plain_vae, latents[0]))
    assert graph.runs == {"recorded": 2, "replayed": 4, "direct": 1}
    assert "decode" not in vae.first_stage_model.__dict__  # installed only during a decode

    weight = next(vae.first_stage_model.parameters())
    weight.data = weight.data.clone()  # the weights moved: graphs read them by address
    assert torch.equal(g.decode(vae, latents[1]), g.decode(plain_vae, latents[1]))
    assert graph.runs["recorded"] == 3 and len(graph.graphs) == 1

    def foreign_decode(x):
        raise AssertionError("an extension's own decode")

    # The reasons met on a GPU (the obstacle only reads the VAE's device attribute).
    monkeypatch.setattr(vae, "device", torch.device("cuda"))
    assert obstacle(vae) is None
    vae.first_stage_model.decode = foreign_decode
    assert obstacle(vae) == "another extension replaced the TAESD decode"
    del vae.first_stage_model.decode
    vae.patcher.add_object_patch("taesd_decoder", torch.nn.Identity())
    assert obstacle(vae) == "the VAE carries patches"

    monkeypatch.setattr(host_api.vae, "taesd_graph_obstacle", lambda vae: None)
    monkeypatch.setattr(cuda_graphs, "record", lambda body, device: (_ for _ in ()).throw(RuntimeError("not capturable")))
    fresh = g.load(name, decoder="taesd", engine="on")[2]
    assert torch.equal(g.decode(fresh, latents[3]), g.decode(plain_vae, latents[3]))
    assert fresh.decode_graph.failure == "recording a CUDA graph failed: not capturable"
    g.decode(fresh, latents[3])
    assert fresh.decode_graph.runs == {"direct": 2}  # not tried again


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_replay_a_graph_per_shape_with_the_hosts_bits(tiny_models, engine, host_api, eager_graphs,
                                                                    monkeypatch, family):
    """With the engine on, each text encoder's layer stack is a recorded graph whose buffers take each new
    prompt; the prompt cache still answers repeated prompts without any encoder run. (On CPU no graph is
    used: the obstacle is lifted here, the recording eager.)"""
    name = tiny_models[family].single_file.name
    plain_clip = g.load(name)[1]
    clip = g.load(name, engine="on")[1]
    graphs = clip.encoder_graphs
    assert len(graphs) == (2 if family == "sdxl_turbo" else 1) and plain_clip.encoder_graphs is None
    assert host_api.text_graph_obstacle(clip) == "no CUDA graphs on cpu"
    g.encode(clip, "warm")
    assert all(sum(graph.runs.values()) == 0 for graph in graphs.values())  # on CPU: the host's encoders

    monkeypatch.setattr(host_api.text, "text_graph_obstacle", lambda clip: None)
    prompts = ["a red fox", "a lighthouse at dusk, oil painting", "a red fox"]
    for prompt in prompts:
        got, want = g.encode(clip, prompt), g.encode(plain_clip, prompt)
        assert torch.equal(got[0][0], want[0][0])
        assert got[0][1].keys() == want[0][1].keys()
        assert all(torch.equal(got[0][1][k], want[0][1][k]) for k in want[0][1] if torch.is_tensor(want[0][1][k]))
    for graph in graphs.values():
        assert graph.runs == {"recorded": 1, "replayed": 2}  # one shape; the third prompt came from the cache
    assert all("forward" not in m.__dict__ for m in graphs)  # installed only during an encode

    (skipped,) = g.run(g.builtin("CLIPSetLastLayer"), clip=clip, stop_at_clip_layer=-3)
    got = g.encode(skipped, "a red fox")  # another intermediate layer: another graph
    (plain_skipped,) = g.run(g.builtin("CLIPSetLastLayer"), clip=plain_clip, stop_at_clip_layer=-3)
    assert torch.equal(got[0][0], g.encode(plain_skipped, "a red fox")[0][0])
    assert sum(graph.runs["recorded"] for graph in graphs.values()) > len(graphs)


def test_text_graph_obstacles_are_named(tiny_models, host_api, monkeypatch):
    clip = g.load(tiny_models["sd_turbo"].single_file.name, engine="on")[1]
    assert host_api.text_graph_obstacle(clip) == "no CUDA graphs on cpu"
    # The reasons met on a GPU (the obstacle only reads the patcher's load device).
    monkeypatch.setattr(clip.patcher, "load_device", torch.device("cuda"))
    assert host_api.text_graph_obstacle(clip) is None
    layer = next(m for m in clip.cond_stage_model.modules() if hasattr(m, "weight_function"))
    layer.weight_function = [lambda w: w]
    assert host_api.text_graph_obstacle(clip) == "the text encoder's layers patch their weights on each call"
    layer.weight_function = []
    clip.patcher.add_object_patch("manual_cast_dtype", torch.float32)  # a plain value: no obstacle
    assert host_api.text_graph_obstacle(clip) is None
    clip.patcher.add_object_patch("final_layer_norm", torch.nn.Identity())
    assert host_api.text_graph_obstacle(clip) == "the text encoder has modules swapped in by object patches"
    clip.apply_hooks_to_conds = object()
    assert host_api.text_graph_obstacle(clip) == "the text encoder has hooks"


def test_the_cuda_warm_up_note_says_how_the_graphs_went(engine, cuda_graphs):
    module = torch.nn.Linear(2, 2)
    recorded, failed = cuda_graphs.GraphedCall(module, module, "a"), cuda_graphs.GraphedCall(module, module, "b")
    recorded.runs["recorded"] = 1
    failed.cache.failure = "recording a CUDA graph failed: not capturable"
    assert engine.graph_note("text encoders", []) == ""
    assert engine.graph_note("text encoders", [recorded]) == "; text encoders: CUDA graphs per input size"
    assert engine.graph_note("TAESD decode", [recorded, failed]) == \
        "; TAESD decode: the host's (recording a CUDA graph failed: not capturable)"


def test_the_weight_index_sees_every_way_the_host_moves_or_replaces_weights(cuda_graphs):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    index = cuda_graphs.WeightIndex(model)
    assert len(index.tensors()) == len(list(model.parameters())) + len(list(model.buffers()))
    first = index.fingerprint()
    assert index.fingerprint() == first  # nothing moved
    model[0].weight = torch.nn.Parameter(model[0].weight.detach().clone())  # as the host's set_attr_param
    second = index.fingerprint()
    assert second != first
    model[0].bias.data = model[0].bias.data.clone()  # a new storage under the same Parameter
    third = index.fingerprint()
    assert third != second
    model.to(torch.float64)  # a move or cast of the whole module
    assert index.fingerprint() != third
