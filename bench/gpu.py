"""GPU speed, 512x512, 1 step: the pack's paths next to the stock ComfyUI graph and diffusers fp16.

One process, one GPU. Full-size random-weight SD-Turbo (SD 2.1 sizes) and SDXL-Turbo are built in
memory (diffusers) and written once as single files for the ComfyUI loaders. Variants run
interleaved round by round (A B C .., A B C ..), each turn after untimed warm-up images. Per image:
text encode (a new prompt every image, so no prompt-cache hit, except in the 'prompt unchanged'
row), sampling, decode to an image on the CPU; the device is synchronised after each stage so the
stage times add up to the end-to-end time.

  python -m bench.gpu                                     # both families, all variants
  python -m bench.gpu --families sd_turbo --images 20 --rounds 3 --variants pack_fast,diffusers_fp16_tiny
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

from devkit import graphs, host

REPO = Path(__file__).resolve().parents[1]

PROMPT = "a cinematic photo of a red fox in the snow, golden hour"
SEED = 1234
SIZE = 512
VARIANTS = {
    "stock": "stock graph: CheckpointLoaderSimple + SDTurboScheduler + SamplerCustom + VAEDecode",
    "pack_exact": "ADD Turbo exact: Loader (auto) + Sample + VAEDecode",
    "pack_fast_eager": "ADD Turbo fast, no compile: fp16, TAESD, SDPA, channels_last",
    "pack_fast_inductor": "ADD Turbo fast, compile without CUDA graphs",
    "pack_fast": "ADD Turbo fast: fp16, TAESD, SDPA, channels_last, compile + CUDA graphs",
    "pack_fast_cached": "ADD Turbo fast, prompt unchanged (cached conditioning)",
    "diffusers_fp16": "diffusers fp16 pipeline (full VAE)",
    "diffusers_fp16_tiny": "diffusers fp16 + AutoencoderTiny",
    "diffusers_fp16_tiny_compile": "diffusers fp16 + AutoencoderTiny, UNet torch.compile (reduce-overhead)",
}
DEVICE = "cuda"  # "cpu" only with --smoke (tiny models, a check of this script itself)
TARGETS = {"sd_turbo": ("images/s", 100.0), "sdxl_turbo": ("ms", 30.0)}


def sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


class Stages:
    """Per-image stage times (seconds), with a device sync at each boundary."""

    def __init__(self):
        self.times = {}
        self.start = time.perf_counter()

    def mark(self, name):
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


def comfy_runner(variant: str, family: str, ckpt: str):
    """run(prompt) -> Stages for a ComfyUI graph, called the way the executor calls the nodes."""
    import torch

    import nodes

    options = {}
    if variant.startswith("pack_fast"):
        options = dict(weight_dtype="fp16", decoder="taesd", attention="sdpa", channels_last=True)
        if variant == "pack_fast_inductor" or (variant != "pack_fast_eager" and DEVICE != "cuda"):
            options["compile"] = "inductor"
        elif variant != "pack_fast_eager":
            options["compile"] = "inductor + cuda graphs"
    model, clip, vae, info = graphs.load_stock_or_pack(ckpt, variant == "stock", **options)
    latent = {"samples": torch.zeros([1, 4, SIZE // 8, SIZE // 8])}

    def run(prompt):
        stages = Stages()
        (cond,) = nodes.CLIPTextEncode().encode(clip, prompt)
        stages.mark("text")
        out = graphs.sample_stock_or_pack(model, cond, latent, SEED, variant == "stock", spacing="trailing")
        stages.mark("unet")
        (image,) = nodes.VAEDecode().decode(vae, out)
        image.cpu()
        stages.mark("decode")
        return stages

    return run, info


def _timing_hooks(module, name, current):
    """Forward hooks that add the module's synchronised time to the current image's stage `name`."""
    def before(*_):
        sync()
        current["t"] = time.perf_counter()

    def after(*_):
        sync()
        stages = current["stages"]
        stages.times[name] = stages.times.get(name, 0.0) + time.perf_counter() - current["t"]

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def diffusers_runner(variant: str, family: str, pipe, hooked: set):
    """run(prompt) -> Stages for a diffusers pipeline; variants share the pipeline's weights."""
    import torch
    from diffusers import AutoencoderTiny, EulerAncestralDiscreteScheduler

    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    base_unet = pipe.__dict__.setdefault("_bench_unet", pipe.unet)
    base_vae = pipe.__dict__.setdefault("_bench_vae", pipe.vae)
    vae = base_vae
    if "tiny" in variant:
        torch.manual_seed(0)
        vae = AutoencoderTiny().to(DEVICE, pipe.unet.dtype)  # random weights of the TAESD architecture
    unet = torch.compile(base_unet, mode="reduce-overhead") if variant.endswith("_compile") else base_unet
    current = pipe.__dict__.setdefault("_bench_current", {})
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    for module, name in [(unet, "unet"), *[(e, "text") for e in encoders]]:
        if id(module) not in hooked:
            _timing_hooks(module, name, current)
            hooked.add(id(module))
    decode = vae.decode

    def timed_decode(*args, **kwargs):
        sync()
        t = time.perf_counter()
        out = decode(*args, **kwargs)
        sync()
        current["stages"].times["decode"] = time.perf_counter() - t
        return out

    vae.decode = timed_decode

    def run(prompt):
        stages = Stages()
        current["stages"] = stages
        pipe.unet, pipe.vae = unet, vae
        with torch.no_grad():
            images = pipe(prompt, num_inference_steps=1, guidance_scale=0.0, height=SIZE, width=SIZE,
                          generator=torch.Generator(DEVICE).manual_seed(SEED), output_type="pt").images
        images.cpu()
        return stages

    return run, ""


def measure(family, variants, rounds, images, warmup, pipe, ckpt):
    import torch

    runners, results, notes, hooked = {}, {v: [] for v in variants}, {}, set()
    for variant in variants:
        started = time.perf_counter()
        try:
            if variant == "pack_fast_cached" and "pack_fast" in runners:
                runners[variant] = runners["pack_fast"]
            elif variant.startswith("diffusers"):
                runners[variant] = diffusers_runner(variant, family, pipe, hooked)
            else:
                runners[variant] = comfy_runner(variant, family, ckpt)
            notes[variant] = f"load {time.perf_counter() - started:.1f} s. {runners[variant][1]}"
        except Exception as error:  # recorded, the others still run
            traceback.print_exc()
            notes[variant] = f"FAILED to load: {type(error).__name__}: {str(error)[:200]}".replace("\n", " ")
    for round_index in range(rounds):
        for variant in [v for v in variants if v in runners]:
            run = runners[variant][0]
            try:
                for i in range(warmup + images):
                    prompt = PROMPT if variant == "pack_fast_cached" else f"{PROMPT}, variation {round_index}-{i}"
                    t = time.perf_counter()
                    stages = run(prompt)
                    total = time.perf_counter() - t
                    if i >= warmup:
                        results[variant].append({"total": total, **stages.times})
            except Exception as error:
                traceback.print_exc()
                notes[variant] = f"FAILED in round {round_index + 1}: {type(error).__name__}: {str(error)[:200]}"
                runners.pop(variant)
                continue
            rows = results[variant][-images:]
            print(f"[{family}] round {round_index + 1} {variant:28s} median {statistics.median(r['total'] for r in rows) * 1e3:7.2f} ms",
                  flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    return results, notes, peak


def report(family, variants, results, notes, peak) -> str:
    import torch

    unit, target = TARGETS[family]
    lines = [f"\n## {family}, {SIZE}x{SIZE}, batch 1, 1 step\n",
             "| variant | end to end ms median (min) | images/s | text | UNet | decode | vs stock | vs diffusers fp16 + tiny |",
             "|---|---|---|---|---|---|---|---|"]
    med = {v: statistics.median(r["total"] for r in results[v]) for v in variants if results[v]}
    for variant in variants:
        rows = results[variant]
        if not rows:
            lines.append(f"| {VARIANTS[variant]} | {notes.get(variant, 'no result')} | | | | | | |")
            continue
        stage = {k: statistics.median(r.get(k, 0.0) for r in rows) * 1e3 for k in ("text", "unet", "decode")}
        vs_stock = f"{med[variant] / med['stock']:.2f}x" if "stock" in med else "-"
        vs_diff = f"{med[variant] / med['diffusers_fp16_tiny']:.2f}x" if "diffusers_fp16_tiny" in med else "-"
        lines.append(f"| {VARIANTS[variant]} | {med[variant] * 1e3:.2f} ({min(r['total'] for r in rows) * 1e3:.2f}) | "
                     f"{1 / med[variant]:.1f} | {stage['text']:.2f} | {stage['unet']:.2f} | {stage['decode']:.2f} | "
                     f"{vs_stock} | {vs_diff} |")
    lines.append("")
    for variant in variants:
        if notes.get(variant):
            lines.append(f"- {variant}: {notes[variant]}")
    if "pack_fast" in med:
        value = 1 / med["pack_fast"] if unit == "images/s" else med["pack_fast"] * 1e3
        met = value >= target if unit == "images/s" else value <= target
        lines.append(f"- target: pack fast path {value:.1f} {unit} end to end (new prompt each image) vs "
                     f"{'>=' if unit == 'images/s' else '<='} {target:g}: {'met' if met else 'NOT met'}")
    if "pack_fast_cached" in med:
        value = 1 / med["pack_fast_cached"] if unit == "images/s" else med["pack_fast_cached"] * 1e3
        lines.append(f"- with the prompt unchanged (cached conditioning): {value:.1f} {unit}")
    lines.append(f"- peak GPU memory allocated in this family's run: {peak:.1f} GiB; "
                 f"torch {torch.__version__}, {_device_name()}")
    return "\n".join(lines) + "\n"


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="sd_turbo,sdxl_turbo")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=20, help="timed images per variant and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed images at the start of each turn")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_gpu.md"))
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks this script, times nothing")
    args = parser.parse_args()

    import torch

    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        host.init_in_process()
    elif not torch.cuda.is_available():
        print("bench.gpu needs a CUDA GPU (this machine has none); use scripts/bench.sh speed on CPU", file=sys.stderr)
        return 2
    else:
        host.init_in_process(flags=host.GPU_HOST_FLAGS)
    import comfy.model_management as mm

    bench_dir = host.HOME / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    text = [f"# ADD Turbo GPU speed ({time.strftime('%Y-%m-%d')})\n",
            f"{_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}. Median (min) of "
            f"{args.rounds} interleaved rounds x {args.images} images per variant, each turn after {args.warmup} "
            "untimed images. Random weights, so images are not meaningful; timings are."]
    for family in args.families.split(","):
        ckpt, pipe = build_models(family, bench_dir, args.smoke)
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results, notes, peak = measure(family, variants, args.rounds, args.images, args.warmup, pipe, ckpt)
        text.append(report(family, variants, results, notes, peak))
        print(text[-1], flush=True)
        Path(args.out).write_text("\n".join(text))
        del pipe
        mm.unload_all_models()
        mm.soft_empty_cache()
        gc.collect()
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
