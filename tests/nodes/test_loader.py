"""ADDTurboLoader: every form of the same weights gives the same outputs; precision and decoder options."""

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from devkit import graphs as g
from devkit.pack import pack_module
from tests.support.tolerances import assert_fp32_close

SIZE, PROMPT = 64, "an old stone bridge"


def _image(model, clip, vae, seed=3, steps=2):
    latent = g.turbo_sample(model, g.encode(clip, PROMPT), g.empty_latent(SIZE), seed=seed, steps=steps)
    return g.decode(vae, latent)


def _load(name, **options):
    return g.run(g.builtin("ADDTurboLoader"), ckpt_name=name, **options)


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_single_file_and_diffusers_folder_give_the_same_image(tiny_models, family):
    single = _image(*_load(tiny_models[family].single_file.name))
    folder = _image(*_load(f"[diffusers] tiny_{family}"))
    diff = (single - folder).abs().max().item()
    print(f"\nFORMS {family}: single file vs diffusers folder max|image diff|={diff:.2e}")
    assert diff <= 1e-5


def test_checkpoint_list_shows_files_and_folders(tiny_models):
    from nodes import NODE_CLASS_MAPPINGS

    choices = NODE_CLASS_MAPPINGS["ADDTurboLoader"].define_schema().inputs[0].options
    assert "tiny_sd_turbo.safetensors" in choices and "[diffusers] tiny_sdxl_turbo" in choices


@pytest.fixture
def fp16_forms(tiny_models, tmp_checkpoint, tmp_path):
    """fp16 single file and a diffusers folder with *.fp16.safetensors variants, for each family."""
    import folder_paths

    made = {}
    diffusers_root = folder_paths.get_folder_paths("diffusers")[0]
    for family, model in tiny_models.items():
        half = {k: v.half() for k, v in load_file(str(model.single_file)).items()}
        save_file(half, str(tmp_path / f"{family}_fp16.safetensors"))
        name = tmp_checkpoint(tmp_path / f"{family}_fp16.safetensors", f"tiny_{family}_fp16.safetensors")
        folder = f"{diffusers_root}/tiny_{family}_variants"
        shutil.copytree(model.diffusers_dir, folder, dirs_exist_ok=True)
        for weights in list((model.diffusers_dir).glob("*/*.safetensors")):
            variant = weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors"))
            target = f"{folder}/{weights.parent.name}/{variant.name}"
            save_file({k: v.half() for k, v in load_file(str(weights)).items()}, target)
        made[family] = (name, f"[diffusers] tiny_{family}_variants")
    yield made
    for family in made:
        shutil.rmtree(f"{diffusers_root}/tiny_{family}_variants", ignore_errors=True)


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_fp16_single_file_equals_fp16_variant_folder(fp16_forms, tiny_models, family):
    single_name, folder_name = fp16_forms[family]
    single = _image(*_load(single_name, weight_dtype="fp32"))
    folder_fp16 = _image(*_load(folder_name, weight_dtype="fp16"))
    folder_fp32_files = _image(*_load(folder_name, weight_dtype="fp32"))  # no variant: the fp32 files
    full = _image(*_load(tiny_models[family].single_file.name))
    assert (single - _image(*_load(folder_name, weight_dtype="fp32"))).abs().max() > 0  # fp16 weights differ
    assert (folder_fp32_files - full).abs().max().item() <= 1e-5
    model, _, _ = _load(folder_name, weight_dtype="fp16")
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float16
    diff = (folder_fp16 - single).abs().max().item()
    print(f"\nFORMS {family} fp16: single file (fp16 weights) vs fp16-variant folder max|image diff|={diff:.2e}")
    assert diff <= 2e-3  # fp16 storage, fp32 compute on CPU in one, fp16->fp32 upcast in the other


def test_bf16_computes_in_bf16_on_cpu(tiny_models):
    model, clip, vae = _load(tiny_models["sd_turbo"].single_file.name, weight_dtype="bf16")
    assert model.model.get_dtype() == torch.bfloat16 and model.model.manual_cast_dtype is None
    assert vae.vae_dtype == torch.bfloat16
    from comfy.clip_model import CLIPEncoder

    seen = []
    encoder = next(m for m in clip.cond_stage_model.modules() if isinstance(m, CLIPEncoder))
    handle = encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    g.encode(clip, "a red kite")
    handle.remove()
    assert seen == [torch.bfloat16]  # the text encoder's layers compute in bf16, not the host's fp32
    exact = _image(*_load(tiny_models["sd_turbo"].single_file.name))
    fast = _image(model, clip, vae)
    diff = (exact - fast).abs().max().item()
    print(f"\nbf16 vs fp32 on CPU: max|image diff|={diff:.3e}")
    assert 0 < diff < 0.25


@pytest.mark.parametrize("amx", [True, False])
def test_fast_picks_bf16_only_where_the_cpu_has_amx_and_says_so(tiny_models, monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    name = tiny_models["sd_turbo"].single_file.name
    model, _, _, note = g.load_with_message(name, weight_dtype="fast")
    assert model.model.get_dtype() == (torch.bfloat16 if amx else torch.float32)
    assert note == ("fast: bf16 (this CPU has AMX)" if amx else
                    "fast: fp32 (this CPU has no AMX units, so bf16 would compute slower than fp32)")
    bf16_note = g.load_with_message(name, weight_dtype="bf16")[3]
    # bf16 chosen on a CPU without AMX: the loader says that fast picks fp32
    assert bf16_note == ("" if amx else "bf16 on a CPU without AMX units computes slower than fp32 here: "
                                        "'fast' picks fp32")


def test_fast_on_a_gpu_is_the_hosts_choice():
    precision = pack_module("nodes.precision")
    gpu = torch.device("cuda")
    assert precision.resolve("fast", gpu) == ("auto", "") and precision.resolve("bf16", gpu) == ("bf16", "")


@pytest.mark.parametrize("family", ["sd_turbo", "sdxl_turbo"])
def test_fp8_stores_the_unet_in_fp8_and_computes_on_the_rounded_weights(tiny_models, family):
    """fp8_e4m3fn: every UNet tensor stored in fp8; on CPU (no fp8 matmuls) each layer is cast to fp32,
    so the image is the fp32 model's over weights rounded to fp8, up to fp32 rounding."""
    name = tiny_models[family].single_file.name
    model, clip, vae, note = g.load_with_message(name, weight_dtype="fp8_e4m3fn")
    unet = model.model.diffusion_model
    assert {p.dtype for p in unet.parameters()} == {torch.float8_e4m3fn}
    assert model.model.manual_cast_dtype == torch.float32
    assert model.model.model_config.optimizations["fp8"]  # the host's fp8 matmuls, where the device has them
    assert note == ("fp8_e4m3fn: UNet weights stored in fp8 (a quarter of fp32's memory), computed in fp32: this "
                    "device has no fp8 matmuls, so each layer's weights are cast on every step")
    fp8_image = _image(model, clip, vae)
    engine_model = _load(name, weight_dtype="fp8_e4m3fn", engine="on")[0]
    latents = [g.turbo_sample(m, g.encode(clip, PROMPT), g.empty_latent(SIZE), seed=3, steps=2)["samples"]
               for m in (model, engine_model)]
    assert torch.equal(*latents)  # the engine's direct path runs the same cast layers

    rounded, clip32, vae32 = _load(name, weight_dtype="fp32")
    exact = _image(rounded, clip32, vae32)
    with torch.inference_mode():
        for p in rounded.model.diffusion_model.parameters():
            p.copy_(p.to(torch.float8_e4m3fn).float())
    assert_fp32_close(fp8_image, _image(rounded, clip32, vae32))
    fp8_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    fp32_bytes = sum(p.numel() * p.element_size() for p in rounded.model.diffusion_model.parameters())
    assert fp8_bytes * 4 == fp32_bytes
    mse = (fp8_image - exact).pow(2).mean().item()
    psnr = 10 * math.log10(1 / mse) if mse else math.inf
    print(f"\nFP8 {family}: UNet {fp8_bytes / 2**20:.2f} MiB vs {fp32_bytes / 2**20:.2f} MiB fp32; image vs fp32 "
          f"max|diff| {(fp8_image - exact).abs().max().item():.3f}, PSNR {psnr:.1f} dB (random tiny weights)")


@pytest.mark.parametrize("family,taesd", [("sd_turbo", "taesd"), ("sdxl_turbo", "taesdxl")])
def test_taesd_decoder_is_picked_by_family(tiny_models, family, taesd):
    model, clip, vae = _load(tiny_models[family].single_file.name, decoder="taesd")
    assert type(vae.first_stage_model).__name__ == "TAESD"
    image = _image(model, clip, vae)
    assert image.shape == (1, SIZE, SIZE, 3) and image.std() > 0



@pytest.fixture(name="load_turbo")
def _load_turbo():
    return pack_module("nodes.loader").load_turbo


@pytest.mark.parametrize("damage,expect", [
    (lambda d: shutil.rmtree(d / "unet"), "has no unet/.*complete snapshot"),
    (lambda d: (d / "model_index.json").unlink(), "has no model_index.json"),
    (lambda d: (d / "text_encoder" / "model.safetensors").rename(d / "text_encoder" / "pytorch_model.bin"),
     "pickle-based weights"),
    (lambda d: (d / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "vae/ has no"),
])
def test_broken_diffusers_folders_are_refused(load_turbo, tiny_models, tmp_path, damage, expect):
    folder = tmp_path / "snapshot"
    shutil.copytree(tiny_models["sd_turbo"].diffusers_dir, folder)
    damage(folder)
    with pytest.raises(ValueError, match=expect):  # the pack's CheckpointError
        load_turbo(str(folder))


_RESIDENT_PROBE = """
from devkit import host
host.init_in_process()
import nodes
loaded = nodes.NODE_CLASS_MAPPINGS["ADDTurboLoader"].execute(ckpt_name={name!r}, channels_last={channels_last})
target, total, current = {path!r}, 0, None
for line in open("/proc/self/smaps"):
    parts = line.split()
    if ":" not in parts[0]:  # a mapping's header line: range perms offset dev inode [path]
        current = parts[5] if len(parts) >= 6 else None
    elif parts[0] == "Rss:" and current == target:
        total += int(parts[1]) * 1024
print(total)
"""


def _resident_file_bytes(path, channels_last: bool) -> int:
    """Bytes of `path` resident in a fresh process's mappings right after the loader ran."""
    import subprocess
    import sys

    from devkit import host

    code = _RESIDENT_PROBE.format(name=path.name, channels_last=channels_last, path=str(path.resolve()))
    out = subprocess.run([sys.executable, "-c", code], cwd=host.REPO, capture_output=True, text=True, timeout=300,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_channels_last_keeps_no_extra_file_pages_resident(tiny_models):
    """channels_last copies the conv weights at read time through a mapping of its own that is
    released; converting them later left their file pages resident in the UNet's kept mapping,
    beside the copies (the exact path's peak memory was 1.33x the stock graph's)."""
    import os

    if not os.path.exists("/proc/self/smaps"):
        pytest.skip("needs Linux /proc/self/smaps to count resident file pages")
    path = tiny_models["sd_turbo"].single_file
    with_copies = _resident_file_bytes(path, channels_last=True)
    host_layout = _resident_file_bytes(path, channels_last=False)
    print(f"\nresident file pages after loading: channels_last {with_copies / 2**20:.2f} MiB, "
          f"host layout {host_layout / 2**20:.2f} MiB")
    # Page-granular slack (the kernel maps up to 64 KiB around a fault); the tiny UNet's conv weights
    # that a late conversion left resident were about 5 MiB.
    assert with_copies <= host_layout + 2**20
