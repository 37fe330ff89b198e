"""SD-Turbo speed on this machine: stock ComfyUI graph vs the pack's exact and fast paths vs diffusers
vs the OpenVINO peer (optimum-intel's pipeline, as FastSD CPU runs it; bench/openvino_peer.py).

Full-size random-weight SD-Turbo (SD 2.1 sizes; or, with --family sdxl_turbo, SDXL-Turbo as an fp16 file,
the pack's variants), 1 step. Every variant runs in its own process
(5 fp32 models would not fit in memory together), interleaved round by round (A B C D E, A B C D E,
...), each with an untimed warm-up run first. Per stage (text encode, UNet, decode) and end to end,
median and min over the rounds, peak RSS, ratios to the stock graph. Writes a markdown table.
The peer's children run in a venv of its own (built and exported on first use, only when a peer
variant is asked for); when it cannot be built the table says why and the other variants run.

  scripts/bench.sh speed                                  # 512 px, batch 1, 3 rounds, all variants
  scripts/bench.sh speed --sizes 256,512,768,1024 --batches 1,2,4 --variants pack_fast,stock
  scripts/bench.sh speed --variants pack_fast,openvino_peer,openvino_peer_f32   # the pack vs the peer
  scripts/bench.sh speed --family sdxl_turbo --variants pack_fast,pack_openvino --openvino-cache /tmp/ov  # SDXL
  python -m bench.speed ...                               # the same in the host's Python, from the repository root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import metrics, model_links, openvino_peer
from bench.speed_run import PROMPT, SEED, Timer
from devkit import graphs, host
from devkit.pack import pack_module

REPO = Path(__file__).resolve().parents[1]

CKPTS = {"sd_turbo": "bench_sd21_full_random.safetensors",  # fp32, 5.2 GB
         "sdxl_turbo": "bench_sdxl_full_random_fp16.safetensors"}  # fp16, 6.9 GB (as sd_xl_turbo_1.0_fp16)
FAMILY_NAMES = {"sd_turbo": "SD-Turbo (SD 2.1 sizes", "sdxl_turbo": "SDXL-Turbo (SDXL sizes, fp16 file"}
VARIANTS = {
    "stock": "stock graph: CheckpointLoaderSimple + SDTurboScheduler + SamplerCustom (euler_ancestral) + VAEDecode",
    "pack_exact": "ADD Turbo exact: Loader defaults (fp32, full VAE, channels_last) + Sample (sai) + VAEDecode",
    "pack_fast": "ADD Turbo fast: Loader (weight_dtype fast, TAESD, engine on) + Sample + VAEDecode",
    "pack_fast_bf16": "ADD Turbo bf16: Loader (bf16, TAESD) + Sample + VAEDecode",
    "pack_fast_compile": "ADD Turbo fast + compile (inductor; compile time is load time, excluded)",
    "pack_fp8": "ADD Turbo fp8: Loader (weight_dtype fp8_e4m3fn, TAESD, engine on) + Sample + VAEDecode",
    "pack_openvino": "ADD Turbo OpenVINO: Loader (cpu_backend openvino, weight_dtype fast, TAESD, engine on)",
    "pack_openvino_f32": "ADD Turbo OpenVINO f32: Loader (cpu_backend openvino, weight_dtype fp32, TAESD, engine on)",
    "pack_openvino_cached": "ADD Turbo OpenVINO, prompt unchanged (the prompt cache answers: live mode, seed sweeps)",
    "pack_openvino_int8": "ADD Turbo OpenVINO int8: Loader (cpu_backend openvino_int8, weight_dtype fast, TAESD, engine on)",
    "diffusers_fp32": "diffusers fp32 StableDiffusionPipeline (trailing, guidance 0)",
    "diffusers_bf16_tiny": "diffusers bf16 + AutoencoderTiny (TAESD)",
    "diffusers_fp32_tiny": "diffusers fp32 + AutoencoderTiny (TAESD)",
    **openvino_peer.PEER_VARIANTS,
}
FAMILY_VARIANTS = [v for v in VARIANTS if not v.startswith("diffusers")]  # what runs on any family
DIFFUSERS_DIRS = {"sd_turbo": "sd21_full_random_diffusers", "sdxl_turbo": "sdxl_full_random_diffusers"}
TAESD_DECODERS = {"sd_turbo": "taesd_decoder.safetensors", "sdxl_turbo": "taesdxl_decoder.safetensors"}


def _comfy_variant(variant, size, batch, family):
    import torch

    import nodes

    options = {}
    if variant == "pack_fast_bf16":
        options = {"weight_dtype": "bf16", "decoder": "taesd"}
    elif variant == "pack_fp8":
        options = {"weight_dtype": "fp8_e4m3fn", "decoder": "taesd", "engine": "on"}
    elif variant.startswith("pack_fast"):
        options = {"weight_dtype": "fast", "decoder": "taesd", "engine": "on"}
    elif variant.startswith("pack_openvino"):
        options = {"weight_dtype": "fp32" if variant.endswith("_f32") else "fast", "decoder": "taesd", "engine": "on",
                   "cpu_backend": "openvino_int8" if variant.endswith("_int8") else "openvino"}
    if variant == "pack_fast_compile":
        options["compile"] = "inductor"
    began = time.perf_counter()
    with torch.inference_mode():  # as ComfyUI's executor runs every node, the loader's compile warm-up included
        model, clip, vae, message = graphs.load_stock_or_pack(CKPTS[family], variant == "stock", **options)
    load_seconds = time.perf_counter() - began

    def run(timer, prompt):
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            with timer.stage("text"):
                (cond,) = nodes.CLIPTextEncode().encode(clip, prompt)
            latent = {"samples": torch.zeros([batch, 4, size // 8, size // 8])}
            with timer.stage("unet"):
                out = graphs.sample_stock_or_pack(model, cond, latent, SEED, variant == "stock")
            with timer.stage("decode"):
                (image,) = nodes.VAEDecode().decode(vae, out)
        return image.float()

    run.loader_message, run.load_seconds = message, load_seconds
    engine = pack_module("nodes.engine", missing_ok=True)
    run.engine_status = (lambda: engine.status(model)) if engine and options.get("engine") == "on" else None
    return run


def _diffusers_variant(variant, size, batch):
    import torch
    from diffusers import AutoencoderTiny, EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    folder = host.HOME / "bench" / DIFFUSERS_DIRS["sd_turbo"]
    dtype = torch.bfloat16 if variant == "diffusers_bf16_tiny" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    if variant.endswith("_tiny"):
        torch.manual_seed(0)
        pipe.vae = AutoencoderTiny().to(dtype)  # random weights of the TAESD architecture
    pipe.set_progress_bar_config(disable=True)

    def timed(module_fn, name, timer):
        def wrapper(*args, **kwargs):
            with timer.stage(name):
                return module_fn(*args, **kwargs)
        return wrapper

    originals = (pipe.unet.forward, pipe.vae.decode, pipe.text_encoder.forward)

    def run(timer, prompt):
        pipe.unet.forward = timed(originals[0], "unet", timer)
        pipe.vae.decode = timed(originals[1], "decode", timer)
        pipe.text_encoder.forward = timed(originals[2], "text", timer)
        with torch.no_grad():
            images = pipe(prompt, num_inference_steps=1, guidance_scale=0.0, height=size, width=size,
                          num_images_per_prompt=batch, generator=torch.Generator().manual_seed(SEED),
                          output_type="pt").images
        return images.permute(0, 2, 3, 1).float()

    return run


def child(variant, size, batch, out_image, family="sd_turbo"):
    """One process: load, warm up, one timed run; prints a JSON line."""
    if variant.startswith("diffusers"):
        run = _diffusers_variant(variant, size, batch)
    else:
        host.init_in_process()
        run = _comfy_variant(variant, size, batch, family)
    load_peak = metrics.peak_rss_gib()
    # Another prompt: the timed run encodes its prompt (no cache hit); "_cached" variants repeat it.
    run(Timer(), PROMPT if variant.endswith("_cached") else PROMPT + ", warm-up")
    timer = Timer()
    start = time.perf_counter()
    image = run(timer, PROMPT)
    total = time.perf_counter() - start
    peaks = {"load": load_peak, **timer.peaks}
    if out_image:
        import torch

        torch.save(image[:1].clone(), out_image)
    print(json.dumps({"variant": variant, "size": size, "batch": batch, "total": total, **timer.stages,
                      "peaks": peaks, "peak_gib": max(peaks.values()), "loader": getattr(run, "loader_message", ""),
                      "load_seconds": getattr(run, "load_seconds", None),
                      "engine": run.engine_status() if getattr(run, "engine_status", None) else ""}))


def _ensure_models(family):
    host.init_in_process()  # the model factory uses the host's key maps and TAESD classes
    from devkit import turbo_models

    bench = host.HOME / "bench"
    if family == "sdxl_turbo":
        turbo_models.build_full_size_sdxl_fp16(bench / CKPTS[family], bench / DIFFUSERS_DIRS[family])
    else:
        turbo_models.build_full_size_sd21(bench / CKPTS[family], bench / DIFFUSERS_DIRS[family])
    model_links.link_model(bench / CKPTS[family], "checkpoints")
    model_links.link_taesd()


def _prepare_peer(variants, family="sd_turbo") -> dict:
    """The peer's venv and exported models when a peer variant is asked for: {"python": path, "export":
    ensure_peer_models' record} or {"unavailable": reason}; {} when no peer variant runs (nothing is built)."""
    asked = [v for v in variants if v in openvino_peer.PEER_VARIANTS]
    if not asked:
        return {}
    from devkit import turbo_models

    taesd_decoder = turbo_models.build_taesd() / TAESD_DECODERS[family]
    formats = sorted({openvino_peer.weight_format(family, v) for v in asked})
    try:
        export = openvino_peer.ensure_peer_models(family, host.HOME / "bench" / DIFFUSERS_DIRS[family], taesd_decoder,
                                                  formats)
    except (openvino_peer.PeerUnavailable, OSError) as error:
        print(f"peer not available: {error}", flush=True)
        return {"unavailable": str(error)}
    return {"python": str(openvino_peer.PYTHON), "export": export}


def _child_command(variant, size, batch, image, peer, family) -> list[str]:
    """A child process's command: the host's Python, or the peer venv's for the peer variants."""
    child_args = ["--child", variant, str(size), str(batch), str(image) if image else "-"]
    if variant in openvino_peer.PEER_VARIANTS:
        return [peer["python"], "-m", "bench.openvino_peer", *child_args, "--family", family]
    return [sys.executable, "-m", "bench.speed", *child_args, "--family", family]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="512")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(REPO / "bench" / "results.md"))
    parser.add_argument("--family", choices=list(CKPTS), default="sd_turbo")
    parser.add_argument("--openvino-cache", help="a folder for the converted models (ADD_TURBO_OPENVINO_CACHE): "
                        "an empty one makes the first round of the first OpenVINO variant a first start")
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "SIZE", "BATCH", "IMAGE"))
    args = parser.parse_args()
    if args.child:
        variant, size, batch, image = args.child
        child(variant, int(size), int(batch), image if image != "-" else None, args.family)
        return 0
    if args.openvino_cache:
        os.environ["ADD_TURBO_OPENVINO_CACHE"] = str(Path(args.openvino_cache).resolve())
    if args.family != "sd_turbo" and set(args.variants.split(",")) - set(FAMILY_VARIANTS):
        parser.error(f"{args.family} runs the pack's variants only: {', '.join(FAMILY_VARIANTS)}")

    _ensure_models(args.family)
    variants = args.variants.split(",")
    configs = [(int(s), int(b)) for s in args.sizes.split(",") for b in args.batches.split(",")]
    results, images = [], {}
    peer = _prepare_peer(variants, args.family)
    if "unavailable" in peer:
        results += [{"variant": v, "size": s, "batch": b, "unavailable": peer["unavailable"]}
                    for v in variants if v in openvino_peer.PEER_VARIANTS for s, b in configs]
        variants_run = [v for v in variants if v not in openvino_peer.PEER_VARIANTS]
    else:
        variants_run = variants
    for round_index in range(args.rounds):
        for size, batch in configs:
            for variant in variants_run:
                suffix = "png" if variant in openvino_peer.PEER_VARIANTS else "pt"  # the peer's venv writes PNG
                image = (host.HOME / "bench" / f"img_{variant}_{size}.{suffix}"
                         if round_index == 0 and batch == 1 else None)
                proc = subprocess.run(_child_command(variant, size, batch, image, peer, args.family), cwd=REPO,
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    # e.g. killed for memory (exit -9): recorded as a result, the run goes on
                    print(f"round {round_index + 1} {variant:20s} {size:4d}px x{batch}: FAILED (exit "
                          f"{proc.returncode}) {proc.stderr.strip().splitlines()[-1:] or ''}", flush=True)
                    results.append({"variant": variant, "size": size, "batch": batch, "failed": proc.returncode})
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(row)
                if image:
                    images[(variant, size)] = image
                print(f"round {round_index + 1} {variant:20s} {size:4d}px x{batch}: {row['total']:7.3f} s "
                      f"(text {row.get('text', 0):.2f}, unet {row.get('unet', 0):.2f}, "
                      f"decode {row.get('decode', 0):.2f})"
                      f" peak {row['peak_gib']:.2f} GiB"
                      f"{'' if row.get('load_seconds') is None else ' load %.1f s' % row['load_seconds']}"
                      f" {row.get('engine') or ''}"
                      f"{' | UNet precision ' + row['precision'] if row.get('precision') else ''}"
                      f"{' | loader: ' + row['loader'] if 'compile' in variant or 'openvino' in variant else ''}",
                      flush=True)
    report = _report(results, images, variants, configs, peer, args.family)
    Path(args.out).write_text(report)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))  # every round's figures
    print("\n" + report)
    print(f"written to {args.out}")
    return 0


def _load_times(rows) -> str:
    """The first round's load (with OpenVINO, a first start where the cache was empty) with its peak RSS,
    and the later ones' load seconds."""
    loads = [r.get("load_seconds") for r in rows]
    if None in loads or not loads:
        return "-"
    first = f"{loads[0]:.1f} ({rows[0]['peaks']['load']:.2f} GiB)"
    return first + (f" / {statistics.median(loads[1:]):.1f}" if len(loads) > 1 else "")


def _stage_peaks(rows) -> str:
    """'load / text / UNet / decode' peak RSS in GiB, the largest over the rounds."""
    stages = ("load", "text", "unet", "decode")
    return " / ".join(f"{max(r['peaks'].get(k, float('nan')) for r in rows):.2f}" for k in stages)


def _load_image(path):
    """An image a child wrote, [1, H, W, 3] on a 0-1 scale: a torch file, or the peer's 8-bit PNG."""
    import torch

    path = Path(path)
    if path.suffix != ".png":
        return torch.load(path)
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)[None]


def _variant_label(variant, rows) -> str:
    """The variant's description, with the precision its UNet actually ran in where the child reports it."""
    precisions = sorted({r["precision"] for r in rows if r.get("precision")})
    return VARIANTS[variant] + (f"; UNet ran {'/'.join(precisions)}" if precisions else "")


def _peer_notes(results, images, configs, peer) -> list[str]:
    """The peer's versions, its one-off export and per-process load times, and its image differences."""
    rows = [r for r in results if r["variant"] in openvino_peer.PEER_VARIANTS and "total" in r]
    lines = []
    if rows:
        loads = ", ".join(f"{v} {statistics.median(r['load_seconds'] for r in rows if r['variant'] == v):.1f} s"
                          for v in openvino_peer.PEER_VARIANTS if any(r["variant"] == v for r in rows))
        export = peer["export"]
        pipelines = ", ".join(f"{weights} weights {seconds:.0f} s" + (
            f" at {export['pipeline_peak'][weights]:.2f} GiB peak RSS" if export["pipeline_peak"].get(weights) else "")
            for weights, seconds in export["pipeline"].items())
        lines.append(f"\nOpenVINO peer: OpenVINO {rows[0]['openvino']}, optimum-intel {rows[0]['optimum_intel']}, "
                     f"in a venv of its own. Export, once (optimum-cli, a one-off before the first load): {pipelines}; "
                     f"TAESD {export['taesd']:.0f} s. Load and compile per "
                     f"process (excluded above): {loads}. Its images are 8-bit PNG.")
    ratios = (("pack_openvino", "openvino_peer"), ("pack_openvino_cached", "openvino_peer"),
              ("pack_openvino_f32", "openvino_peer_f32"), ("pack_openvino_int8", "openvino_peer_int8"))
    for size, batch in configs:
        for pack, peer_variant in ratios:
            a, b = ([r["total"] for r in results if r["variant"] == v and r["size"] == size and r["batch"] == batch
                     and "total" in r] for v in (pack, peer_variant))
            if a and b:
                per_round = [x / y for x, y in zip(a, b, strict=False)]  # a failed child leaves a round out
                lines.append(f"\n{pack} vs {peer_variant} at {size} x{batch}: median {statistics.median(a):.3f} s vs "
                             f"{statistics.median(b):.3f} s = {statistics.median(a) / statistics.median(b):.3f}x "
                             f"(round by round: {', '.join(f'{x:.3f}' for x in per_round)})")
    for size, _ in configs:
        pairs = ((("openvino_peer_f32", "openvino_peer"), "OpenVINO default precision vs f32"),
                 (("pack_fast", "openvino_peer_f32"), "OpenVINO peer f32 vs pack fast (same weights, same TAESD "
                                                      "files: the difference is the pipelines')"))
        for (reference, other), what in pairs:
            if (reference, size) in images and (other, size) in images:
                a, b = _load_image(images[(reference, size)]), _load_image(images[(other, size)])
                lines.append(f"\n{what} at {size}: max |image diff| {metrics.max_abs(a, b) * 255:.2f}/255, "
                             f"PSNR {metrics.psnr(a, b):.1f} dB (random weights)")
    return lines


def _report(results, images, variants, configs, peer=None, family="sd_turbo") -> str:
    import torch

    lines = [f"# ADD Turbo speed, {FAMILY_NAMES[family]}, random weights), 1 step\n",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"AMX {'yes' if getattr(torch.cpu, '_is_amx_tile_supported', lambda: False)() else 'no'}, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Median (min) seconds of the rounds; "
             "each run after an untimed warm-up in its own process; ComfyUI variants under torch.inference_mode, "
             "as its executor runs nodes. Peak RSS is the whole process's (models included): the largest of the "
             "peaks at load and in each stage of the timed run, which are listed after it.\n"]
    for size, batch in configs:
        lines += [f"\n## {size}x{size}, batch {batch}\n",
                  "| variant | end to end | text | UNet | decode | vs stock | peak RSS GiB "
                  "| at load / text / UNet / decode | load s: round 1 (its peak) / later |",
                  "|---|---|---|---|---|---|---|---|---|"]
        rows = {v: [r for r in results if r["variant"] == v and r["size"] == size and r["batch"] == batch
                    and "total" in r] for v in variants}
        stock = statistics.median(r["total"] for r in rows["stock"]) if rows.get("stock") else None
        for variant in variants:
            rs = rows[variant]
            unavailable = [r["unavailable"] for r in results if r["variant"] == variant and "unavailable" in r]
            if unavailable:
                lines.append(f"| {VARIANTS[variant]} | peer not available: {unavailable[0]} | | | | | | | |")
                continue
            if not rs:
                codes = {r["failed"] for r in results
                         if r["variant"] == variant and r["size"] == size and r["batch"] == batch}
                lines.append(f"| {VARIANTS[variant]} | failed (exit {', '.join(map(str, codes))}; -9 = killed, "
                             "usually out of memory) | | | | | | | |")
                continue
            med = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in ("total", "text", "unet", "decode")}
            ratio = f"{med['total'] / stock:.2f}x" if stock else "-"
            lines.append(f"| {_variant_label(variant, rs)} | {med['total']:.2f} ({min(r['total'] for r in rs):.2f}) | "
                         f"{med['text']:.2f} | {med['unet']:.2f} | {med['decode']:.2f} | {ratio} | "
                         f"{max(r['peak_gib'] for r in rs):.2f} | {_stage_peaks(rs)} | {_load_times(rs)} |")
    for size, _ in configs:
        if ("stock", size) in images and ("pack_exact", size) in images:
            a, b = torch.load(images[("stock", size)]), torch.load(images[("pack_exact", size)])
            lines.append(f"\nExact path vs stock at {size}: max |image diff| {metrics.max_abs(a, b) * 255:.2f}/255")
        if ("pack_exact", size) in images and ("pack_fast", size) in images:
            a, b = torch.load(images[("pack_exact", size)]), torch.load(images[("pack_fast", size)])
            lines.append(f"\nFast path vs exact at {size}: PSNR {metrics.psnr(a, b):.1f} dB (random weights: the TAESD "
                         "decoder here is untrained, so this says little about real images)")
        if ("pack_fast", size) in images and ("pack_fp8", size) in images:
            a, b = torch.load(images[("pack_fast", size)]), torch.load(images[("pack_fp8", size)])
            lines.append(f"\nfp8 vs fast at {size} (the same TAESD decoder: the difference is the UNet's fp8 "
                         f"weights): max |image diff| {metrics.max_abs(a, b) * 255:.2f}/255, PSNR "
                         f"{metrics.psnr(a, b):.1f} dB (random weights)")
        if ("pack_openvino", size) in images and ("pack_openvino_int8", size) in images:
            a, b = torch.load(images[("pack_openvino", size)]), torch.load(images[("pack_openvino_int8", size)])
            lines.append(f"\nint8 weights vs OpenVINO at {size} (same seed and precision: the difference is the int8 "
                         f"weights): max |image diff| {metrics.max_abs(a, b) * 255:.2f}/255, mean "
                         f"{metrics.mean_abs(a, b) * 255:.2f}/255, PSNR {metrics.psnr(a, b):.1f} dB (random weights "
                         "say nothing of the quality of real images)")
    lines += _peer_notes(results, images, configs, peer or {})
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
