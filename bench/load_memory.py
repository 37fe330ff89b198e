"""Peak memory and time of loading a full-size SD-Turbo checkpoint: stock CheckpointLoaderSimple vs ADDTurboLoader.

Builds (once, cached) a random-weight single file with the real SD 2.1 sizes, then loads it in fresh
processes, alternating stock and pack (A B A B ...). Each child resets the kernel's peak-RSS counter
after ComfyUI has started, so the figure is the load alone. Run: scripts/bench.sh load_memory (or, in the
host's Python from the repository root, python -m bench.load_memory)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import metrics, model_links
from devkit import host

REPO = Path(__file__).resolve().parents[1]

CKPT_NAME = "bench_sd21_full_random.safetensors"


def child(which: str) -> None:
    """Load once in this process and print one JSON line of measurements."""
    host.init_in_process()
    import torch

    import nodes

    before = metrics.status_kib("VmRSS")
    metrics.reset_peak_rss()  # VmHWM (peak RSS) starts again from the current RSS
    start = time.perf_counter()
    if which == "stock":
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT_NAME)[:3]
    else:
        model, clip, vae = nodes.NODE_CLASS_MAPPINGS["ADDTurboLoader"].execute(ckpt_name=CKPT_NAME).result
    seconds = time.perf_counter() - start
    peak = metrics.status_kib("VmHWM")
    modules = [model.model, clip.cond_stage_model, vae.first_stage_model]
    # Memory-mapped weights are paged in on first use: touch every tensor and take the peak again.
    with torch.no_grad():
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                t.float().sum()
    peak_used = metrics.status_kib("VmHWM")
    size = sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
    print(json.dumps({"loader": which, "seconds": seconds, "rss_before_gib": before / 2**20,
                      "peak_gib": peak / 2**20, "peak_over_before_gib": (peak - before) / 2**20,
                      "peak_after_use_over_before_gib": (peak_used - before) / 2**20,
                      "model_gib": size / 2**30,
                      "dtypes": sorted({str(p.dtype) for m in modules for p in m.parameters()}),
                      "torch": torch.__version__}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=["stock", "pack"])
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    sys.path.insert(0, str(host.COMFY_DIR))
    from devkit import turbo_models

    t0 = time.perf_counter()
    turbo_models.build_full_size_sd21(host.HOME / "bench" / CKPT_NAME)
    target = model_links.link_model(host.HOME / "bench" / CKPT_NAME, "checkpoints")
    print(f"checkpoint: {target} ({target.stat().st_size / 2**30:.2f} GiB, ready in {time.perf_counter() - t0:.0f} s)")
    results = []
    for _ in range(args.rounds):
        for which in ("stock", "pack"):
            out = subprocess.run([sys.executable, "-m", "bench.load_memory", "--child", which], cwd=REPO,
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{which:5s}  load {r['seconds']:6.1f} s  peak RSS {r['peak_gib']:5.2f} GiB "
                  f"(+{r['peak_over_before_gib']:.2f} over the started host)  model {r['model_gib']:.2f} GiB  "
                  f"peak/model {r['peak_over_before_gib'] / r['model_gib']:.2f}x; after paging every weight in "
                  f"+{r['peak_after_use_over_before_gib']:.2f} GiB")
    print("\n| loader | load time (median s) | peak RSS over started host (GiB) | loaded model (GiB) | ratio | "
          "peak once every weight is paged in (GiB) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for which in ("stock", "pack"):
        rows = [r for r in results if r["loader"] == which]
        mid = sorted(rows, key=lambda r: r["seconds"])[len(rows) // 2]
        peak = max(r["peak_over_before_gib"] for r in rows)
        used = max(r["peak_after_use_over_before_gib"] for r in rows)
        print(f"| {'CheckpointLoaderSimple' if which == 'stock' else 'ADDTurboLoader'} | {mid['seconds']:.1f} | "
              f"{peak:.2f} | {mid['model_gib']:.2f} | {peak / mid['model_gib']:.2f}x | {used:.2f} | "
              f"{used / mid['model_gib']:.2f}x |")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {results[0]['torch']}, host flags {' '.join(host.HOST_FLAGS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
