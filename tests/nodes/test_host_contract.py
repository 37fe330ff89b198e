"""The host symbols the pack builds on exist, with the parameters it relies on, on whichever host runs.

Every subclass, wrapper and patch of host code lives in nodes/host_api/; the HOST_SYMBOLS and
OVERRIDES lists are checked here, so a host change shows up as one named failure, not as a
TypeError deep in a user's graph.
"""

import importlib
import inspect
import sys
from pathlib import Path

import pytest
import torch

from devkit import graphs as g


@pytest.fixture(scope="module")
def host_api(comfy_host):
    """The pack's nodes/host_api module, as the host imported it (from custom_nodes/)."""
    return next(m for key, m in sys.modules.items() if key.endswith("nodes.host_api") and hasattr(m, "HOST_SYMBOLS"))


def _resolve(module_name, path):
    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _accepts(signature: inspect.Signature, name: str) -> bool:
    kinds = {p.kind for p in signature.parameters.values()}
    return name in signature.parameters or inspect.Parameter.VAR_KEYWORD in kinds


def test_every_host_symbol_exists_with_the_parameters_the_pack_uses(host_api):
    problems = []
    for module_name, path, params in host_api.HOST_SYMBOLS:
        try:
            obj = _resolve(module_name, path)
        except (ImportError, AttributeError) as error:
            problems.append(f"{module_name}.{path}: missing ({error})")
            continue
        if params is None:
            continue
        signature = inspect.signature(obj)
        problems += [f"{module_name}.{path}: no parameter {p!r} (has {list(signature.parameters)})"
                     for p in params if not _accepts(signature, p)]
    assert not problems, "\n".join(problems)


def test_every_override_accepts_every_argument_of_the_host_method(host_api):
    problems = []
    for ours, hosts in host_api.OVERRIDES:
        mine = inspect.signature(ours)
        kinds = {p.kind for p in mine.parameters.values()}
        for name, param in inspect.signature(hosts).parameters.items():
            positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            ok = name in mine.parameters or param.kind == param.VAR_POSITIONAL and param.VAR_POSITIONAL in kinds \
                or param.kind == param.VAR_KEYWORD and param.VAR_KEYWORD in kinds \
                or positional and param.VAR_POSITIONAL in kinds and param.VAR_KEYWORD in kinds \
                or not positional and param.VAR_KEYWORD in kinds
            if not ok:
                problems.append(f"{ours.__qualname__} does not accept {name!r} of {hosts.__qualname__}{inspect.signature(hosts)}")
    assert not problems, "\n".join(problems)


def test_the_host_still_reads_what_the_pack_sets(host_api):
    """Attribute names and option keys the host reads in its source, not in a signature."""
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.model as vae_model
    import comfy.model_base as model_base

    assert "optimized_attention_override" in inspect.getsource(attention)  # sdpa_attention's key
    assert "self.optimized_attention(" in inspect.getsource(vae_model.AttnBlock)  # use_sdpa_in_vae
    assert "self.embedder(" in inspect.getsource(model_base.SDXL.encode_adm)  # TurboSDXLModel's size embedder
    # graph_text_encoders: the layer stack is called as a module with these arguments
    from comfy.clip_model import CLIPTextModel_

    assert "self.encoder(x, mask=mask, intermediate_output=intermediate_output)" in inspect.getsource(
        CLIPTextModel_.forward)
    # queue_batching: a queued prompt's text is encoded as the host's CLIPTextEncode encodes it
    import nodes

    text_encode = inspect.getsource(nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"])
    assert "clip.tokenize(text)" in text_encode and "clip.encode_from_tokens_scheduled(tokens)" in text_encode
    # precision.unet_dtypes: fp8_e4m3fn asks for the host's fp8 matmuls
    assert 'model_config.optimizations.get("fp8"' in inspect.getsource(model_base.BaseModel.__init__)


def test_the_prompt_queue_keeps_what_queue_batch_reads(host_api):
    """queued_prompts / live_prompt_ids: the queue's lock, heap and running items, and the item layout
    (number, prompt id, prompt, ...) the server puts in it."""
    import execution

    queue = execution.PromptQueue(server=None)
    assert {"mutex", "queue", "currently_running"} <= set(vars(queue))
    # The server module starts a server when imported; read its source instead.
    server_source = (Path(execution.__file__).parent / "server.py").read_text()
    assert "prompt_queue.put((number, prompt_id, prompt, extra_data" in server_source
    assert "PromptServer.instance = self" in server_source
    assert host_api.queued_prompts() == [] and host_api.live_prompt_ids() == set()  # no server in this process


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_clones_pass_the_hosts_arguments_on(tiny_models, family, host_api):
    """CLIP.clone / ModelPatcher.clone with the newer hosts' keyword (SetClipHooks, TorchCompileModel)."""
    model, clip, _ = g.load(tiny_models[family].single_file.name)
    import comfy.sd

    if "disable_dynamic" not in inspect.signature(comfy.sd.CLIP.clone).parameters:
        pytest.skip("this host's CLIP.clone takes no disable_dynamic (added after 0.3.75)")
    clone = clip.clone(disable_dynamic=True)
    assert isinstance(clone, host_api.CachedTextCLIP) and clone.prompt_cache is clip.prompt_cache
    assert torch.equal(g.encode(clone, "a cat")[0][0], g.encode(clip, "a cat")[0][0])
    assert model.clone(disable_dynamic=True).model is model.model


def test_dynamic_hosts_can_load_a_non_dynamic_delegate(tiny_models, host_api, monkeypatch):
    """Under dynamic VRAM, clone(disable_dynamic=True) asks cached_patcher_init for a fresh load; here the
    patcher is made to report itself dynamic, as it would be on a GPU with dynamic VRAM on."""
    model, clip, vae = g.load(tiny_models["sd_turbo"].single_file.name)
    if not hasattr(model, "cached_patcher_init"):
        pytest.skip("this host has no dynamic VRAM (cached_patcher_init came after 0.3.75)")
    for patcher, index in ((model, 0), (clip.patcher, 1), (vae.patcher, 2)):
        factory, args, registered_index = patcher.cached_patcher_init
        assert registered_index == index
        monkeypatch.setattr(type(patcher), "is_dynamic", lambda self: True)
        delegate = patcher.clone(disable_dynamic=True)
        monkeypatch.undo()
        assert delegate.model is not patcher.model  # a fresh load, not the dynamic one
        fresh = dict(delegate.model.state_dict())
        for key, value in patcher.model.state_dict().items():
            assert torch.equal(fresh[key], value), key
