"""Where one image's time goes on the GPU: a Python profile per variant, and torch.compile's recompiles
and graph breaks. A diagnostic next to bench/gpu.py (same models and graphs).

  python -m bench.gpu_profile --variants pack_fast_eager,pack_fast,stock --images 10
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from bench import diffusers_runners, gpu_plan, harness, pack_runners
from devkit import host


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", default="sd_turbo")
    parser.add_argument("--variants", default="pack_fast_eager,stock,pack_fast")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    import torch

    host.init_in_process(flags=host.GPU_HOST_FLAGS)
    ckpt, pipe = harness.build_models(args.family, host.HOME / "bench")
    for variant in args.variants.split(","):
        if variant.startswith("diffusers"):
            run, info = diffusers_runners.diffusers_runner(variant, args.family, pipe, set())
        else:
            run, info = pack_runners.comfy_runner(variant, args.family, ckpt)
        print(f"\n===== {variant} {info}", flush=True)
        torch._dynamo.utils.counters.clear()
        times = []
        for i in range(args.images):
            t = time.perf_counter()
            stages = run(f"{gpu_plan.PROMPT} {i}")
            times.append((time.perf_counter() - t) * 1e3)
            print(f"image {i}: {times[-1]:.1f} ms " + " ".join(f"{k} {v * 1e3:.1f}" for k, v in stages.times.items()),
                  flush=True)
        print("dynamo counters:", {k: dict(v) for k, v in torch._dynamo.utils.counters.items() if v})
        profile = cProfile.Profile()
        profile.enable()
        for i in range(args.images):
            run(f"{gpu_plan.PROMPT} p{i}")
        profile.disable()
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats(key).print_stats(args.top)
            print(out.getvalue()[-6000:], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
