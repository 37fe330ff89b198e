"""The loader's cpu_backend openvino: the UNet converted to OpenVINO, in f32 the torch path's latents up
to fp32 rounding, in bf16 within bf16's bound, whatever it cannot reproduce run in torch with its reason,
the converted model reused from disk by a later load, and every node working without the package."""

import logging
import sys

import pytest
import torch

from devkit import graphs as g
from devkit import tiny_addons
from devkit.pack import pack_module
from tests.support.model_links import linked_into_models
from tests.support.tolerances import assert_fp32_close, assert_same_image, max_rel_diff

openvino = pytest.importorskip("openvino", reason="the host build installs openvino (scripts/requirements-dev.txt)")

SIZE, PROMPT, SEED = 64, "a lighthouse at dusk", 7
FAMILIES = ["sd_turbo", "sdxl_turbo"]
# bf16 keeps 8 significant bits (a unit roundoff of 2^-9 per value); over a UNet pass the tiny models'
# latents move by a few percent of their largest value (measured: 1.6-2.3 %), so 0.125 (2^-3) bounds
# it with room and still fails if bf16 were applied to the wrong tensors.
BF16_REL = 0.125


@pytest.fixture(scope="module", autouse=True)
def executor_mode(comfy_host):
    """Run the nodes the way the host's executor does, under torch.inference_mode()."""
    import comfy.model_management

    with torch.inference_mode():
        yield
        comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def pack(comfy_host):
    """The pack's modules as the host imported them: (the OpenVINO room's precision, the room itself,
    openvino_models as the room calls it)."""
    room = pack_module("nodes.backends.openvino")
    return room.precision, room, room.openvino_models


@pytest.fixture(scope="module", autouse=True)
def ir_cache(tmp_path_factory):
    """Converted models go to a folder of this module's own (ADD_TURBO_OPENVINO_CACHE)."""
    folder = tmp_path_factory.mktemp("openvino")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADD_TURBO_OPENVINO_CACHE", str(folder))
        yield folder


def _sample(model, positive, steps=2, seed=SEED):
    return g.turbo_sample(model, positive, g.empty_latent(SIZE), seed=seed, steps=steps)["samples"]


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_gives_the_torch_paths_latents_up_to_fp32_rounding(tiny_models, pack, family):
    _, room, _ = pack
    name = tiny_models[family].single_file.name
    torch_model, clip, _ = g.load(name)
    model, _, _, message = g.load_with_message(name, weight_dtype="fp32", cpu_backend="openvino")
    assert message.startswith("OpenVINO f32: UNet, text encoders converted and compiled, 512x512 warm-up"), message
    positive = g.encode(clip, PROMPT)
    got, want = _sample(model, positive), _sample(torch_model, positive)
    stand_in = room.unet.openvino_unet_of(model)
    assert stand_in.last == "OpenVINO f32"  # the latents came from OpenVINO, not from a fallback
    # converted with the lighter layers: no upsample (a 2x2 convolution and a pixel shuffle), no split (GEGLU)
    ir = "".join(p.read_text() for p in stand_in.folder.glob("unet-*.xml"))
    assert 'type="Convolution"' in ir and 'type="Interpolate"' not in ir and 'type="VariadicSplit"' not in ir
    diff = assert_fp32_close(got, want)
    print(f"\nOPENVINO {family} f32 vs torch: {diff:.1e} of max|latent|")


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoders_and_taesd_run_on_openvino_with_the_torch_numbers(tiny_models, pack, family):
    _, room, _ = pack
    name = tiny_models[family].single_file.name
    _, torch_clip, torch_vae = g.load(name, decoder="taesd")
    _, clip, vae = g.load(name, decoder="taesd", weight_dtype="fp32", cpu_backend="openvino")
    got, want = g.encode(clip, "a red fox in the snow"), g.encode(torch_clip, "a red fox in the snow")
    assert_fp32_close(got[0][0], want[0][0])
    if "pooled_output" in want[0][1]:
        assert_fp32_close(got[0][1]["pooled_output"], want[0][1]["pooled_output"])
    text_calls = room.parts.calls_of(clip, room.parts.TEXT)
    assert text_calls and all(call.runs["openvino"] >= 1 for call in text_calls)  # not the torch fallback
    latent = {"samples": torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(5)) * 3}
    image, torch_image = g.decode(vae, latent), g.decode(torch_vae, latent)
    (decode_call,) = room.parts.calls_of(vae, room.parts.DECODE)
    assert decode_call.runs["openvino"] >= 1 and decode_call.failure is None
    print(f"\nOPENVINO {family} TAESD decode f32 vs torch: {assert_same_image(image, torch_image):.4f}/255")
    # A LoRA on the text encoder patches weights the converted model does not hold: torch encodes it.
    with linked_into_models() as place:
        lora = place(tiny_addons.build_lora(tiny_models[family]).path, "loras")
        _, lora_clip = g.run(g.builtin("LoraLoader"), model=g.load(name)[0], clip=clip, lora_name=lora,
                             strength_model=0.0, strength_clip=1.25)
        _, torch_lora_clip = g.run(g.builtin("LoraLoader"), model=g.load(name)[0], clip=torch_clip, lora_name=lora,
                                   strength_model=0.0, strength_clip=1.25)
        before = [call.runs["openvino"] for call in text_calls]
        assert_fp32_close(g.encode(lora_clip, PROMPT)[0][0], g.encode(torch_lora_clip, PROMPT)[0][0])
        assert [call.runs["openvino"] for call in text_calls] == before


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_stays_within_the_bf16_bound_of_f32(tiny_models, pack, family):
    _, room, _ = pack
    name = tiny_models[family].single_file.name
    f32_model, clip, _ = g.load(name, weight_dtype="fp32", cpu_backend="openvino")
    bf16_model, _, _, message = g.load_with_message(name, weight_dtype="bf16", cpu_backend="openvino")
    assert message.startswith("OpenVINO bf16"), message
    positive = g.encode(clip, PROMPT)
    f32, bf16 = _sample(f32_model, positive), _sample(bf16_model, positive)
    used = room.unet.openvino_unet_of(bf16_model).last
    assert used in ("OpenVINO bf16", "OpenVINO f32"), used  # what OpenVINO reports it computed in
    diff = max_rel_diff(bf16, f32)
    mean = ((bf16 - f32).abs().mean() / f32.abs().max()).item()
    print(f"\nOPENVINO {family} bf16 vs f32 ({used}): max {diff:.2e}, mean {mean:.2e} of max|latent|")
    assert diff <= BF16_REL


def test_fast_picks_bf16_only_where_the_cpu_has_bf16_units(pack, monkeypatch, tiny_models):
    precision, _, openvino_models = pack
    assert precision.openvino_precision("fast", frozenset({"avx2", "avx512f", "avx512_bf16"}))[0] == "bf16"
    assert precision.openvino_precision("fast", frozenset({"avx2", "amx_tile", "amx_bf16"}))[0] == "bf16"
    assert precision.openvino_precision("fast", frozenset({"avx2", "avx512f"})) == \
        ("f32", "OpenVINO f32 (fast: this CPU has no bf16 units, avx512_bf16 or amx_bf16)")
    assert precision.openvino_precision("auto", frozenset({"avx512_bf16"}))[0] == "f32"
    assert precision.openvino_precision("bf16", frozenset()) == \
        ("bf16", "OpenVINO bf16 (emulated: this CPU has no bf16 units, f32 is faster)")
    with pytest.raises(ValueError, match="computes in f32 or bf16"):
        precision.openvino_precision("fp8_e4m3fn", frozenset())
    # The loader asks the CPU-flags probe: a faked one decides.
    name = tiny_models["sd_turbo"].single_file.name
    for flags, expected in ((frozenset({"avx512_bf16"}), "OpenVINO bf16 (fast: this CPU has bf16 units"),
                            (frozenset({"sse4_2"}), "OpenVINO f32 (fast: this CPU has no bf16 units")):
        monkeypatch.setattr(openvino_models, "cpu_flags", lambda flags=flags: flags)
        _, _, _, message = g.load_with_message(name, weight_dtype="fast", cpu_backend="openvino")
        assert message.startswith(expected), message


def test_the_cpu_flags_come_from_cpuinfo(pack, tmp_path):
    _, _, openvino_models = pack
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert openvino_models.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert openvino_models.cpu_flags(tmp_path / "absent") == frozenset()


def test_a_second_load_finds_the_converted_model_on_disk(tiny_models, ir_cache):
    name = tiny_models["sdxl_turbo"].single_file.name
    _, _, _, first = g.load_with_message(name, weight_dtype="fp32", cpu_backend="openvino", channels_last=False)
    xml_files = sorted(ir_cache.rglob("*.xml"))
    _, _, _, second = g.load_with_message(name, weight_dtype="fp32", cpu_backend="openvino", channels_last=False)
    assert "converted and compiled" in first and "loaded from the disk cache" in second, (first, second)
    assert sorted(ir_cache.rglob("*.xml")) == xml_files  # nothing converted again
    print(f"\nOPENVINO second load: {first} -> {second}")


def test_what_openvino_cannot_reproduce_runs_in_torch_with_its_reason(tiny_models, pack, caplog):
    _, room, _ = pack
    name = tiny_models["sd_turbo"].single_file.name
    torch_model, clip, _ = g.load(name)
    model = g.load(name, weight_dtype="fp32", cpu_backend="openvino")[0]
    positive = g.encode(clip, PROMPT)
    with linked_into_models() as place:
        lora = place(tiny_addons.build_lora(tiny_models["sd_turbo"]).path, "loras")
        lora_model, lora_clip = g.run(g.builtin("LoraLoader"), model=model, clip=clip, lora_name=lora,
                                      strength_model=0.75, strength_clip=1.25)
        torch_lora, _ = g.run(g.builtin("LoraLoader"), model=torch_model, clip=clip, lora_name=lora,
                              strength_model=0.75, strength_clip=1.25)
        lora_positive = g.encode(lora_clip, PROMPT)
        with caplog.at_level(logging.WARNING):
            got = _sample(lora_model, lora_positive)
        want = _sample(torch_lora, lora_positive)
    stand_in = room.unet.openvino_unet_of(lora_model)
    assert stand_in.last.startswith("torch (the UNet's weights are patched (a LoRA")
    assert "the UNet runs in torch" in caplog.text
    assert_fp32_close(got, want)
    # the plain model, its weights unpatched again, is back on OpenVINO
    _sample(model, positive)
    assert room.unet.openvino_unet_of(model).last == "OpenVINO f32"


def test_the_loader_refuses_what_cannot_run_and_the_nodes_work_without_openvino(tiny_models, monkeypatch):
    name = tiny_models["sd_turbo"].single_file.name
    with pytest.raises(ValueError, match="compile and cpu_backend 'openvino' both replace the UNet"):
        g.load(name, cpu_backend="openvino", compile="inductor")
    with pytest.raises(ValueError, match="computes in f32 or bf16"):
        g.load(name, cpu_backend="openvino", weight_dtype="fp16")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails, as where it is absent
    with pytest.raises(RuntimeError, match=r"OpenVINO is not installed .*pip install \"openvino"):
        g.load(name, cpu_backend="openvino")
    model, clip, vae = g.load(name)  # the torch backend needs nothing more
    image = g.decode(vae, g.turbo_sample(model, g.encode(clip, PROMPT), g.empty_latent(SIZE), seed=1))
    assert image.shape == (1, SIZE, SIZE, 3)


def test_the_engine_samples_through_openvino(tiny_models, pack):
    """engine on + cpu_backend openvino: the engine's direct path calls apply_model, whose wrapper runs
    the OpenVINO UNet (no packed convolutions: OpenVINO runs the convolutions)."""
    _, room, _ = pack
    engine = pack_module("nodes.engine")
    name = tiny_models["sd_turbo"].single_file.name
    torch_model, clip, _ = g.load(name)
    model, _, _, message = g.load_with_message(name, weight_dtype="fp32", cpu_backend="openvino", engine="on")
    assert "engine: direct path (no CUDA graphs on cpu)" in message, message
    positive = g.encode(clip, PROMPT)
    got = _sample(model, positive)
    assert engine.state_of(model).last == "direct path (no CUDA graphs on cpu)"  # nothing packed
    assert room.unet.openvino_unet_of(model).last == "OpenVINO f32"
    assert_fp32_close(got, _sample(torch_model, positive))
