"""The GPU bench's plan: what `python -m bench.gpu` measures, on which input, in which order, against which
targets; the run's settings and the one-time costs its time budget weighs.

SIZE and DEVICE are set once by bench.gpu's main before anything runs: read them as gpu_plan.SIZE and
gpu_plan.DEVICE at call time, never import the names themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    "refine_diffusers_fp16_tiny_compile": "diffusers img2img fp16 + AutoencoderTiny, compiled UNet, "
                                          "prompt_embeds once",
}
COMPILED = ["pack_engine_compile", "pack_engine_compile_cached", "refine_pack_engine_compile", "pack_fast",
            "pack_fast_cached", "diffusers_fp16_tiny_compile", "diffusers_fp16_tiny_compile_cached"]
# name -> (family, kind, variants), in the order they run: the most important first.
SECTIONS = {
    "sd_core": ("sd_turbo", "measure", ["pack_exact", "pack_engine", "pack_engine_cached",
                                        "diffusers_fp16_tiny_compile", "diffusers_fp16_tiny_compile_cached", "stock",
                                        "pack_fast_eager", "diffusers_fp16_tiny"]),
    "sd_refine": ("sd_turbo", "measure", ["refine_pack_exact", "refine_pack_engine",
                                          "refine_diffusers_fp16_tiny_compile"]),
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
    Target("SD-Turbo: batch 1, new prompt every image", "sd_turbo",
           ("pack_engine", "pack_engine_compile", "pack_fast", "pack_engine_fp8"),
           "diffusers_fp16_tiny_compile", "images/s", 80),
    Target("SD-Turbo throughput: best batch, prompt unchanged", "sd_turbo", CACHED,
           "diffusers_fp16_tiny_compile_cached", "images/s", 400, sweep=True),
    Target("SDXL-Turbo live: batch 1, prompt unchanged", "sdxl_turbo", CACHED, "diffusers_fp16_tiny_compile_cached",
           "ms", 20),
    Target("Refine 2 steps at strength 0.5: batch 1, prompt unchanged", "sd_turbo",
           ("refine_pack_engine", "refine_pack_engine_compile"), "refine_diffusers_fp16_tiny_compile", "frames/s", 60),
]


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


def one_time_cost(variant: str) -> str | None:
    """The COSTS_S key a variant's first load or image pays, if any."""
    if "diffusers" in variant:
        return "diffusers_compile" if "_compile" in variant else None
    return "pack_compile" if "compile" in loader_options(variant) else None


def prompt_for(variant: str, tag: str) -> str:
    """The prompt of one timed image: PROMPT where the variant keeps it unchanged, else a new one per tag."""
    unchanged = variant.endswith("_cached") or variant.startswith("refine_")
    return PROMPT if unchanged else f"{PROMPT}, variation {tag}"


_FRAMES: dict = {}


def frame(batch: int = 1):
    """A smooth test image [batch, SIZE, SIZE, 3] in 0..1 on the CPU, as a loaded image or a webcam frame arrives."""
    import torch

    if batch not in _FRAMES:
        coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
        image = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear").movedim(1, -1)
        _FRAMES[batch] = image.expand(batch, -1, -1, -1).contiguous()
    return _FRAMES[batch]
