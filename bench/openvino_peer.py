"""The peer in the speed bench: the OpenVINO pipelines FastSD CPU runs SD-Turbo and SDXL-Turbo with.

optimum-intel's OVStableDiffusionPipeline (SD-Turbo) or OVStableDiffusionXLPipeline (SDXL-Turbo)
exported from the bench's full-size diffusers folder, the TAESD (TAESDXL) decoder converted to OpenVINO
in its place, static shapes, 1 step, guidance 0, in OpenVINO's default precision (bf16 on a CPU with
avx512_bf16 or AMX) or f32. SD-Turbo is exported with fp32 weights; SDXL-Turbo as FastSD ships it, with
the fp16 weights of its file (optimum-cli --weight-format fp16: it loads the fp16 folder as it is, where
an fp32 export would hold 14 GB of fp32 weights at once) and, for openvino_peer_int8, NNCF's int8
weights (optimum-cli --weight-format int8, as FastSD's int8 SDXL-Turbo).

optimum-intel pins diffusers and transformers below the hosts' releases, so the peer lives in a venv
of its own (`ensure_peer_venv`), with its models exported once (`ensure_peer_models`). The bench's
parent runs this module's child entry in that venv's Python:

  <peer venv>/bin/python -m bench.openvino_peer --child VARIANT SIZE BATCH OUT_PNG

Module-level imports are the standard library only: this file runs in the host's Python and in the
peer's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_HOME = Path(os.environ.get("ADD_TURBO_HOME", Path.home() / ".cache" / "add-turbo")) / "peer-openvino"
VENV = PEER_HOME / "venv"
PYTHON = VENV / "bin" / "python"
# family -> the exported pipeline's folder per weight format, its TAESD decoder IR, the pipeline class
EXPORTS = {"sd_turbo": {"folders": {"fp32": PEER_HOME / "sd21_full_ov", "int8": PEER_HOME / "sd21_full_ov_int8"},
                        "taesd": PEER_HOME / "taesd_ov" / "vae_decoder" / "openvino_model.xml",
                        "pipeline": "OVStableDiffusionPipeline"},
           "sdxl_turbo": {"folders": {"fp16": PEER_HOME / "sdxl_full_ov", "int8": PEER_HOME / "sdxl_full_ov_int8"},
                          "taesd": PEER_HOME / "taesdxl_ov" / "vae_decoder" / "openvino_model.xml",
                          "pipeline": "OVStableDiffusionXLPipeline"}}

# pip would otherwise replace the local CPU torch with a multi-GB CUDA build: torch is installed
# first, alone, and pinned in every later pip call.
TORCH_PIN = "torch==2.13.0"
# The releases that install together (optimum-intel 2.2.0 holds diffusers and transformers here).
PEER_PINS = ("optimum-intel==2.2.0", "optimum==2.3.0", "openvino==2026.4.1", "openvino-tokenizers==2026.4.1.0",
             "nncf==3.4.0", "diffusers==0.39.0", "transformers==5.5.4")
PEER_VARIANTS = {
    "openvino_peer": "OpenVINO peer (optimum-intel pipeline + TAESD IR, default precision, as FastSD CPU runs it)",
    "openvino_peer_f32": "OpenVINO peer f32 (optimum-intel pipeline + TAESD IR, INFERENCE_PRECISION_HINT f32)",
    "openvino_peer_int8": "OpenVINO peer int8 (optimum-intel pipeline exported with --weight-format int8 + TAESD IR, "
                          "default precision, as FastSD CPU's int8 SDXL-Turbo)",
}


def weight_format(family: str, variant: str) -> str:
    """The exported weights a peer variant runs: int8 for openvino_peer_int8, else the family's own."""
    return "int8" if variant.endswith("_int8") else next(iter(EXPORTS[family]["folders"]))


class PeerUnavailable(RuntimeError):
    """The peer's venv or models could not be built; the message says why."""


def _run_or_raise(command: list, what: str, **kwargs) -> None:
    proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise PeerUnavailable(f"{what} failed: {tail[0][:300]}")


def ensure_peer_venv() -> Path:
    """The peer venv's Python, building the venv on first use (torch pinned first, then optimum-intel and
    its pins, torchvision removed). Raises PeerUnavailable when pip cannot install the pins."""
    stamp = VENV / "peer-pins.json"
    wanted = json.dumps([TORCH_PIN, *PEER_PINS])
    if stamp.exists() and stamp.read_text() == wanted and PYTHON.exists():
        return PYTHON
    PEER_HOME.mkdir(parents=True, exist_ok=True)
    if not PYTHON.exists():
        _run_or_raise([sys.executable, "-m", "venv", VENV], "creating the peer venv")
    constraints = PEER_HOME / "torch-constraint.txt"
    constraints.write_text(TORCH_PIN + "\n")
    pip = [PYTHON, "-m", "pip", "install", "--quiet"]
    _run_or_raise([*pip, TORCH_PIN], f"pip install {TORCH_PIN}")
    _run_or_raise([*pip, "-c", constraints, *PEER_PINS], "pip install " + " ".join(PEER_PINS))
    # torchvision (pulled by some releases) fails to import with this torch; the SD path never needs it.
    subprocess.run([PYTHON, "-m", "pip", "uninstall", "--quiet", "--yes", "torchvision"], capture_output=True)
    stamp.write_text(wanted)
    return PYTHON


def _fingerprint(files) -> list:
    """[path, size, mtime] of each file (lists, as the JSON stamp reads back): a rebuilt source makes the
    export stale."""
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(files)]


def _export_once(stamp: Path, source: list, export) -> dict:
    """Run `export` unless `stamp` records the same source; returns the stamp's record (export seconds)."""
    if stamp.exists():
        record = json.loads(stamp.read_text())
        if record.get("source") == source:
            return record
    started = time.perf_counter()
    peak = export()
    record = {"source": source, "seconds": round(time.perf_counter() - started, 1)}
    if peak is not None:
        record["peak_gib"] = round(peak, 2)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(record))
    return record


def ensure_peer_models(family: str, diffusers_dir: Path, taesd_decoder: Path, formats=None) -> dict:
    """Export the bench's diffusers folder to an OpenVINO pipeline for each weight format in `formats` (the
    family's own by default) and the TAESD decoder file to an OpenVINO IR, each once per source, in the peer
    venv. Returns the export seconds and peak RSS (GiB) of each, {"pipeline": {format: s}, "pipeline_peak":
    {format: GiB}, "taesd": s}. Raises PeerUnavailable when the venv or an export fails."""
    python = ensure_peer_venv()
    export = EXPORTS[family]
    seconds, peaks = {}, {}
    for weights in formats or [next(iter(export["folders"]))]:
        folder = export["folders"][weights]

        def export_pipeline(folder=folder, weights=weights):
            import resource
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            _run_or_raise([VENV / "bin" / "optimum-cli", "export", "openvino", "--model", diffusers_dir,
                           "--task", "text-to-image", "--weight-format", weights, folder],
                          "optimum-cli export openvino", env={**os.environ, "HF_HUB_OFFLINE": "1"})
            return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB, the largest child

        record = _export_once(folder / "peer-export.json", _fingerprint(Path(diffusers_dir).rglob("*.safetensors")),
                              export_pipeline)
        seconds[weights], peaks[weights] = record["seconds"], record.get("peak_gib")

    def export_taesd():
        _run_or_raise([python, "-m", "bench.openvino_peer", "--export-taesd", taesd_decoder, export["taesd"]],
                      "TAESD conversion to OpenVINO", cwd=REPO)

    taesd = _export_once(export["taesd"].parent / "peer-export.json", _fingerprint([Path(taesd_decoder)]), export_taesd)
    return {"pipeline": seconds, "pipeline_peak": peaks, "taesd": taesd["seconds"]}


def export_taesd_decoder(decoder_file: Path, out_xml: Path) -> None:
    """The host's TAESD decoder weights as diffusers' DecoderTiny (what AutoencoderTiny decodes with),
    converted to an OpenVINO IR in full precision, with the input and output names the pipeline's
    VAE decoder has (latent_sample, sample). Runs in the peer venv."""
    import openvino as ov
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    vae = AutoencoderTiny()
    # The host's decoder starts with its clamp (no weights), diffusers' applies it in forward: one index less.
    state = {}
    for key, value in load_file(str(decoder_file)).items():
        index, rest = key.split(".", 1)
        state[f"layers.{int(index) - 1}.{rest}"] = value
    vae.decoder.load_state_dict(state)
    with torch.no_grad():
        model = ov.convert_model(vae.decoder.eval(), example_input=torch.zeros(1, 4, 64, 64))
    model.inputs[0].get_tensor().set_names({"latent_sample"})
    model.outputs[0].get_tensor().set_names({"sample"})
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    vae.save_config(out_xml.parent)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)  # the default fp16 weights would change f32 results


def _load_pipeline(variant: str, size: int, batch: int, family: str = "sd_turbo"):
    """The exported pipeline with TAESD as its decoder, static shapes, compiled: (pipeline, precision the
    UNet runs in)."""
    import openvino as ov
    import optimum.intel
    from diffusers import EulerAncestralDiscreteScheduler

    export = EXPORTS[family]
    # CACHE_DIR "": no compiled-model cache, as FastSD CPU loads its pipelines (its fix for a second copy of
    # the weights in memory); optimum-intel would otherwise write one beside the model.
    config = {"INFERENCE_NUM_THREADS": len(os.sched_getaffinity(0)), "CACHE_DIR": ""}
    if variant.endswith("_f32"):
        config["INFERENCE_PRECISION_HINT"] = "f32"  # otherwise bf16 wherever the CPU has it
    pipeline_class = getattr(optimum.intel, export["pipeline"])
    pipe = pipeline_class.from_pretrained(export["folders"][weight_format(family, variant)], ov_config=config,
                                          compile=False, local_files_only=True)
    # the bench's diffusers variants' scheduler: 1 step from timestep 999
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    # TAESD in the full VAE decoder's place, as FastSD CPU's tiny autoencoder option; like diffusers'
    # AutoencoderTiny it takes the latents unscaled (scaling factor 1).
    pipe.vae_decoder.model = ov.Core().read_model(export["taesd"])
    pipe.vae_decoder.register_to_config(scaling_factor=1.0)
    pipe.reshape(batch_size=1, height=size, width=size, num_images_per_prompt=batch)
    # optimum's reshape doubles the UNet batch for classifier-free guidance; guidance 0 runs it once.
    unet_shapes = {}
    for port in pipe.unet.model.inputs:
        shape = port.get_partial_shape()
        if port.get_any_name() != "timestep":
            shape[0] = batch
        unet_shapes[port] = shape
    pipe.unet.model.reshape(unet_shapes)
    pipe.compile()
    precision = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT").to_string()  # e.g. "bf16"
    return pipe, precision


def child(variant: str, size: int, batch: int, out_png: str | None, family: str = "sd_turbo") -> None:
    """One process in the peer venv: load and compile, one untimed warm-up, one timed run with a new
    prompt; prints the JSON line bench.speed's children print, plus the UNet's precision and load time."""
    import numpy as np
    import torch
    from PIL import Image

    from bench import metrics
    from bench.speed_run import PROMPT, SEED, Timer

    started = time.perf_counter()
    pipe, precision = _load_pipeline(variant, size, batch, family)
    load_seconds = time.perf_counter() - started
    load_peak = metrics.peak_rss_gib()
    # (pipeline part, stage, its compiled model): the timed runs wrap the compiled model's calls
    text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])
    stages = [(encoder, "text") for encoder in text_encoders] + [(pipe.unet, "unet"), (pipe.vae_decoder, "decode")]
    parts = [(part, name, part.request) for part, name in stages]

    def timed(request, name, timer):
        def wrapper(*args, **kwargs):
            with timer.stage(name):
                return request(*args, **kwargs)
        return wrapper

    def run(timer, prompt):
        for part, name, request in parts:
            part.request = timed(request, name, timer)
        return pipe(prompt, num_inference_steps=1, guidance_scale=0.0, height=size, width=size,
                    num_images_per_prompt=batch, generator=torch.Generator().manual_seed(SEED),
                    output_type="np").images

    run(Timer(), PROMPT + ", warm-up")  # the timed run encodes a new prompt, as every run of the peer does
    timer = Timer()
    start = time.perf_counter()
    images = run(timer, PROMPT)
    total = time.perf_counter() - start
    if out_png:
        Image.fromarray((np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)).save(out_png)
    peaks = {"load": load_peak, **timer.peaks}
    print(json.dumps({"variant": variant, "size": size, "batch": batch, "total": total, **timer.stages,
                      "peaks": peaks, "peak_gib": max(peaks.values()), "loader": "", "engine": "",
                      "precision": precision, "load_seconds": load_seconds, "openvino": importlib.metadata.version("openvino"),
                      "optimum_intel": importlib.metadata.version("optimum-intel")}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--child", nargs=4, metavar=("VARIANT", "SIZE", "BATCH", "PNG"))
    group.add_argument("--export-taesd", nargs=2, metavar=("DECODER_SAFETENSORS", "OUT_XML"))
    parser.add_argument("--family", choices=list(EXPORTS), default="sd_turbo")
    args = parser.parse_args()
    if args.export_taesd:
        export_taesd_decoder(Path(args.export_taesd[0]), Path(args.export_taesd[1]))
    else:
        variant, size, batch, png = args.child
        child(variant, int(size), int(batch), png if png != "-" else None, args.family)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
