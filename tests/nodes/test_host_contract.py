"""The host symbols the pack builds on exist, with the parameters it relies on, on whichever host runs;
and the contract is closed: every host symbol the code of nodes/ uses is named in it.

Every subclass, wrapper and patch of host code lives in nodes/host_api/ (or a backend's module under
nodes/backends/); the HOST_SYMBOLS and OVERRIDES lists are checked here, so a host change shows up as
one named failure, not as a TypeError deep in a user's graph. The contract is the HOST_SYMBOLS and
OVERRIDES of every module of the nodes package (nodes/host_api joins its own; any other module,
nodes/loader.py or a new nodes/backends/... one, declares those of the calls it makes), each entry
(module, qualname, parameters or None).

What the code uses is read from its source with ast (tests/support/host_uses.py): every module of
nodes/, recursively, at module level and inside functions. The rule:

- A host module is one of the host's source tree (comfy, comfy_api, comfy_extras, folder_paths, server,
  execution, latent_preview, node_helpers, nodes, ...), bound by `import comfy.x [as y]`,
  `from comfy import x`, `from comfy.x import y as z` (a module), or read as `sys.modules.get("server")`.
- A use is (module, name): the first attribute below the module (`comfy.sd.CLIP.load_sd` and
  `comfy.sd.CLIP(...)` both use ("comfy.sd", "CLIP")), or a name it imports (`from comfy.utils import f`).
  Below a module that a host module re-exports under another name (comfy_api.v0_0_2's `io`), the name
  keeps that alias: io's node-schema classes are one use per name, ("comfy_api.v0_0_2", "io.Combo").
- An entry covers a use when its module is the use's and its qualname is the name or goes on below it:
  ("comfy.sd", "CLIP.load_sd", ...) covers comfy.sd.CLIP; ("comfy_api.v0_0_2", "io.Combo.Input", ...)
  covers io.Combo. Name the member the pack relies on (a method, `Input`, `__init__`), with its parameters.
- Not derived: methods and attributes of host objects the pack is handed (a patcher's clone, a model
  config's set_inference_dtype), and host source the pack relies on beyond names: list those by hand here
  or in test_the_host_still_reads_what_the_pack_sets.
- A module the pack only reads from sys.modules, never imports (server: not imported in-process, where
  importing it fails on 0.3.75), is checked in its source where no one imported it.
"""

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

from devkit import graphs as g
from devkit import host
from devkit.pack import pack_module
from tests.support.host_uses import host_roots, host_uses


@pytest.fixture(scope="module")
def host_api(comfy_host):
    """The pack's nodes/host_api module, as the host imported it (from custom_nodes/)."""
    return pack_module("nodes.host_api")


@pytest.fixture(scope="module")
def contract(comfy_host):
    """{"HOST_SYMBOLS": [...], "OVERRIDES": [...]} of every module of the nodes package (each once), and
    "broken": the modules that did not import."""
    package = pack_module("nodes")
    broken = []
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=broken.append):
        try:
            modules.append(importlib.import_module(info.name))
        except Exception as error:  # reported by the test
            broken.append(f"{info.name}: {error!r}")
    found = {"broken": broken}
    for kind in ("HOST_SYMBOLS", "OVERRIDES"):
        found[kind] = list(dict.fromkeys(tuple(entry) for module in modules for entry in getattr(module, kind, [])))
    return found


@pytest.fixture(scope="module")
def pack_uses(comfy_host):
    """What the code of nodes/ uses of the host (tests/support/host_uses.py)."""
    return host_uses(Path(pack_module("nodes").__file__).parent, host_roots(host.COMFY_DIR))


def _resolve(module_name, path):
    obj = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _source_parameters(module_name, path):
    """For a module no one imported: the parameters of `path` (a class or function) read from its source,
    ["**"] where it takes any keyword, [] for a class. Raises AttributeError where it is not defined."""
    body = ast.parse(Path(importlib.util.find_spec(module_name).origin).read_text()).body
    node = None
    for part in path.split("."):
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            raise AttributeError(f"no {part!r} in the source of {module_name}")
        body = node.body
    if isinstance(node, ast.ClassDef):
        return []
    args = node.args
    return [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]] + (["**"] if args.kwarg else [])


def _accepts(signature: inspect.Signature, name: str) -> bool:
    kinds = {p.kind for p in signature.parameters.values()}
    return name in signature.parameters or inspect.Parameter.VAR_KEYWORD in kinds


def test_every_module_of_the_nodes_package_imports(contract):
    assert not contract["broken"], "\n".join(map(str, contract["broken"]))


def test_every_host_symbol_exists_with_the_parameters_the_pack_uses(contract, pack_uses):
    problems = []
    for module_name, path, params in contract["HOST_SYMBOLS"]:
        if module_name in pack_uses.read_only_modules and module_name not in sys.modules:
            try:
                names = _source_parameters(module_name, path)
            except AttributeError as error:
                problems.append(f"{module_name}.{path}: missing ({error})")
                continue
            problems += [f"{module_name}.{path}: no parameter {p!r} (has {names})"
                         for p in params or () if p not in names and "**" not in names]
            continue
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


def test_every_host_symbol_the_pack_uses_is_in_the_contract(contract, pack_uses):
    """The rule is in this module's docstring; add what is listed to the HOST_SYMBOLS of the module that
    makes the call, with the parameters it passes."""
    named = {(module, qualname) for module, qualname, _ in contract["HOST_SYMBOLS"]}
    missing = [f"({module!r}, {name!r}) used at {', '.join(sorted(places))}"
               for (module, name), places in sorted(pack_uses.places.items())
               if not any(m == module and (q == name or q.startswith(name + ".")) for m, q in named)]
    assert pack_uses.places, "no host use found: the reader missed the pack's imports"
    assert not missing, f"{len(missing)} host symbols used in nodes/ but named in no HOST_SYMBOLS:\n" + \
        "\n".join(missing)


def test_the_reader_finds_every_form_of_use(comfy_host, tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text(
        "import sys\nimport comfy.sd\nimport comfy.model_management as mm\nfrom comfy import utils\n"
        "from comfy.ldm.modules.diffusionmodules import model as vae_model\nfrom comfy_api.latest import io\n"
        "from . import sub\nX = comfy.sd.CLIP.load_sd\n\n"
        "def f(model):\n    import folder_paths\n    from comfy.samplers import KSAMPLER as K\n"
        "    server = sys.modules.get('server')\n    getattr(server, 'PromptServer', None)\n"
        "    return mm.get_torch_device(), utils.weight_dtype, vae_model.AttnBlock, io.Combo.Input, "
        "folder_paths.get_full_path, model.clone()\n\n"
        "def g(mm):\n    return mm.not_the_host, model.shadowed\n")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("def h():\n    from comfy.taesd import taesd\n"
                                                          "    return taesd.Block\n")
    uses = host_uses(tmp_path / "pkg", host_roots(host.COMFY_DIR))
    assert set(uses.places) == {
        ("comfy.sd", "CLIP"), ("comfy.model_management", "get_torch_device"), ("comfy.utils", "weight_dtype"),
        ("comfy.ldm.modules.diffusionmodules.model", "AttnBlock"), ("comfy_api.latest", "io.Combo"),
        ("folder_paths", "get_full_path"), ("comfy.samplers", "KSAMPLER"), ("server", "PromptServer"),
        ("comfy.taesd.taesd", "Block")}
    assert uses.places[("comfy.taesd.taesd", "Block")] == {"pkg/sub/__init__.py:3"}
    assert uses.read_only_modules == {"server"}


def test_every_override_accepts_every_argument_of_the_host_method(contract):
    problems = []
    for ours, hosts in contract["OVERRIDES"]:
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
