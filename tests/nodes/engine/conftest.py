"""The engine tests' fixtures: the pack's engine modules as the host imported them, the tiny models
loaded with the engine off and on, and every test run the way the host's executor runs nodes."""

import pytest
import torch

from devkit import graphs as g
from devkit.pack import pack_module


@pytest.fixture(scope="module")
def engine(comfy_host):
    """The pack's nodes/engine module, as the host imported it (from custom_nodes/)."""
    return pack_module("nodes.engine")


@pytest.fixture(scope="module")
def cuda_graphs(engine):
    """The pack's add_turbo.acceleration.cuda_graphs, as the host imported it (through the engine)."""
    return engine.direct.cuda_graphs


@pytest.fixture(scope="module")
def host_api(comfy_host):
    """The pack's nodes/host_api package, as the host imported it."""
    return pack_module("nodes.host_api")


@pytest.fixture(scope="module")
def rooms(comfy_host):
    """The pack's nodes/backends package (the engines' rooms), as the host imported it."""
    return pack_module("nodes.backends")


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
