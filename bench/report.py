"""The GPU bench's report: the markdown of bench/results_gpu.md (the targets table, each family's variant,
refine and sweep tables, notes and the sections' log) from the figures the harness has gathered."""

from __future__ import annotations

import math
import platform
import re
import statistics
import subprocess
import time

from bench import gpu_plan as plan
from bench.gpu_figures import BenchRun, Family
from devkit import host


def speed(fam: Family, variant: str, sweep: bool = False):
    """(images/s, batch): batch 1 end to end, or the best batch of the sweep; None when not measured."""
    if not sweep:
        rows = fam.totals.get(variant)
        return (1 / statistics.median(rows), 1) if rows else None
    rates = [(batch / statistics.median(times), batch) for (v, batch), times in fam.sweep.items() if v == variant]
    return max(rates) if rates else None


def image_ok(fam: Family, variant: str) -> bool:
    """Whether the variant's image was checked and is close enough to the exact path's to count."""
    diff = fam.diffs.get(variant)
    return diff is not None and diff[1] >= plan.MIN_PSNR_DB


def _diff_text(fam: Family, variant: str) -> str:
    diff = fam.diffs.get(variant)
    return "not checked" if diff is None else f"{diff[0]:.4f} / {diff[1]:.1f} dB"


def evaluate(bench: BenchRun, target: plan.Target) -> list[str]:
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


def targets_table(bench: BenchRun) -> list[str]:
    """The targets table: a row per target, the never-slower row, and a warm-up row per second start."""
    rows = [evaluate(bench, target) for target in plan.TARGETS]
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
    """The targets-table row of a variant's second start against SECOND_START_MAX_S."""
    start, first = fam.starts[variant], fam.runners[variant]
    figure = (f"first start {first.load_s:.1f} s, second start {start['load_s']:.1f} s "
              f"(new process {start['process_s']:.1f} s)")
    met = "met" if start["load_s"] <= plan.SECOND_START_MAX_S else "NOT met"
    return [f"{fam.name} warm-up, second start (compiled graphs on disk): load + 512x512 warm-up",
            f"<= {plan.SECOND_START_MAX_S:g} s", figure, variant, "", met, ""]


def variant_table(fam: Family, variants: list[str]) -> list[str]:
    """A row per variant: end to end, per second, the stages measured, the image check, load and first image."""
    stages = [s for s in plan.STAGE_ORDER if any(s in row for v in variants for row in fam.stages.get(v, []))]
    lines = [f"| variant | end to end ms median (min) | per s | {' | '.join(stages)} | vs exact: max abs / PSNR "
             f"| load s | first image s |", "|---|---|---|" + "---|" * len(stages) + "---|---|---|"]
    for variant in variants:
        rows = fam.totals.get(variant)
        if not rows:
            lines.append(f"| {plan.VARIANTS[variant]} | {'; '.join(fam.notes.get(variant, [])) or 'no result'} |"
                         + " |" * (len(stages) + 4))
            continue
        med = statistics.median(rows)
        staged = {s: [row[s] for row in fam.stages.get(variant, []) if s in row] for s in stages}
        cells = [f"{statistics.median(t) * 1e3:.2f}" if t else "" for t in staged.values()]
        runner = fam.runners[variant]
        lines.append(f"| {plan.VARIANTS[variant]} | {med * 1e3:.2f} ({min(rows) * 1e3:.2f}) | {1 / med:.1f} | "
                     f"{' | '.join(cells)}{' | ' if cells else ''}{_diff_text(fam, variant)} | {runner.load_s:.1f} | "
                     f"{fam.first.get(variant, math.nan):.2f} |")
    return lines


def sweep_table(fam: Family) -> list[str]:
    """A row per batch size of the sweep, a column per variant."""
    variants = list(dict.fromkeys(v for v, _ in fam.sweep))
    batches = sorted({b for _, b in fam.sweep})
    lines = ["| batch | " + " | ".join(f"{v}: ms per batch (images/s)" for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for batch in batches:
        cells = []
        for variant in variants:
            times = fam.sweep.get((variant, batch))
            cells.append(f"{statistics.median(times) * 1e3:.1f} ({batch / statistics.median(times):.1f})"
                         if times else "")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return lines


def family_section(fam: Family) -> list[str]:
    """One family's part of the report: its tables, then second starts, loader and engine notes, and other notes."""
    measured = [v for v in plan.VARIANTS if v in fam.totals or v in fam.notes]
    txt2img = [v for v in measured if not v.startswith("refine_")]
    refine = [v for v in measured if v.startswith("refine_")]
    lines = [f"\n## {fam.name}, {plan.SIZE}x{plan.SIZE}\n"]
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


def render(bench: BenchRun) -> str:
    """The whole markdown of the run so far."""
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**30 if plan.DEVICE == "cuda" else math.nan
    a = bench.args
    lines = [f"# ADD Turbo GPU speed, {plan.SIZE}x{plan.SIZE} ({time.strftime('%Y-%m-%d')})\n",
             f"{versions()}.\n",
             f"Measured with `python -m bench.gpu` in {bench.budget.elapsed():.0f} s (budget {a.budget_s:.0f} s), "
             f"peak GPU memory allocated {peak:.1f} GiB. Random weights of the real sizes: the images mean nothing, "
             f"the timings and the differences do. Median (min) of {a.rounds} interleaved rounds x {a.images} images "
             f"per variant, each turn after {a.warmup} untimed images, with no extra device syncs; the stage columns "
             f"come from {a.stage_images} more images per turn synchronised at each stage boundary. "
             "'vs exact' compares the variant's image for one prompt and seed with the exact path's (loader defaults, "
             "engine off), decoded by the same kind of decoder: max abs on a 0-1 scale / PSNR; a target needs PSNR >= "
             f"{plan.MIN_PSNR_DB:g} dB. "
             "Speed ratios: the pack's images/s over diffusers compiled's (above 1: faster). The compile caches "
             "started empty: 'load s' of a compiled variant is its first start.\n",
             "## Targets (issue #14)\n", *targets_table(bench)]
    for fam in bench.families.values():
        lines += family_section(fam)
    lines += ["\n## Sections\n", *[f"- {entry}" for entry in bench.log]]
    return "\n".join(lines) + "\n"


def versions() -> str:
    """The GPU and the versions of torch, ComfyUI, diffusers, Python and the pack (with its commit)."""
    import diffusers
    import torch

    comfy = ".".join(map(str, host.host_version()))
    found = re.search(r'^version = "(.+)"', (plan.REPO / "pyproject.toml").read_text(), re.M)
    try:
        commit = subprocess.run(["git", "-C", str(plan.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "no commit"
    except OSError:
        commit = "no git"
    return (f"{device_name()}; torch {torch.__version__} (CUDA {torch.version.cuda}), ComfyUI {comfy}, diffusers "
            f"{diffusers.__version__}, Python {platform.python_version()}, "
            f"ADD Turbo {found.group(1) if found else '?'} ({commit})")


def device_name() -> str:
    """The GPU's name, or what a smoke run on the CPU is."""
    import torch

    if plan.DEVICE == "cuda":
        return torch.cuda.get_device_name()
    return "CPU (smoke run: tiny models, timings mean nothing)"
