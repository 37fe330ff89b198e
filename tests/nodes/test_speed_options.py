"""The loader's speed options: prompt cache, channels_last (default), torch.compile (CPU inductor here)."""

import pytest
import torch

from devkit import graphs as g

SIZE, PROMPT = 64, "a lighthouse at dusk"


def _load(name, **options):
    return g.run(g.builtin("ADDTurboLoader"), ckpt_name=name, **options)


def _image(model, clip, vae):
    return g.decode(vae, g.turbo_sample(model, g.encode(clip, PROMPT), g.empty_latent(SIZE), seed=5, steps=2))


@pytest.fixture(scope="module", autouse=True)
def compile_cache_folder(tmp_path_factory):
    """Compiled graphs go to a folder of this module's own, not the host's user directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADD_TURBO_COMPILE_CACHE", str(tmp_path_factory.mktemp("compile_cache")))
        yield


@pytest.fixture(scope="module")
def sd_turbo(tiny_models):
    return tiny_models["sd_turbo"].single_file.name


def test_prompt_cache_hits_only_for_the_same_prompt_layer_and_patches(sd_turbo):
    _, clip, _ = _load(sd_turbo)
    first = g.encode(clip, PROMPT)
    assert clip.prompt_cache.hits == 0
    again = g.encode(clip, PROMPT)
    assert clip.prompt_cache.hits == 1
    assert again[0][0] is first[0][0]  # the very tensor: no encoder run

    other = g.encode(clip, PROMPT + " in fog")
    assert clip.prompt_cache.hits == 1 and not torch.equal(other[0][0], first[0][0])

    (skipped,) = g.run(g.builtin("CLIPSetLastLayer"), clip=clip, stop_at_clip_layer=-1)
    shallower = g.encode(skipped, PROMPT)
    assert not torch.equal(shallower[0][0], first[0][0])  # another layer: encoded anew

    patched = clip.clone()
    key = next(k for k in patched.patcher.model_state_dict() if k.endswith("final_layer_norm.bias"))
    assert patched.add_patches({key: ("diff", (torch.ones_like(patched.patcher.model_state_dict()[key]),))})
    changed = g.encode(patched, PROMPT)
    assert not torch.equal(changed[0][0], first[0][0])  # a patched encoder (e.g. a LoRA) never hits
    assert torch.equal(g.encode(clip, PROMPT)[0][0], first[0][0])  # and the original still does


def test_channels_last_default_gives_the_same_image_as_the_host_layout(sd_turbo):
    host_layout = _image(*_load(sd_turbo, channels_last=False))
    model, clip, vae = _load(sd_turbo)  # default: channels_last
    conv = model.model.diffusion_model.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    diff = (_image(model, clip, vae) - host_layout).abs().max().item()
    print(f"\nFAST channels_last vs host layout: max|image diff|={diff:.2e}")
    assert diff <= 1e-5


def test_compiled_path_reports_its_warm_up_and_gives_the_same_image(sd_turbo):
    exact = _image(*_load(sd_turbo))
    output = g.builtin("ADDTurboLoader").execute(ckpt_name=sd_turbo, compile="inductor")
    (message,) = output.ui["text"]
    assert "512x512 warm-up" in message and "not cached" not in message
    diff = (_image(*output.result) - exact).abs().max().item()
    print(f"\nFAST compiled (inductor, CPU) vs exact: max|image diff|={diff:.2e}; {message}")
    assert diff <= 1e-5


def test_cuda_graphs_are_refused_off_the_gpu_with_the_fix(sd_turbo):
    with pytest.raises(ValueError, match="needs a CUDA GPU.*choose 'inductor' or 'off'"):
        _load(sd_turbo, compile="inductor + cuda graphs")


def _with_patch(model):
    """A clone whose UNet output bias is shifted, the way a LoRA patches weights."""
    patched = model.clone()
    weights = patched.model_state_dict()
    key = next(k for k in weights if k.endswith("diffusion_model.out.2.bias"))
    assert patched.add_patches({key: ("diff", (torch.full_like(weights[key], 0.5),))})
    return patched


def test_compiled_unet_with_frozen_weights_never_runs_stale_weights(sd_turbo):
    eager_model, clip, vae = _load(sd_turbo)
    compiled_model, _, _ = _load(sd_turbo, compile="inductor")  # CPU: weights frozen into the graph
    exact = _image(eager_model, clip, vae)
    want = _image(_with_patch(eager_model), clip, vae)
    assert (want - exact).abs().max() > 1e-3  # the patch matters
    got = _image(_with_patch(compiled_model), clip, vae)
    assert (got - want).abs().max().item() <= 1e-5  # patched weights used, not the frozen ones
    again = _image(compiled_model, clip, vae)  # the unpatched model compiled again as before
    assert (again - exact).abs().max().item() <= 1e-5
