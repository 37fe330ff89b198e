"""cpu_backend openvino refuses a load that would not fit before it reads any weight, with the figures
and what to do; the host goes on (the torch path loads and samples), and with memory enough the same
load works. The available figure is made small with ADD_TURBO_MEMORY_LIMIT, the cap a user can set."""

import pytest
import torch

from devkit import graphs as g
from devkit.pack import pack_module

openvino = pytest.importorskip("openvino", reason="the host build installs openvino (scripts/requirements-dev.txt)")

PROMPT, SIZE = "a lighthouse at dusk", 64


@pytest.fixture(scope="module", autouse=True)
def executor_mode(comfy_host):
    import comfy.model_management

    with torch.inference_mode():
        yield
        comfy.model_management.unload_all_models()


def test_a_conversion_that_will_not_fit_is_refused_and_the_host_goes_on(tiny_models, tmp_path, monkeypatch):
    memory = pack_module("add_turbo.memory")
    monkeypatch.setenv("ADD_TURBO_OPENVINO_CACHE", str(tmp_path))
    name = tiny_models["sd_turbo"].single_file.name
    read = []
    weights = pack_module("nodes.weights")
    real_read = weights.read_tensors
    monkeypatch.setattr(weights, "read_tensors", lambda *a, **k: read.append(a[0]) or real_read(*a, **k))
    monkeypatch.setenv(memory.LIMIT_ENV, "64K")
    with pytest.raises(memory.NotEnoughMemory) as refused:
        g.load(name, cpu_backend="openvino", weight_dtype="fp32")
    message = str(refused.value)
    print(f"\nREFUSED: {message}")
    assert message.startswith("cpu_backend openvino (f32, first start: converting) needs about ")
    assert "GiB is available" in message and "0.00 GiB is available" in message
    assert "choose cpu_backend torch" in message and message.endswith("Nothing was loaded")
    assert read == []  # refused before any weight was read
    model, clip, vae = g.load(name)  # the torch path still loads and samples
    image = g.decode(vae, g.turbo_sample(model, g.encode(clip, PROMPT), g.empty_latent(SIZE), seed=1))
    assert image.shape == (1, SIZE, SIZE, 3)
    monkeypatch.delenv(memory.LIMIT_ENV)  # memory enough: the same load goes through
    _, _, _, loaded = g.load_with_message(name, cpu_backend="openvino", weight_dtype="fp32")
    assert "converted and compiled" in loaded, loaded


def test_the_estimate_follows_the_parameter_counts(comfy_host):
    """The measured peaks (bench/results_memory_sd.md, less the idle host's 0.8 GiB) within 10 %."""
    room = pack_module("nodes.backends.openvino")
    sd_turbo = {"unet": 865_910_724, "text": 354_030_080, "vae": 83_653_863}  # the real SD-Turbo's counts
    measured = {("as_module", True): 8.27, ("as_module", False): 7.91, ("int8", True): 5.91, ("int8", False): 5.46}
    for (weights, first), gib in measured.items():
        estimate = room.memory.need_bytes(sd_turbo, "f32", first, weights) / 2**30
        assert abs(estimate - gib) < 0.1 * gib, (weights, first, estimate, gib)
    assert room.memory.need_bytes(sd_turbo, "f32", False) > room.memory.need_bytes(sd_turbo, "bf16", False)
    fp16_file = room.memory.need_bytes(sd_turbo, "f32", True, file_bytes=2)
    assert fp16_file < room.memory.need_bytes(sd_turbo, "f32", True)  # an fp16 file's IR is read in half
