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

# This module is the entry: arguments, the process's start and main. The rest lives next to it:
# gpu_plan (variants, sections, targets, defaults), pack_runners and diffusers_runners, gpu_stages
# (stage timing), harness (budget, sections, figures), report (the markdown) and metrics (image difference).

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import gpu_plan as plan
from bench import harness, pack_runners
from devkit import host


def second_start_child(family: str, variant: str, ckpt: str) -> int:
    """In a new process: load the variant (its compiled graphs come from the disk cache), make one image,
    print the figures as one JSON line."""
    began = time.perf_counter()
    run, message = pack_runners.comfy_runner(variant, family, ckpt)
    load_s = time.perf_counter() - began
    began = time.perf_counter()
    run(plan.PROMPT, sync=False)
    print(json.dumps({"load_s": load_s, "message": message, "first_image_s": time.perf_counter() - began}), flush=True)
    return 0


def parse_args(argv=None):
    """The command line, with the plan's defaults (or the smoke run's) filled in and lists split."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", help=f"in this order (default all; --smoke: {', '.join(plan.SMOKE_SECTIONS)});"
                                           f" all: {', '.join(plan.SECTIONS)}")
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
    committed = plan.COMMITTED_OUT.relative_to(plan.REPO)
    parser.add_argument("--out", default=None, help=f"markdown results (default {committed}; "
                                                   "with --smoke a file in the temp folder)")
    parser.add_argument("--compile-cache", default=None,
                        help="compile cache folder (default: a new empty one, so the first start compiles)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models on the CPU: checks this script, times nothing")
    parser.add_argument("--second-start", nargs=3, metavar=("FAMILY", "VARIANT", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (plan.SMOKE_DEFAULTS if args.smoke else plan.DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sections = args.sections or ",".join(plan.SMOKE_SECTIONS if args.smoke else plan.SECTIONS)
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.families = args.families.split(",")
    args.variants = None if args.variants is None else args.variants.split(",")
    unknown = [s for s in args.sections.split(",") if s not in plan.SECTIONS]
    unknown += [v for v in args.variants or [] if v not in plan.VARIANTS]
    if unknown:
        parser.error(f"unknown sections or variants: {', '.join(unknown)}")
    return args


def out_path(args) -> Path:
    """Where the markdown goes: a smoke run never writes over the committed results."""
    if not args.smoke:
        return Path(args.out) if args.out else plan.COMMITTED_OUT
    path = Path(args.out) if args.out else Path(tempfile.gettempdir()) / "add_turbo_gpu_smoke.md"
    if path.resolve() == plan.COMMITTED_OUT.resolve():
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
        if link.resolve() == plan.REPO.resolve():
            return
        raise SystemExit(f"{link} is not this checkout ({plan.REPO}): point it here, or run from that checkout")
    link.parent.mkdir(parents=True, exist_ok=True)  # missing, or a link to a folder that is gone
    fresh = link.with_name(f".add-turbo-{os.getpid()}")
    os.symlink(plan.REPO, fresh)
    os.replace(fresh, link)
    print(f"{link} was stale: now -> {plan.REPO}", flush=True)


def start_host(smoke: bool) -> None:
    """ComfyUI in this process with the pack (CPU with --smoke, else the host's own GPU choices)."""
    link_pack()
    host.init_in_process(**({} if smoke else {"flags": host.GPU_HOST_FLAGS}))
    import nodes

    if "ADDTurboLoader" not in nodes.NODE_CLASS_MAPPINGS:
        raise SystemExit("the host started without the ADD Turbo nodes: see the import errors above")


def main(argv=None) -> int:
    """Check the device, start the host, then run the second-start child or the sections in order."""
    args = parse_args(argv)

    import torch

    plan.SIZE = args.size  # the run's settings, read by every module at call time
    if args.smoke:
        plan.DEVICE = "cpu"
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
    bench = harness.Bench(args, out)
    for name in args.sections.split(","):
        bench.section(name)
    bench.write()
    print(f"done in {bench.budget.elapsed():.0f} s: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
