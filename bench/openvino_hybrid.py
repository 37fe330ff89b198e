"""Whether a hybrid int8 UNet pays on this CPU: the pack's converted UNet (IR) as it is, with int8 weights
(cpu_backend openvino_int8: NNCF weight compression), and hybrid int8 as optimum-intel quantizes a UNet
(the weights of matrix products and embeddings in int8; convolutions and the other products quantized
whole, activations too, calibrated on a few inputs), each compiled and timed in a process of its own,
in interleaved rounds.

Calibration and timing inputs are the UNet's at the first turbo step: latents ~ N(0, 1) (the noise
after c_in), timestep 999, text states ~ N(0, 1); the compared output is on an input kept out of the
calibration. A UNet that is not faster here is not worth a pipeline variant.

  scripts/bench.sh openvino_hybrid --xml /work/ovcache_sd/<tag>/unet-1x4x64x64-<digest>.xml --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import metrics

VARIANTS = ("f32", "int8_weights", "hybrid_int8")
CALIBRATION_SEEDS = range(1, 9)  # 8 inputs, as few prompts as the issue asks for
EVAL_SEED = 0


def unet_inputs(model, seed: int) -> list:
    """Arrays for the model's inputs (openvino ports, static shapes): [1] the timestep, the rest N(0, 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for port in model.inputs:
        shape = list(port.get_shape())
        arrays.append(np.full(shape, 999.0, np.float32) if shape == [1] else rng.standard_normal(shape).astype(np.float32))
    return arrays


def weighted_products(model) -> list[str]:
    """Friendly names of the MatMuls with a constant operand and of the embedding Gathers: the ops that
    hybrid quantization leaves to weight compression (as optimum-intel's _collect_ops_with_weights)."""
    names = []
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind in ("MatMul", "Gather") and any(
                _constant_below(op.input_value(i).get_node()) for i in range(op.get_input_size())):
            names.append(op.get_friendly_name())
    return names


def _constant_below(node) -> bool:
    """A Constant, possibly behind the Convert/Subtract/Multiply of decompression."""
    for _ in range(4):
        if node.get_type_name() == "Constant":
            return True
        if node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape") or node.get_input_size() == 0:
            return False
        node = node.input_value(0).get_node()
    return False


def prepare(variant: str, xml: Path, out: Path) -> Path:
    """The IR of `variant` (written to `out` once); f32 is the pack's IR itself."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters

    if variant == "f32":
        return xml
    target = out / f"{xml.stem}-{variant}.xml"
    if target.exists():
        return target
    model = ov.Core().read_model(str(xml))
    started = time.perf_counter()
    if variant == "int8_weights":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    else:
        skip = weighted_products(model)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                      ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
        samples = [unet_inputs(model, seed) for seed in CALIBRATION_SEEDS]
        model = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(samples), ignored_scope=nncf.IgnoredScope(names=skip, validate=False),
                              advanced_parameters=nncf.AdvancedQuantizationParameters(  # SmoothQuant off, as optimum-intel's hybrid
                                  smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)))
    ov.save_model(model, str(target), compress_to_fp16=False)
    print(json.dumps({"prepared": variant, "seconds": round(time.perf_counter() - started, 1),
                      "peak_gib": round(metrics.peak_rss_gib(), 2)}), flush=True)
    return target


def child(variant: str, xml: Path, out: Path, precision: str, runs: int) -> None:
    """Prepare (once) and compile one variant, time `runs` calls; print a JSON line, save the output."""
    import numpy as np
    import openvino as ov

    out.mkdir(parents=True, exist_ok=True)
    path = prepare(variant, xml, out)
    metrics.reset_peak_rss()
    started = time.perf_counter()
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                          "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    load_s = time.perf_counter() - started
    request = compiled.create_infer_request()
    inputs = unet_inputs(compiled, EVAL_SEED)
    request.infer(inputs)  # warm-up
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        result = request.infer(inputs)
        seconds.append(time.perf_counter() - began)
    np.save(out / f"output-{variant}.npy", result[compiled.outputs[0]])
    print(json.dumps({"variant": variant, "median_s": statistics.median(seconds), "seconds": seconds,
                      "load_s": load_s, "peak_gib": metrics.peak_rss_gib()}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xml", type=Path, required=True, help="the pack's UNet IR (in its OpenVINO cache)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the variants' IR (default: beside --xml)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--precision", default="f32", help="INFERENCE_PRECISION_HINT (f32; bf16 where the CPU has it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="timed calls per process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out or args.xml.parent / "hybrid"
    if args.child:
        child(args.child, args.xml, out, args.precision, args.runs)
        return 0
    import numpy as np

    variants = args.variants.split(",")
    rows = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants:
            proc = subprocess.run([sys.executable, "-m", "bench.openvino_hybrid", "--xml", str(args.xml), "--out",
                                   str(out), "--precision", args.precision, "--runs", str(args.runs), "--child",
                                   variant], capture_output=True, text=True)
            lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            for line in lines:
                print(f"round {round_ + 1}: {line}", flush=True)
            if proc.returncode != 0:
                print(f"{variant}: exit {proc.returncode}: {proc.stderr[-1500:]}", flush=True)
            rows[variant] += [line for line in lines if "median_s" in line]
    reference = np.load(out / "output-f32.npy") if (out / "output-f32.npy").exists() else None
    print(f"\nUNet {args.xml.name}, {args.precision}, median of {args.rounds} rounds x {args.runs} calls:")
    print("| variant | UNet s | vs f32 | peak RSS GiB | output max abs diff | output RMS diff / RMS |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(r["median_s"] for r in rows["f32"]) if rows.get("f32") else None
    for variant, found in rows.items():
        if not found:
            print(f"| {variant} | failed | | | | |")
            continue
        median = statistics.median(r["median_s"] for r in found)
        diff = ""
        if reference is not None:
            output = np.load(out / f"output-{variant}.npy")
            delta = output.astype(np.float64) - reference
            diff = f"{np.abs(delta).max():.4g} | {np.sqrt((delta ** 2).mean() / (reference ** 2).mean()):.4g}"
        ratio = f"{median / base:.3f}x" if base else ""
        print(f"| {variant} | {median:.3f} | {ratio} | {max(r['peak_gib'] for r in found):.2f} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
