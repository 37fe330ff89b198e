"""cpu_backend openvino holds no second copy of the UNet: the torch UNet keeps the checkpoint's own dtype
as the file's memory mapping, converted from as it is (an fp16 file gives an IR of fp16 weights, cast to
f32 in the graph), and its pages go back to the kernel once converted. A fallback (a LoRA) reads them
again from the file, says so, and computes what the torch path computes."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from devkit import graphs as g
from devkit import tiny_addons
from devkit.pack import pack_module
from tests.support.model_links import linked_into_models
from tests.support.tolerances import assert_fp32_close

openvino = pytest.importorskip("openvino", reason="the host build installs openvino (scripts/requirements-dev.txt)")

SIZE, PROMPT, SEED = 64, "a lighthouse at dusk", 7


@pytest.fixture(scope="module", autouse=True)
def executor_mode(comfy_host):
    import comfy.model_management

    with torch.inference_mode():
        yield
        comfy.model_management.unload_all_models()


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test converts anew, into a folder of its own."""
    monkeypatch.setenv("ADD_TURBO_OPENVINO_CACHE", str(tmp_path / "openvino"))


@pytest.fixture(scope="module")
def fp16_sdxl(tiny_models, tmp_path_factory):
    """The tiny SDXL-Turbo as an fp16 file, as sd_xl_turbo_1.0_fp16 ships, linked into models/checkpoints."""
    tensors = load_file(str(tiny_models["sdxl_turbo"].single_file))
    path = tmp_path_factory.mktemp("fp16") / "tiny_sdxl_turbo_fp16.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(path))
    with linked_into_models() as place:
        yield place(path, "checkpoints")


def _sample(model, positive):
    return g.turbo_sample(model, positive, g.empty_latent(SIZE), seed=SEED, steps=2)["samples"]


def _unet_weights(model):
    room = pack_module("nodes.backends.openvino")
    stand_in = room.unet.openvino_unet_of(model)
    return stand_in, pack_module("add_turbo.mapped_weights").parameters_of(stand_in.unet)


def test_the_torch_weights_stay_on_disk_and_a_lora_reads_them_again(tiny_models, caplog):
    mapped = pack_module("add_turbo.mapped_weights")
    family = tiny_models["sd_turbo"]
    torch_model, torch_clip, _ = g.load(family.single_file.name)
    model, clip, _ = g.load(family.single_file.name, weight_dtype="fp32", cpu_backend="openvino")
    stand_in, weights = _unet_weights(model)
    regions = mapped.file_mappings_of(weights)
    assert [r.path for r in regions] == [str(family.single_file.resolve())]  # every weight is the file's mapping
    assert all(regions[0].start <= w.untyped_storage().data_ptr() < regions[0].end for w in weights)
    assert stand_in.released > 0  # the warm-up converted, then handed the pages back
    # the text encoder's layer stack: its weights moved to a file beside the IR
    (stack,) = pack_module("nodes.host_api.text").text_encoders(clip)
    text_weights = list(stack.parameters())
    assert [r.path for r in mapped.file_mappings_of(text_weights)] == [
        str(stand_in.folder.resolve() / "text_encoder_0-torch.safetensors")]
    positive = g.encode(clip, PROMPT)
    _sample(model, positive)
    assert stand_in.last == "OpenVINO f32"
    assert mapped.resident_bytes(weights) == 0 and mapped.resident_bytes(text_weights) == 0  # never read
    with linked_into_models() as place:
        lora = place(tiny_addons.build_lora(family).path, "loras")
        lora_model, lora_clip = g.run(g.builtin("LoraLoader"), model=model, clip=clip, lora_name=lora,
                                      strength_model=0.75, strength_clip=1.25)
        torch_lora, torch_lora_clip = g.run(g.builtin("LoraLoader"), model=torch_model, clip=torch_clip,
                                            lora_name=lora, strength_model=0.75, strength_clip=1.25)
        with caplog.at_level(logging.WARNING):
            got = _sample(lora_model, g.encode(lora_clip, PROMPT))
        want = _sample(torch_lora, g.encode(torch_lora_clip, PROMPT))
    assert stand_in.last.startswith("torch (the UNet's weights are patched")
    assert "are read again from the checkpoint: the UNet runs in torch" in caplog.text
    assert mapped.resident_bytes(weights) > 0 and mapped.resident_bytes(text_weights) > 0  # read for the LoRA
    assert_fp32_close(got, want)
    _sample(model, positive)  # the plain model is back on OpenVINO, with the file's weights unpatched
    assert stand_in.last == "OpenVINO f32"


def test_an_fp16_file_converts_as_fp16_weights_with_the_torch_numbers(fp16_sdxl):
    torch_model, clip, _ = g.load(fp16_sdxl, weight_dtype="fp32")  # the same values, upcast to fp32 copies
    model, _, _, message = g.load_with_message(fp16_sdxl, weight_dtype="fp32", cpu_backend="openvino")
    assert "converted and compiled" in message, message
    stand_in, weights = _unet_weights(model)
    assert {w.dtype for w in stand_in.unet.parameters()} == {torch.float16}
    assert pack_module("add_turbo.mapped_weights").resident_bytes(weights) == 0
    ir = "".join(p.read_text() for p in stand_in.folder.glob("unet-*.xml"))
    assert 'element_type="f16"' in ir and 'type="Interpolate"' not in ir  # fp16 weights, lighter layers
    positive = g.encode(clip, PROMPT)
    got = _sample(model, positive)
    assert stand_in.last == "OpenVINO f32"
    assert_fp32_close(got, _sample(torch_model, positive))


def test_int8_weights_are_compressed_and_stay_near_the_torch_numbers(tiny_models):
    """cpu_backend openvino_int8: the IR's matrix and convolution weights are uint8 (NNCF, one scale and
    zero point per output channel), and the UNet's output stays near torch's."""
    pytest.importorskip("nncf", reason="the host build installs nncf (scripts/requirements-dev.txt)")
    family = tiny_models["sd_turbo"]
    torch_model, clip, _ = g.load(family.single_file.name, weight_dtype="fp32")
    model, _, _, message = g.load_with_message(family.single_file.name, weight_dtype="fp32", cpu_backend="openvino_int8")
    assert "int8 weights (NNCF)" in message, message
    stand_in, _ = _unet_weights(model)
    ir = "".join(p.read_text() for p in stand_in.folder.glob("unet-*.xml"))
    assert 'element_type="u8"' in ir
    positive = g.encode(clip, PROMPT)
    got, want = _sample(model, positive), _sample(torch_model, positive)
    assert stand_in.last == "OpenVINO f32"
    # One weight's rounding is uniform within half a step of 1/255 of its output channel's range; for
    # Gaussian rows of up to a few thousand weights (range under 8 standard deviations) that is under
    # 8 / (255 * sqrt(12)) = 0.9 % of a layer's output, RMS, and the layers in sequence add in quadrature.
    layers = ir.count('type="MatMul"') + ir.count('type="Convolution"')
    error = (got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()
    assert 0 < error < 0.009 * layers ** 0.5, (error, layers)
