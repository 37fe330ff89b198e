"""Where OpenVINO's UNet time goes: OpenVINO's own per-layer counters (PERF_COUNT) for the pack's converted
UNet and the peer's, side by side, by layer type, and each convolution's rate (GFLOP/s).

It reads the IR files the bench left on disk: the pack's from its OpenVINO cache (run the speed bench
with a pack_openvino variant first), the peer's from its export (bench/openvino_peer.py).

  scripts/bench.sh openvino_profile --precision bf16
  scripts/bench.sh openvino_profile --pack PATH.xml --peer PATH.xml --precision f32 --runs 5
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

from devkit import host

PEER_UNET = host.HOME / "peer-openvino" / "sd21_full_ov" / "unet" / "openvino_model.xml"


def static_shape(shape) -> list[int]:
    """A dynamic UNet input's shape at 512 px, batch 1: the latent 1x4x64x64, the text 1x77xC, others
    (timestep, SDXL's pooled text and time ids) batch 1 with their static sizes."""
    dims = [d.get_length() if d.is_static else None for d in shape]
    if len(dims) == 4:
        return [1, dims[1] or 4, 64, 64]
    if len(dims) == 3:
        return [1, 77, dims[2]]
    return [1] + [d or 1 for d in dims[1:]]


def newest_pack_unet() -> Path | None:
    found = sorted((host.BASE_DIR / "user" / "__cache" / "add_turbo_openvino").glob("*/unet-1x4x64x64_*.xml"),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def profile(path: Path, precision: str, runs: int):
    """(median seconds per call, {(type, kernel): ms}, {node name: ms}, compiled model's source)."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if not all(p.get_partial_shape().is_static for p in model.inputs):
        model.reshape({p: static_shape(p.get_partial_shape()) for p in model.inputs})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                                                 "NUM_STREAMS": 1, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    inputs = {}
    for port in compiled.inputs:
        shape, kind = list(port.get_shape()), port.get_element_type().get_type_name()
        inputs[port] = (np.full(shape, 999, np.int64 if kind.startswith("i") else np.float32) if shape == [1]
                        else rng.standard_normal(shape).astype(np.float32))
    request.infer(inputs)
    seconds, by_type, by_node = [], collections.Counter(), collections.Counter()
    for _ in range(runs):
        start = time.perf_counter()
        request.infer(inputs)
        seconds.append(time.perf_counter() - start)
        for info in request.profiling_info:
            ms = info.real_time.total_seconds() * 1e3 / runs
            by_type[(info.node_type, info.exec_type)] += ms
            by_node[info.node_name] += ms
    return statistics.median(seconds), by_type, by_node, model


def conv_rates(model, by_node) -> list[tuple]:
    """(ms, GFLOP, input shape, weight shape, name) of each convolution, slowest first."""
    rows = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        out = [d.get_length() for d in op.output(0).get_partial_shape()]
        weight = [d.get_length() for d in op.input(1).get_partial_shape()]
        gflop = 2 * _prod(out) * _prod(weight[1:]) / 1e9
        rows.append((by_node.get(op.get_friendly_name(), 0.0), gflop, op.input(0).get_partial_shape(), weight,
                     op.get_friendly_name().split("/")[0]))
    return sorted(rows, key=lambda r: -r[0])


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, default=None, help="the pack's UNet IR (default: the newest in the cache)")
    parser.add_argument("--peer", type=Path, default=PEER_UNET)
    parser.add_argument("--precision", default="bf16", choices=("f32", "bf16"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    pack = args.pack or newest_pack_unet()
    if pack is None or not pack.exists() or not args.peer.exists():
        raise SystemExit("no IR to profile: run scripts/bench.sh speed --variants pack_openvino,openvino_peer first")
    results = {name: profile(path, args.precision, args.runs) for name, path in (("pack", pack), ("peer", args.peer))}
    for name, (seconds, by_type, _, _) in results.items():
        print(f"{name}: {seconds:.3f} s a call (median of {args.runs}), counters {sum(by_type.values()):.0f} ms")
    types = set(results["pack"][1]) | set(results["peer"][1])
    print(f"\n| layer type / kernel ({args.precision}) | pack ms | peer ms |\n|---|---|---|")
    for key in sorted(types, key=lambda k: -(results["pack"][1][k] + results["peer"][1][k]))[:args.top]:
        print(f"| {key[0]} / {key[1]} | {results['pack'][1][key]:.1f} | {results['peer'][1][key]:.1f} |")
    for name in ("pack", "peer"):
        _, _, by_node, model = results[name]
        rows = conv_rates(model, by_node)
        total_ms, total_gflop = sum(r[0] for r in rows), sum(r[1] for r in rows)
        print(f"\n{name}: convolutions {total_ms:.0f} ms for {total_gflop:.0f} GFLOP "
              f"({total_gflop / max(total_ms, 1e-9) * 1e3:.0f} GFLOP/s); the slowest:")
        for ms, gflop, shape, weight, layer in rows[:args.top // 2]:
            print(f"  {ms:6.2f} ms {gflop:6.2f} GFLOP {gflop / max(ms, 1e-9) * 1e3:5.0f} GFLOP/s in {shape} "
                  f"w {weight} {layer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
