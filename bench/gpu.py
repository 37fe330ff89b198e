"""GPU speed at 512x512: the pack's paths next to diffusers compiled, in one run, against issue #14's targets.

One process, one GPU, one command of about nine minutes. Full-size random-weight SD-Turbo (SD 2.1
sizes) and SDXL-Turbo are built in memory (diffusers) and written once as single files for the
ComfyUI loaders; the diffusers pipelines keep those weights, and their AutoencoderTiny gets the very
TAESD weights the pack reads, so every image can be compared with the pack's exact path.

The work runs in sections, most important first: SD-Turbo with the engine and diffusers compiled,
refine (img2img), the batch sweep, SDXL-Turbo, then the compiled pack paths and a second start in a
new process (which loads the compiled graphs the first start left on disk). The markdown is rewritten
after every section, and once --budget-s is spent the rest is skipped with a note (a compile that
would not fit is skipped beforehand), so a run stopped by a time limit still leaves its figures.

Per image, end to end: text encode (a new prompt every image, except in the '..._cached' and refine
rows, where it is unchanged), sampling, decode to an image on the CPU. Variants of a section run
interleaved round by round (A B C .., A B C ..), each turn after untimed warm-up images. The timed
images run without extra device syncs; a few more, synchronised at each stage boundary, give the
stage breakdown. Each variant's image is compared with the exact path's (the loader's defaults,
engine off) for the same prompt, seed and input, decoded by the same kind of decoder (full VAE, or
TAESD for the TAESD / AutoencoderTiny rows): max abs on a 0-1 scale, and PSNR.

  python -m bench.gpu                                    # everything, writes bench/results_gpu.md
  python -m bench.gpu --sections sd_core,sd_sweep --out /tmp/gpu.md
  python -m bench.gpu --smoke                            # tiny models on the CPU: checks this script
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

from devkit import graphs, host

STARTED = time.perf_counter()  # the time budget counts from here
REPO = Path(__file__).resolve().parents[1]
COMMITTED_OUT = REPO / "bench" / "results_gpu.md"

PROMPT = "a cinematic photo of a red fox in the snow, golden hour"
SEED = 1234
SIZE = 512  # --size (the smoke run uses 64)
DEVICE = "cuda"  # "cpu" only with --smoke (tiny models, a check of this script itself)
FAST = dict(weight_dtype="fp16", decoder="taesd", attention="sdpa", channels_last=True)
REFINE = dict(steps=2, strength=0.5, spacing="trailing", sampler="euler_ancestral", eta=1.0)
DIFFUSERS_REFINE = dict(num_inference_steps=4, strength=0.5)  # diffusers' terms for the same timesteps 499, 249
SWEEP_WARMUP = 2  # untimed runs per batch size: the first records or compiles for the new shape

VARIANTS = {
    "stock": "stock graph: CheckpointLoaderSimple + SDTurboScheduler + SamplerCustom + VAEDecode",
    "pack_exact": "ADD Turbo exact: Loader defaults (engine off, full VAE) + Sample + VAEDecode; the reference",
    "pack_engine": "ADD Turbo engine: fp16, TAESD, SDPA, channels_last, engine on (steps as one CUDA graph)",
    "pack_engine_cached": "ADD Turbo engine, prompt unchanged (cached conditioning)",
    "pack_engine_compile": "ADD Turbo engine + compile (inductor + CUDA graphs)",
    "pack_engine_compile_cached": "ADD Turbo engine + compile, prompt unchanged",
    "pack_engine_fp8": "ADD Turbo engine with fp8_e4m3fn UNet weights (the host's fp8 matmuls where the GPU has them)",
    "pack_engine_fp8_cached": "ADD Turbo engine, fp8_e4m3fn, prompt unchanged",
    "pack_fast_eager": "ADD Turbo fast, no compile: fp16, TAESD, SDPA, channels_last",
    "pack_fast_inductor": "ADD Turbo fast, compile without CUDA graphs",
    "pack_fast": "ADD Turbo fast: fp16, TAESD, SDPA, channels_last, compile + CUDA graphs",
    "pack_fast_cached": "ADD Turbo fast, prompt unchanged (cached conditioning)",
    "diffusers_fp16": "diffusers fp16 pipeline (full VAE)",
    "diffusers_fp16_tiny": "diffusers fp16 + AutoencoderTiny (the pack's TAESD weights)",
    "diffusers_fp16_tiny_compile": "diffusers fp16 + AutoencoderTiny, UNet torch.compile (reduce-overhead)",
    "diffusers_fp16_tiny_compile_cached": "diffusers compiled, prompt unchanged (prompt_embeds computed once)",
    "refine_pack_exact": "ADD Turbo Refine, exact loader (defaults, full VAE); the reference",
    "refine_pack_engine": "ADD Turbo Refine, engine loader (fp16, TAESD, engine on)",
    "refine_pack_engine_compile": "ADD Turbo Refine, engine + compile loader",
    "refine_diffusers_fp16_tiny_compile": "diffusers img2img fp16 + AutoencoderTiny, compiled UNet, prompt_embeds once",
}
COMPILED = ["pack_engine_compile", "pack_engine_compile_cached", "refine_pack_engine_compile", "pack_fast",
            "pack_fast_cached", "diffusers_fp16_tiny_compile", "diffusers_fp16_tiny_compile_cached"]
# name -> (family, kind, variants), in the order they run: the most important first.
SECTIONS = {
    "sd_core": ("sd_turbo", "measure", ["pack_exact", "pack_engine", "pack_engine_cached", "diffusers_fp16_tiny_compile",
                                        "diffusers_fp16_tiny_compile_cached", "stock", "pack_fast_eager",
                                        "diffusers_fp16_tiny"]),
    "sd_refine": ("sd_turbo", "measure", ["refine_pack_exact", "refine_pack_engine", "refine_diffusers_fp16_tiny_compile"]),
    "sd_fp8": ("sd_turbo", "measure", ["pack_engine_fp8", "pack_engine_fp8_cached"]),
    "sd_sweep": ("sd_turbo", "sweep", ["pack_engine_cached", "diffusers_fp16_tiny_compile_cached"]),
    "sdxl_core": ("sdxl_turbo", "measure", ["pack_exact", "pack_engine", "pack_engine_cached",
                                            "diffusers_fp16_tiny_compile", "diffusers_fp16_tiny_compile_cached"]),
    "sd_compiled": ("sd_turbo", "measure", COMPILED),
    "sd_second_start": ("sd_turbo", "second_start", ["pack_engine_compile"]),
    "sdxl_compiled": ("sdxl_turbo", "measure", [v for v in COMPILED if not v.startswith("refine_")]),
    "sdxl_second_start": ("sdxl_turbo", "second_start", ["pack_engine_compile"]),
}
DEFAULTS = dict(rounds=3, images=20, warmup=3, stage_images=5, batches="1,2,4,8,16,32", sweep_images=5, size=512,
                budget_s=520.0)
SMOKE_DEFAULTS = dict(rounds=1, images=2, warmup=1, stage_images=1, batches="1,2", sweep_images=2, size=64,
                      budget_s=1800.0)
# The smoke run leaves out the SDXL compiled sections (the SD ones run the same code; each compile costs
# minutes on a CPU) and the stock graph (the built-in loader does not recognise the tiny test models).
SMOKE_SECTIONS = [s for s in SECTIONS if not s.startswith("sdxl_compiled") and s != "sdxl_second_start"]
SMOKE_SKIPS = {"stock"}
# Rough first-start costs on one H100, so the budget skips a compile that would not finish: pack
# compiles from bench/results_gpu.md run A (105 s, 186 s), the others estimated.
COSTS_S = {
    "build": {"sd_turbo": 40, "sdxl_turbo": 90},
    "pack_compile": {"sd_turbo": 110, "sdxl_turbo": 190},
    "pack_reload": {"sd_turbo": 40, "sdxl_turbo": 70},  # the same compiled graphs again, from the disk cache
    "diffusers_compile": {"sd_turbo": 70, "sdxl_turbo": 130},
    "diffusers_recompile": {"sd_turbo": 70, "sdxl_turbo": 130},  # the sweep's first batch > 1 (dynamic batch)
    "second_start": {"sd_turbo": 60, "sdxl_turbo": 90},
}
MIN_PSNR_DB = 30.0  # below this a figure does not count as met: its image is not the exact path's
SECOND_START_MAX_S = 20.0  # "seconds": the loader's load + warm-up on a start with the graphs on disk
STAGE_ORDER = ("text", "encode", "unet", "refine", "decode")


@dataclass(frozen=True)
class Target:
    label: str
    family: str
    pack: tuple  # candidate pack variants: the fastest whose image passes counts
    diffusers: str  # the diffusers compiled counterpart
    unit: str  # "images/s", "frames/s" or "ms"
    bound: float
    sweep: bool = False  # the best batch size of the sweep, else batch 1


CACHED = ("pack_engine_cached", "pack_engine_compile_cached", "pack_fast_cached", "pack_engine_fp8_cached")
TARGETS = [
    Target("SD-Turbo live: batch 1, prompt unchanged", "sd_turbo", CACHED, "diffusers_fp16_tiny_compile_cached",
           "images/s", 125),
    Target("SD-Turbo: batch 1, new prompt every image", "sd_turbo", ("pack_engine", "pack_engine_compile", "pack_fast", "pack_engine_fp8"),
           "diffusers_fp16_tiny_compile", "images/s", 80),
    Target("SD-Turbo throughput: best batch, prompt unchanged", "sd_turbo", CACHED, "diffusers_fp16_tiny_compile_cached",
           "images/s", 400, sweep=True),
    Target("SDXL-Turbo live: batch 1, prompt unchanged", "sdxl_turbo", CACHED, "diffusers_fp16_tiny_compile_cached",
           "ms", 20),
    Target("Refine 2 steps at strength 0.5: batch 1, prompt unchanged", "sd_turbo",
           ("refine_pack_engine", "refine_pack_engine_compile"), "refine_diffusers_fp16_tiny_compile", "frames/s", 60),
]


def sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


class Stages:
    """Per-image stage times (seconds). With `sync` the device is synchronised at each boundary, so the
    stages add up to the end-to-end time; without it marks cost nothing (the timed images)."""

    def __init__(self, sync: bool = True):
        self.sync, self.times, self.image = sync, {}, None
        self.start = time.perf_counter()

    def mark(self, name):
        if not self.sync:
            return
        sync()
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self.start
        self.start = now


def build_models(family: str, bench_dir: Path, smoke: bool = False):
    """(single-file name in models/checkpoints, diffusers pipeline fp16 on the GPU)."""
    import torch
    from safetensors.torch import save_file

    from devkit import turbo_models

    started = time.perf_counter()
    with torch.no_grad():
        pipe, single = turbo_models.BUILDERS[family](full_size=not smoke)
    name = f"bench_{family}_{'tiny' if smoke else 'full'}_random_fp16.safetensors"
    path = bench_dir / name
    bench_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        save_file({k: v.half().contiguous() for k, v in single.items()}, str(path))
    del single
    link = host.BASE_DIR / "models" / "checkpoints" / name
    if not link.exists():
        os.symlink(path, link)
    for src in turbo_models.build_taesd().glob("*.safetensors"):
        dst = host.BASE_DIR / "models" / "vae_approx" / src.name
        if not dst.exists():
            os.symlink(src, dst)
    pipe = pipe.to(DEVICE, torch.float16 if DEVICE == "cuda" else torch.float32)
    print(f"[{family}] built and saved in {time.perf_counter() - started:.1f} s", flush=True)
    return name, pipe


# --- The pack's graphs ----------------------------------------------------------------------------

_LOADS: dict = {}  # (ckpt, stock, options) -> (MODEL, CLIP, VAE, loader message): variants share a load


def loader_options(variant: str) -> dict:
    """ADD Turbo Loader options of a pack variant ({} for the defaults, and for the stock loader)."""
    base = variant.removeprefix("refine_").removesuffix("_cached")
    if base in ("stock", "pack_exact"):
        return {}
    options = dict(FAST)
    if base.startswith("pack_engine"):
        options["engine"] = "on"
    if base == "pack_engine_fp8":
        options["weight_dtype"] = "fp8_e4m3fn"
    if base in ("pack_fast", "pack_engine_compile"):  # CUDA graphs are refused off the GPU
        options["compile"] = "inductor + cuda graphs" if DEVICE == "cuda" else "inductor"
    elif base == "pack_fast_inductor":
        options["compile"] = "inductor"
    return options


def _load_key(ckpt: str, stock: bool, options: dict) -> tuple:
    return ckpt, stock, tuple(sorted(options.items()))


def load_comfy(ckpt: str, stock: bool, options: dict):
    """(MODEL, CLIP, VAE, loader message), loaded once per checkpoint and options, under
    torch.inference_mode as the executor runs every node: a compile warm-up in another grad mode
    would leave graphs the first image cannot use."""
    import torch

    key = _load_key(ckpt, stock, options)
    if key not in _LOADS:
        with torch.inference_mode():
            _LOADS[key] = graphs.load_stock_or_pack(ckpt, stock, **options)
    return _LOADS[key]


_FRAMES: dict = {}


def frame(batch: int = 1):
    """A smooth test image [batch, SIZE, SIZE, 3] in 0..1 on the CPU, as a loaded image or a webcam frame arrives."""
    import torch

    if batch not in _FRAMES:
        coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
        image = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear").movedim(1, -1)
        _FRAMES[batch] = image.expand(batch, -1, -1, -1).contiguous()
    return _FRAMES[batch]


def comfy_runner(variant: str, family: str, ckpt: str):
    """(run, loader message): run(prompt, batch=1, keep=False, sync=True) -> Stages for a ComfyUI graph,
    called the way the executor calls the nodes (under torch.inference_mode). keep: Stages.image is the
    image [B, H, W, 3] on the CPU."""
    import torch

    stock = variant == "stock"
    model, clip, vae, info = load_comfy(ckpt, stock, loader_options(variant))

    def run(prompt, batch=1, keep=False, sync=True):
        stages = Stages(sync)
        with torch.inference_mode():
            cond = graphs.encode(clip, prompt)
            stages.mark("text")
            out = graphs.sample_stock_or_pack(model, cond, graphs.empty_latent(SIZE, batch), SEED, stock,
                                              spacing="trailing")
            stages.mark("unet")
            image = graphs.decode(vae, out).cpu()
        stages.mark("decode")
        stages.image = image if keep else None
        return stages

    run.model, run.clip, run.vae = model, clip, vae
    return run, info


def refine_runner(variant: str, family: str, ckpt: str):
    """(run, loader message) for ADD Turbo Refine on `frame()` with the models of the variant's loader."""
    import torch

    model, clip, vae, info = load_comfy(ckpt, False, loader_options(variant))
    node = graphs.builtin("ADDTurboRefine")

    def run(prompt, batch=1, keep=False, sync=True):
        stages = Stages(sync)
        with torch.inference_mode():
            cond = graphs.encode(clip, prompt)
            stages.mark("text")
            (image,) = graphs.run(node, model=model, vae=vae, positive=cond, image=frame(batch), seed=SEED, **REFINE)
            image = image.cpu()
        stages.mark("refine")
        stages.image = image if keep else None
        return stages

    run.model, run.clip, run.vae = model, clip, vae
    return run, info


def engine_note(run) -> str | None:
    """How the engine ran the variant's model (CUDA graph, direct path or fallback, and how often), and
    how often the text encoders' and TAESD's graphs were recorded and replayed."""
    module = next((m for k, m in sys.modules.items() if k.endswith("nodes.engine") and hasattr(m, "state_of")), None)
    model = getattr(run, "model", None)
    if module is None or model is None or not module.engine_on(model):
        return None
    note = f"{module.status(model)}; runs {dict(module.state_of(model).runs)}"
    text_graphs = list((getattr(getattr(run, "clip", None), "encoder_graphs", None) or {}).values())
    decode_graph = getattr(getattr(run, "vae", None), "decode_graph", None)
    for label, calls in (("text encoders", text_graphs), ("TAESD decode", [decode_graph] if decode_graph else [])):
        if calls:
            runs = sum((call.runs for call in calls), collections.Counter())
            failure = next((call.failure for call in calls if call.failure), None)
            note += f"; {label} {dict(runs) if runs else 'without graphs'}" + (f" ({failure})" if failure else "")
    return note


# --- diffusers ------------------------------------------------------------------------------------

def _timing_hooks(module, name, current):
    """Forward hooks that add the module's synchronised time to the current image's stage `name`, when
    that image syncs its stages; for the UNet only when it is the one the pipeline runs (the eager UNet's
    hooks also fire inside the compiled one). torch.compile never traces them."""
    import torch

    def timing():
        stages = current.get("stages")
        return stages is not None and stages.sync and (name != "unet" or current.get("unet") is module)

    @torch.compiler.disable
    def before(*_):
        if timing():
            sync()
            current[("t", name)] = time.perf_counter()

    @torch.compiler.disable
    def after(*_):
        if timing():
            sync()
            times = current["stages"].times
            times[name] = times.get(name, 0.0) + time.perf_counter() - current[("t", name)]

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def _time_method(obj, name, current):
    """Wrap obj.<name> (a VAE's encode / decode) to add its synchronised time to the stage `name`."""
    method = getattr(obj, name)

    def timed(*args, **kwargs):
        stages = current.get("stages")
        if stages is None or not stages.sync:
            return method(*args, **kwargs)
        sync()
        began = time.perf_counter()
        out = method(*args, **kwargs)
        sync()
        stages.times[name] = stages.times.get(name, 0.0) + time.perf_counter() - began
        return out

    setattr(obj, name, timed)


def _parts(pipe):
    """What the diffusers variants of one pipeline share: its UNet and VAE, the tiny VAE and the compiled
    UNet (made once: every variant replays the same compiled graphs), the img2img pipeline, prompt
    embeddings and start latents. Hooks go on at creation, before anything is compiled."""
    parts = pipe.__dict__.get("_bench")
    if parts is None:
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        pipe.set_progress_bar_config(disable=True)
        parts = types.SimpleNamespace(unet=pipe.unet, vae=pipe.vae, tiny=None, compiled=None, img2img=None,
                                      embeds={}, latents={}, current={})
        pipe.__dict__["_bench"] = parts
        _timing_hooks(parts.unet, "unet", parts.current)
        for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if encoder is not None:
                _timing_hooks(encoder, "text", parts.current)
        for name in ("encode", "decode"):
            _time_method(parts.vae, name, parts.current)
    return parts


def tiny_vae(family: str, dtype):
    """diffusers' AutoencoderTiny with the TAESD weights the pack's loader reads (models/vae_approx), so
    its images compare with the pack's TAESD ones."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    from devkit import turbo_models

    folder = turbo_models.build_taesd()
    name = "taesd" if family == "sd_turbo" else "taesdxl"
    state = {f"encoder.layers.{k}": v for k, v in load_file(str(folder / f"{name}_encoder.safetensors")).items()}
    for key, value in load_file(str(folder / f"{name}_decoder.safetensors")).items():
        index, rest = key.split(".", 1)  # the host's decoder starts with its clamp, diffusers' applies it in forward
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    vae = AutoencoderTiny()
    vae.load_state_dict(state)
    return vae.to(DEVICE, dtype)


def _tiny(parts, family):
    if parts.tiny is None:
        parts.tiny = tiny_vae(family, parts.unet.dtype)
        for name in ("encode", "decode"):
            _time_method(parts.tiny, name, parts.current)
    return parts.tiny


def _compiled(parts):
    if parts.compiled is None:
        import torch

        parts.compiled = torch.compile(parts.unet, mode="reduce-overhead")
        _timing_hooks(parts.compiled, "unet", parts.current)
    return parts.compiled


def _img2img(pipe, parts, family):
    if parts.img2img is None:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

        cls = StableDiffusionImg2ImgPipeline if family == "sd_turbo" else StableDiffusionXLImg2ImgPipeline
        parts.img2img = cls(**{**pipe.components, "unet": parts.unet, "vae": parts.vae})
        parts.img2img.set_progress_bar_config(disable=True)
    return parts.img2img


def _embeddings(pipe, parts, prompt):
    """prompt_embeds (and SDXL's pooled ones) computed once per prompt, as a live app keeps them."""
    if prompt not in parts.embeds:
        import torch

        with torch.no_grad():
            out = pipe.encode_prompt(prompt, device=DEVICE, num_images_per_prompt=1, do_classifier_free_guidance=False)
        parts.embeds[prompt] = {"prompt_embeds": out[0]}
        if len(out) == 4:  # SDXL
            parts.embeds[prompt]["pooled_prompt_embeds"] = out[2]
    return parts.embeds[prompt]


def _start_latents(parts, batch):
    """The pack's start noise for SEED (image k: seed + k) on the device, scaled as diffusers takes `latents`
    (it multiplies by its init_noise_sigma, the pack's noise scaling does the same in one step)."""
    if batch not in parts.latents:
        from add_turbo import noise, schedules

        sigma = float(schedules.training_sigmas()[999])
        start = noise.seeded_noise(SEED, (batch, 4, SIZE // 8, SIZE // 8)) * (math.sqrt(1 + sigma**2) / sigma)
        parts.latents[batch] = start.to(DEVICE, parts.unet.dtype)
    return parts.latents[batch]


@contextlib.contextmanager
def _pack_noise(family):
    """diffusers img2img draws the pack's noise (start and per step, CPU-keyed by seed), as the parity
    tests do; only for the compared image: timed images keep diffusers' own generator."""
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as sd_module
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as xl_module
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral

    from add_turbo import noise

    module = sd_module if family == "sd_turbo" else xl_module
    steps = iter(range(1, 100))

    def start(shape, device=None, dtype=None, **_):
        return noise.seeded_noise(SEED, shape).to(device, dtype)

    def step(shape, device=None, dtype=None, **_):
        return noise.seeded_noise(SEED, shape, step=next(steps)).to(device, dtype)

    originals = [(module, module.randn_tensor), (ancestral, ancestral.randn_tensor)]
    module.randn_tensor, ancestral.randn_tensor = start, step
    try:
        yield
    finally:
        for owner, fn in originals:
            owner.randn_tensor = fn


def diffusers_runner(variant: str, family: str, pipe, hooked=None):
    """(run, ''): run(prompt, batch=1, keep=False, sync=True) -> Stages for a diffusers pipeline; the
    variants share the pipeline's weights (`hooked` is unused: the shared parts carry their hooks).
    Text to image starts from the pack's noise, so its image compares with the pack's."""
    import torch

    parts = _parts(pipe)
    base = variant.removeprefix("refine_").removesuffix("_cached")
    refine = variant.startswith("refine_")
    cached = refine or variant.endswith("_cached")
    unet = _compiled(parts) if base.endswith("_compile") else parts.unet
    vae = _tiny(parts, family) if "tiny" in base else parts.vae
    target = _img2img(pipe, parts, family) if refine else pipe

    def run(prompt, batch=1, keep=False, sync=True):
        stages = Stages(sync)
        parts.current.update(stages=stages, unet=unet)
        if target.unet is not unet or target.vae is not vae:  # a pipeline's setattr also rewrites its config
            target.unet, target.vae = unet, vae
        kwargs = dict(num_images_per_prompt=batch, guidance_scale=0.0, output_type="pt",
                      generator=torch.Generator(DEVICE).manual_seed(SEED))
        kwargs.update(_embeddings(pipe, parts, prompt) if cached else {"prompt": prompt})
        if refine:  # a batch refines copies of one frame
            kwargs.update(image=frame(1).movedim(-1, 1), **DIFFUSERS_REFINE)
        else:
            kwargs.update(height=SIZE, width=SIZE, num_inference_steps=1, latents=_start_latents(parts, batch))
        with torch.no_grad(), _pack_noise(family) if keep and refine else contextlib.nullcontext():
            images = target(**kwargs).images.cpu()
        stages.image = images.movedim(1, -1).float() if keep else None
        return stages

    return run, ""


# --- One run: families, sections, figures ---------------------------------------------------------

@dataclass
class Runner:
    run: object  # run(prompt, batch=1, keep=False, sync=True) -> Stages
    decoder: str  # "full" or "taesd": which exact-path image it is compared with
    mode: str  # "txt2img" or "refine"
    load_s: float
    note: str


@dataclass
class Family:
    """One model family in this run: its models, loaded variants and every figure measured so far."""

    name: str
    ckpt: str
    pipe: object
    runners: dict = field(default_factory=dict)
    totals: dict = field(default_factory=lambda: collections.defaultdict(list))  # variant -> [end to end s]
    stages: dict = field(default_factory=lambda: collections.defaultdict(list))  # variant -> [{stage: s}]
    first: dict = field(default_factory=dict)  # variant -> s of its first image (compiles, graph records)
    diffs: dict = field(default_factory=dict)  # variant -> (max abs, PSNR dB)
    sweep: dict = field(default_factory=dict)  # (variant, batch) -> [s per batch]
    starts: dict = field(default_factory=dict)  # variant -> second start figures
    engine: dict = field(default_factory=dict)  # variant -> engine status
    notes: dict = field(default_factory=lambda: collections.defaultdict(list))  # variant or "" -> [text]
    references: dict = field(default_factory=dict)  # (mode, decoder) -> exact path's image
    paid: set = field(default_factory=set)  # one-time costs already spent (COSTS_S keys)
    dropped: set = field(default_factory=set)  # variants that failed or were skipped


class Budget:
    """The run's time budget, counted from the process start."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - STARTED

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, cost_s: float = 0.0) -> bool:
        return self.elapsed() + cost_s <= self.seconds


def prompt_for(variant: str, tag: str) -> str:
    unchanged = variant.endswith("_cached") or variant.startswith("refine_")
    return PROMPT if unchanged else f"{PROMPT}, variation {tag}"


def one_time_cost(variant: str) -> str | None:
    """The COSTS_S key a variant's first load or image pays, if any."""
    if "diffusers" in variant:
        return "diffusers_compile" if "_compile" in variant else None
    return "pack_compile" if "compile" in loader_options(variant) else None


def difference(image, reference) -> tuple[float, float]:
    """(max abs on a 0-1 scale, PSNR in dB) of two images [B, H, W, 3]."""
    a, b = image.float().clamp(0, 1), reference.float().clamp(0, 1)
    if a.shape != b.shape:
        raise ValueError(f"image {tuple(a.shape)} vs reference {tuple(b.shape)}")
    mse = (a - b).pow(2).mean().item()
    return (a - b).abs().max().item(), math.inf if mse == 0 else 10 * math.log10(1 / mse)


class Bench:
    """Runs the sections in order within the budget and rewrites the markdown after each."""

    def __init__(self, args, out: Path):
        self.args, self.out = args, out
        self.budget = Budget(args.budget_s)
        self.families: dict[str, Family] = {}
        self.log: list[str] = []  # sections run or skipped, in order

    def skip(self, text: str):
        print(f"SKIP {text}", flush=True)
        self.log.append(f"skipped: {text}")

    def family(self, name: str) -> Family | None:
        if name not in self.families:
            if not self.budget.allows(COSTS_S["build"][name] if DEVICE == "cuda" else 0):
                return None
            ckpt, pipe = build_models(name, host.HOME / "bench", DEVICE == "cpu")
            self.families[name] = Family(name, ckpt, pipe)
        return self.families[name]

    def section(self, name: str):
        family, kind, variants = SECTIONS[name]
        variants = [v for v in variants if (self.args.variants is None or v in self.args.variants)
                    and not (self.args.smoke and v in SMOKE_SKIPS)]
        if family not in self.args.families or not variants:
            return
        if not self.budget.allows():
            return self.skip(f"{name}: the time budget ({self.args.budget_s:.0f} s) is spent")
        began = time.perf_counter()
        try:
            fam = self.family(family)
            if fam is None:
                return self.skip(f"{name}: building {family} would pass the time budget")
            print(f"\n===== {name} ({self.budget.elapsed():.0f} s into the run)", flush=True)
            getattr(self, kind)(fam, variants)
            self.log.append(f"{name}: {time.perf_counter() - began:.0f} s")
        except Exception as error:  # recorded; the next section still runs
            traceback.print_exc()
            self.log.append(f"{name}: FAILED after {time.perf_counter() - began:.0f} s: {_short(error)}")
        self.write()

    # -- loading

    def ensure(self, fam: Family, variant: str) -> Runner | None:
        """The variant's runner, loaded now unless it failed before or its compile would not fit."""
        if variant in fam.runners or variant in fam.dropped:
            return fam.runners.get(variant)
        cost, seconds = self.load_cost(fam, variant)
        if not self.budget.allows(seconds):
            fam.dropped.add(variant)
            fam.notes[variant].append(f"skipped: about {seconds:.0f} s of compiling would pass the time budget "
                                      f"({self.budget.left():.0f} s left)")
            return None
        began = time.perf_counter()
        try:
            runner = self.make_runner(fam, variant)
        except Exception as error:
            traceback.print_exc()
            fam.dropped.add(variant)
            fam.notes[variant].append(f"FAILED to load: {_short(error)}")
            return None
        runner.load_s = time.perf_counter() - began
        if cost is not None:
            fam.paid.add(cost)
        fam.runners[variant] = runner
        print(f"[{fam.name}] loaded {variant} in {runner.load_s:.1f} s {runner.note}", flush=True)
        return runner

    def load_cost(self, fam: Family, variant: str) -> tuple[str | None, float]:
        """(COSTS_S key, estimated seconds) of the variant's one-time compile; nothing for a shared load."""
        cost = one_time_cost(variant)
        if cost == "pack_compile":
            if _load_key(fam.ckpt, False, loader_options(variant)) in _LOADS:
                return None, 0.0
            estimate = COSTS_S["pack_reload" if cost in fam.paid else cost][fam.name]  # graphs on disk by then
            return cost, float(estimate)
        if cost is None or cost in fam.paid:
            return None, 0.0
        return cost, float(COSTS_S[cost][fam.name])

    def make_runner(self, fam: Family, variant: str) -> Runner:
        if "diffusers" in variant:
            run, info = diffusers_runner(variant, fam.name, fam.pipe)
        elif variant.startswith("refine_"):
            run, info = refine_runner(variant, fam.name, fam.ckpt)
        else:
            run, info = comfy_runner(variant, fam.name, fam.ckpt)
        full = variant.removeprefix("refine_") in ("stock", "pack_exact", "diffusers_fp16")
        return Runner(run, "full" if full else "taesd", "refine" if variant.startswith("refine_") else "txt2img",
                      0.0, info)

    # -- sections

    def measure(self, fam: Family, variants: list[str]):
        """Interleaved rounds of the variants, then each one's image against the exact path."""
        live = [v for v in variants if self.ensure(fam, v) is not None]
        for round_index in range(self.args.rounds):
            if round_index and not self.budget.allows():
                fam.notes[""].append(f"{', '.join(live)}: {round_index} of {self.args.rounds} rounds (time budget)")
                break
            for variant in list(live):
                try:
                    self.turn(fam, variant, round_index)
                except Exception as error:
                    traceback.print_exc()
                    fam.notes[variant].append(f"FAILED in round {round_index + 1}: {_short(error)}")
                    live.remove(variant)
        for variant in live:
            self.check_image(fam, variant)

    def turn(self, fam: Family, variant: str, round_index: int):
        """Warm-up images, timed images (no extra syncs), then images synchronised at each stage."""
        run, a = fam.runners[variant].run, self.args
        for i in range(a.warmup + a.images + a.stage_images):
            staged = i >= a.warmup + a.images
            began = time.perf_counter()
            stages = run(prompt_for(variant, f"{round_index}-{i}"), sync=staged)
            total = time.perf_counter() - began
            fam.first.setdefault(variant, total)
            if staged:
                fam.stages[variant].append(stages.times)
            elif i >= a.warmup:
                fam.totals[variant].append(total)
        rows = fam.totals[variant][-a.images:]
        print(f"[{fam.name}] round {round_index + 1} {variant:36s} median {statistics.median(rows) * 1e3:8.2f} ms",
              flush=True)

    def check_image(self, fam: Family, variant: str):
        """The variant's image for PROMPT (after its timed runs: replayed graphs included) vs the exact path's."""
        runner = fam.runners[variant]
        try:
            image = runner.run(PROMPT, keep=True).image
            fam.diffs[variant] = difference(image, self.reference(fam, runner.mode, runner.decoder))
        except Exception as error:
            traceback.print_exc()
            fam.notes[variant].append(f"image check FAILED: {_short(error)}")
        if (note := engine_note(runner.run)) is not None:
            fam.engine[variant] = note

    def reference(self, fam: Family, mode: str, decoder: str):
        """The exact path's image for PROMPT and SEED (refine: of frame()), decoded by `decoder`: the
        loader's defaults sample, and the full VAE or the pack's TAESD decodes."""
        import torch

        if (mode, decoder) not in fam.references:
            model, clip, vae, _ = load_comfy(fam.ckpt, False, {})
            if decoder == "taesd":
                vae = load_comfy(fam.ckpt, False, loader_options("pack_engine"))[2]
            with torch.inference_mode():
                positive = graphs.encode(clip, PROMPT)
                if mode == "txt2img":
                    latent = graphs.turbo_sample(model, positive, graphs.empty_latent(SIZE), seed=SEED, steps=1)
                    image = graphs.decode(vae, latent)
                else:
                    (image,) = graphs.run(graphs.builtin("ADDTurboRefine"), model=model, vae=vae, positive=positive,
                                          image=frame(), seed=SEED, **REFINE)
            fam.references[(mode, decoder)] = image.cpu().float()
        return fam.references[(mode, decoder)]

    def sweep(self, fam: Family, variants: list[str]):
        """Images/s per batch size, prompt unchanged; a variant stops at its first failure (memory)."""
        for batch in self.args.batches:
            if not self.budget.allows():
                fam.notes[""].append(f"batch sweep stopped before batch {batch} (time budget)")
                break
            for variant in variants:
                if self.ensure(fam, variant) is not None and (variant, "sweep") not in fam.dropped:
                    self.sweep_batch(fam, variant, batch)
            self.write()

    def sweep_batch(self, fam: Family, variant: str, batch: int):
        import torch

        if batch > 1 and one_time_cost(variant) == "diffusers_compile" and "diffusers_recompile" not in fam.paid:
            if not self.budget.allows(COSTS_S["diffusers_recompile"][fam.name]):
                fam.dropped.add((variant, "sweep"))
                fam.notes[variant].append(f"sweep stopped at batch {batch}: a recompile would pass the time budget")
                return
            fam.paid.add("diffusers_recompile")
        run = fam.runners[variant].run
        try:
            for _ in range(SWEEP_WARMUP):
                run(PROMPT, batch=batch, sync=False)
            times = []
            for _ in range(self.args.sweep_images):
                began = time.perf_counter()
                run(PROMPT, batch=batch, sync=False)
                times.append(time.perf_counter() - began)
        except Exception as error:
            traceback.print_exc()
            fam.dropped.add((variant, "sweep"))
            fam.notes[variant].append(f"sweep FAILED at batch {batch}: {_short(error)}")
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
            return
        fam.sweep[(variant, batch)] = times
        print(f"[{fam.name}] sweep {variant:36s} batch {batch:3d}: {batch / statistics.median(times):8.1f} images/s",
              flush=True)

    def second_start(self, fam: Family, variants: list[str]):
        """A new process loads the variant again, with the compiled graphs this run left on disk."""
        for variant in variants:
            if variant not in fam.runners:
                fam.notes[variant].append("second start not run: no first start in this run")
                continue
            if not self.budget.allows(COSTS_S["second_start"][fam.name] if DEVICE == "cuda" else 0):
                fam.notes[variant].append("second start skipped: it would pass the time budget")
                continue
            command = [sys.executable, "-m", "bench.gpu", "--second-start", fam.name, variant, fam.ckpt,
                       "--size", str(SIZE), *(["--smoke"] if DEVICE == "cpu" else [])]
            began = time.perf_counter()
            try:
                done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                      timeout=max(60.0, self.budget.left() + 60))
            except subprocess.TimeoutExpired:
                fam.notes[variant].append("second start: timed out")
                continue
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                fam.notes[variant].append(f"second start FAILED (exit {done.returncode}): "
                                          f"{done.stderr.strip()[-300:]}".replace("\n", " "))
                continue
            fam.starts[variant] = {**json.loads(lines[-1]), "process_s": time.perf_counter() - began}
            print(f"[{fam.name}] second start of {variant}: {fam.starts[variant]}", flush=True)

    # -- the markdown

    def write(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(render(self))
        print(f"written to {self.out} ({self.budget.elapsed():.0f} s into the run)", flush=True)


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:200]}".replace("\n", " ")


# --- Figures and tables ---------------------------------------------------------------------------

def speed(fam: Family, variant: str, sweep: bool = False):
    """(images/s, batch): batch 1 end to end, or the best batch of the sweep; None when not measured."""
    if not sweep:
        rows = fam.totals.get(variant)
        return (1 / statistics.median(rows), 1) if rows else None
    rates = [(batch / statistics.median(times), batch) for (v, batch), times in fam.sweep.items() if v == variant]
    return max(rates) if rates else None


def image_ok(fam: Family, variant: str) -> bool:
    diff = fam.diffs.get(variant)
    return diff is not None and diff[1] >= MIN_PSNR_DB


def _diff_text(fam: Family, variant: str) -> str:
    diff = fam.diffs.get(variant)
    return "not checked" if diff is None else f"{diff[0]:.4f} / {diff[1]:.1f} dB"


def evaluate(bench: Bench, target: Target) -> list[str]:
    """One targets-table row: | target | bound | figure | variant | vs exact | met | vs diffusers compiled |."""
    fam = bench.families.get(target.family)
    measured = [(speed(fam, v, target.sweep), v) for v in target.pack] if fam else []
    measured = [(s, v) for s, v in measured if s is not None]
    bound = f"{'<=' if target.unit == 'ms' else '>='} {target.bound:g} {target.unit}"
    if not measured:
        return [target.label, bound, "not measured", "", "", "", ""]
    passing = [(s, v) for s, v in measured if image_ok(fam, v)]
    (rate, batch), variant = max(passing or measured)
    figure = f"{1e3 / rate:.2f} ms" if target.unit == "ms" else f"{rate:.1f} {target.unit}"
    fast = rate * 1e-3 >= 1 / target.bound if target.unit == "ms" else rate >= target.bound
    met = "met" if fast and passing else ("NOT met (image differs)" if fast else "NOT met")
    other = speed(fam, target.diffusers, target.sweep)
    ratio = f"{rate / other[0]:.2f}x" + (f" (diffusers batch {other[1]})" if target.sweep else "") if other else "-"
    where = f"{variant}" + (f", batch {batch}" if target.sweep else "")
    return [target.label, bound, figure, where, _diff_text(fam, variant), met, ratio]


def targets_table(bench: Bench) -> list[str]:
    rows = [evaluate(bench, target) for target in TARGETS]
    ratios = [float(r[6].split("x")[0]) for r in rows if r[6] not in ("", "-")]
    rows.append(["Never slower than diffusers compiled (rows above)", ">= 1.00x",
                 f"lowest {min(ratios):.2f}x" if ratios else "not measured", "", "",
                 ("met" if min(ratios) >= 1 else "NOT met") if ratios else "", ""])
    for fam in bench.families.values():
        rows += [warm_up_row(fam, variant) for variant in fam.starts]
    lines = ["| target | bound | figure | variant | vs exact: max abs / PSNR | met | speed vs diffusers compiled |",
             "|---|---|---|---|---|---|---|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def warm_up_row(fam: Family, variant: str) -> list[str]:
    start, first = fam.starts[variant], fam.runners[variant]
    figure = (f"first start {first.load_s:.1f} s, second start {start['load_s']:.1f} s "
              f"(new process {start['process_s']:.1f} s)")
    met = "met" if start["load_s"] <= SECOND_START_MAX_S else "NOT met"
    return [f"{fam.name} warm-up, second start (compiled graphs on disk): load + 512x512 warm-up",
            f"<= {SECOND_START_MAX_S:g} s", figure, variant, "", met, ""]


def variant_table(fam: Family, variants: list[str]) -> list[str]:
    stages = [s for s in STAGE_ORDER if any(s in row for v in variants for row in fam.stages.get(v, []))]
    lines = [f"| variant | end to end ms median (min) | per s | {' | '.join(stages)} | vs exact: max abs / PSNR "
             f"| load s | first image s |", "|---|---|---|" + "---|" * len(stages) + "---|---|---|"]
    for variant in variants:
        rows = fam.totals.get(variant)
        if not rows:
            lines.append(f"| {VARIANTS[variant]} | {'; '.join(fam.notes.get(variant, [])) or 'no result'} |" + " |" * (
                len(stages) + 4))
            continue
        med = statistics.median(rows)
        staged = {s: [row[s] for row in fam.stages.get(variant, []) if s in row] for s in stages}
        cells = [f"{statistics.median(t) * 1e3:.2f}" if t else "" for t in staged.values()]
        runner = fam.runners[variant]
        lines.append(f"| {VARIANTS[variant]} | {med * 1e3:.2f} ({min(rows) * 1e3:.2f}) | {1 / med:.1f} | "
                     f"{' | '.join(cells)}{' | ' if cells else ''}{_diff_text(fam, variant)} | {runner.load_s:.1f} | "
                     f"{fam.first.get(variant, math.nan):.2f} |")
    return lines


def sweep_table(fam: Family) -> list[str]:
    variants = list(dict.fromkeys(v for v, _ in fam.sweep))
    batches = sorted({b for _, b in fam.sweep})
    lines = ["| batch | " + " | ".join(f"{v}: ms per batch (images/s)" for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for batch in batches:
        cells = []
        for variant in variants:
            times = fam.sweep.get((variant, batch))
            cells.append(f"{statistics.median(times) * 1e3:.1f} ({batch / statistics.median(times):.1f})" if times else "")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return lines


def family_section(fam: Family) -> list[str]:
    measured = [v for v in VARIANTS if v in fam.totals or v in fam.notes]
    txt2img = [v for v in measured if not v.startswith("refine_")]
    refine = [v for v in measured if v.startswith("refine_")]
    lines = [f"\n## {fam.name}, {SIZE}x{SIZE}\n"]
    if txt2img:
        lines += [f"Text to image, batch 1, 1 step ({fam.ckpt}):\n", *variant_table(fam, txt2img), ""]
    if refine:
        lines += ["Refine (img2img), batch 1, 2 steps at strength 0.5, prompt unchanged; 'per s' is frames/s:\n",
                  *variant_table(fam, refine), ""]
    if fam.sweep:
        lines += ["Batch sweep, prompt unchanged:\n", *sweep_table(fam), ""]
    for variant, start in fam.starts.items():
        lines.append(f"- second start of {variant} in a new process: {start['process_s']:.1f} s in all, loader "
                     f"{start['load_s']:.1f} s ({start['message']}), first image {start['first_image_s']:.2f} s")
    for variant, runner in fam.runners.items():
        if runner.note:
            lines.append(f"- {variant}: loader: {runner.note}")
    for variant, note in fam.engine.items():
        lines.append(f"- {variant}: {note}")
    for variant, notes in fam.notes.items():
        lines += [f"- {variant or 'run'}: {note}" for note in notes]
    return lines


def render(bench: Bench) -> str:
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else math.nan
    a = bench.args
    lines = [f"# ADD Turbo GPU speed, {SIZE}x{SIZE} ({time.strftime('%Y-%m-%d')})\n",
             f"{versions()}.\n",
             f"Measured with `python -m bench.gpu` in {bench.budget.elapsed():.0f} s (budget {a.budget_s:.0f} s), "
             f"peak GPU memory allocated {peak:.1f} GiB. Random weights of the real sizes: the images mean nothing, "
             f"the timings and the differences do. Median (min) of {a.rounds} interleaved rounds x {a.images} images "
             f"per variant, each turn after {a.warmup} untimed images, with no extra device syncs; the stage columns "
             f"come from {a.stage_images} more images per turn synchronised at each stage boundary. 'vs exact' compares "
             f"the variant's image for one prompt and seed with the exact path's (loader defaults, engine off), decoded "
             f"by the same kind of decoder: max abs on a 0-1 scale / PSNR; a target needs PSNR >= {MIN_PSNR_DB:g} dB. "
             "Speed ratios: the pack's images/s over diffusers compiled's (above 1: faster). The compile caches "
             "started empty: 'load s' of a compiled variant is its first start.\n",
             "## Targets (issue #14)\n", *targets_table(bench)]
    for fam in bench.families.values():
        lines += family_section(fam)
    lines += ["\n## Sections\n", *[f"- {entry}" for entry in bench.log]]
    return "\n".join(lines) + "\n"


def versions() -> str:
    import diffusers
    import torch

    comfy = ".".join(map(str, host.host_version()))
    found = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "no commit"
    except OSError:
        commit = "no git"
    return (f"{device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda}), ComfyUI {comfy}, diffusers "
            f"{diffusers.__version__}, Python {platform.python_version()}, ADD Turbo {found.group(1) if found else '?'} "
            f"({commit})")


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke run: tiny models, timings mean nothing)"


# --- Entry points ---------------------------------------------------------------------------------

def second_start_child(family: str, variant: str, ckpt: str) -> int:
    """In a new process: load the variant (its compiled graphs come from the disk cache), make one image,
    print the figures as one JSON line."""
    began = time.perf_counter()
    run, message = comfy_runner(variant, family, ckpt)
    load_s = time.perf_counter() - began
    began = time.perf_counter()
    run(PROMPT, sync=False)
    print(json.dumps({"load_s": load_s, "message": message, "first_image_s": time.perf_counter() - began}), flush=True)
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", help=f"in this order (default all; --smoke: {', '.join(SMOKE_SECTIONS)}); "
                                           f"all: {', '.join(SECTIONS)}")
    parser.add_argument("--families", default="sd_turbo,sdxl_turbo")
    parser.add_argument("--variants", default=None, help="only these variants, in every section (default: all)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--images", type=int, help="timed images per variant and round")
    parser.add_argument("--warmup", type=int, help="untimed images at the start of each turn")
    parser.add_argument("--stage-images", type=int, help="images per turn synchronised at each stage (breakdown)")
    parser.add_argument("--batches", help="batch sizes of the sweep, e.g. 1,2,4,8,16,32")
    parser.add_argument("--sweep-images", type=int, help="timed runs per batch size")
    parser.add_argument("--size", type=int, help="image side in px")
    parser.add_argument("--budget-s", type=float, help="skip the remaining work once this many seconds have passed")
    parser.add_argument("--out", default=None, help=f"markdown results (default {COMMITTED_OUT.relative_to(REPO)}; "
                                                   "with --smoke a file in the temp folder)")
    parser.add_argument("--compile-cache", default=None,
                        help="compile cache folder (default: a new empty one, so the first start compiles)")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks this script, times nothing")
    parser.add_argument("--second-start", nargs=3, metavar=("FAMILY", "VARIANT", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (SMOKE_DEFAULTS if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sections = args.sections or ",".join(SMOKE_SECTIONS if args.smoke else SECTIONS)
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.families = args.families.split(",")
    args.variants = None if args.variants is None else args.variants.split(",")
    unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
    unknown += [v for v in args.variants or [] if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown sections or variants: {', '.join(unknown)}")
    return args


def out_path(args) -> Path:
    """Where the markdown goes: a smoke run never writes over the committed results."""
    if not args.smoke:
        return Path(args.out) if args.out else COMMITTED_OUT
    path = Path(args.out) if args.out else Path(tempfile.gettempdir()) / "add_turbo_gpu_smoke.md"
    if path.resolve() == COMMITTED_OUT.resolve():
        raise SystemExit("--smoke does not write over the committed results: choose another --out")
    return path


def use_fresh_compile_caches(folder: str | None) -> str:
    """Point the pack's compile cache and torch's own (diffusers) at `folder`, by default a new empty one:
    the first load is a true first start, and the second-start process inherits the folder."""
    folder = folder or tempfile.mkdtemp(prefix="add_turbo_bench_compile_")
    os.environ["ADD_TURBO_COMPILE_CACHE"] = str(Path(folder) / "pack")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder) / "torch")
    return folder


def link_pack() -> None:
    """Point the host's custom_nodes/add-turbo at this checkout when the link is stale: the host's build
    linked the checkout it was built from, and a copy of the repository elsewhere would otherwise start
    the host without the pack (every pack row failing). A link to another existing checkout is refused."""
    link = host.BASE_DIR / "custom_nodes" / "add-turbo"
    if link.exists():  # a folder, or a link to an existing folder
        if link.resolve() == REPO.resolve():
            return
        raise SystemExit(f"{link} is not this checkout ({REPO}): point it here, or run from that checkout")
    link.parent.mkdir(parents=True, exist_ok=True)  # missing, or a link to a folder that is gone
    fresh = link.with_name(f".add-turbo-{os.getpid()}")
    os.symlink(REPO, fresh)
    os.replace(fresh, link)
    print(f"{link} was stale: now -> {REPO}", flush=True)


def start_host(smoke: bool) -> None:
    """ComfyUI in this process with the pack (CPU with --smoke, else the host's own GPU choices)."""
    link_pack()
    host.init_in_process(**({} if smoke else {"flags": host.GPU_HOST_FLAGS}))
    import nodes

    if "ADDTurboLoader" not in nodes.NODE_CLASS_MAPPINGS:
        raise SystemExit("the host started without the ADD Turbo nodes: see the import errors above")


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    global DEVICE, SIZE
    SIZE = args.size
    if args.smoke:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        why = (f"this torch build ({torch.__version__}) has no CUDA support" if torch.version.cuda is None
               else "no CUDA GPU is visible")
        print(f"bench.gpu needs a CUDA GPU: {why}. --smoke checks the script on the CPU; scripts/bench.sh speed "
              "measures on the CPU", file=sys.stderr)
        return 2
    start_host(args.smoke)
    if args.second_start:
        return second_start_child(*args.second_start)
    out = out_path(args)
    print(f"compile caches in {use_fresh_compile_caches(args.compile_cache)}", flush=True)
    bench = Bench(args, out)
    for name in args.sections.split(","):
        bench.section(name)
    bench.write()
    print(f"done in {bench.budget.elapsed():.0f} s: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
